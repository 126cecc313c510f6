"""The run record's schema: the settings every trainer has (RunOptions) and one registry from a run's kind (config.json's "method") to its options class."""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from artgen.core.errors import ArtgenError
from artgen.core.options import choice_error, option
from artgen.runs.checkpoint import (
    RUN_LIMITS,
    absolute_paths,
    limit_error,
    options_from_dict,
    read_run_config,
)
from artgen.runs.checkpoint import options_for_resume as _options_for_resume

# What a resumed run may change, for every trainer (plus each options class's
# RESUMABLE_EXTRA); any other change would silently alter the run it continues.
RESUMABLE = ("steps", "sample_every", "checkpoint_every", "keep_checkpoints", "device")


# THE registry of run kinds: a run's kind (the "method" its config.json records) -> the
# module under artgen/runs/ that owns its record. That module defines ``OPTIONS``, its
# options classes (RunOptions subclasses, told apart by KIND), and, for a kind that draws
# images, ``RUN`` (a artgen.runs.record.Run subclass). A new kind is one module plus one
# line here; its trainer (artgen/train/) imports the module, never the other way round.
KINDS: dict[str, str] = {
    "finetune-diffusion": "artgen.runs.diffusion",
    "train-gan": "artgen.runs.gan",
    "finetune-gan": "artgen.runs.gan",
    "train-adain": "artgen.runs.adain",
}


def kind_module(kind: str) -> Any:
    """The module that owns the record of runs of ``kind`` (ArtgenError if none does)."""
    if kind not in KINDS:
        raise ArtgenError(f"method {kind!r}: not a training run artgen knows ({', '.join(KINDS)})")
    return importlib.import_module(KINDS[kind])


@dataclass(frozen=True)
class RunOptions:
    """The settings every trainer has. Subclasses set KIND (their config.json "method"),
    PATHS (settings that are paths, recorded absolute) and may redeclare a field to give
    it another default."""

    KIND: ClassVar[str] = ""
    PATHS: ClassVar[tuple[str, ...]] = ("out",)
    RESUMABLE_EXTRA: ClassVar[tuple[str, ...]] = ()
    # Settings added after runs were recorded, with the value that reproduces such a run.
    ADDED_SETTINGS: ClassVar[dict[str, Any]] = {}
    # Bounds of the numeric settings (artgen.runs.checkpoint.RUN_LIMITS, one table for every
    # trainer): checked for a new run's flags and for a recorded run's config.json alike.
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = RUN_LIMITS

    out: str = option("", "run folder to create (or to --resume)")
    steps: int = option(500, "optimizer steps in all")
    sample_every: int = option(250, "write a sample grid every N steps")
    checkpoint_every: int = option(250, "checkpoint every N steps")
    keep_checkpoints: int = option(2, "checkpoints kept (0: all)")
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or mps")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")

    def to_dict(self) -> dict:
        """The options as config.json records them: path settings absolute."""
        return absolute_paths(dataclasses.asdict(self), self.PATHS)

    @classmethod
    def from_dict(cls, d: Any, where: str | os.PathLike = "options") -> Any:
        """The options a run recorded (``d``, config.json's "options"), checked field by
        field (artgen.runs.checkpoint.options_from_dict): unlike a style method's record,
        every field must be there (one filled in from today's default would silently change
        the run), except those of ADDED_SETTINGS. ``where`` names the file in errors."""
        return options_from_dict(cls, d, where)

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        return (*RESUMABLE, *cls.RESUMABLE_EXTRA)

    def __post_init__(self) -> None:
        """Every setting within its bounds (LIMITS) and among its declared choices: for a
        new run's flags and a recorded run's config.json alike. A subclass checks the rules
        between its settings after this."""
        found = limit_error(dataclasses.asdict(self), self.LIMITS) or choice_error(self)
        if found is not None:
            name, why = found
            raise ArtgenError(f"--{name.replace('_', '-')} {getattr(self, name)!r:.60}: {why}")


def options_class(kind: str) -> type:
    """The options class of runs of ``kind``."""
    module = kind_module(kind)
    found = [cls for cls in module.OPTIONS if cls.KIND == kind]
    if len(found) != 1:
        raise ValueError(f"{module.__name__}.OPTIONS: {len(found)} classes of KIND {kind!r}")
    return found[0]


def options_for_resume(run_dir: str | os.PathLike, **overrides: Any) -> Any:
    """The options the run in ``run_dir`` was started with (its config.json says which
    trainer), with ``overrides`` applied; only the resumable settings may change."""
    if not (Path(run_dir) / "config.json").is_file():
        raise ArtgenError(f"{run_dir}: nothing to resume (no config.json there)")
    config, _ = read_run_config(run_dir, method=tuple(KINDS))
    cls = options_class(config["method"])
    return _options_for_resume(
        cls, run_dir, overrides, changeable=cls.resumable(), method=cls.KIND, paths=cls.PATHS
    )
