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
- colour preservation (artgen.color);
- bf16 autocast and channels_last for the backbone on CUDA; Gram matrices and
  losses are computed in fp32 (artgen.losses);
- a hook for video (``init`` and ``extra_loss`` of :func:`stylize`): Ruder, Dosovitskiy &
  Brox, "Artistic style transfer for videos", GCPR 2016, start each frame from the warped
  previous result and add a temporal loss; artgen.video passes both in. With ``init`` the
  optimisation runs at the final scale only (the warped result already has the large-scale
  structure that the coarse scales exist to build). Unused, nothing changes;
- regional styles (``masks``, ``content_mask``): the spatial control of Gatys et al. 2017,
  sec. 4. Each region (artgen.style.Regions: a style's mask, or what the masks leave to
  the styles without one) gets its own style loss, between the Gram matrix of the
  picture's features inside the region (artgen.losses.masked_gram: each feature pixel
  weighted by the region's mask, averaged over the region) and its styles' plain Gram
  blend. The masks are brought to each feature layer by area resampling of the mask at
  the picture's size (artgen.losses.resize_mask), the paper's simpler option (it also
  propagates them through the network). Each region's loss counts by its share of the
  picture, so one region covering everything is the plain loss. Where the content mask
  (or no region) keeps the photo, the picture is not free: it is optimised as
  x = keep * photo + (1 - keep) * y over y, so those pixels are the photo at every step
  and the soft edge of ``keep`` blends the two; the content loss is unchanged.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from artgen import color
from artgen.devices import available_memory, resolve_device
from artgen.errors import ArtgenError, Cancelled, clip
from artgen.images import LoadedImage, load_image, resize_long_side, to_pil, to_tensor
from artgen.losses import (
    blend_grams,
    content_loss,
    gram,
    masked_gram,
    resize_mask,
    scaled_mse,
    tv_loss,
)
from artgen.models.backbones import FeatureExtractor
from artgen.style import (  # noqa: F401 (parse_styles re-exported)
    StyleMethod,
    load_styles,
    parse_styles,
    plan_regions,
)

PRESERVE_COLOR = ("none", "luminance", "histogram")
INITS = ("content", "noise", "fast")
OPTIMIZERS = ("adam", "lbfgs")
PRECISIONS = ("auto", "fp32", "bf16")
BACKBONE_CHOICES = ("auto", "vgg19", "efficientnet-lite0")


@dataclass(frozen=True)
class StylizeOptions:
    """Everything that decides how a picture is stylised. One set of defaults for API, CLI and app."""

    size: int = field(default=512, metadata={"help": "long side of the output in pixels"})
    strength: float = field(
        default=1.0,
        metadata={
            "help": "how strongly the style is applied: 1 is balanced, 2 twice as much style, 0.5 half"
        },
    )
    style_scale: float = field(
        default=1.0,
        metadata={
            "help": "size of the style image relative to the output: larger gives bigger brush strokes"
        },
    )
    preserve_color: str = field(
        default="none",
        metadata={"help": "keep the content's colours", "choices": PRESERVE_COLOR},
    )
    iterations: int = field(default=200, metadata={"help": "optimisation steps at each scale"})
    min_size: int = field(
        default=128,
        metadata={
            "help": "smallest long side for the first (coarsest) scale; >= size means one scale"
        },
    )
    scale_factor: float = field(
        default=2.0, metadata={"help": "size ratio between successive scales"}
    )
    init: str = field(
        default="content",
        metadata={
            "help": "starting image: the photo, noise, or the fast method's result",
            "choices": INITS,
        },
    )
    optimizer: str = field(default="adam", metadata={"help": "optimiser", "choices": OPTIMIZERS})
    lr: float = field(
        default=0.02, metadata={"help": "Adam step size (pixels in [0, 1]); L-BFGS ignores it"}
    )
    content_weight: float | None = field(
        default=None, metadata={"help": "weight of the content loss (default: the backbone's)"}
    )
    tv_weight: float | None = field(
        default=None,
        metadata={
            "help": "weight of the total-variation smoothness loss (default: the backbone's)"
        },
    )
    style_layer_weights: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "comma-separated weights for the backbone's style layers (default: equal)"
        },
    )
    backbone: str = field(
        default="auto",
        metadata={"help": "feature network", "choices": BACKBONE_CHOICES},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto is bf16 on CUDA and fp32 elsewhere", "choices": PRECISIONS},
    )
    seed: int = field(
        default=0, metadata={"help": "random seed (same seed, same device: same picture)"}
    )

    def __post_init__(self) -> None:
        from artgen.style import check_field_types, option_error

        def bad(name: str, why: str) -> ArtgenError:
            return option_error(self, name, why)

        check_field_types(self)
        if not 16 <= self.size <= 16384:
            raise bad("size", "must be between 16 and 16384")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise bad("seed", "must be a whole number from 0 to 2**63 - 1")
        if not 16 <= self.min_size:
            raise bad("min_size", "must be at least 16")
        if self.iterations < 1:
            raise bad("iterations", "must be at least 1")
        if not self.scale_factor > 1.0:
            raise bad("scale_factor", "must be greater than 1")
        if not 0.0 <= self.strength <= 100.0:
            raise bad("strength", "must be between 0 and 100")
        if not 0.05 <= self.style_scale <= 8.0:
            raise bad("style_scale", "must be between 0.05 and 8")
        for name, allowed in (
            ("preserve_color", PRESERVE_COLOR),
            ("init", INITS),
            ("optimizer", OPTIMIZERS),
            ("precision", PRECISIONS),
            ("backbone", BACKBONE_CHOICES),
        ):
            if getattr(self, name) not in allowed:
                raise bad(name, f"choose one of {', '.join(allowed)}")
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["style_layer_weights"] is not None:
            d["style_layer_weights"] = list(d["style_layer_weights"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StylizeOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ArtgenError(
                f"unknown option(s): {clip(', '.join(sorted(map(str, unknown))), 120)}"
            )
        d = dict(d)
        if d.get("style_layer_weights") is not None:
            d["style_layer_weights"] = tuple(d["style_layer_weights"])
        return cls(**d)


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


# ---------------------------------------------------------------- the engine


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
    dev = (
        resolve_device(device)
        if device is not None
        else (extractor.mean.device if extractor is not None else resolve_device("auto"))
    )
    if extractor is None:
        from artgen.weights import choose_backbone, load_backbone

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
    layers = list(dict.fromkeys([*spec.content_layers, *style_layers]))
    extractor = extractor.truncate(layers)

    content_img = content if isinstance(content, LoadedImage) else load_image(content)
    style_items, regions = plan_regions(load_styles(styles), masks, content_mask)
    if regions is not None:
        regions.check(content_img.size)

    use_bf16 = options.precision == "bf16" or (options.precision == "auto" and dev.type == "cuda")
    if use_bf16 and dev.type == "cpu" and options.precision == "auto":
        use_bf16 = False
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)
    memory_format = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    extractor = extractor.to(memory_format=memory_format)

    def features(x: torch.Tensor, which: Sequence[str]) -> dict[str, torch.Tensor]:
        with amp:
            return extractor(x.contiguous(memory_format=memory_format), which)

    sizes = scale_sizes(options) if init is None else [options.size]
    cw, ch = content_img.size
    final_w, final_h = _fit(cw, ch, options.size)
    check_fits(extractor, final_w, final_h, dev, 2 if use_bf16 else 4)

    gen = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    total_steps = options.iterations * len(sizes)
    step = 0
    t0 = time.perf_counter()
    x_prev: torch.Tensor | None = None
    result_rgb: torch.Tensor | None = None
    content_full: torch.Tensor | None = None

    for si, long_side in enumerate(sizes):
        w, h = _fit(cw, ch, long_side)
        content_rgb = to_tensor(content_img.rgb.resize((w, h), Image.Resampling.LANCZOS)).to(dev)
        content_full = content_rgb
        style_long = max(16, round(long_side * options.style_scale))
        styles_t = [
            (to_tensor(resize_long_side(s.rgb, style_long)).to(dev), wt) for s, wt in style_items
        ]

        if options.preserve_color == "luminance":
            target_content = color.luminance(content_rgb)
            styles_t = [
                (color.match_luminance(color.luminance(s), target_content), wt)
                for s, wt in styles_t
            ]
        elif options.preserve_color == "histogram":
            target_content = content_rgb
            styles_t = [(color.match_histogram(s, content_rgb), wt) for s, wt in styles_t]
        else:
            target_content = content_rgb

        with torch.no_grad():
            c_feats = {
                k: v.detach().float()
                for k, v in features(target_content, spec.content_layers).items()
            }
            per_style = [features(s, style_layers) for s, _ in styles_t]
            style_grams = {
                name: blend_grams([gram(f[name]) for f in per_style], [wt for _, wt in styles_t])
                for name in style_layers
            }
            region_terms, keep = None, None
            if regions is not None:
                region_terms, keep = _region_terms(
                    regions,
                    per_style,
                    style_layers,
                    (w, h),
                    dev,
                    features(target_content, style_layers),
                )
            del per_style
        # Where the photo is kept, the picture is the photo (see the module's docstring).
        base = None if keep is None else keep * target_content

        if x_prev is None:
            if init is not None:
                x0 = init if isinstance(init, torch.Tensor) else to_tensor(init.convert("RGB"))
                x0 = F.interpolate(
                    x0.float().to(dev), size=(h, w), mode="bicubic", align_corners=False
                ).clamp(0, 1)
                if options.preserve_color == "luminance":
                    x0 = color.luminance(x0)
            elif options.init == "noise":
                x0 = torch.rand(1, 3, h, w, generator=gen).to(dev)
            elif options.init == "fast":
                x0 = _fast_start(content_img, style_items, options, long_side, dev, regions)
                if options.preserve_color == "luminance":
                    x0 = color.luminance(x0)
            else:
                x0 = target_content.clone()
        else:
            x0 = F.interpolate(x_prev, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)

        def compose(y: torch.Tensor, base=base, keep=keep) -> torch.Tensor:
            return y if base is None else base + (1 - keep) * y

        if options.optimizer == "lbfgs":
            # The scaled MSE has a kink at zero error (x0 == content), where its gradient
            # ignores the content term and L-BFGS's line search stalls: start a hair away.
            x0 = (x0 + (torch.rand(x0.shape, generator=gen) - 0.5).to(dev) / 255).clamp(0, 1)
        x = x0.detach().clone().requires_grad_(True)
        ema = x0.detach().clone()

        def objective(
            x: torch.Tensor,
            c_feats=c_feats,
            style_grams=style_grams,
            content_rgb=content_rgb,
            region_terms=region_terms,
            compose=compose,
        ) -> torch.Tensor:
            x = compose(x)
            feats = features(x, layers)
            loss = x.new_zeros((), dtype=torch.float32)
            for name in spec.content_layers:
                loss = loss + content_weight * content_loss(feats[name], c_feats[name])
            for name, lw in zip(style_layers, layer_w, strict=True):
                if region_terms is None:
                    loss = loss + options.strength * lw * scaled_mse(
                        gram(feats[name]), style_grams[name]
                    )
                    continue
                for mask, share, target in region_terms[name]:
                    loss = loss + options.strength * lw * share * scaled_mse(
                        masked_gram(feats[name], mask), target
                    )
            if tv_weight:
                loss = loss + tv_weight * tv_loss(x.float())
            if extra_loss is not None:
                shown = x.float()
                if options.preserve_color == "luminance":
                    shown = color.combine_luminance(shown, content_rgb)
                loss = loss + extra_loss(shown)
            return loss

        def render(ema=ema, content_rgb=content_rgb, compose=compose) -> Image.Image:
            out = compose(ema)
            if options.preserve_color == "luminance":
                out = color.combine_luminance(ema, content_rgb)
            return to_pil(out)

        if options.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam([x], lr=options.lr)
        else:
            opt = torch.optim.LBFGS(
                [x], lr=1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe"
            )

        last: dict[str, torch.Tensor] = {}

        def closure(opt=opt, x=x, objective=objective, last=last) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = objective(x)
            loss.backward()
            last["loss"] = loss.detach()
            return loss

        for i in range(options.iterations):
            try:
                opt.step(closure)
            except torch.OutOfMemoryError:
                x.grad = None
                _free(dev)
                check_fits(extractor, final_w, final_h, dev, 2 if use_bf16 else 4, force=True)
            with torch.no_grad():
                x.clamp_(0, 1)
                # Polyak averaging of the iterates, warmed up so early steps count less.
                decay = min(0.99, (1 + i) / (10 + i))
                ema.mul_(decay).add_(x.detach(), alpha=1 - decay)
            step += 1
            if callback is not None:
                callback(
                    StylizeProgress(
                        step=step,
                        total_steps=total_steps,
                        scale=si + 1,
                        num_scales=len(sizes),
                        width=w,
                        height=h,
                        loss=float(last["loss"]),
                        elapsed=time.perf_counter() - t0,
                        render=render,
                    )
                )
        x_prev = compose(ema)
        result_rgb = x_prev

    assert result_rgb is not None and content_full is not None
    if options.preserve_color == "luminance":
        result_rgb = color.combine_luminance(result_rgb, content_full)
    out = to_pil(result_rgb)
    if content_img.alpha is not None:
        out.putalpha(content_img.alpha.resize(out.size, Image.Resampling.LANCZOS))
    out.info["backbone"] = spec.name
    return out


def _region_terms(regions, per_style, style_layers, size, dev, content_feats):
    """Per style layer, each region's (mask at the layer's size, share of the picture,
    target Gram: its styles' blend), and the photo's share ``keep`` (or None)."""
    weights, keep = regions.weights(size, dev)
    terms: dict[str, list] = {name: [] for name in style_layers}
    for r, (members, _) in enumerate(regions.groups):
        plane = weights[:, r : r + 1]
        share = float(plane.mean())
        if share <= 1e-6:
            continue  # a region the content mask covers, or too small for this scale
        for name in style_layers:
            target = blend_grams(
                [gram(per_style[i][name]) for i, _ in members], [wt for _, wt in members]
            )
            mask = resize_mask(plane, content_feats[name].shape[-2:])
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
    from artgen.weights import choose_backbone, load_backbone

    options = options or StylizeOptions()
    choice = choose_backbone(options.backbone, weights)
    extractor = load_backbone(choice, resolve_device(device))
    extractor.note = choice.note
    return extractor


def _describe(extractor: FeatureExtractor) -> str:
    return getattr(extractor, "note", f"backbone: {extractor.spec.name}")


def _stylize(
    content,
    styles,
    options,
    *,
    model=None,
    device=None,
    callback=None,
    masks=None,
    content_mask=None,
) -> Image.Image:
    return stylize(
        content,
        styles,
        options,
        extractor=model,
        device=device,
        callback=callback,
        masks=masks,
        content_mask=content_mask,
    )


def _stylize_guided(
    content,
    styles,
    options,
    *,
    model=None,
    device=None,
    callback=None,
    init=None,
    extra_loss=None,
    masks=None,
    content_mask=None,
) -> Image.Image:
    return stylize(
        content,
        styles,
        options,
        extractor=model,
        device=device,
        callback=callback,
        init=init,
        extra_loss=extra_loss,
        masks=masks,
        content_mask=content_mask,
    )


METHOD = StyleMethod(
    name="gatys",
    summary="quality: optimise the picture against VGG/EfficientNet features (Gatys et al. 2016)",
    options=StylizeOptions,
    load=load,
    stylize=_stylize,
    resolved=("backbone",),
    describe=_describe,
    stylize_guided=_stylize_guided,
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
