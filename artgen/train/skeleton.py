"""One training run, shared by every trainer: the run folder, the resume policy, the
weighted sampler, checkpoints with every process's random state, ``log.jsonl``, Ctrl-C,
the sample and checkpoint cadence, ``balance.json`` and the final save.

A trainer (diffusion fine-tuning, StyleGAN2 training and adaptation, the fast method's
decoder) supplies only what is its own, as a ``Trainer``: its state for a checkpoint, one
optimizer step, a sample grid and its final save. The loop is the one of diffusers'
training scripts and StyleGAN2-ADA's training_loop.py, written once:

    options = ...                        # a frozen RunOptions subclass
    accelerator = Accelerator(...)
    run = open_run(options, accelerator)   # checks, resume guard, creates the folder
    trainer = MyTrainer(...)               # built on accelerator.device
    return train(trainer, options, run, accelerator, resolved, callback)

Adding a trainer is one file with its options (a ``RunOptions`` subclass with ``KIND``)
and its ``Trainer``, plus one line in ``OPTIONS`` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from artgen.core.errors import ArtgenError, Cancelled
from artgen.runs.checkpoint import (
    RUN_LIMITS,
    Checkpoint,
    StepInterrupt,
    absolute_paths,
    check_checkpoint_links,
    limit_error,
    list_checkpoints,
    read_checkpoint,
    read_run_config,
    rng_to_tensors,
    save_checkpoint,
    write_json,
)
from artgen.runs.checkpoint import options_for_resume as _options_for_resume

# What a resumed run may change, for every trainer (plus each options class's
# RESUMABLE_EXTRA); any other change would silently alter the run it continues.
RESUMABLE = ("steps", "sample_every", "checkpoint_every", "keep_checkpoints", "device")

# config.json's "method" -> the module and options class of the trainer that wrote it.
OPTIONS = {
    "finetune-diffusion": ("artgen.train.diffusion", "DiffusionFinetuneOptions"),
    "train-gan": ("artgen.train.gan", "GanTrainOptions"),
    "finetune-gan": ("artgen.train.gan", "GanFinetuneOptions"),
    "train-adain": ("artgen.train.adain", "AdaINTrainOptions"),
}


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

    out: str = field(default="", metadata={"help": "run folder to create (or to --resume)"})
    steps: int = field(default=500, metadata={"help": "optimizer steps in all"})
    sample_every: int = field(default=250, metadata={"help": "write a sample grid every N steps"})
    checkpoint_every: int = field(default=250, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (0: all)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from its last checkpoint"}
    )

    def recorded(self) -> dict:
        """The options as config.json records them: path settings absolute."""
        return absolute_paths(dataclasses.asdict(self), self.PATHS)

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        return (*RESUMABLE, *cls.RESUMABLE_EXTRA)

    def check_limits(self) -> None:
        """ArtgenError, naming the flag, for a setting outside its bounds (LIMITS)."""
        found = limit_error(dataclasses.asdict(self), self.LIMITS)
        if found is not None:
            name, why = found
            raise ArtgenError(f"--{name.replace('_', '-')} {getattr(self, name)!r:.60}: {why}")


def options_class(kind: str) -> type:
    if kind not in OPTIONS:
        raise ArtgenError(
            f"method {kind!r}: not a training run artgen knows ({', '.join(OPTIONS)})"
        )
    module, name = OPTIONS[kind]
    return getattr(importlib.import_module(module), name)


def options_for_resume(run_dir: str | os.PathLike, **overrides: Any) -> Any:
    """The options the run in ``run_dir`` was started with (its config.json says which
    trainer), with ``overrides`` applied; only the resumable settings may change."""
    if not (Path(run_dir) / "config.json").is_file():
        raise ArtgenError(f"{run_dir}: nothing to resume (no config.json there)")
    config, _ = read_run_config(run_dir, method=tuple(OPTIONS))
    cls = options_class(config["method"])
    return _options_for_resume(
        cls, run_dir, overrides, changeable=cls.resumable(), method=cls.KIND, paths=cls.PATHS
    )


def open_run(options: RunOptions, accelerator: Any = None, *, create: bool = True) -> Path:
    """Check the run folder (a new run needs an empty one; a resumed one its config.json,
    a checkpoint, and unchanged settings but the resumable ones) and, with ``create``,
    create it (else ``train`` does, so a run refused while it is set up leaves nothing).
    Every process checks before the main one writes."""
    if not options.out:
        raise ArtgenError("--out: give a run folder to create")
    run = Path(options.out)
    if options.resume:
        if not (run / "config.json").is_file():
            raise ArtgenError(f"{run}: nothing to resume (no config.json there)")
        _, saved = read_run_config(run, type(options), method=options.KIND, paths=options.PATHS)
        before, now = saved.recorded(), options.recorded()
        for k in before:
            if k in (*options.resumable(), "resume", "out") or before[k] == now[k]:
                continue
            raise ArtgenError(
                f"--{k.replace('_', '-')}: the run in {run} used {getattr(saved, k)!r:.80}, "
                f"not {getattr(options, k)!r:.80}; a resumed run keeps its settings (only "
                f"{', '.join(sorted(options.resumable()))} can change)"
            )
        check_checkpoint_links(run / "checkpoints")
        if not list_checkpoints(run / "checkpoints"):
            raise ArtgenError(f"{run}: no checkpoint to resume from in {run / 'checkpoints'}")
    elif (run / "config.json").is_file():
        raise ArtgenError(
            f"{run}: already holds a run; pass --resume to continue it, or choose another --out"
        )
    elif run.exists() and any(run.iterdir()):
        raise ArtgenError(f"{run}: exists and is not empty; choose a new --out folder")
    if create:
        _create(run, accelerator)
    return run


def _create(run: Path, accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if accelerator is None or accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()


class Draws:
    """The training set's draws: indices with replacement, uniform or weighted (for
    fairness, ``artgen.core.data.balance_weights``), drawn as ``torch.multinomial`` draws them
    with the run's data generator, so a checkpointed generator resumes the same sequence.
    With ``values`` (each image's attribute value) it counts what was drawn, for
    balance.json."""

    def __init__(
        self,
        n: int,
        generator: torch.Generator,
        *,
        weights: Sequence[float] | None = None,
        values: Sequence[str] | None = None,
        attribute: str = "",
    ) -> None:
        if n < 1:
            raise ArtgenError("no training images")
        w = (
            torch.ones(n, dtype=torch.float64)
            if weights is None
            else torch.tensor(list(weights), dtype=torch.float64)
        )
        if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ArtgenError(f"sampling weights: need {n} finite, non-negative weights")
        self.weights, self.generator = w, generator
        self.values, self.attribute = values, attribute
        self.drawn: Counter[str] = Counter()

    def draw(self, k: int) -> list[int]:
        idx = torch.multinomial(self.weights, k, replacement=True, generator=self.generator)
        out = idx.tolist()
        if self.values is not None:
            self.drawn.update(self.values[i] for i in out)
        return out

    def write_balance(self, run: Path, *, finished: bool) -> None:
        if not self.attribute or self.values is None:
            return
        from artgen.core.data import proportions

        write_json(
            run / "balance.json",
            {
                "attribute": self.attribute,
                "dataset": proportions(self.values),
                "realised": proportions(self.drawn) if finished else None,
            },
        )


class Trainer(Protocol):
    """What a trainer supplies to ``train``."""

    draws: Draws | None  # the data draws, if the skeleton should count them

    def generators(self) -> dict[str, torch.Generator]:
        """Every random stream of this process, restored exactly on resume."""

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Checkpoint contents: tensor groups (one safetensors file each) and JSON state."""

    def load_state(self, ckpt: Checkpoint) -> None:
        """Put a checkpoint's contents back (each piece checked by ``ckpt``)."""

    def step(self, step: int) -> dict[str, float] | None:
        """One optimizer step after ``step`` done; its logged scalars, or None when no
        update happened (gradient accumulation)."""

    def sample(self) -> Image.Image:
        """A sample grid of the current model."""

    def finish(self, run: Path, resolved: dict) -> Callable[[Path], None] | None:
        """Save the final model; optionally return what writes the model card, given the
        final sample grid's path (the sample is drawn after this call, from the saved
        state)."""

    def progress(
        self,
        step: int,
        logs: dict[str, float],
        elapsed: float,
        sample: Path | None,
        checkpoint: Path | None,
    ) -> Any:
        """The callback's progress dataclass."""


def _resume(trainer: Trainer, options: RunOptions, run: Path, world: int, rank: int) -> int:
    """Load the last checkpoint into the trainer (this process's random stream included);
    returns its step."""
    found = list_checkpoints(run / "checkpoints")
    ckpt = read_checkpoint(found[-1])
    saved_by = ckpt.int_field("num_processes", world)  # older checkpoints: unknown
    if saved_by != world:
        raise ArtgenError(
            f"{found[-1]}: saved by {saved_by} process(es); resume with the same number, "
            f"not {world}"
        )
    trainer.load_state(ckpt)
    # every process continues its own random stream (older checkpoints hold one "rng")
    legacy = ckpt.has("rng") and not ckpt.has("rng0")
    ckpt.load_rng("rng" if legacy else f"rng{rank}", trainer.generators())
    if trainer.draws is not None:
        trainer.draws.drawn.update(ckpt.counts("drawn"))
    if ckpt.step >= options.steps:
        raise ArtgenError(
            f"{run}: already at step {ckpt.step} of {options.steps}; "
            "pass a larger --steps to train further"
        )
    return ckpt.step


def _finish(trainer: Trainer, run: Path, resolved: dict, samples: Callable, main: bool) -> None:
    """After the last step: the trainer's collective end check on every process, then the
    main process's final save, sample sheet, balance record and model card."""
    end = getattr(trainer, "end", None)
    if end is not None:  # every process, before the main one saves (a collective check)
        end()
    if main:
        card = trainer.finish(run, resolved)
        final = samples("final")
        if trainer.draws is not None:
            trainer.draws.write_balance(run, finished=True)
        if card is not None:
            card(final)


def train(
    trainer: Trainer,
    options: RunOptions,
    run: Path,
    resolved: dict,
    *,
    accelerator: Any = None,
    callback: Callable[[Any], None] | None = None,
) -> Path:
    """The loop: resume, write config.json, steps with their cadence, Ctrl-C, final save."""
    from artgen._version import __version__
    from artgen.core.images import save_png

    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    main = rank == 0
    _create(run, accelerator)
    ckpt_dir = run / "checkpoints"
    step = _resume(trainer, options, run, world, rank) if options.resume else 0
    resolved = {**resolved, "num_processes": world}
    resolved["options"] = {**options.recorded(), "resume": False}
    if main:
        write_json(run / "config.json", resolved)
        if trainer.draws is not None:
            trainer.draws.write_balance(run, finished=False)

    def checkpoint(at: int) -> Path | None:
        """Every process calls this; the main one writes, with every process's RNG state."""
        rng = [rng_to_tensors(trainer.generators())]
        if world > 1:
            rng = [None] * world
            torch.distributed.all_gather_object(rng, rng_to_tensors(trainer.generators()))
        if not main:
            return None
        tensors, state = trainer.state()
        state = {**state, "num_processes": world}
        if trainer.draws is not None:
            state["drawn"] = dict(trainer.draws.drawn)
        for r, (rng_t, rng_meta) in enumerate(rng):
            tensors[f"rng{r}"] = rng_t
            state[f"rng{r}"] = rng_meta
        return save_checkpoint(ckpt_dir, at, tensors, state, keep=options.keep_checkpoints)

    def samples(at: int | str) -> Path:
        name = f"step-{at:07d}.png" if isinstance(at, int) else f"{at}.png"
        return save_png(
            trainer.sample(),
            run / "samples" / name,
            overwrite=True,
            params={"artgen": __version__, "step": at, "seed": options.seed},
        )

    log = (run / "log.jsonl").open("a") if main else None
    start = time.perf_counter()
    last_saved = step
    # Ctrl-C takes effect between optimizer steps, in a run of one process (a process that
    # deferred it would wait for ever in the next collective).
    stop = StepInterrupt(enabled=world == 1)
    try:
        stop.install()
        while step < options.steps:
            stop.mid_step = True
            logs = trainer.step(step)
            if logs is None:
                continue
            step += 1
            stop.mid_step = False
            bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
            if bad:
                shown = ", ".join(f"{k} {v}" for k, v in bad.items())
                raise ArtgenError(f"step {step}: {shown}; lower --lr")
            sample_path = ckpt_path = None
            if main:
                elapsed = round(time.perf_counter() - start, 3)
                log.write(json.dumps({"step": step, **logs, "seconds": elapsed}) + "\n")
                log.flush()
                if step % options.sample_every == 0 and step < options.steps:
                    sample_path = samples(step)
            if step % options.checkpoint_every == 0 or step == options.steps:
                ckpt_path = checkpoint(step)
                last_saved = step
            if callback is not None and main:
                callback(
                    trainer.progress(
                        step, logs, time.perf_counter() - start, sample_path, ckpt_path
                    )
                )
            stop.raise_if_requested()
    except (KeyboardInterrupt, Cancelled):
        # Several processes save only at the periodic checkpoints (saving gathers every
        # process's random state, which an interrupted process cannot take part in).
        if world == 1 and not stop.mid_step and step > last_saved:
            checkpoint(step)
        raise
    finally:
        stop.restore()
        if log is not None:
            log.close()

    _finish(trainer, run, resolved, samples, main)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return run
