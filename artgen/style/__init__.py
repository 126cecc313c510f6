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
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from artgen.errors import ArtgenError, clip

# name -> module that defines METHOD. The first is the default.
METHODS: dict[str, str] = {
    "gatys": "artgen.style.gatys",
    "adain": "artgen.style.adain",
}
DEFAULT_METHOD = "gatys"


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
      artgen.video uses it for Ruder et al. 2016's temporal loss.
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
        if kind.startswith("float") and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                         or not math.isfinite(v)):  # fmt: skip
            raise option_error(options, f.name, "must be a number")
        if kind == "str" and (not isinstance(v, str) or len(v) > 64 or not v.isprintable()):
            raise option_error(options, f.name, "must be a short word")


# A style as callers give it: a file, a PIL image, or an artgen.images.LoadedImage.
StyleSpec = Any


def parse_styles(styles: Any) -> list[tuple[StyleSpec, float]]:
    """Accept one style, a list of styles, a list of (style, weight) pairs, or a {style: weight} dict."""
    from artgen.images import LoadedImage

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
    """:func:`parse_styles`, each style loaded (an artgen.images.LoadedImage) and its weight a
    float; zero weights are kept (a method drops them, a record keeps them)."""
    from artgen.images import LoadedImage, load_image

    return [(s if isinstance(s, LoadedImage) else load_image(s), float(w))
            for s, w in parse_styles(styles)]  # fmt: skip


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> StyleMethod:
    if not isinstance(name, str) or name not in METHODS:
        raise ArtgenError(f"unknown method {str(name)[:40]!r}; choose {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name]).METHOD


def method_of(options: Any) -> StyleMethod:
    """The method whose options dataclass ``options`` is."""
    for name in METHODS:
        m = get_method(name)
        if isinstance(options, m.options):
            return m
    raise ArtgenError(f"{type(options).__name__} is not the options of any style method")


def stylize(
    content: Any,
    styles: Any,
    options: Any = None,
    *,
    method: str | None = None,
    model: Any = None,
    extractor: Any = None,
    device: Any = None,
    callback: Callable | None = None,
    **overrides: Any,
) -> Image.Image:
    """Stylise ``content`` with one or more ``styles`` by ``method`` (default ``gatys``).

    ``options`` is the method's options dataclass (or None for its defaults); keyword
    ``overrides`` replace fields of it. ``model`` (``extractor`` for gatys, as before) is a
    network loaded earlier with the method's ``load``, to reuse across calls.
    """
    m = get_method(method) if method else (method_of(options) if options is not None
                                           else get_method(DEFAULT_METHOD))  # fmt: skip
    if options is None:
        options = m.options()
    elif not isinstance(options, m.options):
        raise ArtgenError(
            f"method {m.name} takes {m.options.__name__}, not {type(options).__name__}"
        )
    if overrides:
        options = m.options.from_dict({**options.to_dict(), **overrides})
    return m.stylize(content, styles, options, model=model if model is not None else extractor,
                     device=device, callback=callback)  # fmt: skip


# ---------------------------------------------------------------- what a PNG records


def run_params(
    content: Any,
    styles: Sequence[tuple[Any, float]],
    options: Any,
    image: Image.Image,
    device: Any = None,
) -> dict[str, Any]:
    """What a PNG records about the run that made it: enough to make it again."""
    from artgen import __version__, catalog
    from artgen.devices import resolve_device
    from artgen.images import sha256_file

    m = method_of(options)

    def ident(im: Any, style: bool = False) -> dict[str, Any]:
        if os.path.isfile(im.name):
            out = {"file": os.path.basename(im.name), "sha256": sha256_file(im.name)}
            name = catalog.name_of(im.name) if style else None
            return {**out, "name": name} if name else out
        return {"file": im.name, "sha256": hashlib.sha256(im.rgb.tobytes()).hexdigest()}

    opts = options.to_dict()
    for key in m.resolved:  # e.g. backbone 'auto' -> the one used
        if key in image.info:
            opts[key] = image.info[key]
    return {
        "artgen": __version__,
        "method": m.name,
        "content": ident(content),
        "styles": [{**ident(s, style=True), "weight": w} for s, w in styles],
        "options": opts,
        "device": str(resolve_device(device) if device is not None else "cpu"),
    }


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
    if not isinstance(styles, list) or not styles or len(styles) > 64:
        raise ArtgenError("its styles are not a list of 1 to 64 entries")
    for item in [params.get("content"), *styles]:
        if not (isinstance(item, dict) and isinstance(item.get("file"), str)
                and 0 < len(item["file"]) <= 4096 and item["file"].isprintable()
                and isinstance(item.get("sha256"), str) and item["sha256"].isprintable()):  # fmt: skip
            raise ArtgenError("its content/style entries are not {file, sha256} records")
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
    parts = ["artgen", "stylize", _not_a_flag(params["content"]["file"])]
    if m.name != DEFAULT_METHOD:
        parts += ["--method", m.name]
    for s in params["styles"]:
        # A catalogue style by its name (it resolves anywhere); other files by their name.
        parts += ["--style", _not_a_flag(f"{s.get('name') or s['file']}:{s['weight']:g}")]
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


def _not_a_flag(name: str) -> str:
    """A file name as an argument: one starting with '-' would read as an option."""
    return "./" + name if name.startswith("-") else name


__all__ = [
    "METHODS",
    "StyleMethod",
    "get_method",
    "method_names",
    "method_of",
    "reproduce_command",
    "run_params",
    "stylize",
    "validate_params",
]
