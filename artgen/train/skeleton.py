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

Adding a trainer is one file here with its ``Trainer`` and entry function; what its runs
record (a ``RunOptions`` subclass with ``KIND``) lives in a module under artgen/runs/,
registered by one line in ``artgen.runs.options.KINDS`` (tests/test_extending.py).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from artgen.core.errors import ArtgenError, Cancelled
from artgen.runs.checkpoint import (
    Checkpoint,
    StepInterrupt,
    check_checkpoint_links,
    list_checkpoints,
    read_checkpoint,
    read_run_config,
    rng_to_tensors,
    save_checkpoint,
    write_json,
)
from artgen.runs.options import (
    RunOptions,
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
        before, now = saved.to_dict(), options.to_dict()
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
    resolved["options"] = {**options.to_dict(), "resume": False}
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
