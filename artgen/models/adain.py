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

No file I/O here: artgen.weights reads and writes these networks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artgen.losses import mean_std
from artgen.models.backbones import FeatureExtractor, efficientnet_lite0

ENCODERS = ("efficientnet-lite0", "vgg19")


def adain(
    content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y), per sample and channel (eq. 8)."""
    c_mean, c_std = mean_std(content, eps)
    return (content.float() - c_mean) / c_std * style_std + style_mean


Stats = list[tuple[torch.Tensor, torch.Tensor]]  # (mean, std) per AdaIN level, (N, C, 1, 1)


def blend_stats(stats: Sequence[Stats], weights: Sequence[float]) -> Stats:
    """Weighted mean of several styles' statistics (the paper's style interpolation, sec. 7).

    AdaIN is affine in (mean, std), so this equals blending the AdaIN outputs.
    """
    total = float(sum(weights))
    out: Stats = []
    for level in range(len(stats[0])):
        m = sum(s[level][0] * (w / total) for s, w in zip(stats, weights, strict=True))
        sd = sum(s[level][1] * (w / total) for s, w in zip(stats, weights, strict=True))
        out.append((m, sd))
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
        for k in ("levels", "level_channels", "style_layers", "widths", "tail"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = cls(**d)
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {cfg.encoder!r}; expected one of {ENCODERS}")
        if len(cfg.levels) != len(cfg.level_channels):
            raise ValueError("levels and level_channels differ in length")
        if cfg.encoder == "efficientnet-lite0" and len(cfg.widths) != len(cfg.levels):
            raise ValueError("widths must give one width per level")
        for v in (*cfg.level_channels, *cfg.widths, *cfg.tail):
            if not (isinstance(v, int) and 1 <= v <= 1024):
                raise ValueError(f"channel count {v!r} out of range 1..1024")
        return cfg


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

# naoto0804/pytorch-AdaIN net.py: "vgg" up to relu5_4, as one nn.Sequential.
_VGG_NORMALISED = [
    ("conv", 3, 3, 1), ("pad",), ("conv", 3, 64, 3), ("relu", "relu1_1"),
    ("pad",), ("conv", 64, 64, 3), ("relu", "relu1_2"), ("pool",),
    ("pad",), ("conv", 64, 128, 3), ("relu", "relu2_1"),
    ("pad",), ("conv", 128, 128, 3), ("relu", "relu2_2"), ("pool",),
    ("pad",), ("conv", 128, 256, 3), ("relu", "relu3_1"),
    ("pad",), ("conv", 256, 256, 3), ("relu", "relu3_2"),
    ("pad",), ("conv", 256, 256, 3), ("relu", "relu3_3"),
    ("pad",), ("conv", 256, 256, 3), ("relu", "relu3_4"), ("pool",),
    ("pad",), ("conv", 256, 512, 3), ("relu", "relu4_1"),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu4_2"),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu4_3"),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu4_4"), ("pool",),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu5_1"),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu5_2"),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu5_3"),
    ("pad",), ("conv", 512, 512, 3), ("relu", "relu5_4"),
]  # fmt: skip


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


_VGG_DECODER = [
    ("pad",), ("conv", 512, 256, 3), ("relu", ""), ("up",),
    ("pad",), ("conv", 256, 256, 3), ("relu", ""),
    ("pad",), ("conv", 256, 256, 3), ("relu", ""),
    ("pad",), ("conv", 256, 256, 3), ("relu", ""),
    ("pad",), ("conv", 256, 128, 3), ("relu", ""), ("up",),
    ("pad",), ("conv", 128, 128, 3), ("relu", ""),
    ("pad",), ("conv", 128, 64, 3), ("relu", ""), ("up",),
    ("pad",), ("conv", 64, 64, 3), ("relu", ""),
    ("pad",), ("conv", 64, 3, 3),
]  # fmt: skip


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

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
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
        return [mean_std(f[name]) for name in self.config.levels]

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
        self, content: torch.Tensor, stats: Stats, alpha: float | torch.Tensor = 1.0
    ) -> list[torch.Tensor]:
        """The AdaIN targets t at every level (the decoder's input and the content loss's target)."""
        f = self.encoder(content, self.config.levels)
        out = []
        for name, (m, s) in zip(self.config.levels, stats, strict=True):
            fc = f[name].float()
            t = adain(fc, m.float(), s.float())
            out.append(alpha * t + (1 - alpha) * fc)
        return out

    def forward(
        self,
        content: torch.Tensor,
        stats: Stats,
        alpha: float | torch.Tensor = 1.0,
        border: int = 0,
    ) -> torch.Tensor:
        """``border``: reflect-pad the photo by this many pixels on every side and crop them
        off the output, so that the encoder's zero padding falls outside the picture."""
        b = border
        if b:
            h0, w0 = content.shape[-2:]
            mode = "reflect" if b < min(h0, w0) else "replicate"
            content = F.pad(content, (b, b, b, b), mode=mode)
        x, h, w = self._pad(content)
        t = self.stylise_features(x, stats, alpha)
        dtype = next(self.decoder.parameters()).dtype
        if x.is_cuda and torch.is_autocast_enabled():
            dtype = torch.get_autocast_dtype("cuda")
        out = self.decoder([v.to(dtype) for v in t])
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
    "blend_stats",
    "build_model",
]
