"""The fast style method: one forward pass of an AdaIN network (artgen.models.adain).

Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization", ICCV 2017. The controls of its section 7, as the paper does them:
- strength alpha: the decoder gets alpha AdaIN(f(c), f(s)) + (1 - alpha) f(c). The paper
  keeps alpha in [0, 1]; artgen also takes alpha above 1 (up to MAX_STRENGTH), which
  extrapolates past the style's statistics for more style, so that ``strength`` means what
  it means for every method: 0 the photo, 1 the method's default, above 1 more. The
  palette step (``palette="style"``) moves the colours fully to the style's at 1 and
  stays there above;
- several styles with weights: their feature statistics are interpolated;
- colour preservation: ``histogram`` recolours each style to the photo's colour
  statistics before transfer (the paper's choice, after Gatys et al. 2016b);
  ``luminance`` stylises brightness only and keeps the photo's colours (an addition);
- any output size, since the network is fully convolutional;
- regional styles (``masks``, ``content_mask``; an addition, after the spatial control of
  Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer"): per-region
  feature statistics (artgen.models.adain.AdaINModel.forward_masked): at every AdaIN level
  each region's content features are normalised by that region's mask-weighted mean and
  std and given its styles' blended mean and std, and the results are blended by the
  regions' soft masks, area-resampled to the level. Where the content mask (or no
  region) keeps the photo, the features pass unchanged and the output is blended with
  the photo by that soft mask, so those pixels are the photo itself. Works tiled too.
The network has no randomness: the same input gives the same picture on the same device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from artgen.core import palette
from artgen.core.images import LoadedImage, load_image, resize_long_side, to_pil, to_tensor
from artgen.core.options import option
from artgen.core.transforms import TRANSFORMS, wct_levels
from artgen.style import (
    PictureOptions,
    StyleMethod,
    StylizeProgress,
    load_styles,
    plan_regions,
)

if TYPE_CHECKING:
    import torch

# PyTorch and the network are imported inside the functions that run them: the options and
# the method's registration load without them, so that a command that runs the fast method
# on onnxruntime (artgen.style.adain_onnx) never imports PyTorch.

PRECISIONS = ("auto", "fp32", "bf16")
PALETTES = ("style", "network")
# Memory one output pixel costs in a forward pass of the shipped network: 225 to 260 bytes
# in fp32 (peak resident memory at 1024 and 2048 px on a CPU, margin included). Half that
# in bf16. Tiling is chosen when the estimate, with a 25% margin, passes 80% of what the
# device has free.
BYTES_PER_PIXEL = 260
TILE_OVERLAP = 256  # at least 2 x artgen.models.adain.TILE_EDGE
# Pixels of reflected photo around the picture while it goes through the network: the
# encoder pads with zeros, and without this margin the decoder paints a frame of
# artefacts along the edges (seen on every sample sheet of the shipped decoder). 16 px left
# a band of the style's colour along the top of flat skies (the deepest level's first row
# of cells still saw the zeros); 32 px does not (docs/adain.md).
BORDER = 32
# Strength above 1 extrapolates the features past the style's statistics (not in the
# paper); beyond 2 the decoder gets features far outside what it was trained on.
MAX_STRENGTH = 2.0


def palette_share(strength: float) -> float:
    """How far the palette step moves the colours toward the style's: as the strength up
    to 1, fully above it (extrapolated colour statistics could leave the valid range)."""
    return min(1.0, float(strength))


@dataclass(frozen=True)
class AdaINOptions(PictureOptions):
    """Everything that decides a fast (AdaIN) stylisation. One set of defaults for all."""

    # Pictures recorded before --palette and --transform existed: what they did.
    ADDED_SETTINGS: ClassVar[dict[str, Any]] = {"palette": "network", "transform": "adain"}
    MAX_STRENGTH: ClassVar[float] = MAX_STRENGTH

    strength: float = option(
        1.0,
        "content/style trade-off alpha: 0 the photo, 1 the style (the default), "
        "above 1 more style (extrapolated; up to 2)",
    )
    model: str = option(
        "shipped",
        "the network: shipped (offline, EfficientNet-Lite0), vgg19 (the paper's "
        "published weights: `artgen weights fetch adain`), or a folder from `artgen train adain`",
    )
    transform: str = option(
        "wct",
        "how the photo's features take the style's: wct (whitening-colouring, "
        "Li et al. 2017, at the finest level and AdaIN below it: which colours and "
        "strokes go together comes across too) or adain (each channel's mean and std "
        "at every level, the paper's)",
        choices=TRANSFORMS,
    )
    palette: str = option(
        "style",
        "the output's colours: style (the style's colour mean and covariance, "
        "moved onto the network's picture; with --strength below 1 partly the photo's) "
        "or network (as the decoder paints them, the paper's). Colour preservation and "
        "masks keep the network's",
        choices=PALETTES,
    )
    precision: str = option(
        "auto", "auto is bf16 autocast on CUDA, fp32 elsewhere", choices=PRECISIONS
    )
    tile: int = option(
        0,
        "work in overlapping tiles of this many pixels, for outputs beyond memory: "
        "0 tiles only when the memory estimate says the picture does not fit, -1 never",
    )
    seed: int = option(0, "recorded for reproduction (the network is deterministic)")

    def __post_init__(self) -> None:
        self.check_common(skip=("model",))  # a folder path: checked below
        bad = self.refuse
        if self.tile not in (0, -1) and not (640 <= self.tile <= 16384 and self.tile % 16 == 0):
            raise bad("tile", "must be 0 (automatic), -1 (never) or a multiple of 16 from 640")
        if not isinstance(self.model, str) or not self.model or len(self.model) > 4096:
            raise bad("model", "must be shipped, vgg19 or a folder")


def palette_of(style_items: Sequence[tuple[Any, float]], options: AdaINOptions):
    """The colour mean and covariance the output takes (artgen.core.palette), or None when the
    network's own colours stay: ``palette`` "network", or colour preservation asked for."""
    if options.palette != "style" or options.preserve_color != "none":
        return None
    stats = [palette.colour_stats(s.rgb) for s, _ in style_items]
    return palette.blend(stats, [w for _, w in style_items])


def load(options: AdaINOptions | None = None, device: Any = "cpu", weights: Any = None):
    """The AdaIN network named by ``options.model`` (or ``weights``), on ``device``."""
    from artgen.core.devices import resolve_device
    from artgen.interop.weights import load_adain

    options = options or AdaINOptions()
    return load_adain(weights or options.model, resolve_device(device))


def describe(model: Any) -> str:
    if getattr(model, "runtime", None) == "onnxruntime":
        return f"model: AdaIN with {model.encoder_name} encoder (onnxruntime)"
    return f"model: AdaIN with {model.config.encoder} encoder"


def _prepare(
    model,
    styles: list[tuple[LoadedImage, float]],
    contents: list[torch.Tensor],
    options: AdaINOptions,
    dev: torch.device,
    amp,
    tile: int = 0,
):
    """The blended style statistics for each content. Colour preservation matches the style
    to each photo, so then every photo needs its own; otherwise one set serves them all."""
    import torch

    from artgen.core import color
    from artgen.models.adain import blend_stats

    long_side = max(max(c.shape[-2:]) for c in contents)
    style_long = max(16, round(long_side * options.style_scale))
    style_t = [
        (
            to_tensor(resize_long_side(s.rgb, style_long))
            .to(dev)
            .contiguous(memory_format=torch.channels_last),
            w,
        )
        for s, w in styles
    ]
    per_content = []
    for c in contents if options.preserve_color != "none" else contents[:1]:
        stats, weights = [], []
        for s, w in style_t:
            if options.preserve_color == "histogram":
                s = color.match_histogram(s, c).clamp(0, 1)
            elif options.preserve_color == "luminance":
                s = color.match_luminance(color.luminance(s), color.luminance(c))
            with amp:
                if tile:
                    stats.append(model.style_stats_tiled(s, tile, TILE_OVERLAP))
                else:
                    stats.append(model.style_stats(s))
            weights.append(w)
        per_content.append(blend_stats(stats, weights))
    return per_content if len(per_content) == len(contents) else per_content * len(contents)


def _batch_stats(stats_each: list) -> list:
    """Per-content style statistics (one Stats each) as one Stats for the batch."""
    import torch

    return [
        tuple(torch.cat([s[k][i] for s in stats_each]) for i in range(len(stats_each[0][k])))
        for k in range(len(stats_each[0]))
    ]


def _choose_tile(
    asked: int, h: int, w: int, n: int, dev: Any, bpv: int, style_side: int = 0
) -> int:
    """The tile size to use (0: the whole picture at once); ``dev`` a torch.device or "cpu"."""
    if asked == -1:
        return 0
    if asked > 0:
        return asked if max(h, w, style_side) > asked else 0
    from artgen.core import devices

    avail = devices.available_memory(dev)
    need = 1.25 * BYTES_PER_PIXEL * bpv / 4 * max(h * w * n, style_side * style_side)
    if avail is None or need <= 0.8 * avail:
        return 0
    # A tile that takes at most half of what is free, between 640 and 2048 px.
    side = int((0.5 * avail / (1.25 * BYTES_PER_PIXEL * bpv / 4 * n)) ** 0.5)
    return max(640, min(2048, side // 16 * 16))


def _palette_picture(out, photo, target, options, region_palettes=None, keep=None, k=0):
    """The network's picture ``out`` (3, H, W) with the style's palette (artgen.core.palette):
    with regions each takes its own styles' palette, blended by the region masks (where no
    region reaches, the network's picture stays), and the photo is kept where ``keep``
    says. An all-white single mask is then the same as no mask."""

    def arr(t):
        return t.permute(1, 2, 0).double().cpu().numpy()

    a, p = arr(out), arr(photo)
    photo_stats = palette.colour_stats(p)
    alpha = palette_share(options.strength)
    if region_palettes is None:
        moved = palette.move_palette(a, target, photo_stats, alpha)
    else:
        moved = a.copy()
        for stats, w in region_palettes:
            w = w[min(k, w.shape[0] - 1)].double().cpu().numpy()[..., None]
            moved += w * (palette.move_palette(a, stats, photo_stats, alpha) - a)
    if keep is not None:
        kk = arr(keep[min(k, keep.shape[0] - 1)])
        moved = kk * p + (1 - kk) * moved
    return palette.to_picture(moved)


def _device_and_model(model: Any, device: Any, options: AdaINOptions) -> tuple[Any, Any]:
    """The device (given, the model's, or the best available) and the model on it, loaded
    when not passed in, in channels_last."""
    import torch

    from artgen.core.devices import resolve_device

    if device is not None:
        dev = resolve_device(device)
    elif model is not None:
        dev = next(model.decoder.parameters()).device
    else:
        dev = resolve_device("auto")
    if model is None:
        model = load(options, dev)
    # channels_last on every device: oneDNN's depthwise and 3x3 convolutions are about 1.8x
    # faster in it on a CPU too (measured at 512 px on 2 cores), and cuDNN's on a GPU.
    # Module.to swaps each parameter's storage in place (set_data), which a convolution
    # running in another thread on the same model (the studio's concurrent jobs) must not
    # see half done: the model is moved once, under a lock, and left alone once it is there.
    with _MOVE_LOCK:
        if not _on(model, dev):
            model = model.to(dev).to(memory_format=torch.channels_last)
    return model, dev


_MOVE_LOCK = threading.Lock()


def _on(model: Any, dev: Any) -> bool:
    """Whether every parameter of ``model`` is on ``dev`` ("cuda" matches any CUDA device
    index), the 4-D ones in channels_last."""
    import torch

    dev = torch.device(dev)
    for p in model.parameters():
        if p.device.type != dev.type or dev.index not in (None, p.device.index):
            return False
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
            return False
    return True


def _decode_group(model, inp, contents, style_items, regions, options, dev, amp, tile):
    """One batch of same-size pictures through the network: (output, keep, weights), where
    ``keep`` and ``weights`` are the regions' (None without masks)."""
    strength = float(options.strength)
    wct = wct_levels(options.transform)
    tiled = dict(border=BORDER, tile=tile, overlap=TILE_OVERLAP, wct=wct)
    if regions is None:
        stats = _batch_stats(_prepare(model, style_items, contents, options, dev, amp, tile))
        with amp:
            if tile:
                return model.forward_tiled(inp, stats, strength, **tiled), None, None
            return model(inp, stats, strength, border=BORDER, wct=wct), None, None
    h, w = inp.shape[-2:]
    weights, keep = regions.weights((w, h), dev)
    region_stats = [
        _batch_stats(
            _prepare(model, [style_items[i] for i, _ in members], contents, options, dev, amp, tile)
        )
        for members, _ in regions.groups
    ]
    with amp:
        if tile:
            out = model.forward_tiled(inp, region_stats, strength, weights=weights, **tiled)
        else:
            out = model.forward_masked(inp, region_stats, weights, strength, border=BORDER, wct=wct)
    return out, keep, weights


def stylize_many(
    contents: Sequence[Any],
    styles: Any,
    options: AdaINOptions | None = None,
    *,
    model: Any = None,
    device: Any = None,
    callback: Callable[[StylizeProgress], None] | None = None,
    masks: Any = None,
    content_mask: Any = None,
) -> list[Image.Image]:
    """Stylise several contents with the same styles; contents of one output size go through
    the network as one batch. ``masks`` (one per style, or None) and ``content_mask`` as in
    artgen.stylize: the same masks, resized to each picture (artgen.style.Regions)."""
    options = options or AdaINOptions()
    if getattr(model, "runtime", None) == "onnxruntime":  # artgen.style.adain_onnx
        if masks is None and content_mask is None:
            from artgen.style import adain_onnx

            return adain_onnx.stylize_many(list(contents), styles, options, model)
        model, device = None, "cpu"  # the graph has no regions: the PyTorch network does
    import torch

    from artgen.core import color

    t0 = time.perf_counter()
    model, dev = _device_and_model(model, device, options)
    loaded = [c if isinstance(c, LoadedImage) else load_image(c) for c in contents]
    style_items, regions = plan_regions(load_styles(styles), masks, content_mask)
    if regions is not None:
        for c in loaded:
            regions.check(c.size)
    style_palette = palette_of(style_items, options)
    region_targets = None
    if style_palette is not None and regions is not None:
        region_targets = [
            palette_of([style_items[i] for i, _ in members], options)
            for members, _ in regions.groups
        ]
    use_bf16 = options.precision == "bf16" or (options.precision == "auto" and dev.type == "cuda")
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)
    tensors = [to_tensor(resize_long_side(c.rgb, options.size)).to(dev) for c in loaded]
    outputs: list[Image.Image | None] = [None] * len(loaded)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape[-2:]), []).append(i)
    notes: list[str] = []
    with torch.inference_mode():
        for idx in groups.values():
            h, w = tensors[idx[0]].shape[-2:]
            # The style goes through the encoder at the output's long side (by style_scale).
            style_side = round(max(h, w) * options.style_scale)
            item = 2 if use_bf16 else 4
            tile = _choose_tile(
                options.tile, h + 2 * BORDER, w + 2 * BORDER, len(idx), dev, item, style_side
            )
            if tile and options.tile == 0:
                notes.append(f"{w}x{h} does not fit in memory in one piece: tiles of {tile} px")
            batch = torch.cat([tensors[i] for i in idx])
            inp = color.luminance(batch) if options.preserve_color == "luminance" else batch
            inp = inp.contiguous(memory_format=torch.channels_last)
            group = [tensors[i] for i in idx]
            out, keep, weights = _decode_group(
                model, inp, group, style_items, regions, options, dev, amp, tile
            )
            out = out.float().clamp(0, 1)
            if options.preserve_color == "luminance":
                out = torch.cat(
                    [
                        color.combine_luminance(out[k : k + 1], batch[k : k + 1])
                        for k in range(len(idx))
                    ]
                )
            if keep is not None and style_palette is None:  # the photo itself where kept
                out = keep * batch + (1 - keep) * out
            region_palettes = None
            if region_targets is not None:  # each region its styles' palette, by its mask
                region_palettes = [(t, weights[:, r]) for r, t in enumerate(region_targets)]
            for k, i in enumerate(idx):
                if style_palette is not None:
                    im = _palette_picture(
                        out[k], batch[k], style_palette, options, region_palettes, keep, k
                    )
                else:
                    im = to_pil(out[k])
                if loaded[i].alpha is not None:
                    im.putalpha(loaded[i].alpha.resize(im.size, Image.Resampling.LANCZOS))
                im.info["model"] = options.model
                im.info["tile"] = tile or options.tile  # the size used, when it tiled
                if notes:
                    im.info["note"] = notes[-1]
                outputs[i] = im
    if callback is not None:
        last = outputs[-1]
        callback(
            StylizeProgress(
                step=1,
                total_steps=1,
                scale=1,
                num_scales=1,
                width=last.width,
                height=last.height,
                loss=0.0,
                elapsed=time.perf_counter() - t0,
                render=lambda: last,
            )
        )
    return outputs  # type: ignore[return-value]


def stylize(
    content: Any, styles: Any, options: AdaINOptions | None = None, **keywords: Any
) -> Image.Image:
    """Stylise one picture with the fast method; returns a PIL image (alpha kept). The
    keywords (model, device, callback, masks, content_mask) are stylize_many's."""
    return stylize_many([content], styles, options, **keywords)[0]


METHOD = StyleMethod(
    name="adain",
    summary="fast: one pass of a trained AdaIN network (Huang & Belongie 2017)",
    options=AdaINOptions,
    load=load,
    stylize=stylize,
    resolved=("model", "tile"),
    stylize_many=stylize_many,
    describe=describe,
    masks=True,
)

__all__ = ["AdaINOptions", "METHOD", "load", "stylize", "stylize_many"]
