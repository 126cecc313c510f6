"""Style transfer methods, one file per method, found through this registry.

Each method module (``artgen/style/<name>.py``) defines ``METHOD``, a
:class:`StyleMethod`: its options dataclass and the functions that load its weights and
stylise. The CLI, ``artgen batch``, the studio, the PNG metadata and ``artgen info`` reach
methods only through :func:`get_method`; none imports a method module itself.

Adding a method is one new file plus one line in ``METHODS`` below.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from PIL import Image

from artgen.core.errors import ArtgenError, clip
from artgen.core.options import choice_error, option

# name -> module that defines METHOD. The first is the default.
METHODS: dict[str, str] = {
    "gatys": "artgen.style.gatys",
    "adain": "artgen.style.adain",
    "sdedit": "artgen.style.sdedit",
}
DEFAULT_METHOD = "gatys"


PRESERVE_COLOR = ("none", "luminance", "histogram")  # the choices of every style method


@dataclass(frozen=True)
class StylizeProgress:
    """Sent to the callback after every optimisation step."""

    step: int  # 1-based, counted over all scales
    total_steps: int
    scale: int  # 1-based
    num_scales: int
    width: int
    height: int
    loss: float
    elapsed: float  # seconds since the start
    render: Callable[[], Image.Image] = field(repr=False, compare=False)

    def image(self) -> Image.Image:
        """The current picture (computed only when asked for)."""
        return self.render()


@dataclass(frozen=True)
class StyleMethod:
    """What a style method supplies; everything else (I/O, CLI, batch, app) is shared.

    - ``options``: a frozen dataclass with ``to_dict``/``from_dict``; the CLI's flags come
      from its fields.
    - ``load(options, device, weights)``: the heavy network, built once and passed back in.
    - ``stylize(content, styles, options, *, model, device, callback)``: one PIL image, with
      ``image.info`` naming what was resolved (``resolved`` lists those keys).
    - ``stylize_many``: optional; several contents of one size in one batch.
    - ``describe(model)``: one line for the user about the loaded network.
    - ``stylize_guided``: optional, for methods that optimise the picture: ``stylize`` plus
      ``init`` (the starting picture) and ``extra_loss(y)`` (a term added to the objective);
      artgen.video.pipeline uses it for Ruder et al. 2016's temporal loss.
    - ``masks``: True when ``stylize`` (and ``stylize_many``) take ``masks=`` (one per style,
      or None) and ``content_mask=``: regional styles (see :class:`Regions`).
    - ``needs_styles``: False for a method that takes no style images (sdedit: the style
      is what a fine-tuned generator learned); ``stylize`` then gets ``styles=[]``, and
      style images given to it are refused (:func:`check_styles`).
    """

    name: str
    summary: str
    options: type
    load: Callable[..., Any]
    stylize: Callable[..., Image.Image]
    resolved: tuple[str, ...] = ()
    stylize_many: Callable[..., list[Image.Image]] | None = None
    describe: Callable[[Any], str] | None = None
    stylize_guided: Callable[..., Image.Image] | None = None
    masks: bool = False
    needs_styles: bool = True


def check_styles(m: StyleMethod, styles: Any) -> None:
    """ArtgenError when ``styles`` do not suit ``m``: none for a method that needs them,
    any for a method that takes none (the message says where its style comes from)."""
    given = styles is not None and not (isinstance(styles, (list, tuple, dict)) and not styles)
    if m.needs_styles and styles is None:  # an empty list: the method's own message
        raise ArtgenError(f"method {m.name} needs at least one style image (--style)")
    if not m.needs_styles and given:
        raise ArtgenError(
            f"method {m.name} takes no style images (--style); its style is the one its "
            "options name (for sdedit: the run given as --generator)"
        )


class OptionsRecord:
    """``to_dict``/``from_dict`` for an options dataclass (what the PNG and run configs
    record): a plain dict of its fields, and back, with unknown keys refused in one line.
    ``record_name`` names them in that line."""

    record_name = "option"

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON takes them (tuples as lists)."""
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def refuse(self, name: str, why: str) -> ArtgenError:
        """The one-line error for field ``name`` (raise it)."""
        return option_error(self, name, why)

    def check_common(
        self, skip: Sequence[str] = (), bounded: Sequence[str] = ("size", "seed")
    ) -> None:
        """What every method's options check first, in ``__post_init__``: each field of its
        declared type (``skip``: fields checked by the class itself), each field with
        ``choices`` in its metadata one of them, and those of ``bounded`` ("size", "seed")
        that the class has in the common range (a class with other bounds checks its own)."""
        check_field_types(self, skip)
        found = choice_error(self, skip)
        if found is not None:
            raise self.refuse(*found)
        names = {f.name for f in fields(self)} & set(bounded)  # type: ignore[arg-type]
        if "size" in names and not 16 <= self.size <= 16384:  # type: ignore[attr-defined]
            raise self.refuse("size", "must be between 16 and 16384")
        if "seed" in names and not 0 <= self.seed < 2**63:  # type: ignore[attr-defined]
            raise self.refuse("seed", "must be a whole number from 0 to 2**63 - 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """``ADDED_SETTINGS`` (a class's {field: value}) fills fields that a record made
        before they existed lacks, with the value that reproduces it; ``RENAMED_SETTINGS``
        ({old name: field}) reads a record made before a field was renamed."""
        renamed = getattr(cls, "RENAMED_SETTINGS", {})
        if any(k in renamed and renamed[k] in d for k in d):
            raise ArtgenError(f"a {cls.record_name} is there under its old and new names")
        d = {renamed.get(k, k): v for k, v in d.items()}
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}  # type: ignore[arg-type]
        d = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in d.items()}
        unknown = set(d) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ArtgenError(
                f"unknown {cls.record_name}(s): "
                f"{clip(', '.join(sorted(str(k)[:40] for k in unknown)), 120)}"
            )
        return cls(**{**getattr(cls, "ADDED_SETTINGS", {}), **d})


@dataclass(frozen=True)
class PictureOptions(OptionsRecord):
    """The fields every method that paints a photo in a style image's manner shares,
    declared once: the output's size, the amount of style (``MAX_STRENGTH`` is the
    method's top), the style image's scale and colour preservation. A method's options
    inherit them (a method may restate ``strength`` to say what its own scale means; the
    field keeps its place) and call :meth:`check_common`, which checks them."""

    MAX_STRENGTH: ClassVar[float] = 1.0

    size: int = option(512, "long side of the output in pixels")
    strength: float = option(
        1.0, "how much style: 0 the photo, 1 the method's default, above 1 more"
    )
    style_scale: float = option(
        1.0, "size of the style image relative to the output: larger gives bigger brush strokes"
    )
    preserve_color: str = option("none", "keep the content's colours", choices=PRESERVE_COLOR)

    def check_common(
        self, skip: Sequence[str] = (), bounded: Sequence[str] = ("size", "seed")
    ) -> None:
        """:meth:`OptionsRecord.check_common`, then strength (0 to ``MAX_STRENGTH``) and
        style_scale (0.05 to 8)."""
        super().check_common(skip, bounded)
        if not 0.0 <= self.strength <= self.MAX_STRENGTH:
            raise self.refuse("strength", f"must be between 0 and {self.MAX_STRENGTH:g}")
        if not 0.05 <= self.style_scale <= 8.0:
            raise self.refuse("style_scale", "must be between 0.05 and 8")


def option_error(options: Any, name: str, why: str) -> ArtgenError:
    """An options dataclass's one-line refusal of field ``name``, its value quoted short."""
    v = getattr(options, name)
    shown = f"<int of {v.bit_length()} bits>" if isinstance(v, int) and v > 10**60 else repr(v)
    return ArtgenError(f"{name}={clip(shown, 60)}: {why}")


def check_field_types(options: Any, skip: Sequence[str] = ()) -> None:
    """Each field of a method's options has its declared type (int, float, a short printable
    str, or None where allowed): options also come from files (PNG metadata)."""
    for f in fields(options):
        if f.name in skip:
            continue
        v, kind = getattr(options, f.name), str(f.type)
        if v is None and "None" in kind:
            continue
        if kind == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            raise option_error(options, f.name, "must be a whole number")
        if kind.startswith("float") and (
            not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
        ):
            raise option_error(options, f.name, "must be a number")
        if kind == "str" and (not isinstance(v, str) or len(v) > 64 or not v.isprintable()):
            raise option_error(options, f.name, "must be a short word")


# A style as callers give it: a file, a PIL image, or an artgen.core.images.LoadedImage.
StyleSpec = Any


def parse_styles(styles: Any) -> list[tuple[StyleSpec, float]]:
    """Accept one style, a list of styles, a list of (style, weight) pairs, or a {style: weight} dict."""
    from artgen.core.images import LoadedImage

    if isinstance(styles, dict):
        items = list(styles.items())
    elif isinstance(styles, (str, os.PathLike, Image.Image, LoadedImage)):
        items = [(styles, 1.0)]
    else:
        items = [s if isinstance(s, tuple) else (s, 1.0) for s in styles]
    if not items:
        raise ArtgenError("at least one style image is needed")
    for s, w in items:
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ArtgenError(f"style weight {w!r} for {s}: must be a number >= 0")
    if sum(w for _, w in items) <= 0:
        raise ArtgenError("style weights must not all be zero")
    return items


def load_styles(styles: Any) -> list[tuple[Any, float]]:
    """:func:`parse_styles`, each style loaded (an artgen.core.images.LoadedImage) and its weight a
    float; zero weights are kept (a method drops them, a record keeps them)."""
    from artgen.core.images import LoadedImage, load_image

    return [
        (s if isinstance(s, LoadedImage) else load_image(s), float(w))
        for s, w in parse_styles(styles)
    ]


# ---------------------------------------------------------------- regional styles (masks)


def load_masks(masks: Any, n_styles: int) -> list[Any] | None:
    """The masks of ``n_styles`` styles as a list of artgen.core.images.LoadedMask or None (one per
    style, in the styles' order); None when no style has one. ``masks`` is None, a list of
    masks (paths, PIL images, 2-D arrays in [0, 1], or None for a style without one), or,
    for a single style, one mask."""
    from artgen.core.images import load_mask

    if masks is None:
        return None
    if not isinstance(masks, (list, tuple)):
        if n_styles != 1:
            raise ArtgenError(
                f"masks: give a list of {n_styles} masks (None for a style "
                "without one), one per style"
            )
        masks = [masks]
    if len(masks) != n_styles:
        raise ArtgenError(
            f"masks: {len(masks)} masks for {n_styles} styles; give one per "
            "style (None for a style without one)"
        )
    loaded = [None if m is None else load_mask(m) for m in masks]
    return loaded if any(m is not None for m in loaded) else None


@dataclass(frozen=True)
class Regions:
    """Where each style goes: the regional styles of Gatys et al. 2017 ("Controlling
    Perceptual Factors in Neural Style Transfer", sec. 4, spatial control).

    The rule. Each style with a mask applies where its mask is white (grey: partly). Styles
    that share a mask (the same pixels) share a region and blend there by their weights;
    the styles without a mask share one region, *the rest*: whatever the masks leave
    uncovered (everything, when no style has a mask), blended by their weights. Where
    masks overlap by more than 1 in sum, they are scaled down to sum to 1 there. Where no
    region reaches (masks that leave a part uncovered and no style without a mask), and
    where ``content_mask`` is white, the photo stays as it is: every region's weight is
    multiplied by (1 - content mask), and what is left, ``keep``, is the share of the photo
    in the output (the methods composite it in, softly). Masks are stretched to the
    picture, so they must have its aspect ratio (5% tolerance).

    ``groups``: per region, the (index into the styles, weight) of its styles and its mask
    (None: the rest).
    """

    groups: tuple[tuple[tuple[tuple[int, float], ...], Any], ...]
    content_mask: Any = None

    def check(self, size: tuple[int, int]) -> None:
        """ArtgenError naming the mask whose shape is not that of a picture of ``size``."""
        for _, mask in self.groups:
            if mask is not None:
                mask.check_shape(size)
        if self.content_mask is not None:
            self.content_mask.check_shape(size)

    def weights(self, size: tuple[int, int], device: Any = "cpu") -> tuple[Any, Any]:
        """(weights, keep) at ``size`` (W, H): (1, R, H, W), one plane per region of
        :attr:`groups`, and (1, 1, H, W) the photo's share, or None where it is 0 everywhere.
        The planes and keep sum to 1 at every pixel."""
        import torch

        w, h = size
        masks = [None if m is None else m.tensor(size).to(device) for _, m in self.groups]
        covered = sum((m for m in masks if m is not None), torch.zeros(1, 1, h, w, device=device))
        scale = 1.0 / covered.clamp_min(1.0)
        rest = (1.0 - covered * scale).clamp(0.0, 1.0)
        planes = [rest if m is None else m * scale for m in masks]
        if self.content_mask is not None:
            free = 1.0 - self.content_mask.tensor(size).to(device)
            planes = [p * free for p in planes]
        weights = torch.cat(planes, 1)
        keep = (1.0 - weights.sum(1, keepdim=True)).clamp(0.0, 1.0)
        return weights, (keep if float(keep.max()) > 1e-6 else None)


def check_masks(size: tuple[int, int], masks: Sequence[Any] | None, content_mask: Any) -> None:
    """ArtgenError naming the first loaded mask whose shape is not that of a picture of
    ``size`` (W, H): a check to make before any work, per picture."""
    for m in [*(masks or []), content_mask]:
        if m is not None:
            m.check_shape(size)


def plan_regions(
    styles: Sequence[tuple[Any, float]], masks: Any = None, content_mask: Any = None
) -> tuple[list[tuple[Any, float]], Regions | None]:
    """The styles a method uses (weight > 0) and, when any mask is given, their
    :class:`Regions` (None without masks: the plain, unmasked path). ``styles`` are loaded
    (:func:`load_styles`); ``masks`` as :func:`load_masks` takes them, ``content_mask``
    one mask (or None)."""
    from artgen.core.images import load_mask

    loaded = load_masks(masks, len(styles))
    cmask = None if content_mask is None else load_mask(content_mask)
    kept = [(i, s, w) for i, (s, w) in enumerate(styles) if w > 0]
    items = [(s, w) for _, s, w in kept]
    if loaded is None and cmask is None:
        return items, None
    groups: dict[Any, tuple[list[tuple[int, float]], Any]] = {}
    for k, (i, _, w) in enumerate(kept):
        mask = loaded[i] if loaded is not None else None
        key = None if mask is None else (mask.size, hashlib.sha256(mask.image.tobytes()).digest())
        groups.setdefault(key, ([], mask))[0].append((k, w))
    regions = Regions(tuple((tuple(g), m) for g, m in groups.values()), cmask)
    return items, regions


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> StyleMethod:
    if not isinstance(name, str) or name not in METHODS:
        raise ArtgenError(f"unknown method {str(name)[:40]!r}; choose {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name]).METHOD


def method_of(options: Any) -> StyleMethod:
    """The method whose options dataclass ``options`` is (its own module first, so that the
    other methods' modules, and what they import, stay unloaded)."""
    own = [n for n, module in METHODS.items() if type(options).__module__ == module]
    for name in [*own, *METHODS]:
        m = get_method(name)
        if isinstance(options, m.options):
            return m
    raise ArtgenError(f"{type(options).__name__} is not the options of any style method")


def resolve_options(
    method: str | None, options: Any, overrides: dict[str, Any]
) -> tuple[StyleMethod, Any]:
    """The style method (named, or the one ``options`` belong to, or the default) and its
    options: ``options`` (its defaults when None) with keyword ``overrides`` of its fields."""
    m = (
        get_method(method)
        if method
        else (method_of(options) if options is not None else get_method(DEFAULT_METHOD))
    )
    if options is None:
        options = m.options()
    elif not isinstance(options, m.options):
        raise ArtgenError(
            f"method {m.name} takes {m.options.__name__}, not {type(options).__name__}"
        )
    if overrides:
        options = m.options.from_dict({**options.to_dict(), **overrides})
    return m, options


def stylize(
    content: Any,
    styles: Any = None,
    options: Any = None,
    *,
    method: str | None = None,
    model: Any = None,
    extractor: Any = None,
    device: Any = None,
    callback: Callable | None = None,
    masks: Any = None,
    content_mask: Any = None,
    **overrides: Any,
) -> Image.Image:
    """Stylise ``content`` with one or more ``styles`` by ``method`` (default ``gatys``).

    ``options`` is the method's options dataclass (or None for its defaults); keyword
    ``overrides`` replace fields of it. ``model`` (``extractor`` for gatys, as before) is a
    network loaded earlier with the method's ``load``, to reuse across calls.

    Regional styles: ``masks`` is a list with one mask per style (a path, a PIL image or a
    2-D array in [0, 1]; None for a style without one): each style applies where its mask
    is white, the styles without a mask cover the rest. ``content_mask``: where it is
    white the photo stays unstylised. The rule in full: :class:`Regions`.

    A method that takes no style images (``sdedit``) is called with ``styles`` None::

        artgen.stylize("photo.jpg", method="sdedit", generator="runs/my-art", noise=0.6)
    """
    m, options = resolve_options(method, options, overrides)
    extra = mask_arguments(m, masks, content_mask)
    check_styles(m, styles)
    return m.stylize(
        content,
        styles if m.needs_styles else [],
        options,
        model=model if model is not None else extractor,
        device=device,
        callback=callback,
        **extra,
    )


def mask_arguments(m: StyleMethod, masks: Any, content_mask: Any) -> dict[str, Any]:
    """The keyword arguments that pass masks to ``m``'s stylize: none when there are none
    (so methods without masks work as before); an ArtgenError if ``m`` cannot take them."""
    if masks is None and content_mask is None:
        return {}
    if not m.masks:
        raise ArtgenError(f"method {m.name} does not support masks (regional styles)")
    return {"masks": masks, "content_mask": content_mask}


# ---------------------------------------------------------------- what a PNG records


def _device_name(device: Any) -> str:
    from artgen.core.devices import resolve_device

    return str(resolve_device(device))


def given_path(name: str) -> str | None:
    """The path of an input file as the user gave it, when it is relative and names a
    folder (``my_art/m00.png``): recorded so that the reproduce line works from where the
    command ran. An absolute path is not recorded (it would put the user's folders, or a
    server's, into every PNG they share): the file name alone is."""
    if os.path.isabs(name) or os.path.dirname(name) in ("", "."):
        return None
    return name.replace(os.sep, "/") if len(name) <= 4096 and name.isprintable() else None


def run_params(
    content: Any,
    styles: Sequence[tuple[Any, float]],
    options: Any,
    image: Image.Image,
    device: Any = None,
    masks: Sequence[Any] | None = None,
    content_mask: Any = None,
) -> dict[str, Any]:
    """What a PNG records about the run that made it: enough to make it again.

    ``masks`` (one per style, or None; loaded masks, artgen.core.images.LoadedMask) are recorded
    in their style's entry, ``content_mask`` beside the content, each by file name and
    sha256 (of the file, or of the mask's values when it is not a file)."""
    from artgen._version import __version__
    from artgen.core.images import sha256_file
    from artgen.interop import catalog

    m = method_of(options)

    def ident(im: Any, style: bool = False) -> dict[str, Any]:
        if os.path.isfile(im.name):
            out = {"file": os.path.basename(im.name), "sha256": sha256_file(im.name)}
            given = given_path(im.name)
            if given is not None:
                out["path"] = given
            name = catalog.name_of(im.name) if style else None
            return {**out, "name": name} if name else out
        return {"file": im.name, "sha256": hashlib.sha256(im.rgb.tobytes()).hexdigest()}

    def mask_ident(mask: Any) -> dict[str, Any]:
        if os.path.isfile(mask.name):
            out = {"file": os.path.basename(mask.name), "sha256": sha256_file(mask.name)}
            given = given_path(mask.name)
            return out if given is None else {**out, "path": given}
        return {"file": mask.name, "sha256": hashlib.sha256(mask.image.tobytes()).hexdigest()}

    opts = options.to_dict()
    for key in m.resolved:  # e.g. backbone 'auto' -> the one used
        if key in image.info:
            opts[key] = image.info[key]
    records = [{**ident(s, style=True), "weight": w} for s, w in styles]
    if masks is not None:
        if len(masks) != len(records):
            raise ArtgenError(f"{len(masks)} masks for {len(records)} styles")
        for record, mask in zip(records, masks, strict=True):
            if mask is not None:
                record["mask"] = mask_ident(mask)
    params = {
        "artgen": __version__,
        "method": m.name,
        "content": ident(content),
        "styles": records,
        "options": opts,
        # "cpu" as a word needs no resolving (nor PyTorch: the onnxruntime path gives it)
        "device": "cpu" if device in (None, "cpu") else _device_name(device),
    }
    if content_mask is not None:
        params["content_mask"] = mask_ident(content_mask)
    return params


def validate_params(params: Any) -> tuple[StyleMethod, Any]:
    """Check stored parameters against the method's options; ArtgenError if they don't fit.

    A PNG is something people download and share: nothing from it is trusted.
    """
    if not isinstance(params, dict):
        raise ArtgenError("its artgen parameters are not a JSON object")
    m = get_method(params.get("method", DEFAULT_METHOD))
    opts = params.get("options")
    if not isinstance(opts, dict):
        raise ArtgenError("its parameters have no options object")
    try:
        options = m.options.from_dict(opts)
    except ArtgenError:
        raise
    except (TypeError, ValueError, AttributeError, RecursionError) as e:
        raise ArtgenError(f"its options do not fit method {m.name} ({clip(e, 120)})") from None
    device = params.get("device", "cpu")
    if not isinstance(device, str) or not re.fullmatch(r"(cpu|mps|cuda)(:\d{1,3})?", device):
        raise ArtgenError(f"unknown device {str(device)[:40]!r}")
    for key in ("artgen", "run"):
        if key in params and not (isinstance(params[key], str) and params[key].isprintable()):
            raise ArtgenError(f"its {key} field is not a line of text")
    styles = params.get("styles")
    if not m.needs_styles:
        if styles != []:
            raise ArtgenError(f"its styles are not an empty list (method {m.name} takes none)")
    elif not isinstance(styles, list) or not styles or len(styles) > 64:
        raise ArtgenError("its styles are not a list of 1 to 64 entries")

    def is_record(item: Any) -> bool:
        return (
            isinstance(item, dict)
            and isinstance(item.get("file"), str)
            and 0 < len(item["file"]) <= 4096
            and item["file"].isprintable()
            and isinstance(item.get("sha256"), str)
            and item["sha256"].isprintable()
            and (
                "path" not in item
                or (
                    isinstance(item["path"], str)
                    and 0 < len(item["path"]) <= 4096
                    and item["path"].isprintable()
                )
            )
        )

    for item in [params.get("content"), *styles]:
        if not is_record(item):
            raise ArtgenError("its content/style entries are not {file, sha256} records")
    for item in [
        *(s["mask"] for s in styles if "mask" in s),
        *([params["content_mask"]] if "content_mask" in params else []),
    ]:
        if not is_record(item):
            raise ArtgenError("its mask entries are not {file, sha256} records")
    for s in styles:
        w = s.get("weight")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise ArtgenError("a style weight is not a number >= 0")
        name = s.get("name", "")
        if not isinstance(name, str) or len(name) > 200 or not name.isprintable():
            raise ArtgenError("a style's catalogue name is not a short line of text")
    return m, options


def reproduce_command(params: dict[str, Any]) -> str:
    """The `artgen stylize` command line that remakes a picture from its stored parameters.

    Every field is validated first and shell-quoted, so a tampered PNG cannot inject code.
    """
    m, options = validate_params(params)
    # Files by the path given when the command ran (relative to where it ran; see
    # given_path), else by their name; a catalogue style by its name (it resolves anywhere).
    parts = ["artgen", "stylize", _not_a_flag(_where(params["content"]))]
    if m.name != DEFAULT_METHOD:
        parts += ["--method", m.name]
    for s in params["styles"]:
        parts += ["--style", _not_a_flag(f"{s.get('name') or _where(s)}:{s['weight']:g}")]
        if "mask" in s:
            parts += ["--mask", _not_a_flag(_where(s["mask"]))]
    if "content_mask" in params:
        parts += ["--content-mask", _not_a_flag(_where(params["content_mask"]))]
    defaults = m.options().to_dict()
    for f in fields(m.options):
        v = options.to_dict()[f.name]
        if v != defaults.get(f.name) and v is not None:
            v = ",".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else v
            parts += [f"--{f.name.replace('_', '-')}", str(v)]
    parts += ["--device", str(params.get("device", "cpu")).split(":")[0], "-o", "OUT.png"]
    if not all(p.isprintable() for p in parts):
        # \r or an escape sequence could redraw the terminal over the quoted line.
        raise ArtgenError("its parameters hold control characters")
    return " ".join(shlex.quote(p) for p in parts)


def _where(record: dict[str, Any]) -> str:
    return record.get("path") or record["file"]


def _not_a_flag(name: str) -> str:
    """A file name as an argument: one starting with '-' would read as an option."""
    return "./" + name if name.startswith("-") else name


__all__ = [
    "METHODS",
    "OptionsRecord",
    "PictureOptions",
    "Regions",
    "StyleMethod",
    "check_masks",
    "check_styles",
    "load_masks",
    "plan_regions",
    "get_method",
    "method_names",
    "method_of",
    "reproduce_command",
    "resolve_options",
    "run_params",
    "stylize",
    "validate_params",
]
