"""A fast-method (AdaIN decoder) run's record: its options, the schema its config.json
holds. The trainer is in artgen.train.adain; artgen.interop.weights loads the decoder a
run writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from artgen.core.errors import ArtgenError
from artgen.core.options import option
from artgen.core.transforms import TRANSFORMS
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
        """The settings' ranges and choices (RunOptions), then the rules between them."""
        if isinstance(self.crop, int) and self.crop % 16:  # the whole rule, before the range
            raise ArtgenError(f"--crop {self.crop}: must be a multiple of 16 from 32 to 2048")
        super().__post_init__()
        if self.lr == 0:  # RUN_LIMITS allows 0 (the diffusion trainer's "default")
            raise ArtgenError("--lr 0: must be positive")
        if (self.base or self.encoder != "efficientnet-lite0") and (
            self.levels != 3 or self.width_scale != 1.0
        ):
            raise ArtgenError(
                "--levels and --width-scale shape a new efficientnet-lite0 decoder; "
                "they cannot change a --base network or the vgg19 one"
            )


# The paper's lambda is 10 (for VGG). The shipped EfficientNet-Lite0 decoder was trained
# with 10 as well: its weighted style loss starts at 6-12x its content loss and ends at
# about half of it (docs/images/adain_loss.png). No other value was tried.
DEFAULT_STYLE_WEIGHT = {"vgg19": 10.0, "efficientnet-lite0": 10.0}


OPTIONS = (AdaINTrainOptions,)  # decoder runs draw no images: no RUN (artgen stylize --model RUN)
