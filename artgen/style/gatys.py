"""Neural style transfer by optimisation of the image.

Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
Networks", CVPR 2016. Extensions, each marked where it departs from the paper:
- coarse-to-fine optimisation over several scales (as in Gatys et al. 2017,
  "Controlling Perceptual Factors in Neural Style Transfer", and crowsonkb's
  style-transfer-pytorch): each scale starts from the upsampled result of the
  previous one, so large outputs keep large-scale structure for less compute;
- Adam on pixels with an exponential moving average of the iterates as the
  output (smoother than the last iterate), or L-BFGS as in the paper;
- several styles blended by weighting their Gram matrices;
- colour preservation (artgen.core.color);
- bf16 autocast and channels_last for the backbone on CUDA; Gram matrices and
  losses are computed in fp32 (artgen.core.losses);
- a hook for video (``init`` and ``extra_loss`` of :func:`stylize`): Ruder, Dosovitskiy &
  Brox, "Artistic style transfer for videos", GCPR 2016, start each frame from the warped
  previous result and add a temporal loss; artgen.video.pipeline passes both in. With ``init`` the
  optimisation runs at the final scale only (the warped result already has the large-scale
  structure that the coarse scales exist to build). Unused, nothing changes;
- regional styles (``masks``, ``content_mask``): the spatial control of Gatys et al. 2017,
  sec. 4. Each region (artgen.style.Regions: a style's mask, or what the masks leave to
  the styles without one) gets its own style loss, between the Gram matrix of the
  picture's features inside the region (artgen.core.losses.masked_gram: each feature pixel
  weighted by the region's mask, averaged over the region) and its styles' plain Gram
  blend. The masks are brought to each feature layer by area resampling of the mask at
  the picture's size (artgen.core.losses.resize_mask), the paper's simpler option (it also
  propagates them through the network). Each region's loss counts by its share of the
  picture, so one region covering everything is the plain loss. Where the content mask
  (or no region) keeps the photo, the picture is not free: it is optimised as
  x = keep * photo + (1 - keep) * y over y, so those pixels are the photo at every step
  and the soft edge of ``keep`` blends the two; the content loss is unchanged;
- tiles (``tile``), for pictures larger than memory (issue 12). The coarse scales run
  whole; a scale whose picture does not fit (or is larger than ``tile``) is optimised in
  overlapping tiles, after the two-pass scheme of the fast method's tiles
  (artgen.models.adain.AdaINModel.forward_tiled: whole-picture statistics gathered tile by
  tile, tiles starting on the network's stride, no weight near a tile's edge, linear ramps
  across the overlaps). The objective is the whole picture's, not a sum of per-tile
  problems: each loss is a sum over feature pixels, split between tiles by weights that
  partition the picture (:class:`_Grid`; zero in the outer TILE_EDGE px of a tile where
  another tile overlaps it, where zero padding makes its features differ from the whole
  picture's, a ramp across the rest of the overlap). The Gram matrices of the picture are
  sums of the tiles' weighted parts, and the gradient of a Gram loss reaches a tile
  through the CxC matrix dL/dG alone, so every step sweeps the tiles, each adding its
  share of the whole picture's gradient to one full-size pixel tensor, and then takes one
  optimiser step on the whole picture: neighbours never disagree, so there is no seam to
  hide. The style targets (Gram matrices of the style images, their blends and the
  regions' targets) are computed once per scale and shared by every tile; the content
  targets are the photo's features per tile; masks are cropped with the tiles. A step
  costs two sweeps: a forward pass per tile gathers the Gram matrices and the scaled
  MSE's normalisers of the current picture, then a forward and backward pass per tile
  adds its share of the gradient. (Statistics one step old would save the first sweep,
  but the content loss's normaliser starts at 0, where x0 is the photo, and its stale
  value then swamps the gradient: tried, 25/255 mean difference from the whole picture's
  result after 20 steps, against 3/255 exact.) ``extra_loss`` (video) is computed on the
  whole picture. The tiled gradient equals the whole picture's to float rounding
  (relative difference 4e-7, measured on an 800x200 picture in 512 px tiles).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from artgen.core import color
from artgen.core.devices import available_memory, resolve_device
from artgen.core.errors import ArtgenError, Cancelled
from artgen.core.images import LoadedImage, load_image, resize_long_side, to_pil, to_tensor
from artgen.core.losses import (
    blend_grams,
    content_loss,
    gram,
    masked_gram,
    resize_mask,
    scaled_mse,
    tv_loss,
    weighted_gram,
)
from artgen.core.options import option
from artgen.models.backbones import FeatureExtractor
from artgen.style import (  # noqa: F401 (parse_styles, StylizeProgress re-exported)
    PictureOptions,
    StyleMethod,
    StylizeProgress,
    load_styles,
    parse_styles,
    plan_regions,
)

INITS = ("content", "noise", "fast")
OPTIMIZERS = ("adam", "lbfgs")
PRECISIONS = ("auto", "fp32", "bf16")
BACKBONE_CHOICES = ("auto", "vgg19", "efficientnet-lite0")
# Tiles (see the module's docstring). How far into a tile its edge still changes the
# features: measured for EfficientNet-Lite0 on a 256 px crop of a 512 px photo, the mean
# error of the deepest style layer (block3_2, stride 16) against the whole picture's is
# 150%, 70%, 21%, 5% and 0.2% of its mean size at 0, 16, 32, 48 and 64 px from the edge,
# and 0 from 80 px on (block2_1, stride 8: 0 from 40 px). Those pixels get no weight.
TILE_EDGE = 96
TILE_OVERLAP = 256  # 2 x TILE_EDGE plus a 64 px linear ramp between neighbours
TILE_MIN = 512  # at least 2 x TILE_OVERLAP, so every tile has a middle of its own
TILE_STRIDE = 16  # tiles start on the backbones' deepest stride (VGG19 and Lite0: 16)
# Full-size tensors a tiled scale keeps, per output pixel (fp32): the picture, its
# gradient, Adam's two moments, the moving average, the photo and its copies, the
# region planes and the content targets; measured on a CPU about 130, with a margin.
TILED_BYTES_PER_PIXEL = 160


@dataclass(frozen=True)
class StylizeOptions(PictureOptions):
    """Everything that decides how a picture is stylised. One set of defaults for API, CLI and app."""

    MAX_STRENGTH: ClassVar[float] = 100.0

    strength: float = option(
        1.0, "how strongly the style is applied: 1 is balanced, 2 twice as much style, 0.5 half"
    )
    iterations: int = option(200, "optimisation steps at each scale")
    min_size: int = option(
        128, "smallest long side for the first (coarsest) scale; >= size means one scale"
    )
    scale_factor: float = option(2.0, "size ratio between successive scales")
    init: str = option(
        "content", "starting image: the photo, noise, or the fast method's result", choices=INITS
    )
    optimizer: str = option("adam", "optimiser", choices=OPTIMIZERS)
    lr: float = option(0.02, "Adam step size (pixels in [0, 1]); L-BFGS ignores it")
    content_weight: float | None = option(
        None, "weight of the content loss (default: the backbone's)"
    )
    tv_weight: float | None = option(
        None, "weight of the total-variation smoothness loss (default: the backbone's)"
    )
    style_layer_weights: tuple[float, ...] | None = option(
        None, "comma-separated weights for the backbone's style layers (default: equal)"
    )
    backbone: str = option("auto", "feature network", choices=BACKBONE_CHOICES)
    precision: str = option("auto", "auto is bf16 on CUDA and fp32 elsewhere", choices=PRECISIONS)
    tile: int = option(
        0,
        "optimise the scales larger than memory in overlapping tiles of this many "
        "pixels (the coarse scales run whole): 0 tiles only when the memory estimate says "
        "the picture does not fit (one line says so), -1 never",
    )
    seed: int = option(0, "random seed (same seed, same device: same picture)")

    def __post_init__(self) -> None:
        self.check_common()
        bad = self.refuse
        if not 16 <= self.min_size:
            raise bad("min_size", "must be at least 16")
        if self.iterations < 1:
            raise bad("iterations", "must be at least 1")
        if not self.scale_factor > 1.0:
            raise bad("scale_factor", "must be greater than 1")
        if self.tile not in (0, -1) and not (
            TILE_MIN <= self.tile <= 16384 and self.tile % TILE_STRIDE == 0
        ):
            raise bad(
                "tile",
                f"must be 0 (automatic), -1 (never) or a multiple of {TILE_STRIDE} "
                f"from {TILE_MIN} to 16384",
            )
        for name in ("lr", "content_weight", "tv_weight"):
            v = getattr(self, name)
            if v is not None and (v < 0 or not math.isfinite(v)):
                raise bad(name, "must be a finite number >= 0")
        if self.style_layer_weights is not None:
            object.__setattr__(
                self, "style_layer_weights", tuple(float(w) for w in self.style_layer_weights)
            )
            if any(w < 0 for w in self.style_layer_weights) or sum(self.style_layer_weights) <= 0:
                raise bad("style_layer_weights", "weights must be >= 0 and not all zero")


def scale_sizes(options: StylizeOptions) -> list[int]:
    """Long sides of the scales, coarse to fine, ending at options.size."""
    if options.min_size >= options.size:
        return [options.size]
    # As many steps of scale_factor as fit while the coarsest stays >= min_size.
    n = math.floor(
        math.log(options.size / options.min_size) / math.log(options.scale_factor) + 1e-9
    )
    return [round(options.size / options.scale_factor**k) for k in range(n, -1, -1)]


# ---------------------------------------------------------------- memory


def bytes_per_pixel(extractor: FeatureExtractor, bytes_per_value: int = 4) -> float:
    """Memory one input pixel costs in a forward + backward pass, measured on a small input."""
    side = 64
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    leaves = [m for m in extractor.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            extractor(
                torch.zeros(1, 3, side, side, device=extractor.mean.device), extractor.stage_names
            )
    finally:
        for h in handles:
            h.remove()
    # Saved activations plus their gradients during backward, and a margin for the allocator.
    return total * bytes_per_value * 3.0 / (side * side)


def check_fits(
    extractor: FeatureExtractor,
    width: int,
    height: int,
    device: torch.device,
    bpv: int,
    force: bool = False,
) -> None:
    """Raise a clear ArtgenError (with the largest size that fits) if width x height will not fit.

    ``force`` raises even when the estimate says it fits (used after a real out-of-memory error).
    """
    avail = available_memory(device)
    if avail is None:
        if force:
            raise ArtgenError(
                f"{width}x{height} ran out of memory on {device.type}; try a smaller --size"
            )
        return
    bpp = bytes_per_pixel(extractor, bpv)
    need = bpp * width * height
    if need <= 0.9 * avail and not force:
        return
    aspect = min(width, height) / max(width, height)
    largest = int(math.sqrt(0.9 * avail / bpp / aspect)) // 16 * 16
    if force:
        largest = min(largest, int(max(width, height) * 0.7) // 16 * 16)
    raise ArtgenError(
        f"{width}x{height} needs about {need / 2**30:.1f} GiB on {device.type} but only "
        f"{avail / 2**30:.1f} GiB is free; the largest size that fits is about {largest} px "
        f"(--size {largest})"
    )


def _largest_whole(bpp: float, avail: float, aspect: float) -> int:
    """The largest long side (on 16 px) whose picture fits whole in ``avail`` bytes."""
    return int(math.sqrt(0.9 * avail / bpp / aspect)) // 16 * 16


def plan_tiles(
    options: StylizeOptions,
    extractor: FeatureExtractor,
    sizes: Sequence[int],
    content_size: tuple[int, int],
    device: torch.device,
    bpv: int,
) -> tuple[int, list[bool], str | None]:
    """(tile size or 0, whether each scale of ``sizes`` is tiled, the one-line note when the
    tiles were chosen automatically). ArtgenError when the picture fits neither way."""
    cw, ch = content_size
    final_w, final_h = _fit(cw, ch, sizes[-1])
    whole = [False] * len(sizes)
    if options.tile == -1:
        check_fits(extractor, final_w, final_h, device, bpv)
        return 0, whole, None
    avail = available_memory(device)
    bpp = bytes_per_pixel(extractor, bpv) if avail is not None else 0.0
    fixed = TILED_BYTES_PER_PIXEL * final_w * final_h
    if options.tile > 0:
        tile = options.tile
        tiled = [max(_fit(cw, ch, s)) > tile for s in sizes]
        if not any(tiled):
            check_fits(extractor, final_w, final_h, device, bpv)
            return 0, whole, None
        untiled = [s for s, t in zip(sizes, tiled, strict=True) if not t]
        if untiled:
            check_fits(extractor, *_fit(cw, ch, untiled[-1]), device, bpv)
        if avail is not None:
            need = bpp * (tile + TILE_STRIDE) ** 2 + fixed
            if need > 0.9 * avail:
                raise ArtgenError(
                    f"tile={tile}: {final_w}x{final_h} in tiles of {tile} px needs about "
                    f"{need / 2**30:.1f} GiB on {device.type} but only {avail / 2**30:.1f} GiB "
                    "is free; try a smaller --tile or --size"
                )
        return tile, tiled, None
    if avail is None:
        return 0, whole, None
    tiled = [bpp * w * h > 0.9 * avail for w, h in (_fit(cw, ch, s) for s in sizes)]
    if not any(tiled):
        return 0, whole, None
    # Tiles that take at most half of what the full-size tensors leave, up to 2048 px.
    room = 0.9 * avail - fixed
    tile = min(2048, int(math.sqrt(max(room, 0.0) / 2 / bpp)) // TILE_STRIDE * TILE_STRIDE)
    if tile < TILE_MIN:
        check_fits(extractor, final_w, final_h, device, bpv)  # raises: it does not fit whole
        raise ArtgenError(f"{final_w}x{final_h} does not fit in memory, not even in tiles")
    tiled = [t and max(_fit(cw, ch, s)) > tile for t, s in zip(tiled, sizes, strict=True)]
    largest = _largest_whole(bpp, avail, min(cw, ch) / max(cw, ch))
    first = sizes[tiled.index(True)]
    note = (
        f"{final_w}x{final_h} needs about {bpp * final_w * final_h / 2**30:.1f} GiB but "
        f"{avail / 2**30:.1f} GiB is free (about {largest} px fits whole): the scales from "
        f"{first} px are optimised in tiles of {tile} px"
    )
    return tile, tiled, note


# ---------------------------------------------------------------- tiles


def _spans(size: int, tile: int) -> list[tuple[int, int]]:
    """(start, length) of the tiles along a side of ``size`` px: starts on TILE_STRIDE, at
    least TILE_OVERLAP px of overlap, the last tile reaching the end (up to 15 px longer)."""
    if size <= tile:
        return [(0, size)]
    step = tile - TILE_OVERLAP
    starts = [a // TILE_STRIDE * TILE_STRIDE for a in [*range(0, size - tile, step), size - tile]]
    starts = list(dict.fromkeys(starts))
    return [(a, tile if i < len(starts) - 1 else size - a) for i, a in enumerate(starts)]


def tile_borders(width: int, height: int, tile: int) -> tuple[list[int], list[int]]:
    """The columns and rows where a tile of ``tile`` px begins or ends inside a picture of
    width x height (where a seam would show; for artgen.eval.metrics.seam_ratio)."""

    def lines(size: int) -> list[int]:
        spans = _spans(size, tile)
        edges = {a for a, _ in spans[1:]} | {a + p for a, p in spans[:-1]}
        return sorted(e for e in edges if 0 < e < size)

    return lines(width), lines(height)


def _ramp(n: int, stride: int, first: bool, last: bool) -> torch.Tensor:
    """Raw weights of a tile's ``n`` feature pixels along one side (stride ``stride``): 0 in
    the outer TILE_EDGE px where another tile overlaps, then a linear rise to 1."""
    dead = -(-TILE_EDGE // stride)
    rise = max(1, -(-(TILE_OVERLAP - 2 * TILE_EDGE) // stride))
    ramp = torch.cat([torch.zeros(dead), torch.arange(1, rise + 1) / (rise + 1)])
    w = torch.ones(n)
    k = min(n, len(ramp))
    if not first:
        w[:k] = ramp[:k]
    if not last:
        w[n - k :] = torch.minimum(w[n - k :], ramp[:k].flip(0))
    return w


class _Grid:
    """Overlapping tiles of an h x w picture, and for every layer the weights that split
    its feature pixels between the tiles: they sum to 1 at every feature pixel of the
    whole picture (a partition, so a sum over tiles is the whole picture's sum) and are 0
    where a tile's features differ from the whole picture's (its inner edges)."""

    def __init__(
        self,
        h: int,
        w: int,
        tile: int,
        probe: Callable[[int, int], dict[str, tuple[int, int]]],
        device: torch.device,
    ) -> None:
        self.h, self.w = h, w
        self.rows, self.cols = _spans(h, tile), _spans(w, tile)
        self.tiles = [(r, c) for r in range(len(self.rows)) for c in range(len(self.cols))]
        # Feature sizes of each tile length, from a thin strip through the network.
        rows_n = {p: probe(p, 2 * TILE_STRIDE) for p in {p for _, p in self.rows}}
        cols_n = {p: probe(2 * TILE_STRIDE, p) for p in {p for _, p in self.cols}}
        ref = probe(8 * TILE_STRIDE, 8 * TILE_STRIDE)
        self.stride = {name: 8 * TILE_STRIDE // hw[0] for name, hw in ref.items()}
        self.stride["pixels"] = 1
        self.weights: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.shape: dict[str, tuple[int, int]] = {}
        for name, s in self.stride.items():
            ys, hf = self._axis(self.rows, s, lambda p, name=name: rows_n[p][name][0], name)
            xs, wf = self._axis(self.cols, s, lambda p, name=name: cols_n[p][name][1], name)
            self.weights[name] = ([y.to(device) for y in ys], [x.to(device) for x in xs])
            self.shape[name] = (hf, wf)

    @staticmethod
    def _axis(spans, s: int, length: Callable[[int], int], name: str):
        n = [p if name == "pixels" else length(p) for _, p in spans]
        size = spans[-1][0] // s + n[-1]
        raw = [_ramp(k, s, i == 0, i == len(spans) - 1) for i, k in enumerate(n)]
        total = torch.zeros(size)
        for (a, _), r in zip(spans, raw, strict=True):
            total[a // s : a // s + len(r)] += r
        if float(total.min()) <= 0:  # cannot happen with tiles >= TILE_MIN; be safe anyway
            total = total.clamp_min(1e-6)
        return [
            r / total[a // s : a // s + len(r)] for (a, _), r in zip(spans, raw, strict=True)
        ], size

    def box(self, t: int) -> tuple[slice, slice]:
        """The tile's pixels."""
        (y0, ph), (x0, pw) = self.rows[self.tiles[t][0]], self.cols[self.tiles[t][1]]
        return slice(y0, y0 + ph), slice(x0, x0 + pw)

    def weight(self, t: int, name: str) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """The tile's (1, 1, h, w) weights at ``name`` and where they sit in the layer."""
        r, c = self.tiles[t]
        ys, xs = self.weights[name]
        s = self.stride[name]
        y0, x0 = self.rows[r][0] // s, self.cols[c][0] // s
        wy, wx = ys[r], xs[c]
        return (wy[:, None] * wx[None, :])[None, None], (
            slice(y0, y0 + len(wy)),
            slice(x0, x0 + len(wx)),
        )


def _tiled_grams(
    features: Callable[[torch.Tensor, Sequence[str]], dict[str, torch.Tensor]],
    image: torch.Tensor,
    layers: Sequence[str],
    tile: int,
    probe: Callable[[int, int], dict[str, tuple[int, int]]],
) -> dict[str, torch.Tensor]:
    """The Gram matrices of ``image`` (a style image too large to go through whole), as
    the sums of its tiles' weighted parts: :func:`artgen.core.losses.gram` of the whole, to the
    width of the tiles' edge effects (which get no weight)."""
    grid = _Grid(image.shape[-2], image.shape[-1], tile, probe, image.device)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in range(len(grid.tiles)):
            ys, xs = grid.box(t)
            feats = features(image[..., ys, xs], layers)
            for name in layers:
                wt, _ = grid.weight(t, name)
                hf, wf = grid.shape[name]
                g = weighted_gram(feats[name], wt, hf * wf)
                out[name] = out[name] + g if name in out else g
    return out


class _TiledObjective:
    """The whole picture's objective at one scale, evaluated tile by tile (see the module's
    docstring): :meth:`gather` sums the statistics the losses need over the tiles (no
    gradient); :meth:`sweep`, given those of ``x``, adds every tile's share of the
    gradient to ``x.grad`` and returns the loss."""

    def __init__(
        self,
        grid: _Grid,
        features: Callable[[torch.Tensor, Sequence[str]], dict[str, torch.Tensor]],
        target_content: torch.Tensor,
        compose: Callable[..., torch.Tensor],
        content_layers: Sequence[str],
        style_layers: Sequence[str],
        style_terms: dict[str, list[tuple[torch.Tensor | None, float, torch.Tensor]]],
        layer_w: Sequence[float],
        strength: float,
        content_weight: float,
        tv_weight: float,
        whole_loss: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.grid, self.features = grid, features
        self.compose = compose
        self.content_layers, self.style_layers = list(content_layers), list(style_layers)
        self.layers = list(dict.fromkeys([*self.content_layers, *self.style_layers]))
        # Per style layer: (the region's mask over the whole layer or None, its share of the
        # picture, the target Gram). One unmasked term when there are no regions.
        self.style_terms = style_terms
        self.norms = {
            name: [
                float(m.sum()) if m is not None else float(math.prod(grid.shape[name]))
                for m, _, _ in terms
            ]
            for name, terms in style_terms.items()
        }
        self.layer_w = dict(zip(self.style_layers, layer_w, strict=True))
        self.strength, self.content_weight, self.tv_weight = strength, content_weight, tv_weight
        self.whole_loss = whole_loss
        self.numel = target_content.shape[1] * grid.h * grid.w
        # The content targets: the photo's features, tile by tile, once.
        self.targets: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            for t in range(len(grid.tiles)):
                ys, xs = grid.box(t)
                f = features(target_content[..., ys, xs], self.content_layers)
                self.targets.append({k: v.detach().float() for k, v in f.items()})

    def _tile(self, t: int, x: torch.Tensor, stats: dict | None):
        """One tile: its statistics (detached) and, given ``stats``, its surrogate loss
        (whose gradient is its share of the whole objective's gradient)."""
        grid = self.grid
        ys, xs = grid.box(t)
        xt = self.compose(x[..., ys, xs], (ys, xs))
        feats = self.features(xt, self.layers)
        mine: dict[str, Any] = {"content": {}, "style": {}}
        surrogate = x.new_zeros((), dtype=torch.float32)
        for name in self.content_layers:
            wt, _ = grid.weight(t, name)
            d = feats[name].float() - self.targets[t][name]
            s1, s2 = (wt * d.abs()).sum(), (wt * d.pow(2)).sum()
            mine["content"][name] = (s1.detach(), s2.detach())
            if stats is not None:
                a, b = stats["content_coef"][name]
                surrogate = surrogate + self.content_weight * (a * s2 - b * s1)
        for name in self.style_layers:
            wt, (fy, fx) = grid.weight(t, name)
            grams = []
            for k, (mask, _, _) in enumerate(self.style_terms[name]):
                wm = wt if mask is None else wt * mask[..., fy, fx]
                g = weighted_gram(feats[name], wm, max(self.norms[name][k], 1e-8))
                grams.append(g.detach())
                if stats is not None:
                    surrogate = surrogate + (stats["gram_coef"][name][k] * g).sum()
            mine["style"][name] = grams
        if self.tv_weight:
            wt, _ = grid.weight(t, "pixels")
            xp = F.pad(xt.float(), (0, 1, 0, 1), mode="replicate")
            tv = (xp[..., :-1, 1:] - xp[..., :-1, :-1]).pow(2) + (
                xp[..., 1:, :-1] - xp[..., :-1, :-1]
            ).pow(2)
            tv = (wt * tv).sum() / self.numel
            mine["tv"] = tv.detach()
            surrogate = surrogate + self.tv_weight * tv
        return mine, surrogate

    def _finish(self, parts: list[dict]) -> dict:
        """The whole picture's statistics from its tiles', the loss, and its coefficients:
        the gradient of the loss with respect to each Gram matrix and normaliser."""
        stats: dict[str, Any] = {"content_coef": {}, "gram_coef": {}}
        loss = torch.zeros((), dtype=torch.float32, device=self.grid.weights["pixels"][0][0].device)
        for name in self.content_layers:
            s1 = sum(p["content"][name][0] for p in parts)
            s2 = sum(p["content"][name][1] for p in parts)
            # scaled_mse = S2 / (S1 + eps): d/dd = 2d / (S1 + eps) - S2 sign(d) / (S1 + eps)^2.
            den = s1 + 1e-8
            stats["content_coef"][name] = (1 / den, s2 / den**2)
            loss = loss + self.content_weight * s2 / den
        for name in self.style_layers:
            grams = [
                sum(p["style"][name][k] for p in parts).requires_grad_(True)
                for k in range(len(self.style_terms[name]))
            ]
            with torch.enable_grad():
                terms = [
                    self.strength * self.layer_w[name] * share * scaled_mse(g, target)
                    for g, (_, share, target) in zip(grams, self.style_terms[name], strict=True)
                ]
                total = sum(terms)
                coefs = torch.autograd.grad(total, grams)
            stats["gram_coef"][name] = [c.detach() for c in coefs]
            loss = loss + total.detach()
        if self.tv_weight:
            loss = loss + self.tv_weight * sum(p["tv"] for p in parts)
        stats["loss"] = loss
        return stats

    def gather(self, x: torch.Tensor) -> dict:
        with torch.no_grad():
            return self._finish([self._tile(t, x, None)[0] for t in range(len(self.grid.tiles))])

    def sweep(self, x: torch.Tensor, stats: dict) -> torch.Tensor:
        parts = []
        for t in range(len(self.grid.tiles)):
            mine, surrogate = self._tile(t, x, stats)
            surrogate.backward()
            parts.append(mine)
        loss = self._finish(parts)["loss"]
        if self.whole_loss is not None:
            extra = self.whole_loss(x)
            extra.backward()
            loss = loss + extra.detach()
        return loss


# ---------------------------------------------------------------- the engine


@dataclass
class _Scale:
    """One scale's targets: the photo at this size (``target_content``: as the losses see
    it, grey under ``preserve_color="luminance"``), the style Grams (blended, or per region),
    the photo's content features (whole pictures), the kept photo and the tile grid."""

    w: int
    h: int
    content_rgb: torch.Tensor
    target_content: torch.Tensor
    style_grams: dict[str, torch.Tensor]
    c_feats: dict[str, torch.Tensor] | None
    region_terms: dict[str, list] | None
    keep: torch.Tensor | None
    grid: _Grid | None

    @cached_property
    def base(self) -> torch.Tensor | None:
        # Where the photo is kept, the picture is the photo (see the module's docstring);
        # computed once per scale, not at every step.
        return None if self.keep is None else self.keep * self.target_content

    def compose(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.keep is None else self.base + (1 - self.keep) * y

    def compose_tile(self, y: torch.Tensor, box) -> torch.Tensor:
        if self.keep is None:
            return y
        return self.base[..., box[0], box[1]] + (1 - self.keep[..., box[0], box[1]]) * y


@dataclass
class _Engine:
    """What one stylize call keeps across its scales: the network on its device, the
    layers, the loss weights, the autocast and memory format, and the caller's extra loss."""

    options: StylizeOptions
    extractor: FeatureExtractor
    dev: torch.device
    style_layers: list[str]
    layer_w: list[float]
    content_weight: float
    tv_weight: float
    use_bf16: bool
    extra_loss: Callable[[torch.Tensor], torch.Tensor] | None
    final_size: tuple[int, int] = (0, 0)  # the output's (width, height)

    @property
    def spec(self) -> Any:
        return self.extractor.spec

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys([*self.spec.content_layers, *self.style_layers]))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.dev.type == "cuda" else torch.contiguous_format

    def features(self, x: torch.Tensor, which: Sequence[str]) -> dict[str, torch.Tensor]:
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            return self.extractor(x.contiguous(memory_format=self.memory_format), which)

    def probe(self, ph: int, pw: int) -> dict[str, tuple[int, int]]:
        """Feature sizes of a ph x pw input at each layer."""
        with torch.no_grad():
            out = self.features(torch.zeros(1, 3, ph, pw, device=self.dev), self.layers)
        return {k: (int(v.shape[-2]), int(v.shape[-1])) for k, v in out.items()}

    def shown(self, x: torch.Tensor, content_rgb: torch.Tensor) -> torch.Tensor:
        """The picture as the output will show it (the photo's colours under luminance)."""
        if self.options.preserve_color == "luminance":
            return color.combine_luminance(x, content_rgb)
        return x

    def targets(self, content_img, style_items, regions, long_side, tile, tiled) -> _Scale:
        """The photo and the style targets at one scale."""
        options, dev, layers = self.options, self.dev, self.style_layers
        w, h = _fit(*content_img.size, long_side)
        content_rgb = to_tensor(content_img.rgb.resize((w, h), Image.Resampling.LANCZOS)).to(dev)
        style_long = max(16, round(long_side * options.style_scale))
        styles_t = [
            (to_tensor(resize_long_side(s.rgb, style_long)).to(dev), wt) for s, wt in style_items
        ]
        target_content = content_rgb
        if options.preserve_color == "luminance":
            target_content = color.luminance(content_rgb)
            styles_t = [
                (color.match_luminance(color.luminance(s), target_content), wt)
                for s, wt in styles_t
            ]
        elif options.preserve_color == "histogram":
            styles_t = [(color.match_histogram(s, content_rgb), wt) for s, wt in styles_t]
        grid = _Grid(h, w, tile, self.probe, dev) if tiled else None
        with torch.no_grad():
            # The style targets: computed once per scale from the style images (whole, or,
            # when a style image is itself too large, as the sum of its tiles' parts) and
            # shared by every tile.
            grams_each = []
            for s_img, _ in styles_t:
                if tiled and s_img.shape[-2] * s_img.shape[-1] > (2 * tile) ** 2:
                    grams_each.append(_tiled_grams(self.features, s_img, layers, tile, self.probe))
                else:
                    f = self.features(s_img, layers)
                    grams_each.append({name: gram(f[name]) for name in layers})
                    del f
            style_grams = {
                name: blend_grams([g[name] for g in grams_each], [wt for _, wt in styles_t])
                for name in layers
            }
            c_feats = None
            if not tiled:
                found = self.features(target_content, self.spec.content_layers)
                c_feats = {k: v.detach().float() for k, v in found.items()}
            region_terms, keep = None, None
            if regions is not None:
                if grid is not None:
                    shapes = grid.shape
                else:
                    found = self.features(target_content, layers)
                    shapes = {k: tuple(v.shape[-2:]) for k, v in found.items()}
                region_terms, keep = _region_terms(regions, grams_each, layers, (w, h), dev, shapes)
            del grams_each
        return _Scale(
            w, h, content_rgb, target_content, style_grams, c_feats, region_terms, keep, grid
        )

    def start(self, sc: _Scale, x_prev, init, content_img, style_items, regions, long_side, gen):
        """The first picture of a scale: the previous scale's result enlarged, else ``init``,
        noise, the fast method's picture or the photo."""
        options, dev, h, w = self.options, self.dev, sc.h, sc.w
        if x_prev is not None:
            return F.interpolate(x_prev, size=(h, w), mode="bicubic", align_corners=False).clamp(
                0, 1
            )
        if init is not None:
            x0 = init if isinstance(init, torch.Tensor) else to_tensor(init.convert("RGB"))
            x0 = F.interpolate(x0.float().to(dev), size=(h, w), mode="bicubic", align_corners=False)
            x0 = x0.clamp(0, 1)
        elif options.init == "noise":
            return torch.rand(1, 3, h, w, generator=gen).to(dev)
        elif options.init == "fast":
            x0 = _fast_start(content_img, style_items, options, long_side, dev, regions)
        else:
            return sc.target_content.clone()
        return color.luminance(x0) if options.preserve_color == "luminance" else x0

    def objective(self, sc: _Scale) -> Callable[[torch.Tensor], torch.Tensor]:
        """The whole picture's loss at one scale (Gatys et al.: content, style, TV), plus
        the caller's extra loss."""
        options = self.options

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            x = sc.compose(x)
            feats = self.features(x, self.layers)
            loss = x.new_zeros((), dtype=torch.float32)
            for name in self.spec.content_layers:
                loss = loss + self.content_weight * content_loss(feats[name], sc.c_feats[name])
            for name, lw in zip(self.style_layers, self.layer_w, strict=True):
                if sc.region_terms is None:
                    loss = loss + options.strength * lw * scaled_mse(
                        gram(feats[name]), sc.style_grams[name]
                    )
                    continue
                for mask, share, target in sc.region_terms[name]:
                    loss = loss + options.strength * lw * share * scaled_mse(
                        masked_gram(feats[name], mask), target
                    )
            if self.tv_weight:
                loss = loss + self.tv_weight * tv_loss(x.float())
            if self.extra_loss is not None:
                loss = loss + self.extra_loss(self.shown(x.float(), sc.content_rgb))
            return loss

        return loss_of

    def tiled(self, sc: _Scale) -> _TiledObjective:
        """The same loss, tile by tile (the caller's extra loss on the whole picture)."""

        def whole_loss(x: torch.Tensor) -> torch.Tensor:
            return self.extra_loss(self.shown(sc.compose(x).float(), sc.content_rgb))

        terms = sc.region_terms
        if terms is None:
            terms = {name: [(None, 1.0, sc.style_grams[name])] for name in self.style_layers}
        return _TiledObjective(
            sc.grid,
            self.features,
            sc.target_content,
            sc.compose_tile,
            self.spec.content_layers,
            self.style_layers,
            terms,
            self.layer_w,
            self.options.strength,
            self.content_weight,
            self.tv_weight,
            whole_loss if self.extra_loss is not None else None,
        )

    def optimise(self, sc: _Scale, x0: torch.Tensor, gen, report) -> torch.Tensor:
        """``options.iterations`` steps from ``x0``; returns the Polyak average of the
        iterates, composed with the kept photo. ``report(loss, render)`` after each step."""
        options, dev = self.options, self.dev
        if options.optimizer == "lbfgs":
            # The scaled MSE has a kink at zero error (x0 == content), where its gradient
            # ignores the content term and L-BFGS's line search stalls: start a hair away.
            x0 = (x0 + (torch.rand(x0.shape, generator=gen) - 0.5).to(dev) / 255).clamp(0, 1)
        x = x0.detach().clone().requires_grad_(True)
        ema = x0.detach().clone()
        if options.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam([x], lr=options.lr)
        else:
            opt = torch.optim.LBFGS(
                [x], lr=1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe"
            )
        last: dict[str, torch.Tensor] = {}
        tiles = self.tiled(sc) if sc.grid is not None else None
        loss_of = self.objective(sc) if tiles is None else None

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            if tiles is not None:
                loss = tiles.sweep(x, tiles.gather(x))
            else:
                loss = loss_of(x)
                loss.backward()
            last["loss"] = loss.detach()
            return loss

        def render() -> Image.Image:
            shown = ema if options.preserve_color == "luminance" else sc.compose(ema)
            return to_pil(self.shown(shown, sc.content_rgb))

        for i in range(options.iterations):
            try:
                opt.step(closure)
            except torch.OutOfMemoryError:
                x.grad = None
                _free(dev)
                w, h = self.final_size
                check_fits(self.extractor, w, h, dev, 2 if self.use_bf16 else 4, force=True)
            with torch.no_grad():
                x.clamp_(0, 1)
                # Polyak averaging of the iterates, warmed up so early steps count less.
                decay = min(0.99, (1 + i) / (10 + i))
                ema.mul_(decay).add_(x.detach(), alpha=1 - decay)
            report(float(last["loss"]), render)
        return sc.compose(ema)


def _engine(options, extractor, device, extra_loss) -> _Engine:
    """The network on its device and the loss weights the options resolve to."""
    dev = (
        resolve_device(device)
        if device is not None
        else (extractor.mean.device if extractor is not None else resolve_device("auto"))
    )
    if extractor is None:
        from artgen.interop.weights import choose_backbone, load_backbone

        extractor = load_backbone(choose_backbone(options.backbone), dev)
    extractor = extractor.to(dev)
    spec = extractor.spec
    if options.backbone not in ("auto", spec.name):
        raise ArtgenError(
            f"options ask for backbone {options.backbone} but the extractor is {spec.name}"
        )
    layer_w = options.style_layer_weights or spec.style_layer_weights
    if len(layer_w) != len(spec.style_layers):
        raise ArtgenError(
            f"style_layer_weights has {len(layer_w)} values; {spec.name} has "
            f"{len(spec.style_layers)} style layers ({', '.join(spec.style_layers)})"
        )
    layer_w = [w / sum(layer_w) for w in layer_w]
    content_weight = (
        spec.content_weight if options.content_weight is None else options.content_weight
    )
    tv_weight = spec.tv_weight if options.tv_weight is None else options.tv_weight
    style_layers = [n for n, w in zip(spec.style_layers, layer_w, strict=True) if w > 0]
    layer_w = [w for w in layer_w if w > 0]
    extractor = extractor.truncate(list(dict.fromkeys([*spec.content_layers, *style_layers])))
    use_bf16 = options.precision == "bf16" or (options.precision == "auto" and dev.type == "cuda")
    engine = _Engine(
        options,
        extractor,
        dev,
        style_layers,
        layer_w,
        content_weight,
        tv_weight,
        use_bf16,
        extra_loss,
    )
    engine.extractor = extractor.to(memory_format=engine.memory_format)
    return engine


def stylize(
    content: str | os.PathLike | Image.Image | LoadedImage,
    styles: Any,
    options: StylizeOptions | None = None,
    *,
    extractor: FeatureExtractor | None = None,
    device: str | torch.device | None = None,
    callback: Callable[[StylizeProgress], None] | None = None,
    init: Image.Image | torch.Tensor | None = None,
    extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    masks: Any = None,
    content_mask: Any = None,
    **overrides: Any,
) -> Image.Image:
    """Stylise ``content`` with one or more ``styles``; returns a PIL image.

    ``options`` (or keyword ``overrides`` of its fields) set the method. Pass a
    prebuilt ``extractor`` to reuse loaded weights; otherwise the backbone named
    in the options is loaded. ``callback`` receives a StylizeProgress after each
    step and may raise artgen.Cancelled to stop. The output keeps the content's
    alpha plane; ``image.info["backbone"]`` names the backbone used.

    For video (Ruder et al. 2016): ``init`` (a picture, or a (1, 3, H, W) tensor in [0, 1])
    is the starting image instead of ``options.init``, and then only the final scale is
    optimised; ``extra_loss(y)`` is added to the objective at every step, where ``y`` is
    the picture as the output will show it ((1, 3, h, w) RGB in [0, 1], differentiable;
    under ``preserve_color="luminance"`` the optimised grey combined with the content's
    colours).

    Regional styles: ``masks``, one per style (None for a style without one), put each
    style where its mask is white; ``content_mask`` keeps the photo where it is white
    (the rule: artgen.style.Regions; the method: this module's docstring).
    """
    options = options or StylizeOptions()
    if overrides:
        options = StylizeOptions.from_dict({**options.to_dict(), **overrides})
    engine = _engine(options, extractor, device, extra_loss)
    content_img = content if isinstance(content, LoadedImage) else load_image(content)
    style_items, regions = plan_regions(load_styles(styles), masks, content_mask)
    if regions is not None:
        regions.check(content_img.size)
    sizes = scale_sizes(options) if init is None else [options.size]
    engine.final_size = _fit(*content_img.size, options.size)
    tile, tiled_scales, tile_note = plan_tiles(
        options,
        engine.extractor,
        sizes,
        content_img.size,
        engine.dev,
        2 if engine.use_bf16 else 4,
    )
    gen = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    t0 = time.perf_counter()
    done = 0
    x_prev: torch.Tensor | None = None
    for si, long_side in enumerate(sizes):
        sc = engine.targets(content_img, style_items, regions, long_side, tile, tiled_scales[si])
        x0 = engine.start(sc, x_prev, init, content_img, style_items, regions, long_side, gen)

        def report(loss: float, render, si=si, sc=sc) -> None:
            nonlocal done
            done += 1
            if callback is not None:
                callback(
                    StylizeProgress(
                        step=done,
                        total_steps=options.iterations * len(sizes),
                        scale=si + 1,
                        num_scales=len(sizes),
                        width=sc.w,
                        height=sc.h,
                        loss=loss,
                        elapsed=time.perf_counter() - t0,
                        render=render,
                    )
                )

        x_prev = engine.optimise(sc, x0, gen, report)
    out = to_pil(engine.shown(x_prev, sc.content_rgb))
    if content_img.alpha is not None:
        out.putalpha(content_img.alpha.resize(out.size, Image.Resampling.LANCZOS))
    out.info["backbone"] = engine.spec.name
    out.info["tile"] = tile or options.tile  # the size used, when it tiled
    if tile_note:
        out.info["note"] = tile_note
    return out


def _region_terms(regions, grams_each, style_layers, size, dev, shapes):
    """Per style layer, each region's (mask at the layer's size, share of the picture,
    target Gram: its styles' blend), and the photo's share ``keep`` (or None).
    ``grams_each``: per style, its Gram matrix at each layer; ``shapes``: the (h, w) of
    the picture's features at each layer."""
    weights, keep = regions.weights(size, dev)
    terms: dict[str, list] = {name: [] for name in style_layers}
    for r, (members, _) in enumerate(regions.groups):
        plane = weights[:, r : r + 1]
        share = float(plane.mean())
        if share <= 1e-6:
            continue  # a region the content mask covers, or too small for this scale
        for name in style_layers:
            target = blend_grams(
                [grams_each[i][name] for i, _ in members], [wt for _, wt in members]
            )
            mask = resize_mask(plane, shapes[name])
            terms[name].append((mask, share, target))
    return terms, keep


def _fast_start(
    content, styles, options: StylizeOptions, long_side: int, dev, regions=None
) -> torch.Tensor:
    """The fast method's picture at the first scale (``--init fast``), as the starting point
    (with the same regions, when there are masks)."""
    from artgen.style import get_method

    fast = get_method("adain")
    preserve = "histogram" if options.preserve_color == "histogram" else "none"
    opts = fast.options(size=long_side, style_scale=options.style_scale, preserve_color=preserve)
    extra = {}
    if regions is not None:
        masks: list = [None] * len(styles)
        for members, mask in regions.groups:
            for i, _ in members:
                masks[i] = mask
        extra = {"masks": masks, "content_mask": regions.content_mask}
    image = fast.stylize(content, styles, opts, device=dev, **extra)
    return to_tensor(image.convert("RGB")).to(dev)


def _fit(w: int, h: int, long_side: int) -> tuple[int, int]:
    s = long_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _free(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def load(options: StylizeOptions | None = None, device: Any = "cpu", weights: Any = None):
    """The backbone the options name ('auto' takes VGG19 when its weights are on disk)."""
    from artgen.interop.weights import choose_backbone, load_backbone

    options = options or StylizeOptions()
    choice = choose_backbone(options.backbone, weights)
    extractor = load_backbone(choice, resolve_device(device))
    extractor.note = choice.note
    return extractor


def _describe(extractor: FeatureExtractor) -> str:
    return getattr(extractor, "note", f"backbone: {extractor.spec.name}")


def _stylize(content, styles, options, *, model=None, **keywords: Any) -> Image.Image:
    """The method's seam: ``model`` is the extractor; the other keywords (device, callback,
    masks, content_mask, and the guided form's init and extra_loss, which video uses after
    Ruder et al.) are stylize's."""
    return stylize(content, styles, options, extractor=model, **keywords)


METHOD = StyleMethod(
    name="gatys",
    summary="quality: optimise the picture against VGG/EfficientNet features (Gatys et al. 2016)",
    options=StylizeOptions,
    load=load,
    stylize=_stylize,
    resolved=("backbone", "tile"),
    describe=_describe,
    stylize_guided=_stylize,
    masks=True,
)


__all__ = [
    "METHOD",
    "StylizeOptions",
    "StylizeProgress",
    "stylize",
    "Cancelled",
    "scale_sizes",
    "parse_styles",
]
