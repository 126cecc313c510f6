"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-NNNNNNN/`` written under a
temporary name and renamed into place when complete, so a killed run never
leaves a half checkpoint that ``--resume`` would pick up. It holds whatever
tensors a trainer hands in (trainable weights, EMA, optimizer state, RNG
states) plus ``state.json`` (step, scheduler state, Python RNG, anything else
JSON can carry). Used by every trainer in artgen (diffusion, GAN).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from artgen.errors import ArtgenError

STEP_DIR = re.compile(r"^step-(\d{7,})$")


# -- JSON-safe pieces --------------------------------------------------------------------


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors (for safetensors) and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_to_tensors(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    """Every random number generator a run draws from, so a resumed run draws the same."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    for name, g in generators.items():
        tensors[f"gen.{name}"] = g.get_state()
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def rng_from_tensors(
    tensors: dict[str, torch.Tensor], meta: dict, generators: dict[str, torch.Generator]
) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    for name, g in generators.items():
        g.set_state(tensors[f"gen.{name}"])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))


# -- checkpoint folders ------------------------------------------------------------------


def save_checkpoint(
    checkpoints: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict,
    *,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically; keep only the newest ``keep``.

    ``tensors`` maps a file stem (``"trainable"``, ``"optimizer"``...) to tensors.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step-{step:07d}"
    tmp = checkpoints / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for stem, group in tensors.items():
        # safetensors refuses tensors that share memory; checkpoints are small, so copy.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in group.items()},
                  str(tmp / f"{stem}.safetensors"))  # fmt: skip
    write_json(tmp / "state.json", {**state, "step": step})
    if final.exists():  # the same step saved twice (Ctrl-C right after a save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(checkpoints)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    if not checkpoints.is_dir():
        return []
    found = [
        p for p in checkpoints.iterdir()
        if STEP_DIR.match(p.name) and (p / "state.json").is_file()
    ]  # fmt: skip
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    try:
        state = json.loads((path / "state.json").read_text())
        tensors = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    except (OSError, ValueError) as e:
        raise ArtgenError(f"{path}: unreadable checkpoint ({e})") from None
    return tensors, state


# -- resuming a run ---------------------------------------------------------------------


def check_run_folder(run: Path, resume: bool) -> None:
    """A new run needs an empty (or absent) folder; a resumed one needs its config.json."""
    if resume:
        if not (run / "config.json").is_file():
            raise ArtgenError(f"{run}: nothing to resume (no config.json there)")
    elif run.exists() and any(run.iterdir()):
        raise ArtgenError(f"{run}: exists and is not empty; choose a new --out folder "
                          "(or pass --resume to continue the run there)")  # fmt: skip


def options_for_resume(
    cls: type,
    run_dir: str | os.PathLike,
    overrides: dict[str, Any],
    *,
    changeable: Collection[str] | None = None,
) -> Any:
    """The ``cls`` options a run was started with (its config.json), with ``overrides``.

    With ``changeable``, an override of any other setting to a new value is refused, since
    it would silently alter the run being continued.
    """
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())["options"]
    except FileNotFoundError:
        raise ArtgenError(f"{run_dir}: nothing to resume (no config.json there)") from None
    except (ValueError, KeyError) as e:
        raise ArtgenError(f"{path}: unreadable run config ({e})") from None
    names = {f.name for f in dataclasses.fields(cls)}
    merged = {k: v for k, v in saved.items() if k in names}
    if changeable is not None:
        for k, v in overrides.items():
            if k not in (*changeable, "resume", "out") and k in merged and merged[k] != v:
                raise ArtgenError(f"--{k.replace('_', '-')} cannot change when resuming (the run "
                                  f"uses {merged[k]!r}); only {', '.join(sorted(changeable))} can")  # fmt: skip
    merged.update(overrides)
    merged["out"] = str(run_dir)
    merged["resume"] = True
    return cls(**merged)


# -- Ctrl-C between steps ----------------------------------------------------------------


class StepInterrupt:
    """Make Ctrl-C (SIGINT) take effect between training steps, not inside one.

    A checkpoint saved after an interrupt then never holds half a step (weights updated but
    the step counter not, or one optimizer stepped and the other not). A second Ctrl-C, or
    one outside a step, raises at once. Only the main thread can install a signal handler;
    elsewhere, with ``enabled`` False, or where SIGINT is ignored (a background job), this
    does nothing and Ctrl-C behaves as usual. Runs of several processes pass ``enabled``
    False: a process that deferred its Ctrl-C would wait for ever in the next collective
    operation of one that did not.

        stop = StepInterrupt()
        try:
            stop.install()
            while step < steps:
                stop.mid_step = True
                ...  # one whole step
                stop.mid_step = False
                ...  # log, checkpoint
                stop.raise_if_requested()
        finally:
            stop.restore()

    (``with StepInterrupt() as stop:`` does the same.)
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.mid_step = False
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.requested or not self.mid_step:
            raise KeyboardInterrupt
        self.requested = True

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def install(self) -> StepInterrupt:
        if (
            self.enabled
            and not self._installed
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; Python's own is the best guess
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed = False

    def __enter__(self) -> StepInterrupt:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
