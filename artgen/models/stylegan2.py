"""StyleGAN2 generator and discriminator in plain PyTorch (fp32, no custom CUDA ops).

Papers:

- Karras, Laine, Aittala, Hellsten, Lehtinen & Aila, "Analyzing and Improving the
  Image Quality of StyleGAN", CVPR 2020 (StyleGAN2): weight modulation and
  demodulation instead of AdaIN, a "skip" generator that sums upsampled RGB outputs
  of every resolution, a "resnet" discriminator, per-pixel noise inputs, the
  truncation trick in W.
- Karras, Aittala, Hellsten, Laine, Lehtinen & Aila, "Training Generative
  Adversarial Networks with Limited Data", NeurIPS 2020 (StyleGAN2-ADA), whose
  official PyTorch release fixes the details reproduced here: the 8-layer (or
  2-layer) mapping network with a 0.01 learning-rate multiplier, the
  ``channel_base // resolution`` channel counts, label conditioning (an embedding in
  the mapping network, a projection discriminator), activation clamping
  (``conv_clamp``), and the names of every parameter and buffer.
- Karras, Aila, Laine & Lehtinen, "Progressive Growing of GANs", ICLR 2018: the
  equalised learning rate (weights drawn from N(0, 1) and scaled at run time by
  1/sqrt(fan_in)) and the minibatch standard deviation layer.

Parameter and buffer names equal those of ``training/networks.py`` in
NVlabs/stylegan2-ada-pytorch, so the state dict of an official G/G_ema or D loads
with ``load_state_dict(strict=True)`` and gives the same images and logits as the
official code run in fp32 (checked on CPU against the official reference ops: identical
outputs, gradients and initial weights for the same seed). The code itself is
written from the papers.

Where this module departs from the official code (commented where they apply):

1. fp32 only: no fp16 blocks, channels-last or CUDA kernels. The official networks
   run their 4 highest resolutions in fp16 (``num_fp16_res=4``); their weights load
   here unchanged and match the official output with ``force_fp32=True``.
2. The moving average ``w_avg`` is updated only when asked (``update_w_avg=True``),
   not implicitly whenever the mapping network is in training mode.
3. ``noise_mode="random"`` can draw from an explicit ``torch.Generator``, so that
   sampling is reproducible without touching the global random state.
4. Only the generator's "skip" and the discriminator's "resnet" and "orig"
   architectures exist ("orig" is what the official CIFAR-10 networks use).
5. Freeze-D (Mo et al. 2020) is left to the caller (``requires_grad_(False)`` on the
   first blocks, named by ``Discriminator.block_names()``): the official code turns
   frozen weights into buffers, which changes nothing in the state dict.

Configs come from files (a converted model's ``config.json``, a pickle's init
kwargs), so :class:`StyleGAN2Config` bounds every size from above as well as
below (:data:`CONFIG_LIMITS`, well above every published StyleGAN2-ADA and
StyleGAN3 network), and the parameters of either network it describes to
:data:`MAX_PARAMETERS`. A network that still does not fit in memory is an
ArtgenError, not a RuntimeError from the allocator.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from artgen.core.errors import ArtgenError, short_repr
from artgen.core.files import write_json

__all__ = ["Discriminator", "Generator", "StyleGAN2Config"]

FORMAT = "artgen-stylegan2"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # a saved config.json is ~400 bytes

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)  # keeps the signal's second moment through a leaky ReLU
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # binomial low-pass filter for all resampling
# The official discriminator maps labels with the MappingNetwork defaults, whatever
# the generator's mapping network looks like.
D_MAPPING_LAYERS = 8
D_MAPPING_LR_MULTIPLIER = 0.01

# Inclusive bounds of each size (the upper ones only stop files from asking for absurd
# networks). Published networks, for comparison: StyleGAN2-ADA and StyleGAN3 go up to 1024 px,
# z_dim = w_dim = 512, 8 mapping layers (2 for some), channel_base 16384 to 65536 (StyleGAN3-R
# doubles 32768) and channel_max 512 (1024 for StyleGAN3-R), mbstd groups of 4 to 32; labels:
# up to the 1000 ImageNet classes.
CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "resolution": (4, 4096),  # and a power of two
    "img_channels": (1, 64),
    "z_dim": (1, 4096),
    "w_dim": (1, 4096),
    "c_dim": (0, 100_000),
    "mapping_layers": (1, 32),
    "channel_base": (1, 1 << 22),
    "channel_max": (1, 4096),
    "mbstd_group_size": (1, 1024),
    "mbstd_num_channels": (0, 4096),
}
# Parameters and buffers of either network (elements): 2 GiB of fp32. The largest official
# networks (1024 px) have about 30 million; a snapshot of at most DEFAULT_MAX_BYTES (4 GiB,
# artgen.interop.safe_pickle) cannot hold G, G_ema and D of more than ~360 million each.
MAX_PARAMETERS = 1 << 29
MAX_LR_MULTIPLIER = 100.0  # the mapping network's (0.01 in every published network)
MAX_CONV_CLAMP = 1e6  # 256 in the official fp16 networks

NoiseMode = Literal["random", "const", "none"]
_Model = TypeVar("_Model", bound="_Pretrained")


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleGAN2Config:
    """Hyper-parameters shared by the generator and the discriminator.

    Defaults are the official ones for a 32x32 network; the official "paper256" and
    "stylegan2" presets use ``channel_base`` 16384 and 32768, ``mapping_layers`` 8,
    and (because they train in fp16) ``conv_clamp`` 256.
    """

    resolution: int = 32  # power of two >= 4 (the discriminator needs >= 8)
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0  # conditioning labels, 0 = unconditional
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768  # channels at resolution r = min(channel_base // r, channel_max)
    channel_max: int = 512
    conv_clamp: float | None = None  # clamp conv outputs to +-conv_clamp
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    w_avg_beta: float = 0.995
    d_architecture: str = "resnet"  # "resnet" or "orig" (official CIFAR-10 networks)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ArtgenError:
            value = short_repr(getattr(self, name))  # file data: never more than 200 characters
            return ArtgenError(f"StyleGAN2 config: {name} {why}, got {value}")

        # Field types are strings here (from __future__ import annotations).
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(f.name, "must be an integer")
            if f.type == "float" and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise bad(f.name, "must be a number")
            if f.type == "float":
                if not math.isfinite(value):  # JSON's Infinity and NaN parse as floats
                    raise bad(f.name, "must be finite")
                object.__setattr__(self, f.name, float(value))
        for name, (low, high) in CONFIG_LIMITS.items():
            if not low <= getattr(self, name) <= high:
                raise bad(name, f"must be in [{low}, {high}]")
        r = self.resolution
        if r & (r - 1):
            raise bad("resolution", "must be a power of two")
        if min(self.channel_base // r, self.channel_max) < 1:
            raise bad("channel_base", f"leaves no channels at resolution {r}")
        if self.mbstd_num_channels and min(self.channel_base // 4, self.channel_max) % (
            self.mbstd_num_channels
        ):
            raise bad("mbstd_num_channels", "must divide the channels at resolution 4")
        # Published networks use 0.01 (and conv_clamp 256): the upper bounds only stop
        # absurd values, which could only draw blank images.
        if not 0 < self.mapping_lr_multiplier <= MAX_LR_MULTIPLIER:
            raise bad("mapping_lr_multiplier", f"must be > 0 (at most {MAX_LR_MULTIPLIER:g})")
        if not 0 <= self.w_avg_beta <= 1:
            raise bad("w_avg_beta", "must be in [0, 1]")
        if self.conv_clamp is not None:
            if isinstance(self.conv_clamp, bool) or not isinstance(self.conv_clamp, (int, float)):
                raise bad("conv_clamp", "must be a number or null")
            if not 0 < self.conv_clamp <= MAX_CONV_CLAMP:
                raise bad("conv_clamp", f"must be > 0 and finite (at most {MAX_CONV_CLAMP:g})")
            object.__setattr__(self, "conv_clamp", float(self.conv_clamp))
        if self.d_architecture not in ("resnet", "orig"):
            raise bad("d_architecture", 'must be "resnet" or "orig"')
        for network, count in self.parameter_counts().items():
            if count > MAX_PARAMETERS:
                raise ArtgenError(
                    f"StyleGAN2 config: the {network} would have {count:,} parameters, more "
                    f"than the {MAX_PARAMETERS:,} allowed (resolution {r}, z_dim {self.z_dim}, "
                    f"w_dim {self.w_dim}, c_dim {self.c_dim}, channel_max {self.channel_max})"
                )

    def parameter_counts(self) -> dict[str, int]:
        """Elements in the state dict of the generator and of the discriminator this config
        describes (parameters and buffers), computed without building them."""

        def fc(i: int, o: int) -> int:
            return i * o + o

        def conv(i: int, o: int, k: int, bias: bool = True) -> int:
            return o * i * k * k + (o if bias else 0) + 16  # + resample_filter

        w, ch = self.w_dim, self.channels
        g = (fc(self.c_dim, w) if self.c_dim else 0) + fc(self.z_dim + (w if self.c_dim else 0), w)
        g += (self.mapping_layers - 1) * fc(w, w) + w  # + w_avg
        res = 4
        while res <= self.resolution:
            c, c_in = ch(res), ch(res // 2) if res > 4 else 0

            def layer(i: int, o: int, res: int = res) -> int:  # SynthesisLayer
                return 16 + fc(w, i) + o * i * 9 + res * res + 1 + o

            g += 16 + (layer(c_in, c) if c_in else c * res * res) + layer(c, c)
            g += fc(w, c) + self.img_channels * c + self.img_channels  # toRGB
            res *= 2
        d, res = 0, self.resolution
        while res >= 8:
            c, c_out = ch(res), ch(res // 2)
            d += 16 + (conv(self.img_channels, c, 1) if res == self.resolution else 0)
            d += conv(c, c, 3) + conv(c, c_out, 3)
            d += conv(c, c_out, 1, bias=False) if self.d_architecture == "resnet" else 0
            res //= 2
        c4 = ch(4)
        cmap = c4 if self.c_dim else 0
        d += (fc(self.c_dim, cmap) + D_MAPPING_LAYERS * fc(cmap, cmap)) if self.c_dim else 0
        d += conv(c4 + self.mbstd_num_channels, c4, 3) + fc(c4 * 16, c4) + fc(c4, cmap or 1)
        return {"generator": g, "discriminator": d}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StyleGAN2Config:
        """Build a config from JSON-like data; unknown keys and bad values raise ArtgenError."""
        if not isinstance(d, dict):
            raise ArtgenError(f"StyleGAN2 config: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ArtgenError(f"StyleGAN2 config: unknown key {short_repr(unknown[0])}")
        return cls(**d)

    def channels(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channel_max)


# -- low-level operations ---------------------------------------------------------------------


def _fir_filter() -> torch.Tensor:
    """The 2-D [1,3,3,1] x [1,3,3,1] low-pass filter, normalised to unit DC gain."""
    taps = torch.tensor(FIR_TAPS, dtype=torch.float32)
    f = torch.outer(taps, taps)
    return f / f.sum()


def _upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    *,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (left, right, top, bottom), FIR-filter each
    channel (a true convolution), keep every ``down``-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, list(pad))
    kernel = (f * gain).flip([0, 1]).to(x.dtype)  # flipped: conv2d correlates
    x = F.conv2d(x, kernel[None, None].repeat(c, 1, 1, 1), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def _upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling with the FIR filter (gain 4 keeps the mean after zero insertion)."""
    fw = f.shape[-1]
    lo, hi = (fw + 1) // 2, (fw - 2) // 2
    return _upfirdn2d(x, f, up=2, pad=(lo, hi, lo, hi), gain=4.0)


def _conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    *,
    up: int = 1,
    down: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Same-size convolution (padding kernel // 2) with optional 2x up- or downsampling.

    Upsampling is a stride-2 transposed convolution followed by the FIR filter;
    downsampling is the FIR filter followed by a stride-2 convolution (a 1x1 kernel
    is applied after downsampling, which is cheaper and the same operation).
    """
    out_ch, in_per_group, k, _ = w.shape
    p = k // 2
    if f is None or (up == 1 and down == 1):
        return F.conv2d(x, w, padding=p, groups=groups)
    fw = f.shape[-1]
    if up == 2 and down == 1:
        # Pad amounts of "zero-insert, pad, FIR" rewritten for the transposed conv,
        # whose output is already k - 1 pixels larger than 2x the input.
        lo = p + (fw + 1) // 2 - (k - 1)
        hi = p + (fw - 2) // 2 - (k - 2)
        if lo < 0 or hi < 0:
            raise ValueError(f"upsampling conv needs a kernel of at most {fw} taps, got {k}")
        # conv_transpose2d wants [in, out / groups, k, k].
        w = w.reshape(groups, out_ch // groups, in_per_group, k, k).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_ch // groups, k, k)
        x = F.conv_transpose2d(x, w, stride=2, groups=groups)
        return _upfirdn2d(x, f, pad=(lo, hi, lo, hi), gain=4.0)
    if down == 2 and up == 1:
        lo, hi = p + (fw - 1) // 2, p + (fw - 2) // 2
        if k == 1:
            x = _upfirdn2d(x, f, down=2, pad=(lo, hi, lo, hi))
            return F.conv2d(x, w, groups=groups)
        x = _upfirdn2d(x, f, pad=(lo, hi, lo, hi))
        return F.conv2d(x, w, stride=2, groups=groups)
    raise ValueError(f"unsupported resampling up={up} down={down}")


def _bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    activation: str,
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias, apply the activation, scale by its gain, clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = LRELU_GAIN * gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution (paper, section 2.2 and eq. 1-3).

    Each input channel i of sample n is scaled by ``styles[n, i]`` (modulation);
    with ``demodulate`` each output channel is then divided by the L2 norm of its
    modulated weights, which restores unit output variance for unit-variance input.
    ``fused=True`` builds per-sample weights and runs one grouped convolution;
    ``fused=False`` scales the activations before and after a shared convolution
    (the same maths, cheaper for large training batches). Noise is added last.
    """
    n = x.shape[0]
    out_ch, in_ch, k, _ = weight.shape
    w = dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused:
        x = x * styles.reshape(n, -1, 1, 1)
        x = _conv2d(x, weight, resample_filter, up=up)
        if dcoefs is not None and noise is not None:
            return torch.addcmul(noise, x, dcoefs.reshape(n, -1, 1, 1))  # noise + x * dcoefs
        if dcoefs is not None:
            x = x * dcoefs.reshape(n, -1, 1, 1)
        return x + noise if noise is not None else x

    if dcoefs is not None:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, n * in_ch, *x.shape[2:])
    x = _conv2d(x, w.reshape(n * out_ch, in_ch, k, k), resample_filter, up=up, groups=n)
    x = x.reshape(n, out_ch, *x.shape[2:])
    return x + noise if noise is not None else x


# -- layers ------------------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate: weight ~ N(0, 1/lr_mul^2), multiplied
    at run time by lr_mul / sqrt(fan_in); bias multiplied by lr_mul."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return _bias_act(x.matmul(w.t()), b, self.activation)


class _Filtered(nn.Module):
    """A layer with the FIR resampling filter (a buffer, as in the official layers, so the
    state-dict keys match) and an optional clamp of its outputs."""

    def __init__(self, conv_clamp: float | None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _fir_filter())


class Conv2dLayer(_Filtered):
    """Convolution with equalised learning rate (run-time gain 1/sqrt(fan_in)),
    optional FIR-filtered 2x downsampling, bias, activation and clamping."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__(conv_clamp)
        self.activation = activation
        self.down = down
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = _conv2d(x, w, self.resample_filter, down=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _bias_act(x, self.bias, self.activation, gain, clamp)


class MappingNetwork(nn.Module):
    """z (and label c) -> w: normalise, an MLP of leaky-ReLU layers with a reduced
    learning rate, then broadcast to ``num_ws`` copies and apply truncation."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int,
        lr_multiplier: float,
        w_avg_beta: float | None,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = w_dim if c_dim > 0 else 0
        features = [z_dim + embed_features] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None = None,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            _check_shape(z, [None, self.z_dim], "z")
            parts.append(_normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            _check_shape(c, [None, self.c_dim], "c (class labels)")
            parts.append(_normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        # Departure: the official code updates w_avg whenever the module is in
        # training mode; here the caller asks for it.
        if update_w_avg:
            if not hasattr(self, "w_avg"):
                raise ValueError("this mapping network keeps no w_avg")
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


class SynthesisLayer(_Filtered):
    """Modulated 3x3 convolution (optionally 2x upsampling), noise, bias, leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        up: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__(conv_clamp)
        self.resolution = resolution
        self.up = up
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        # A persistent buffer, so it is saved with the weights ("const" noise is
        # the same after loading).
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        *,
        noise_mode: NoiseMode = "random",
        fused: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            # Departure: may draw from an explicit generator (on its own device).
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            device = generator.device if generator is not None else x.device
            noise = torch.randn(shape, generator=generator, device=device).to(x.device)
            noise = noise * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            up=self.up,
            noise=noise,
            resample_filter=self.resample_filter,
            fused=fused,
        )
        return _bias_act(x, self.bias, "lrelu", 1.0, self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation (paper, section 2.2)."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        # Equalised learning rate for the weight, folded into the styles.
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, fused: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return _bias_act(x, self.bias, "linear", 1.0, self.conv_clamp)


class SynthesisBlock(_Filtered):
    """One resolution of the "skip" generator (paper, figure 7b): a learned constant
    (4x4) or two modulated convolutions (the first upsamples), then a toRGB output
    added to the upsampled image of the previous resolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
    ):
        super().__init__(conv_clamp)
        self.in_channels = in_channels
        self.resolution = resolution
        self.num_conv = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp
            )
            self.num_conv = 2
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        *,
        noise_mode: NoiseMode = "random",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # As the official code: per-sample weights (fused) for inference, scaled
        # activations around one shared convolution for training.
        fused = not self.training
        w_iter = iter(ws.unbind(dim=1))
        kw = dict(noise_mode=noise_mode, fused=fused, generator=generator)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x, next(w_iter), **kw)
        x = self.conv1(x, next(w_iter), **kw)
        y = self.torgb(x, next(w_iter), fused=fused)
        img = _upsample2x(img, self.resample_filter) + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, resolution, resolution]."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        self.w_dim = config.w_dim
        self.block_resolutions = [2**i for i in range(2, config.resolution.bit_length())]
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = config.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(
                in_channels,
                config.channels(res),
                config.w_dim,
                res,
                config.img_channels,
                conv_clamp=config.conv_clamp,
            )
            # Consecutive blocks share a w: the toRGB of one block and the first
            # conv of the next. Only the last toRGB needs a w of its own.
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "random",
        return_features: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f'noise_mode must be "random", "const" or "none", got {noise_mode!r}')
        _check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        x = img = None
        features = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, generator=generator)
            features.append(x)
        return (img, features) if return_features else img


class DiscriminatorBlock(_Filtered):
    """One resolution of the discriminator (paper, figure 7c): [fromRGB,] two 3x3
    convolutions (the second downsamples 2x) and, for "resnet", a 1x1 downsampling
    skip connection, the two branches summed with gain sqrt(1/2)."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        img_channels: int,
        architecture: str,
        conv_clamp: float | None = None,
    ):
        super().__init__(conv_clamp)
        self.architecture = architecture
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp
        )
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is the image for the first block, features for the others."""
        if hasattr(self, "fromrgb"):
            x = self.fromrgb(x)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            return y + x
        return self.conv1(self.conv0(x))


class MinibatchStdLayer(nn.Module):
    """Appends the standard deviation of features across groups of samples (ProGAN,
    section 3), averaged over channels (in ``num_channels`` groups) and pixels.

    Groups are strided: sample i belongs to group i % (N // group_size).
    """

    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"batch size {n} is not a multiple of the mbstd group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # std over each group
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: minibatch stddev, 3x3 conv, dense layer, output layer; with
    labels, a projection onto the mapped label (Miyato & Koyama 2018)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        mbstd_group_size: int,
        mbstd_num_channels: int,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            3,
            activation="lrelu",
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


# -- networks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _allocating(what: str, config: StyleGAN2Config):
    """Turn the allocator's failure while building (or moving) a network into an ArtgenError:
    a config within the limits can still be more than this machine holds."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        text = str(e)
        if isinstance(e, RuntimeError) and not (
            isinstance(e, torch.OutOfMemoryError)
            or any(s in text for s in ("not enough memory", "out of memory", "can't allocate"))
        ):
            raise  # a bug, not a full memory: keep its traceback
        count = config.parameter_counts()[what]
        raise ArtgenError(
            f"StyleGAN2 {what} of {count:,} parameters (resolution {config.resolution}): "
            "not enough memory to build it"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


_ROLES = {"Generator": "generator", "Discriminator": "discriminator"}


class _Pretrained(nn.Module):
    """save_pretrained / from_pretrained: config.json plus model.safetensors, no pickles."""

    config: StyleGAN2Config

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # safetensors refuses tensors that share memory; the copies are small.
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        tmp = folder / f".{WEIGHTS_FILE}.tmp"
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, folder / WEIGHTS_FILE)
        meta = {
            **self.config.to_dict(),
            "class": type(self).__name__,
            "format": FORMAT,
            "version": FORMAT_VERSION,
        }
        write_json(folder / CONFIG_FILE, meta)
        return folder

    @classmethod
    def from_pretrained(
        cls: type[_Model], folder: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> _Model:
        """Load a folder written by ``save_pretrained`` (strictly), in eval mode."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not folder.is_dir():
            raise ArtgenError(f"{folder}: no such folder")
        if not config_path.is_file():
            raise ArtgenError(f"{config_path}: missing (not a saved StyleGAN2 model)")
        try:
            if config_path.stat().st_size > MAX_CONFIG_BYTES:
                raise ArtgenError(
                    f"{config_path}: larger than {MAX_CONFIG_BYTES} bytes (not a saved config)"
                )
            meta = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: [[[[... nested
            raise ArtgenError(f"{config_path}: unreadable ({_first_line(e)})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ArtgenError(f"{config_path}: not an {FORMAT} config")
        if meta.get("version") != FORMAT_VERSION:
            version = short_repr(meta.get("version"))
            raise ArtgenError(f"{config_path}: unsupported version {version}")
        if meta.get("class") != cls.__name__:
            held = meta.get("class")
            held = held[:80] if isinstance(held, str) else short_repr(held, 80)
            raise ArtgenError(f"{config_path}: holds a {held}, not a {cls.__name__}")
        try:
            config = StyleGAN2Config.from_dict(
                {k: v for k, v in meta.items() if k not in ("class", "format", "version")}
            )
        except ArtgenError as e:
            raise ArtgenError(f"{config_path}: {e}") from None
        if not weights_path.is_file():
            raise ArtgenError(f"{weights_path}: missing")
        try:
            tensors = load_file(str(weights_path))
        except (OSError, SafetensorError, ValueError, RuntimeError, MemoryError) as e:
            # safetensors' messages quote at most a short piece of the header; cut anyway.
            raise ArtgenError(f"{weights_path}: unreadable ({_first_line(e)})") from None

        model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = sorted(
            k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k]
        )
        problems = [f"missing {k}" for k in missing]
        problems += [f"unexpected {k}" for k in unexpected]
        problems += [
            f"{k} has shape {list(tensors[k].shape)}, expected {list(expected[k])}" for k in wrong
        ]
        if problems:
            more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
            raise ArtgenError(
                f"{weights_path}: does not match {CONFIG_FILE}: {'; '.join(problems[:2])}{more}"
            )
        model.load_state_dict(tensors, strict=True)
        with _allocating(_ROLES[cls.__name__], config):
            return model.to(device).eval()


class Generator(_Pretrained):
    """StyleGAN2 generator: ``mapping`` (z, c -> ws) then ``synthesis`` (ws -> image)."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        self.config = config
        with _allocating("generator", config):
            # Built in the official order, so a seed gives the official initial weights.
            self.synthesis = SynthesisNetwork(config)
            self.num_ws = self.synthesis.num_ws
            self.mapping = MappingNetwork(
                config.z_dim,
                config.c_dim,
                config.w_dim,
                self.num_ws,
                config.mapping_layers,
                config.mapping_lr_multiplier,
                config.w_avg_beta,
            )

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "random",
        update_w_avg: bool = False,
        return_features: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Images [N, C, R, R] in about [-1, 1]; with ``return_features`` also the
        feature map after each block, lowest resolution first."""
        ws = self.mapping(
            z,
            c,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_w_avg=update_w_avg,
        )
        return self.synthesis(
            ws, noise_mode=noise_mode, return_features=return_features, generator=generator
        )


class Discriminator(_Pretrained):
    """StyleGAN2 discriminator: blocks b{R} ... b8, then the 4x4 epilogue b4; logits [N, 1]."""

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        if config.resolution < 8:
            raise ArtgenError("StyleGAN2 discriminator: resolution must be >= 8")
        self.config = config
        self.block_resolutions = [2**i for i in range(config.resolution.bit_length() - 1, 2, -1)]
        with _allocating("discriminator", config):
            for res in self.block_resolutions:
                in_channels = config.channels(res) if res < config.resolution else 0
                block = DiscriminatorBlock(
                    in_channels,
                    config.channels(res),
                    config.channels(res // 2),
                    config.img_channels,
                    config.d_architecture,
                    conv_clamp=config.conv_clamp,
                )
                setattr(self, f"b{res}", block)
            cmap_dim = config.channels(4) if config.c_dim > 0 else 0
            if config.c_dim > 0:
                self.mapping = MappingNetwork(
                    0, config.c_dim, cmap_dim, None, D_MAPPING_LAYERS, D_MAPPING_LR_MULTIPLIER, None
                )
            self.b4 = DiscriminatorEpilogue(
                config.channels(4),
                cmap_dim,
                4,
                config.mbstd_group_size,
                config.mbstd_num_channels,
                conv_clamp=config.conv_clamp,
            )

    def block_names(self) -> list[str]:
        """Block names from the image input to the output: ["b32", "b16", "b8", "b4"]."""
        return [f"b{res}" for res in self.block_resolutions] + ["b4"]

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        r = self.config.resolution
        _check_shape(img, [None, self.config.img_channels, r, r], "img")
        x = img.to(torch.float32)
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        cmap = self.mapping(None, c) if self.config.c_dim > 0 else None
        return self.b4(x, cmap)


def _check_shape(t: torch.Tensor | None, shape: list[int | None], name: str) -> None:
    if t is None:
        raise ValueError(f"{name} is required (expected shape {shape})")
    if t.ndim != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, t.shape, strict=True)
    ):
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {shape}")
