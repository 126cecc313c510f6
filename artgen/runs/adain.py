"""A fast-method (AdaIN decoder) run's record: its options, the schema its config.json
holds. The trainer is in artgen.train.adain; artgen.interop.weights loads the decoder a
run writes."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from artgen.core.errors import ArtgenError
from artgen.core.options import option
from artgen.core.transforms import TRANSFORMS
from artgen.runs.checkpoint import (
    MAX_BATCH,
)
from artgen.runs.options import RunOptions

ENCODER_CHOICES = ("efficientnet-lite0", "vgg19")

# Settings that name folders, recorded as absolute paths. --base is one too unless it names
# a bundled network (shipped, vgg19): recorded absolute, resolved by resolve_saved.
PATHS = ("styles", "out", "content")


BASE_NAMES = ("", "shipped", "vgg19")


CONTENT_LEVELS = ("deepest", "all")


@dataclass(frozen=True)
class AdaINTrainOptions(RunOptions):
    """`artgen train adain`: train (or fine-tune) the decoder of the fast style method."""

    KIND: ClassVar[str] = "train-adain"
    PATHS: ClassVar[tuple[str, ...]] = PATHS
    NAMED_PATHS: ClassVar[tuple[str, ...]] = ("base",)  # a folder, or shipped or vgg19
    # Runs recorded before these settings existed were trained with these values.
    ADDED_SETTINGS: ClassVar[dict[str, Any]] = {
        "content_levels": "all",
        "cov_weight": 0.0,
        "levels": 3,
        "width_scale": 1.0,
        "transform": "adain",
    }

    styles: str = option("", "folder of style images")
    content: str = option(
        "", "folder of content photos (default with --base: the bundled example photos)"
    )
    base: str = option(
        "",
        "start from a trained decoder: 'shipped', a run folder or a model folder "
        "(fine-tuning, e.g. to an artist's style); empty: train from scratch",
    )
    encoder: str = option(
        "efficientnet-lite0", "encoder when training from scratch", choices=ENCODER_CHOICES
    )
    steps: int = option(20000, "training steps")
    batch_size: int = option(8, "content/style pairs per step")
    crop: int = option(256, "training crop size in pixels")
    lr: float = option(1e-4, "Adam learning rate")
    lr_decay: float = option(5e-5, "inverse decay: lr / (1 + lr_decay * step)")
    style_weight: float = option(0.0, "lambda, the style loss weight (0: the encoder's default)")
    cov_weight: float = option(
        0.0,
        "weight of a channel-covariance style loss at the style layers (0: the "
        "paper's mean/std loss only); covariances carry the palette's correlations",
    )
    transform: str = option(
        "adain",
        "the feature transform the decoder learns to paint: adain (every level, "
        "the paper's) or wct (whitening-colouring at the finest level, as stylize's "
        "--transform wct runs it)",
        choices=TRANSFORMS,
    )
    content_levels: str = option(
        "all",
        "AdaIN levels the content loss is taken at: deepest (the paper's relu4_1 "
        "choice) or all (every level the decoder is fed, which pins the photo's colours)",
        choices=CONTENT_LEVELS,
    )
    levels: int = option(
        3,
        "from scratch, efficientnet-lite0: AdaIN levels the decoder is fed, 3 "
        "(strides 4, 8, 16) or 2 (strides 8, 16: no stride-4 skip)",
        choices=(2, 3),
    )
    width_scale: float = option(1.0, "from scratch, efficientnet-lite0: decoder widths times this")
    sample_every: int = option(500, "steps between sample sheets")
    checkpoint_every: int = option(500, "steps between checkpoints")
    precision: str = option(
        "auto", "auto is bf16 autocast on CUDA, fp32 elsewhere", choices=("auto", "fp32", "bf16")
    )

    def to_dict(self) -> dict:
        """As config.json records them: folders absolute, and --base unless it names a
        bundled network."""
        d = super().to_dict()
        if d["base"] not in BASE_NAMES:
            d["base"] = os.path.abspath(os.path.expanduser(d["base"]))
        return d

    @classmethod
    def resolve_saved(cls, run: Path, saved: dict) -> dict:
        """A recorded run's options with a folder --base taken from the run folder when
        relative (artgen records it absolute); used by artgen.runs.checkpoint.read_run_config."""
        base = saved.get("base")
        if isinstance(base, str) and base not in BASE_NAMES:
            p = Path(base).expanduser()
            saved = {**saved, "base": str(p) if p.is_absolute() else os.path.abspath(Path(run) / p)}
        return saved

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ArtgenError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.batch_size > MAX_BATCH:
            raise ArtgenError(f"--batch-size {self.batch_size}: at most {MAX_BATCH}")
        if not 32 <= self.crop <= 2048 or self.crop % 16:
            raise ArtgenError(f"--crop {self.crop}: must be a multiple of 16 from 32 to 2048")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.lr_decay < 0:
            raise ArtgenError("--lr must be positive and --lr-decay >= 0")
        if self.style_weight < 0 or not math.isfinite(self.style_weight):
            raise ArtgenError(f"--style-weight {self.style_weight}: must be >= 0")
        if self.cov_weight < 0 or not math.isfinite(self.cov_weight):
            raise ArtgenError(f"--cov-weight {self.cov_weight}: must be >= 0")
        if self.encoder not in ENCODER_CHOICES:
            raise ArtgenError(f"--encoder {self.encoder!r}: choose {', '.join(ENCODER_CHOICES)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ArtgenError(f"--precision {self.precision!r}: choose auto, fp32 or bf16")
        if self.levels not in (2, 3):
            raise ArtgenError(f"--levels {self.levels}: choose 2 or 3")
        if not 0.25 <= self.width_scale <= 4 or not math.isfinite(self.width_scale):
            raise ArtgenError(f"--width-scale {self.width_scale}: must be from 0.25 to 4")
        if (self.base or self.encoder != "efficientnet-lite0") and (
            self.levels != 3 or self.width_scale != 1.0
        ):
            raise ArtgenError(
                "--levels and --width-scale shape a new efficientnet-lite0 decoder; "
                "they cannot change a --base network or the vgg19 one"
            )
        if self.transform not in TRANSFORMS:
            raise ArtgenError(f"--transform {self.transform!r}: choose {', '.join(TRANSFORMS)}")
        if self.content_levels not in CONTENT_LEVELS:
            raise ArtgenError(
                f"--content-levels {self.content_levels!r}: choose {', '.join(CONTENT_LEVELS)}"
            )
        if self.keep_checkpoints < 0:
            raise ArtgenError(f"--keep-checkpoints {self.keep_checkpoints}: must be >= 0")
        self.check_limits()  # every size within its bounds (artgen.runs.checkpoint.RUN_LIMITS)


# The paper's lambda is 10 (for VGG). The shipped EfficientNet-Lite0 decoder was trained
# with 10 as well: its weighted style loss starts at 6-12x its content loss and ends at
# about half of it (docs/images/adain_loss.png). No other value was tried.
DEFAULT_STYLE_WEIGHT = {"vgg19": 10.0, "efficientnet-lite0": 10.0}


OPTIONS = (AdaINTrainOptions,)  # decoder runs draw no images: no RUN (artgen stylize --model RUN)
