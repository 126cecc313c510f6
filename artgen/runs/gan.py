"""A GAN run's record: its options (the schema its config.json holds), loading its
networks, and sampling. The trainers are in artgen.train.gan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from artgen.core.errors import ArtgenError
from artgen.core.options import option
from artgen.runs.checkpoint import (
    check_finite,
    read_json,
    read_run_config,
    resolve_run_path,
)
from artgen.runs.options import RunOptions
from artgen.runs.record import GanSampleOptions, Run

METHODS = ("full", "fairtl", "fairtl++")


# fairTL++'s linear-probing split (see the module docstring): "authors" as the authors' code,
# "mapping" the reading artgen used before (the mapping network and D's last block).
LP_SPLITS = ("authors", "mapping")


# The D blocks the authors' code freezes while linear probing: train_fairTL++.py freezes its
# ProGAN discriminator's scaleLayers 0 and 1, the 8 and 16 px blocks (next to the 4x4 output
# block; the loop visits scaleLayers in reverse, from the image side).
LP_FROZEN_D = ("b8", "b16")


RUN_KINDS = ("train-gan", "finetune-gan")  # the "method" a GAN run's config.json records


# Settings that name files or folders: recorded as absolute paths (see absolute_paths).
PATHS = ("base", "images", "out", "labels")


@dataclass(frozen=True)
class GanOptions(RunOptions):
    """The settings both GAN trainers take, declared once (each subclass redeclares the
    ones whose defaults differ)."""

    PATHS: ClassVar[tuple[str, ...]] = PATHS

    images: str = option("", "folder of training images (adapting: the reference set)")
    r1_gamma: float = option(0.0, "R1 weight (0: ADA's heuristic 2e-4 * res^2 / batch)")
    r1_every: int = option(16, "lazy R1: every N steps")
    ema_kimg: float = option(0.0, "EMA half-life in thousands of images (0: batch * 10/32)")
    labels: str = option("", "CSV: file name plus attribute columns")
    balance: str = option("", "attribute whose values are drawn equally often")


@dataclass(frozen=True)
class GanTrainOptions(GanOptions):
    """``artgen train gan``: a StyleGAN2 generator from scratch (a base of your own)."""

    KIND: ClassVar[str] = "train-gan"

    resolution: int = option(32, "image size in px (a power of two)")
    z_dim: int = option(128, "latent size")
    w_dim: int = option(128, "style (W) size")
    mapping_layers: int = option(2, "mapping network depth")
    channel_base: int = option(4096, "channels at resolution r: min(base // r, max)")
    channel_max: int = option(256, "most channels in a block")
    steps: int = option(5000, "training steps (one D and one G step)")
    batch_size: int = option(16, "images per step per device")
    lr: float = option(0.0025, "Adam learning rate (G and D)")
    augment: str = option("color,translation", "DiffAugment policy for D's inputs ('' for none)")
    sample_every: int = option(500, "write a sample grid every N steps")
    checkpoint_every: int = option(500, "checkpoint every N steps")
    seed: int = option(0, "seed of the weights, batches and noise")

    def __post_init__(self) -> None:
        """The settings' own ranges (files and folders are checked when the run starts)."""
        super().__post_init__()
        _check_values(self)
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise ArtgenError(f"--resolution {r}: must be a power of two from 4 to 4096")


@dataclass(frozen=True)
class GanFinetuneOptions(GanOptions):
    """``artgen finetune gan``: adapt a pretrained StyleGAN2 to a small or balanced set."""

    KIND: ClassVar[str] = "finetune-gan"
    # Recorded before fairTL++'s split followed the authors: what those runs did.
    ADDED_SETTINGS: ClassVar[dict[str, Any]] = {"lp_split": "mapping"}

    base: str = option(
        "",
        "folder with generator/ and discriminator/ (an artgen train or "
        "finetune run, or the output of artgen convert)",
    )
    method: str = option(
        "full",
        "full: fine-tune; fairtl: the same, on a balanced reference set; "
        "fairtl++: plus multiple feedback and LP-FT",
        choices=list(METHODS),
    )
    steps: int = option(1000, "training steps (one D and one G step)")
    batch_size: int = option(8, "images per step per device")
    lr: float = option(0.002, "Adam learning rate (G and D)")
    augment: str = option(
        "color,translation,cutout", "DiffAugment policy for D's inputs ('' for none)"
    )
    freeze_d: int = option(0, "FreezeD: freeze the first K discriminator blocks")
    freeze_g: str = option("", "generator parts that stay frozen, e.g. mapping or mapping,b4,b8")
    class_index: int = option(
        -1,
        "class-conditional bases (e.g. CIFAR-10): the class to adapt from, "
        "0 to c_dim-1; the adapted generator draws it by default",
    )
    cdc: float = option(
        0.0, "weight of cross-domain distance consistency (Ojha et al.; 1000 in the paper; 0: off)"
    )
    feedback_lambda: float = option(
        0.5, "fairtl++: weight of the trained discriminator (1 - it: the frozen pretrained one)"
    )
    lp_steps: int = option(
        -1, "fairtl++: steps of linear probing before fine-tuning all (-1: a quarter of --steps)"
    )
    lp_split: str = option(
        "authors",
        "fairtl++: what trains during linear probing. authors: all of G, "
        "D without its 8 and 16 px blocks (Teo et al.'s code); mapping: G's mapping "
        "network and D's last block (artgen's earlier reading)",
        choices=list(LP_SPLITS),
    )
    sample_every: int = option(250, "write a sample grid every N steps")
    checkpoint_every: int = option(250, "checkpoint every N steps")
    seed: int = option(0, "seed of the batches and noise")

    def __post_init__(self) -> None:
        """The settings' own ranges (files, folders and the base's shape are checked when
        the run starts)."""
        super().__post_init__()
        _check_values(self)


def _check_values(options: Any) -> None:
    """The rules both GAN option classes add to their ranges and choices (RunOptions): when
    a run starts, and when a run's config.json is read back."""
    from artgen.core.augment import parse_policy

    if options.lr == 0:  # RUN_LIMITS allows 0 (the diffusion trainer's "default")
        raise ArtgenError("--lr 0: must be positive")
    parse_policy(options.augment)
    if options.balance and not options.labels:
        raise ArtgenError("--balance needs --labels (a CSV of file names and attributes)")


def load_gan(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The generator and discriminator in ``folder``/generator and ``folder``/discriminator."""
    from artgen.models.stylegan2 import Discriminator, Generator

    root = Path(folder)
    if not root.is_dir():
        raise ArtgenError(
            f"{folder}: no such folder (give a run folder or an artgen convert output)"
        )
    if not (root / "generator").is_dir() or not (root / "discriminator").is_dir():
        raise ArtgenError(
            f"{folder}: needs generator/ and discriminator/ folders "
            "(written by artgen train gan, finetune gan or convert)"
        )
    G = Generator.from_pretrained(root / "generator", device=device)
    D = Discriminator.from_pretrained(root / "discriminator", device=device)
    check_finite(G.state_dict(), root / "generator" / "model.safetensors")
    check_finite(D.state_dict(), root / "discriminator" / "model.safetensors")
    _check_pair(G, D, folder)
    return G, D


def _check_pair(G: Any, D: Any, where: str | os.PathLike) -> None:
    if G.config.c_dim != D.config.c_dim:
        raise ArtgenError(
            f"{where}: the generator has {G.config.c_dim} classes but the "
            f"discriminator {D.config.c_dim}"
        )


def class_labels(
    c_dim: int, class_index: int, n: int = 1, device: str | torch.device = "cpu"
) -> torch.Tensor | None:
    """One-hot labels (n, c_dim) of ``class_index`` for a conditional network, None for an
    unconditional one (c_dim 0, class_index -1)."""
    if c_dim == 0:
        if class_index != -1:
            raise ArtgenError(
                f"--class-index {class_index}: this network is unconditional (it has no classes)"
            )
        return None
    if class_index == -1:
        raise ArtgenError(
            f"this network is class-conditional ({c_dim} classes): pass "
            f"--class-index K, a class from 0 to {c_dim - 1}"
        )
    if not 0 <= class_index < c_dim:
        raise ArtgenError(
            f"--class-index {class_index}: this network is class-conditional; "
            f"give a class from 0 to {c_dim - 1}"
        )
    c = torch.zeros(n, c_dim, device=device)
    c[:, class_index] = 1
    return c


def load_generator(run_or_folder: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The generator of a GAN run (its generator/ folder) or a generator folder itself."""
    from artgen.models.stylegan2 import Generator

    root = Path(run_or_folder)
    folder = root / "generator" if (root / "generator").is_dir() else root
    G = Generator.from_pretrained(folder, device=device)
    # NaN or infinite weights (a damaged file, or a run that diverged) only ever draw
    # blank images; say so instead.
    check_finite(G.state_dict(), folder / "model.safetensors")
    return G


@torch.no_grad()
def generate_gan(
    G: Any,
    n: int,
    *,
    seed: int = 0,
    truncation_psi: float = 1.0,
    batch_size: int = 16,
    noise_mode: str = "random",
    class_index: int = -1,
) -> list[Image.Image]:
    """``n`` images; image i draws its latent and noise from seed ``seed + i`` alone.

    A class-conditional ``G`` needs ``class_index`` (0 to c_dim-1); all images are of it."""
    from artgen.core.images import to_pil

    device = next(G.parameters()).device
    c = class_labels(G.config.c_dim, class_index, 1, device)
    was_training = G.training
    G.eval()
    images: list[Image.Image] = []
    try:
        for start in range(0, n, batch_size):
            for i in range(start, min(n, start + batch_size)):
                g = torch.Generator(device=device).manual_seed(seed + i)
                z = torch.randn(1, G.config.z_dim, generator=g, device=device)
                x = G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode, generator=g)
                images.append(to_pil((x[0].float().clamp(-1, 1) + 1) / 2))
    finally:
        G.train(was_training)
    return images


def run_class_index(run_dir: str | os.PathLike) -> int:
    """The class a run of a class-conditional base adapted (-1: none recorded, as for a
    generator folder or a run trained from scratch). A run config.json that is there but
    damaged is an ArtgenError naming it, not a silent -1."""
    root = Path(run_dir)
    if _network_config(root) is not None:
        return -1  # a generator folder itself: no run settings
    found = read_run_config(root, method=RUN_KINDS, missing_ok=True)
    if found is None:
        return -1
    cls = GanTrainOptions if found[0]["method"] == "train-gan" else GanFinetuneOptions
    config = read_run_config(root, method=RUN_KINDS)[0]
    saved = config.get("options")
    if isinstance(saved, dict):  # a run recorded before a setting existed: what it did
        saved = {
            k: (resolve_run_path(root, v) if k in PATHS and isinstance(v, str) else v)
            for k, v in saved.items()
        }
    elif "options" not in config:
        raise ArtgenError(f"{root / 'config.json'}: no options field")
    options = cls.from_dict(saved, root / "config.json")  # checked, one field used
    return getattr(options, "class_index", -1)


def _network_config(folder: Path) -> dict | None:
    """The config.json of a saved StyleGAN2 network in ``folder``, None if it holds none
    (ArtgenError if a config.json there is unreadable)."""
    try:
        config = read_json(folder / "config.json", "config")
    except FileNotFoundError:
        return None
    except ArtgenError:
        if (folder / "model.safetensors").exists():  # a network folder with a damaged config
            raise
        return None  # a run's config.json, read (and checked) by whoever reads the run
    if isinstance(config, dict) and config.get("format") == "artgen-stylegan2":
        return config
    return None


def is_gan_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a GAN: a generator folder itself, a run whose config.json
    says it is a GAN run, or a folder with a generator/ entry.

    Decided from what the folder is, not from whether its files are intact: a damaged
    generator/config.json (or a generator/ that links to some other folder) is still a GAN
    run, and loading it then says what is wrong with it."""
    root = Path(run_dir)
    if _network_config(root) is not None:
        return True
    found = read_run_config(root, missing_ok=True) if (root / "config.json").exists() else None
    if found is not None and "method" in found[0]:
        return found[0]["method"] in RUN_KINDS
    return os.path.lexists(root / "generator")


# -- the run object (artgen.load_run) --------------------------------------------------


class GanRun(Run):
    """A StyleGAN2 run (trained or adapted), a generator folder, or an ``artgen convert``
    output. ``generator``: the (EMA) generator; ``class_index``: the class the run adapted
    (-1: none). Settings: GanSampleOptions (above), plus ``batch_size``."""

    kind, title = "gan", "GAN"
    settings = GanSampleOptions
    extra: ClassVar[dict[str, Any]] = {"batch_size": 16}

    def __init__(
        self, path: str | os.PathLike, config: dict, device: Any, generator: Any, class_index: int
    ):
        super().__init__(path, config, device)
        self.generator = generator
        self.class_index = class_index

    @classmethod
    def load(cls, path: Path, config: dict | None, device: Any) -> Run:
        # The run's config.json (if it has one) is checked first, before a network is built.
        recorded = run_class_index(path)
        G = load_generator(path, device=device)
        return cls(path, config or {}, device, G, recorded)

    def _class(self, class_index: int) -> int:
        """``class_index``, or for -1 the class the run adapted."""
        if class_index != -1:
            return class_index
        c_dim = self.generator.config.c_dim
        if c_dim and self.class_index == -1:
            raise ArtgenError(
                f"{self.path}: a class-conditional generator ({c_dim} "
                f"classes); pass --class-index K (0 to {c_dim - 1})"
            )
        return self.class_index if c_dim else -1

    def _record(self, n: int, seed: int, options: Any) -> dict[str, Any]:
        record = super()._record(n, seed, options)
        if record.get("class_index") == -1:  # record the class actually drawn
            record["class_index"] = self.class_index
        return record

    def _generate(self, n: int, seed: int, options: Any, **extra: Any) -> list[Image.Image]:
        return generate_gan(
            self.generator,
            n,
            seed=seed,
            truncation_psi=options.truncation,
            batch_size=extra["batch_size"],
            class_index=self._class(options.class_index),
        )


OPTIONS = (GanTrainOptions, GanFinetuneOptions)
RUN = GanRun
