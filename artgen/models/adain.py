"""Feed-forward arbitrary style transfer with adaptive instance normalisation (AdaIN).

Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization", ICCV 2017. A fixed pretrained encoder maps content and style to
features; AdaIN gives the content features the channel mean and std of the style's;
a trained decoder turns the result back into a picture. Any style works at once.

Two encoder/decoder pairs:

- ``vgg19``: the paper's. VGG19 "normalised" up to relu4_1 and the decoder that
  mirrors it (reflection padding, nearest upsampling), in the exact layer layout of
  naoto0804/pytorch-AdaIN (``nn.Sequential`` state dicts keyed ``0.weight``,
  ``2.weight`` ...), so its published ``vgg_normalised.pth`` / ``decoder.pth`` load
  as they are. The encoder's first layer is a 1x1 conv that maps RGB in [0, 1] to the
  Caffe VGG's input (BGR, 0-255, mean removed), so no normalisation is done here.
- ``efficientnet-lite0``: artgen's offline pair. Departure from the paper: its
  middle layers are narrow (24 channels at stride 4, 40 at stride 8, 80 at 16)
  where VGG's relu4_1 has 512, and a decoder fed one such layer can only paint a
  blurred picture. So AdaIN is applied at three levels (strides 4, 8 and 16) and the
  decoder is a small U-Net that takes the deepest one and merges the other two
  through skip connections (as in multi-level stylisation: Li et al., "Universal
  Style Transfer via Feature Transforms", NeurIPS 2017, and the skip decoders of
  later AdaIN variants). The skips are AdaIN'd too, so fine levels carry the style's
  statistics as well as the photo's edges. The decoder is kept narrow at full
  resolution (32 and 16 channels), which is where a CPU spends its time.

Regional styles (:meth:`AdaINModel.forward_masked`): the spatial control of Gatys et al.
2017 ("Controlling Perceptual Factors in Neural Style Transfer", sec. 4) carried over to
feature statistics. At every AdaIN level each region's content features are normalised by
that region's own mean and std (each pixel weighted by the region's soft mask, brought to
the level's size by area resampling: artgen.core.losses.resize_mask) and given its style's
mean and std; the results are blended by the masks, and where no region reaches the
content's features pass unchanged (:func:`adain_regions`).

No file I/O here: artgen.interop.weights reads and writes these networks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artgen.core.losses import covariance, masked_mean_std, mean_std, resize_mask
from artgen.models.backbones import FeatureExtractor, efficientnet_lite0

ENCODERS = ("efficientnet-lite0", "vgg19")


def adain(
    content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y), per sample and channel (eq. 8)."""
    return adain_blend(content, style_mean, style_std, 1.0, eps)


def adain_blend(
    content: torch.Tensor,
    style_mean: torch.Tensor,
    style_std: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    eps: float = 1e-5,
    content_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """alpha AdaIN(x, y) + (1 - alpha) x (eq. 11's target), as one affine map per channel.

    ``content_stats``: the content's (mean, std) when ``content`` is a tile of a larger
    picture whose statistics were gathered beforehand (see AdaINModel.forward_tiled).

    AdaIN is x * sigma(y) / sigma(x) + (mu(y) - mu(x) sigma(y) / sigma(x)), so the blend
    is x * a + b with a = alpha sigma(y) / sigma(x) + 1 - alpha and b = alpha (mu(y) -
    mu(x) sigma(y) / sigma(x)): one pass over the features instead of five.
    """
    x = content.float()
    c_mean, c_std = mean_std(x, eps) if content_stats is None else content_stats
    gain = style_std.float() / c_std
    scale = alpha * gain + (1 - alpha)
    shift = alpha * (style_mean.float() - c_mean * gain)
    return torch.addcmul(shift, x, scale)


# Per AdaIN level: (mean, std) of the channels, (N, C, 1, 1), and the channel covariance,
# (N, C, C), that whitening-colouring needs (artgen's statistics have all three; a
# caller's (mean, std) pair is enough where no level is whitened).
Stats = list[tuple[torch.Tensor, ...]]

# Newton-Schulz iterations for the covariance square roots of wct_blend. The features'
# covariances have condition numbers of 30 to 1e3 (measured on the held-out photos at
# every level; the ridge below bounds them at about 1e4), where 30 iterations reach
# float64 rounding.
NS_ITERATIONS = 30
RIDGE = 1e-4  # added to the covariance, times its mean eigenvalue, plus 1e-5


def _ridge(cov: torch.Tensor) -> torch.Tensor:
    c = cov.shape[-1]
    eye = torch.eye(c, dtype=cov.dtype, device=cov.device)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).view(-1, 1, 1)
    return cov + (RIDGE * scale + 1e-5) * eye


def sqrt_pair(cov: torch.Tensor, iterations: int = NS_ITERATIONS):
    """(A^1/2, A^-1/2) of the symmetric positive definite (N, C, C) ``cov``, by the coupled
    Newton-Schulz iteration (Higham, "Functions of Matrices", 2008, eq. 6.35): matrix
    products only, so the ONNX graph can hold it (ONNX has no eigendecomposition).
    ``cov`` is scaled by its Frobenius norm first, which puts every eigenvalue in (0, 1],
    where the iteration converges."""
    norm = cov.flatten(1).norm(dim=1).view(-1, 1, 1)
    y = cov / norm
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    z = eye
    for _ in range(iterations):
        step = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ step, step @ z
    return y * norm.sqrt(), z / norm.sqrt()


def wct_blend(
    content: torch.Tensor,
    style_mean: torch.Tensor,
    style_cov: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    content_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Whitening and colouring (Li et al., "Universal Style Transfer via Feature
    Transforms", NeurIPS 2017, eqs. 2-4): the content's features decorrelated by their own
    covariance and given the style's, x' = Cov_s^1/2 Cov_c^-1/2 (x - mu_c) + mu_s, blended
    as alpha x' + (1 - alpha) x. Where AdaIN matches each channel's mean and std, this
    matches the correlations between channels too: at a shallow level, which colours and
    strokes go together. ``content_stats``: the content's (mean, covariance) when
    ``content`` is a tile of a larger picture or a region (see AdaINModel.forward_tiled).
    Departures: the covariances get a small ridge (RIDGE), and their square roots come
    from Newton-Schulz iterations, not an eigendecomposition."""
    x = content.float()
    n, c, h, w = x.shape
    if content_stats is None:
        c_mean, c_cov = x.mean((2, 3), keepdim=True), covariance(x, dtype=torch.float64)
    else:
        c_mean, c_cov = content_stats
    _, whiten = sqrt_pair(_ridge(c_cov.double()))
    colour, _ = sqrt_pair(_ridge(style_cov.double()))
    f = (x - c_mean).double().flatten(2)
    out = (colour @ (whiten @ f)).float().view(n, c, h, w) + style_mean.float()
    return alpha * out + (1 - alpha) * x


def transform_level(
    content: torch.Tensor,
    stats: tuple[torch.Tensor, ...],
    alpha: float | torch.Tensor,
    wct: bool,
    content_stats: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:
    """One level's decoder input: whitening-colouring where ``wct``, else AdaIN.
    ``content_stats``: the content's (mean, std, covariance), as ``stats`` are."""
    if wct:
        cs = None if content_stats is None else (content_stats[0], content_stats[2])
        return wct_blend(content, stats[0], stats[2], alpha, content_stats=cs)
    cs = None if content_stats is None else (content_stats[0], content_stats[1])
    return adain_blend(content, stats[0], stats[1], alpha, content_stats=cs)


def level_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, covariance) of one level's features: what a Stats entry holds."""
    m, s = mean_std(features)
    return m, s, covariance(features, dtype=torch.float64).float()


def adain_regions(
    content: torch.Tensor,
    region_stats: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weights: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    eps: float = 1e-5,
    content_stats: Sequence[tuple[torch.Tensor, ...]] | None = None,
    wct: bool = False,
) -> torch.Tensor:
    """Regional AdaIN at one level: sum_r w_r * blend_r(x) + (1 - sum_r w_r) * x, where
    blend_r is :func:`adain_blend` towards region r's style statistics ``region_stats[r]``
    with the content normalised by region r's own statistics (``masked_mean_std`` of x
    under w_r), and ``weights`` (N or 1, R, h, w) are the regions' soft masks at this
    level (summing to at most 1). ``content_stats``: each region's content (mean, std,
    covariance), when ``content`` is a tile of a larger picture (see
    AdaINModel.forward_tiled). ``wct``: whitening-colouring (:func:`wct_blend`) instead
    of AdaIN, with each region's own content covariance."""
    x = content.float()
    w = weights.float()
    out = x * (1.0 - w.sum(1, keepdim=True)).clamp_min(0.0)
    for r, style in enumerate(region_stats):
        plane = w[:, r : r + 1]
        if content_stats is not None:
            cs = content_stats[r]
        else:
            cs = (
                *masked_mean_std(x, plane, eps),
                covariance(x, plane, torch.float64) if wct else None,
            )
        out = out + plane * transform_level(x, style, alpha, wct, content_stats=cs)
    return out


def blend_stats(stats: Sequence[Stats], weights: Sequence[float]) -> Stats:
    """Weighted mean of several styles' statistics (the paper's style interpolation, sec. 7).

    AdaIN is affine in (mean, std), so this equals blending the AdaIN outputs. The
    covariances are blended the same way (for whitening-colouring that is a mixture's
    covariance less the spread of the means: the styles' shared correlations).
    """
    total = float(sum(weights))
    out: Stats = []
    for level in range(len(stats[0])):
        parts = len(stats[0][level])
        out.append(
            tuple(
                sum(s[level][i] * (w / total) for s, w in zip(stats, weights, strict=True))
                for i in range(parts)
            )
        )
    return out


@dataclass(frozen=True)
class AdaINConfig:
    """What a saved AdaIN network is: stored as its config.json (the weights beside it)."""

    encoder: str = "efficientnet-lite0"
    levels: tuple[str, ...] = ("block1_1", "block2_1", "block3_2")
    level_channels: tuple[int, ...] = (24, 40, 80)
    style_layers: tuple[str, ...] = ("stem", "block0_0", "block1_1", "block2_1", "block3_2")
    widths: tuple[int, ...] = (64, 96, 192)  # decoder width at each level, shallow to deep
    tail: tuple[int, ...] = (32, 16)  # widths at strides 2 and 1
    trained: dict[str, Any] = field(default_factory=dict, compare=False)  # provenance only

    def to_dict(self) -> dict[str, Any]:
        return {"type": "adain", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaINConfig:
        d = {k: v for k, v in d.items() if k != "type"}
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AdaIN config keys: {', '.join(sorted(unknown))}")
        for k, most in MAX_ENTRIES.items():
            if k in d:
                if not isinstance(d[k], (list, tuple)) or len(d[k]) > most:
                    raise ValueError(f"{k} must be a list of at most {most} entries")
                d[k] = tuple(d[k])
        if "trained" in d and not isinstance(d["trained"], dict):
            raise ValueError("trained must be an object")
        cfg = cls(**d)
        if not isinstance(cfg.encoder, str) or cfg.encoder not in ENCODERS:
            raise ValueError(
                f"unknown encoder {str(cfg.encoder)[:40]!r}; expected one of {ENCODERS}"
            )
        if not cfg.levels or len(cfg.levels) != len(cfg.level_channels):
            raise ValueError("levels and level_channels differ in length (or are empty)")
        # The layers must be the encoder's, and each level's channels its layer's: the
        # decoder is built for those (a wrong count would fail only when stylising).
        layers = encoder_layers(cfg.encoder)
        for name in (*cfg.levels, *cfg.style_layers):
            if not isinstance(name, str) or name not in layers:
                shown = str(name)[:40] if isinstance(name, str) else type(name).__name__
                raise ValueError(
                    f"unknown layer {shown!r} of {cfg.encoder} (its layers: {', '.join(layers)})"
                )
        for name, channels in zip(cfg.levels, cfg.level_channels, strict=True):
            if channels != layers[name]:
                raise ValueError(
                    f"level {name} has {layers[name]} channels, not {str(channels)[:20]}"
                )
        if cfg.encoder == "efficientnet-lite0" and len(cfg.widths) != len(cfg.levels):
            raise ValueError("widths must give one width per level")
        for v in (*cfg.level_channels, *cfg.widths, *cfg.tail):
            if not (isinstance(v, int) and 1 <= v <= 1024):
                raise ValueError(f"channel count {v!r} out of range 1..1024")
        return cfg


# Entries of a config's lists at most (the shipped network has 3 levels, 5 style layers,
# 3 widths and 2 tail widths; the VGG19 one 1 level and 4 style layers).
MAX_ENTRIES = {"levels": 8, "level_channels": 8, "style_layers": 32, "widths": 8, "tail": 8}


def encoder_layers(encoder: str) -> dict[str, int]:
    """The layers of an AdaIN encoder that a config may name (as levels or style layers),
    with their channels, shallow to deep: EfficientNet-Lite0's stem and blocks, or the
    published VGG's ReLUs up to relu4_1 (where that encoder ends)."""
    if encoder == "vgg19":
        out, channels = {}, 3
        for spec in _VGG_NORMALISED:
            if spec[0] == "conv":
                channels = spec[2]
            elif spec[0] == "relu":
                out[spec[1]] = channels
                if spec[1] == "relu4_1":
                    break
        return out
    from artgen.models.backbones import _LITE0_STAGES

    out = {"stem": 32}
    for i, (repeats, _kernel, _stride, _expand, cout) in enumerate(_LITE0_STAGES):
        for j in range(repeats):
            out[f"block{i}_{j}"] = cout
    return out


VGG19_CONFIG = AdaINConfig(
    encoder="vgg19",
    levels=("relu4_1",),
    level_channels=(512,),
    style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"),
    widths=(),
    tail=(),
)
LITE0_CONFIG = AdaINConfig()


# ------------------------------------------------------------------ VGG19 (the paper's)


# naoto0804/pytorch-AdaIN (net.py): its "vgg" and "decoder", each one nn.Sequential.
def _vgg_encoder_layout() -> list[tuple]:
    """pytorch-AdaIN's ``vgg`` (net.py): a 1x1 conv (the Caffe normalisation), then VGG19's
    sixteen padded 3x3 convs and ReLUs up to relu5_4, a max-pool between blocks."""
    layout: list[tuple] = [("conv", 3, 3, 1)]
    cin = 3
    for block, (cout, convs) in enumerate(((64, 2), (128, 2), (256, 4), (512, 4), (512, 4)), 1):
        layout += [("pool",)] if block > 1 else []
        for i in range(1, convs + 1):
            layout += [("pad",), ("conv", cin, cout, 3), ("relu", f"relu{block}_{i}")]
            cin = cout
    return layout


_VGG_NORMALISED = _vgg_encoder_layout()


def _layer(spec: tuple) -> nn.Module:
    if spec[0] == "conv":
        return nn.Conv2d(spec[1], spec[2], spec[3])
    if spec[0] == "pad":
        return nn.ReflectionPad2d(1)
    if spec[0] == "relu":
        return nn.ReLU()
    if spec[0] == "pool":
        return nn.MaxPool2d(2, 2, 0, ceil_mode=True)
    return nn.Upsample(scale_factor=2, mode="nearest")


def vgg_normalised_sequential() -> nn.Sequential:
    """The published encoder's module list (load ``vgg_normalised.pth`` into this, strictly)."""
    return nn.Sequential(*[_layer(s) for s in _VGG_NORMALISED])


def vgg_encoder(seq: nn.Sequential, last: str = "relu4_1") -> FeatureExtractor:
    """Named stages (conv0, relu1_1, pool1 ...) of a loaded VGG-normalised Sequential."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    pending: list[nn.Module] = []
    pools = 0
    for spec, module in zip(_VGG_NORMALISED, seq, strict=True):
        if spec[0] == "relu":
            stages[f"pre_{spec[1]}"] = nn.Sequential(*pending)
            stages[spec[1]] = module
            pending = []
            if spec[1] == last:
                break
        elif spec[0] == "pool":
            pools += 1
            stages[f"pool{pools}"] = module
        else:
            pending.append(module)
    from artgen.models.backbones import VGG19_SPEC

    # The 1x1 conv inside does the Caffe normalisation: feed [0, 1] RGB as is.
    return FeatureExtractor(stages, VGG19_SPEC, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _vgg_decoder_layout() -> list[tuple]:
    """pytorch-AdaIN's ``decoder`` (net.py): the encoder up to relu4_1 mirrored, nearest 2x
    upsampling for the pools, no ReLU after the last conv."""
    layout: list[tuple] = []
    cin = 512
    for cout in (256, "up", 256, 256, 256, 128, "up", 128, 64, "up", 64, 3):
        if cout == "up":
            layout.append(("up",))
            continue
        layout += [("pad",), ("conv", cin, cout, 3), ("relu", "")]
        cin = cout
    return layout[:-1]


_VGG_DECODER = _vgg_decoder_layout()


class VGGDecoder(nn.Module):
    """The paper's decoder, keyed like pytorch-AdaIN's ``decoder.pth`` (``0.weight`` is not
    there: index 1 is the first conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(*[_layer(s) for s in _VGG_DECODER])

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.net(feats[-1])

    # The published file has the Sequential's keys at the top level.
    def load_published(self, sd: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(sd, strict=True)

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()


# ------------------------------------------------------------------ EfficientNet-Lite0


# Which of a 3x3 kernel's taps (rows) add up to each tap (columns) of the 4x4 transposed
# kernel below, along one axis.
_UP_TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)


def upsample_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The 4x4 transposed-conv kernel (in, out, 4, 4) of :func:`upsample_conv` for a 3x3
    conv's ``weight`` (out, in, 3, 3)."""
    taps = _UP_TAPS.to(weight.device)
    with torch.autocast(weight.device.type, enabled=False):  # sums of taps, not rounded
        return torch.einsum("mk,nl,ockl->comn", taps, taps, weight.float()).to(weight.dtype)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(reflect_pad_1(upsample_nearest_2x(x)), weight, bias)`` for a 3x3 kernel,
    computed without making the upsampled picture: the same numbers (to float rounding)
    at 4/9 of the multiply-adds, and no full-size intermediate to write, pad and read.

    Each output pixel of a 3x3 conv over a nearest-upsampled input sees only 2x2 input
    pixels, its 9 taps summed into 4 that depend on the pixel's phase: a stride-2
    transposed conv with a 4x4 kernel (padding 3). Reflection padding by one of the
    upsampled picture equals replicate padding by one of the small one, because each
    border pixel is doubled. ``weight`` is the transposed kernel from
    :func:`upsample_conv_weight`.
    """
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv_transpose2d(x, weight, bias, stride=2, padding=3)


# Which taps of a 3x3 kernel (columns) add up to each tap of the 2x2 kernel (rows) of an
# output pixel's phase (0: even, 1: odd), along one axis: see upsample_conv_phases.
_PHASE_TAPS = torch.tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=torch.float32)
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def upsample_phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """The four 2x2 kernels of :func:`upsample_conv_phases`, stacked (4 out, in, 2, 2)
    in the order of ``_PHASES``, for a 3x3 conv's ``weight`` (out, in, 3, 3)."""
    t = _PHASE_TAPS.to(weight.device)
    w = weight.float()  # sums of taps, not rounded
    k = torch.cat([torch.einsum("rk,sl,ockl->ocrs", t[a], t[b], w) for a, b in _PHASES])
    return k.to(weight.dtype)


def upsample_conv_phases(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """:func:`upsample_conv` as four 2x2 convs of the small picture, one per phase of the
    output pixel (row and column even or odd), interleaved by a pixel shuffle: the same
    numbers and multiply-adds. This is the form the ONNX graphs use: with it onnxruntime's
    CPU kernels ran the painting graph 1.16x faster than with the upsampled picture's 3x3
    convs, its transposed conv no faster (512 x 341 px, one thread, 2026-12-07).
    ``weight`` is :func:`upsample_phase_weight`'s.

    Phase (a, b) at (i, j) reads rows i - 1 + a, i + a and columns j - 1 + b, j + b of
    the small picture, i.e. a 2x2 window of the replicate-padded one at offset (a, b).
    The windows are cut with constant ends only ([:-1] or [1:]): torch.onnx's dynamo
    exporter mis-derived symbolic ends (a + h) for sizes other than the traced one."""
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    n = weight.shape[0] // 4
    rows = (xp[:, :, :-1], xp[:, :, 1:])
    phases = [
        F.conv2d(rows[a][..., :-1] if b == 0 else rows[a][..., 1:], weight[k * n : (k + 1) * n])
        for k, (a, b) in enumerate(_PHASES)
    ]
    y = F.pixel_shuffle(torch.stack(phases, 2).flatten(1, 2), 2)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _conv(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SkipDecoder(nn.Module):
    """A small U-Net decoder: deepest AdaIN level in, shallower AdaIN levels merged by
    concatenation after each nearest-neighbour upsampling, then two upsamplings to RGB."""

    def __init__(
        self, level_channels: Sequence[int], widths: Sequence[int], tail: Sequence[int]
    ) -> None:
        super().__init__()
        n = len(level_channels)
        self.deep = nn.Sequential(
            _conv(level_channels[-1], widths[-1]), _conv(widths[-1], widths[-1])
        )
        self.merge = nn.ModuleList()
        for k in range(n - 2, -1, -1):  # stride 8, then 4
            self.merge.append(
                nn.Sequential(
                    _conv(widths[k + 1] + level_channels[k], widths[k]), _conv(widths[k], widths[k])
                )
            )
        chans = [widths[0], *tail]
        self.tail = nn.ModuleList(_conv(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True))
        self.to_rgb = _conv(chans[-1], 3, relu=False)

    def _up_weight(self, conv: nn.Conv2d, lo: int, hi: int, phases: bool = False) -> torch.Tensor:
        """The transposed kernel (or with ``phases`` the four 2x2 kernels) for input
        channels lo:hi of ``conv``; the transposed one computed once per weight version
        when no gradient is wanted (it is then a constant)."""
        make = upsample_phase_weight if phases else upsample_conv_weight
        w = conv.weight[:, lo:hi]
        # The phase form is traced into ONNX graphs: no cache there (a side effect to the
        # exporter), the kernels are made in the graph and folded by onnxruntime.
        if phases or (torch.is_grad_enabled() and conv.weight.requires_grad):
            return make(w)
        # Kept on the conv itself, stamped with the weight's storage and version, so a
        # copied, moved or updated network never uses a stale kernel.
        stamp = (lo, hi, conv.weight._version, conv.weight.data_ptr(), conv.weight.dtype)
        hit = getattr(conv, "_artgen_up_kernel", None)
        if hit is None or hit[0] != stamp:
            with torch.no_grad():
                hit = (stamp, make(w).to(w.dtype))
            conv._artgen_up_kernel = hit
        return hit[1]

    def _upsample_conv(self, x: torch.Tensor, conv: nn.Conv2d, n: int, phases: bool):
        if phases:
            return upsample_conv_phases(x, self._up_weight(conv, 0, n, True), conv.bias)
        return upsample_conv(x, self._up_weight(conv, 0, n), conv.bias)

    def trims(self, crop: int) -> tuple[int, int, int]:
        """For a picture whose outer ``crop`` px on every side will be cut off: the px
        (multiples of each grid) :meth:`forward` drops on every side after the last merge's
        first conv (stride 2**len(tail)) and before the tail's last upsampling (stride 2),
        and their sum, what the output lacks on every side.

        What is kept reaches as far past the picture as what follows can see, so the
        picture is the same as without trimming (a test checks it): a 3x3 conv at stride s
        sees s px further, an upsampling conv from stride 2s sees 2s, to_rgb 1."""
        t = len(self.tail)
        if crop <= 0 or t == 0:
            return 0, 0, 0
        s = 2**t
        reach = s + sum(2 ** (k + 1) for k in range(t)) + 1  # conv, the tail's upsamplings, rgb
        first = max(0, (crop - -(-reach // s) * s) // s * s)
        # Before the last upsampling (stride 2): its reach 2 plus to_rgb's 1, kept as 4 px.
        last = max(0, (crop - first - 4) // 2 * 2) if t > 1 else 0
        return first, last, first + last

    def forward(
        self, feats: Sequence[torch.Tensor], crop: int = 0, phases: bool = False
    ) -> torch.Tensor:
        """Upsample, concatenate the skip, conv: computed as one transposed conv of the small
        picture plus a conv of the skip (the same sum, see :func:`upsample_conv`), which
        is faster on a CPU than making the upsampled, concatenated picture. ``phases``: the
        form of :func:`upsample_conv_phases` (for the ONNX graphs).

        ``crop``: the caller cuts this many px off every side of the picture, so the finer
        stages work only on what it keeps plus what that needs (:meth:`trims`; the output
        lacks ``trims(crop)[2]`` px on every side). With artgen's 32 px border that is 22%
        fewer pixels at full size for a 512 x 341 photo (520 x 360 instead of 576 x 416)."""
        first, last, _ = self.trims(crop)
        x = self.deep(feats[-1])
        for i, (block, skip) in enumerate(zip(self.merge, reversed(feats[:-1]), strict=True)):
            skip = skip.to(x.dtype)
            if phases or tuple(skip.shape[-2:]) == (2 * x.shape[-2], 2 * x.shape[-1]):
                conv, n = block[0][1], x.shape[1]
                y = self._upsample_conv(x, conv, n, phases)
                y = y + F.conv2d(F.pad(skip, (1, 1, 1, 1), mode="reflect"), conv.weight[:, n:])
                y = F.relu(y, inplace=True)
            else:  # not a factor of 2 (never for inputs padded to the encoder's stride)
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
                y = block[0](torch.cat([x, skip], 1))
            if first and i == len(self.merge) - 1:
                k = first // 2 ** len(self.tail)
                y = y[..., k:-k, k:-k]
            x = block[1](y)
        for i, block in enumerate(self.tail):
            if last and i == len(self.tail) - 1:
                x = x[..., last // 2 : -(last // 2), last // 2 : -(last // 2)]
            conv = block[1]
            x = F.relu(self._upsample_conv(x, conv, conv.in_channels, phases), inplace=True)
        return self.to_rgb(x)

    def forward_reference(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` the straightforward way (for tests and the benchmark)."""
        x = self.deep(feats[-1])
        for block, skip in zip(self.merge, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip.to(x.dtype)], 1))
        for block in self.tail:
            x = block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.to_rgb(x)


def build_decoder(config: AdaINConfig) -> nn.Module:
    if config.encoder == "vgg19":
        return VGGDecoder()
    return SkipDecoder(config.level_channels, config.widths, config.tail)


def build_encoder(config: AdaINConfig, state_dict: dict[str, torch.Tensor] | None = None):
    """The frozen encoder, cut after the deepest layer the method needs."""
    if config.encoder == "vgg19":
        seq = vgg_normalised_sequential()
        if state_dict is not None:
            seq.load_state_dict(state_dict, strict=True)
        enc = vgg_encoder(seq, "relu4_1")
    else:
        enc = efficientnet_lite0(state_dict)
    return enc.truncate([*config.levels, *config.style_layers])


def _tile_starts(size: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Where tiles of ``tile`` px start along a side of ``size`` px (a multiple of
    ``multiple``): ``overlap`` apart at least, the last one flush with the end."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return [s // multiple * multiple for s in starts]


def _core(start: int, starts: list[int], tile: int, size: int) -> tuple[int, int]:
    """The part of the picture a tile answers for in the statistics: from the middle of
    its overlap with the previous tile to the middle of its overlap with the next, on the
    encoder's stride (16), so that the parts of all tiles partition the picture."""
    i = starts.index(start)
    lo = 0 if i == 0 else (starts[i - 1] + tile + start) // 2 // 16 * 16
    hi = size if i == len(starts) - 1 else (start + tile + starts[i + 1]) // 2 // 16 * 16
    return lo, hi


# How far into a tile its edge still changes the output: measured for the shipped network
# (EfficientNet-Lite0 to stride 16 and its decoder) on a 512 px tile of a 1024 px photo,
# the mean error against the whole picture is 0.088 at the edge, 0.037 at 32-48 px, 0.003
# at 64-96 px and 0 from 96 px on.
TILE_EDGE = 96


def _ramp(start: int, length: int, size: int, overlap: int, device) -> torch.Tensor:
    """Blending weights along one side of a tile. Where another tile overlaps it, the
    outer TILE_EDGE px get weight 0 (the encoder's zero padding and the decoder's edge
    effects reach that far: the frame of artefacts that ``border`` keeps off a whole
    picture), then the weight rises linearly to 1 over the rest of the overlap but its
    other TILE_EDGE px. The two tiles' dead bands sit at opposite ends of their overlap,
    so every pixel keeps a weight, and it comes only from tiles that compute it as the
    whole picture would."""
    dead = min(TILE_EDGE, (overlap - 1) // 2)
    w = torch.ones(length, device=device)
    rise = overlap - 2 * dead
    ramp = torch.zeros(overlap, device=device)
    ramp[dead : dead + rise] = (torch.arange(rise, device=device, dtype=torch.float32) + 1) / (
        rise + 1
    )
    ramp[dead + rise :] = 1.0
    if start > 0:
        w[:overlap] = ramp
    if start + length < size:
        w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
    return w


class AdaINModel(nn.Module):
    """Encoder (frozen) + AdaIN at ``config.levels`` + decoder.

    ``forward(content, stats, alpha)``: content RGB in [0, 1] of any size, ``stats`` from
    :meth:`style_stats` (or blended with :func:`blend_stats`), ``alpha`` the content/style
    trade-off of the paper (eq. 11: t = alpha AdaIN(f(c), f(s)) + (1 - alpha) f(c)).
    The output is not clamped (training needs the raw values); callers clamp to [0, 1].
    """

    def __init__(self, encoder: FeatureExtractor, decoder: nn.Module, config: AdaINConfig):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.config = config
        self.encoder.requires_grad_(False)
        # Inputs are reflect-padded up to a multiple of this, so any size works.
        self.multiple = 8 if config.encoder == "vgg19" else 16

    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.encoder(x, layers)

    def style_stats(self, style: torch.Tensor) -> Stats:
        f = self.encoder(style, self.config.levels)
        return [level_stats(f[name]) for name in self.config.levels]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        # Up to a multiple of the encoder's stride, and to at least two cells at the deepest
        # level (the decoder's reflection padding needs that).
        ph = max((-h) % self.multiple, 2 * self.multiple - h)
        pw = max((-w) % self.multiple, 2 * self.multiple - w)
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, h, w

    def stylise_features(
        self,
        content: torch.Tensor,
        stats: Stats,
        alpha: float | torch.Tensor = 1.0,
        wct: Sequence[int] = (),
    ) -> list[torch.Tensor]:
        """The targets t at every level (the decoder's input and the content loss's target):
        AdaIN, or whitening-colouring at the level indices in ``wct``."""
        f = self.encoder(content, self.config.levels)
        levels = enumerate(zip(self.config.levels, stats, strict=True))
        return [transform_level(f[name], st, alpha, k in wct) for k, (name, st) in levels]

    def forward(
        self,
        content: torch.Tensor,
        stats: Stats,
        alpha: float | torch.Tensor = 1.0,
        border: int = 0,
        wct: Sequence[int] = (),
    ) -> torch.Tensor:
        """``border``: reflect-pad the photo by this many pixels on every side and crop them
        off the output, so that the encoder's zero padding falls outside the picture.
        ``wct``: the level indices that get whitening-colouring instead of AdaIN."""
        x, h, w, b = self._prepare(content, border)
        return self._paint(self.stylise_features(x, stats, alpha, wct), h, w, b)

    def _prepare(self, content: torch.Tensor, border: int) -> tuple[torch.Tensor, int, int, int]:
        b = border
        if b:
            h0, w0 = content.shape[-2:]
            mode = "reflect" if b < min(h0, w0) else "replicate"
            content = F.pad(content, (b, b, b, b), mode=mode)
        x, h, w = self._pad(content)
        return x, h, w, b

    def forward_masked(
        self,
        content: torch.Tensor,
        region_stats: Sequence[Stats],
        weights: torch.Tensor,
        alpha: float | torch.Tensor = 1.0,
        border: int = 0,
        wct: Sequence[int] = (),
    ) -> torch.Tensor:
        """:meth:`forward` with regional styles: ``region_stats[r]`` are region r's style
        statistics (as :meth:`style_stats` gives them), ``weights`` (N or 1, R, H, W) the
        regions' soft masks at the content's size, summing to at most 1 at each pixel
        (where they sum to less, the content's own features fill in). The masks are padded
        as the photo is and area-resampled to every AdaIN level (:func:`adain_regions`)."""
        x, h, w, b = self._prepare(content, border)
        m, _, _, _ = self._prepare(weights.float(), border)
        f = self.encoder(x, self.config.levels)
        t = [
            adain_regions(
                f[name],
                [rs[k] for rs in region_stats],
                resize_mask(m, f[name].shape[-2:]),
                alpha,
                wct=k in wct,
            )
            for k, name in enumerate(self.config.levels)
        ]
        return self._paint(t, h, w, b)

    def _decode(self, t: list[torch.Tensor], crop: int = 0) -> torch.Tensor:
        """The decoder's picture; ``crop`` (SkipDecoder only): the px the caller cuts off
        every side, which it skips (the picture then lacks ``trims(crop)[2]`` a side)."""
        dtype = next(self.decoder.parameters()).dtype
        if t[0].is_cuda and torch.is_autocast_enabled():
            dtype = torch.get_autocast_dtype("cuda")
        t = [v.to(dtype) for v in t]
        return self.decoder(t, crop=crop) if crop else self.decoder(t)

    def _paint(self, t: list[torch.Tensor], h: int, w: int, b: int) -> torch.Tensor:
        """The picture of the padded photo (``h`` x ``w`` with its ``b`` px border) without
        the border, which artgen's own decoder does not paint beyond what it needs."""
        crop = b if isinstance(self.decoder, SkipDecoder) else 0
        d = self.decoder.trims(crop)[2] if crop else 0
        return self._decode(t, crop=crop)[..., b - d : h - b - d, b - d : w - b - d]

    def _tiled_stats(
        self,
        x: torch.Tensor,
        tile: int,
        overlap: int,
        on_tile: Callable[[int, int], None] | None = None,
        total: int = 0,
        weights: torch.Tensor | None = None,
        level_masks: dict | None = None,
    ) -> Stats | list[Stats]:
        """Channel mean and std of the features of ``x`` (a multiple of the stride in size)
        at every AdaIN level, from tiles: each tile's features are summed (in float64) over
        the tile's own part of the picture, away from its edges, and the parts partition
        the picture, so the result is the whole picture's.

        With ``weights`` (N or 1, R, H, W region masks at the size of ``x``): each region's
        weighted statistics, a list of R Stats (the masks resampled to each level as
        :meth:`forward_masked` does, kept in ``level_masks``)."""
        H, W = x.shape[-2:]
        rows = _tile_starts(H, tile, overlap, self.multiple)
        cols = _tile_starts(W, tile, overlap, self.multiple)
        n_regions = 1 if weights is None else weights.shape[1]
        sums: list[list] = [
            [[0.0, 0.0, 0.0, 0.0] for _ in range(n_regions)] for _ in self.config.levels
        ]
        level_masks = {} if level_masks is None else level_masks
        done = 0
        for y0 in rows:
            for x0 in cols:
                ty, tx = _core(y0, rows, tile, H), _core(x0, cols, tile, W)
                xt = x[..., y0 : y0 + tile, x0 : x0 + tile]
                f = self.encoder(xt, self.config.levels)
                for k, name in enumerate(self.config.levels):
                    v = f[name]
                    stride = xt.shape[-2] // v.shape[-2]
                    ys = slice((ty[0] - y0) // stride, (ty[1] - y0) // stride)
                    xs = slice((tx[0] - x0) // stride, (tx[1] - x0) // stride)
                    part = v[..., ys, xs].double()
                    flat = part.flatten(2)
                    if weights is None:
                        acc = sums[k][0]
                        acc[0] = acc[0] + part.sum((2, 3), keepdim=True)
                        acc[1] = acc[1] + (part * part).sum((2, 3), keepdim=True)
                        acc[2] += part.shape[-2] * part.shape[-1]
                        acc[3] = acc[3] + flat @ flat.transpose(1, 2)
                        continue
                    lm = self._level_mask(weights, k, stride, level_masks)
                    lm = lm[
                        ...,
                        y0 // stride : y0 // stride + v.shape[-2],
                        x0 // stride : x0 // stride + v.shape[-1],
                    ][..., ys, xs].double()
                    for r in range(n_regions):
                        m = lm[:, r : r + 1]
                        acc = sums[k][r]
                        acc[0] = acc[0] + (part * m).sum((2, 3), keepdim=True)
                        acc[1] = acc[1] + (part * part * m).sum((2, 3), keepdim=True)
                        acc[2] = acc[2] + m.sum((2, 3), keepdim=True)
                        acc[3] = acc[3] + (flat * m.flatten(2)) @ flat.transpose(1, 2)
                done += 1
                if on_tile is not None:
                    on_tile(done, total or len(rows) * len(cols))
        per_region: list[Stats] = [[] for _ in range(n_regions)]
        for level in sums:
            for r, (s1, s2, n, sxx) in enumerate(level):
                n = n.clamp_min(1e-8) if isinstance(n, torch.Tensor) else n
                mean = s1 / n
                var = (s2 / n - mean * mean).clamp_min(0)
                mu = mean.flatten(2)
                nn_ = n.flatten(2) if isinstance(n, torch.Tensor) else n
                cov = sxx / nn_ - mu @ mu.transpose(1, 2)
                per_region[r].append((mean.float(), (var + 1e-5).sqrt().float(), cov.float()))
        return per_region[0] if weights is None else per_region

    def _level_mask(self, weights: torch.Tensor, k: int, stride: int, cache: dict) -> torch.Tensor:
        """The region masks (at the size of the padded picture) at AdaIN level ``k``, whose
        stride is ``stride``: what :meth:`forward_masked` uses for the whole picture."""
        if k not in cache:
            H, W = weights.shape[-2:]
            cache[k] = resize_mask(weights.float(), (H // stride, W // stride))
        return cache[k]

    def style_stats_tiled(self, style: torch.Tensor, tile: int = 1024, overlap: int = 256) -> Stats:
        """:meth:`style_stats` in tiles, for a style image as large as a tiled output.
        Departure: the style is first reflect-padded to a multiple of the stride (under 16
        px of each side), which the untiled statistics do not see."""
        x, _, _ = self._pad(style)
        return self._tiled_stats(x, tile, overlap)

    def forward_tiled(
        self,
        content: torch.Tensor,
        stats: Stats | Sequence[Stats],
        alpha: float | torch.Tensor = 1.0,
        border: int = 0,
        tile: int = 1024,
        overlap: int = 256,
        on_tile: Callable[[int, int], None] | None = None,
        weights: torch.Tensor | None = None,
        wct: Sequence[int] = (),
    ) -> torch.Tensor:
        """:meth:`forward` in overlapping tiles, for pictures larger than memory.

        Two passes. The first encodes each tile and sums the features over the tile's own
        part of the picture (the parts partition it), which gives the whole picture's
        channel mean and std, the statistics AdaIN normalises by; per-tile statistics
        would give every tile a different colour. The second encodes each tile again,
        applies AdaIN with those statistics, decodes it and blends the overlaps with
        linear ramps, so no seam shows. Tiles start on the encoder's stride, so each
        sees the same pixel grid as the whole picture; only the receptive field near a
        tile's edge differs, and those pixels get no weight (see TILE_EDGE): with an
        overlap of at least 2 TILE_EDGE the result is the whole picture's, to float
        rounding, wherever the statistics are the same. Memory: one tile's activations
        plus the output (and a weight map) at full size. ``on_tile(done, total)`` is
        called after each tile of each pass.

        With ``weights`` (region masks, as :meth:`forward_masked` takes them) ``stats`` is
        one Stats per region; each region's content statistics are gathered over the whole
        picture in the first pass, and the result is :meth:`forward_masked`'s.
        """
        m = self.multiple
        if tile % m or overlap % m or not 0 < 2 * overlap < tile:
            raise ValueError(
                f"tile {tile} and overlap {overlap} must be multiples of {m} "
                "with 2 * overlap < tile"
            )
        x, h, w, b = self._prepare(content, border)
        masks = None if weights is None else self._prepare(weights.float(), border)[0]
        level_masks: dict = {}
        H, W = x.shape[-2:]
        rows, cols = _tile_starts(H, tile, overlap, m), _tile_starts(W, tile, overlap, m)
        spans = [(y0, x0) for y0 in rows for x0 in cols]
        total = 2 * len(spans)
        # Pass 1: the whole picture's statistics at every AdaIN level.
        content_stats = self._tiled_stats(x, tile, overlap, on_tile, total, masks, level_masks)
        done = len(spans)
        # Pass 2: stylise each tile with the whole picture's statistics and blend.
        out = torch.zeros(x.shape[0], 3, H, W, device=x.device)
        weight = torch.zeros(1, 1, H, W, device=x.device)
        for y0, x0 in spans:
            xt = x[..., y0 : y0 + tile, x0 : x0 + tile]
            f = self.encoder(xt, self.config.levels)
            if masks is None:
                t = [
                    transform_level(f[name], st, alpha, k in wct, content_stats=cs)
                    for k, (name, st, cs) in enumerate(
                        zip(self.config.levels, stats, content_stats, strict=True)
                    )
                ]
            else:
                t = []
                for k, name in enumerate(self.config.levels):
                    v = f[name]
                    stride = xt.shape[-2] // v.shape[-2]
                    lm = self._level_mask(masks, k, stride, level_masks)
                    lm = lm[
                        ...,
                        y0 // stride : y0 // stride + v.shape[-2],
                        x0 // stride : x0 // stride + v.shape[-1],
                    ]
                    t.append(
                        adain_regions(
                            v,
                            [rs[k] for rs in stats],
                            lm,
                            alpha,
                            content_stats=[cs[k] for cs in content_stats],
                            wct=k in wct,
                        )
                    )
            y = self._decode(t).float()
            wy = _ramp(y0, xt.shape[-2], H, overlap, x.device).view(1, 1, -1, 1)
            wx = _ramp(x0, xt.shape[-1], W, overlap, x.device).view(1, 1, 1, -1)
            wt = wy * wx
            out[..., y0 : y0 + tile, x0 : x0 + tile] += y * wt
            weight[..., y0 : y0 + tile, x0 : x0 + tile] += wt
            done += 1
            if on_tile is not None:
                on_tile(done, total)
        out /= weight
        return out[..., b : h - b, b : w - b]


def build_model(
    config: AdaINConfig, encoder_state: dict[str, torch.Tensor] | None = None
) -> AdaINModel:
    return AdaINModel(build_encoder(config, encoder_state), build_decoder(config), config)


__all__ = [
    "AdaINConfig",
    "AdaINModel",
    "LITE0_CONFIG",
    "VGG19_CONFIG",
    "adain",
    "adain_blend",
    "adain_regions",
    "blend_stats",
    "build_model",
    "upsample_conv",
    "upsample_conv_weight",
]
