"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-NNNNNNN/`` written under a
temporary name and renamed into place when complete, so a killed run never
leaves a half checkpoint that ``--resume`` would pick up. It holds whatever
tensors a trainer hands in (trainable weights, EMA, optimizer state, RNG
states) plus ``state.json`` (step, scheduler state, Python RNG, anything else
JSON can carry). Used by every trainer in artgen (diffusion, GAN, AdaIN).

Everything read back is checked before it is used (``read_checkpoint``,
``read_run_config``): a checkpoint or a run's config.json is a file on disk that may be
truncated, edited or come from someone else, and each fault must end in one line that
names the file and the field, not in a traceback from deep inside torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import threading
import typing
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from artgen.core.errors import ArtgenError, clip, first_line
from artgen.core.files import (
    check_finite,
    load_safetensors,
    read_json,
    write_json,
)
from artgen.models.stylegan2 import CONFIG_LIMITS as STYLEGAN2_LIMITS

STEP_DIR = re.compile(r"^step-(\d{7,})$")
MAX_STATE_BYTES = 16 << 20
MAX_BATCH = 4096  # images per step: far above what fits on any device at these sizes
_SHOW = 60  # characters of a value from a file that an error message quotes
_INT_LIMIT = 1 << 63  # a JSON integer can be any size; torch and numpy take 64 bits

# -- bounds on the sizes a run folder claims ------------------------------------------------
#
# Every number a run's settings give (its config.json, read back to resume, sample or eval,
# or the flags of a new run) is checked against these bounds before anything is built, so
# a file cannot make artgen build (or allocate) without bound. They only stop absurd
# claims: real runs fit comfortably. For comparison: Stable Diffusion 1/2 train at 512 or
# 768 px and SDXL at 1024 px, with LoRA ranks of 4 to 128 (1024 is already full rank for
# most of SDXL's layers); StyleGAN2/3 networks go to 1024 px, z/w 512, 8 mapping layers,
# channel_max 512 to 1024 (artgen.models.stylegan2.CONFIG_LIMITS, whose bounds the GAN
# settings repeat); the fast method trains on 256 px crops.
RUN_LIMITS: dict[str, tuple[float, float]] = {
    # every trainer
    "steps": (1, 10**9),
    "sample_every": (1, 10**9),
    "checkpoint_every": (1, 10**9),
    "keep_checkpoints": (0, 10**6),
    "seed": (0, (1 << 63) - 1),
    "batch_size": (1, MAX_BATCH),
    "lr": (0.0, 1.0),
    # diffusion fine-tuning
    "resolution": (0, 4096),  # 0: the base's own; a GAN's must also be a power of two >= 4
    "grad_accum": (1, 1024),
    "lora_rank": (1, 1024),
    "lora_alpha": (0.0, 1e6),
    "num_class_images": (0, 100_000),  # DreamBooth uses 100 to 200
    "num_samples": (1, 256),
    "sample_steps": (1, 1000),
    "warmup_steps": (0, 10**9),
    "text_encoder_lr": (0.0, 1.0),
    "weight_decay": (0.0, 100.0),
    "max_grad_norm": (0.0, 1e6),
    "prior_weight": (0.0, 1e6),
    "guidance_scale": (0.0, 100.0),
    "ema_decay": (0.0, 1.0),
    # StyleGAN2 (training and adaptation): the network's sizes as its config allows them
    **{
        k: STYLEGAN2_LIMITS[k]
        for k in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
    },
    "r1_gamma": (0.0, 1e6),
    "r1_every": (1, 10**6),
    "ema_kimg": (0.0, 1e6),
    "freeze_d": (0, 64),  # D has one block per resolution: 11 at 4096 px
    "class_index": (-1, 100_000),  # as CONFIG_LIMITS' c_dim
    "cdc": (0.0, 1e6),  # the paper's weight is 1000
    "feedback_lambda": (0.0, 1.0),
    "lp_steps": (-1, 10**9),
    # the fast method's decoder
    "crop": (32, 2048),
    "lr_decay": (0.0, 1e3),
    "style_weight": (0.0, 1e6),
    "cov_weight": (0.0, 1e6),
    "levels": (2, 3),
    "width_scale": (0.25, 4.0),
}

# The sizes a diffusion base's component configs (model_index.json's unet, vae, text
# encoders, scheduler) may claim, checked before diffusers or transformers builds anything.
# Published bases, for comparison: SD 1.x/2.x and SDXL UNets have 3 or 4 blocks of
# 320 to 1280 channels, 2 layers per block, up to 10 transformer layers per block (SDXL),
# 64 to 128 latent px, cross-attention 768 to 2048, head dims 5 to 64; their text
# encoders (CLIP ViT-L, OpenCLIP ViT-H and bigG) 768 to 1280 wide, 12 to 32 layers, a
# vocabulary of 49,408 and 77 positions; DDPM pixel bases go to 256 px with 6 blocks.
# With these bounds a base has at most a few thousand modules: built on the meta device
# (as diffusers and transformers do) in seconds, and then only as large as the weight
# files on disk.
BASE_CONFIG_LIMITS: dict[str, tuple[float, float]] = {
    "sample_size": (1, 4096),
    "in_channels": (1, 64),
    "out_channels": (1, 64),
    "latent_channels": (1, 64),
    "layers_per_block": (1, 8),
    "block_out_channels": (1, 4096),
    "norm_num_groups": (1, 4096),
    "cross_attention_dim": (1, 8192),
    "attention_head_dim": (1, 4096),
    "num_attention_heads": (1, 4096),
    "transformer_layers_per_block": (1, 16),
    "reverse_transformer_layers_per_block": (1, 16),
    "addition_time_embed_dim": (1, 8192),
    "projection_class_embeddings_input_dim": (1, 1 << 16),
    "time_embedding_dim": (1, 16384),
    "num_class_embeds": (0, 100_000),
    "encoder_hid_dim": (1, 16384),
    "hidden_size": (1, 8192),
    "intermediate_size": (1, 32768),
    "num_hidden_layers": (1, 128),
    "max_position_embeddings": (1, 8192),
    "vocab_size": (1, 1 << 20),
    "projection_dim": (1, 8192),
    "num_train_timesteps": (1, 100_000),
}
MAX_LIST_ITEMS = 16  # a per-block list (channels, heads, layers): 8 blocks is already deep


def limit_error(
    values: Mapping[str, Any], limits: Mapping[str, tuple[float, float]]
) -> tuple[str, str] | None:
    """The first setting of ``values`` outside its bounds in ``limits``, as (name, why), or
    None. A bounded setting may be a list (one value per block, nested at most once), of
    at most MAX_LIST_ITEMS items; a bound given as whole numbers takes whole numbers only;
    None (a config's "not used") passes. Pure."""
    for name, (low, high) in limits.items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        whole = isinstance(low, int) and isinstance(high, int)
        kind = "a whole number" if whole else "a number"
        items = value if isinstance(value, list) else [value]
        flat = [y for x in items for y in (x if isinstance(x, list) else [x])]
        if len(items) > MAX_LIST_ITEMS or len(flat) > MAX_LIST_ITEMS * MAX_LIST_ITEMS:
            return name, f"has more than {MAX_LIST_ITEMS} entries"
        for x in flat:
            ok = (
                isinstance(x, (int, float))
                and not isinstance(x, bool)
                and not (whole and not isinstance(x, int))
                and low <= x <= high  # False for NaN
            )
            if not ok:
                return name, f"must be {kind} from {low:,} to {high:,}"
    return None


def check_limits(
    values: Mapping[str, Any],
    limits: Mapping[str, tuple[float, float]],
    where: str | os.PathLike,
    *,
    prefix: str = "",
) -> None:
    """ArtgenError naming ``where`` and the field (``prefix`` + its name) when a setting of
    ``values`` is outside ``limits`` (see limit_error)."""
    found = limit_error(values, limits)
    if found is not None:
        name, why = found
        raise ArtgenError(f"{where}: {prefix}{name} is {_show(values[name])}: {why}")


def _show(value: Any) -> str:
    """A value from a file, quoted for an error message, cut to a few dozen characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return clip(text, _SHOW)


# -- JSON-safe pieces --------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and abs(v) < _INT_LIMIT
    )


def _check_like(saved: Any, current: Any, where: str) -> None:
    """``saved`` (from a file) has the shape of ``current`` (what the live object holds):
    the same keys, list lengths and kinds of value, numbers finite. Used for optimizer
    param groups and scheduler states, whose load_state_dict trusts its input."""
    if current is None:
        ok = saved is None
    elif isinstance(current, bool):
        ok = isinstance(saved, bool)
    elif isinstance(current, (int, float)):
        # an int setting (a step count) stays an int; a float one may be written as 1
        ok = _is_number(saved) and (isinstance(saved, int) or not isinstance(current, int))
    elif isinstance(current, str):
        ok = isinstance(saved, str)
    elif isinstance(current, (list, tuple)):
        ok = isinstance(saved, list) and len(saved) == len(current)
        for i, (s, c) in enumerate(zip(saved, current, strict=True) if ok else ()):
            _check_like(s, c, f"{where}[{i}]")
    elif isinstance(current, Mapping):
        ok = isinstance(saved, dict)
        if ok:
            now = {str(k): v for k, v in current.items()}
            odd = sorted(set(now) ^ set(saved))
            if odd:
                what = "missing" if odd[0] in now else "unexpected"
                raise ArtgenError(f"{where}: {what} key {_show(odd[0])}")
            for k, c in now.items():
                _check_like(saved[k], c, f"{where}.{k}")
    else:  # nothing JSON can hold; its user checks it
        ok = True
    if not ok:
        raise ArtgenError(f"{where}: {_show(saved)} where {_show(current)} belongs")


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
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: Any,
    *,
    where: str = "checkpoint",
) -> None:
    """Put a saved optimizer state back, after checking it fits ``optimizer``: the same
    parameter groups and settings, a state of each parameter's shape, finite numbers.
    (torch's load_state_dict checks only the group sizes; anything else surfaces later as
    a traceback inside optimizer.step().)"""
    current = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
        raise ArtgenError(f"{where}: no param_groups list")
    groups = meta["param_groups"]
    if len(groups) != len(current["param_groups"]):
        raise ArtgenError(
            f"{where}: {len(groups)} parameter groups, but this run has "
            f"{len(current['param_groups'])}"
        )
    for i, (saved, now) in enumerate(zip(groups, current["param_groups"], strict=True)):
        if not isinstance(saved, dict) or saved.get("params") != now["params"]:
            raise ArtgenError(f"{where}: parameter group {i} does not match this run's")
        _check_like(saved, now, f"{where}.param_groups[{i}]")
        _check_hyperparameters(saved, f"{where}.param_groups[{i}]")
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, dict):
        raise ArtgenError(f"{where}: scalars is {_show(scalars)}, not an object")
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, _, name = key.partition(".")
        if not (idx.isdigit() and int(idx) < len(params) and name):
            raise ArtgenError(f"{where}: unexpected tensor {_show(key)}")
        p = params[int(idx)]
        if not v.is_floating_point() or not bool(torch.isfinite(v).all()):
            raise ArtgenError(f"{where}: tensor {key} is not finite floating-point numbers")
        # Adam's moments have the parameter's shape; its step count is one number >= 1
        # (0 would divide by zero in the bias correction).
        if name == "step":
            if v.numel() != 1 or not float(v) >= 1:
                raise ArtgenError(f"{where}: tensor {key} is not a step count >= 1")
        elif tuple(v.shape) != tuple(p.shape):
            raise ArtgenError(
                f"{where}: tensor {key} has shape {list(v.shape)}, the parameter {list(p.shape)}"
            )
        state.setdefault(int(idx), {})[name] = v
    for idx, extra in scalars.items():
        if not (
            isinstance(idx, str)
            and idx.isdigit()
            and int(idx) < len(params)
            and isinstance(extra, dict)
        ):
            raise ArtgenError(f"{where}: unexpected scalars entry {_show(idx)}")
        for name, v in extra.items():
            if not (v is None or isinstance(v, bool) or _is_number(v)):
                raise ArtgenError(f"{where}: scalars.{idx}.{name} is {_show(v)}")
        state.setdefault(int(idx), {}).update(extra)
    # Every parameter with a state has the same entries (a missing moment is a KeyError
    # in the next step).
    kinds = {frozenset(s) for s in state.values()}
    if len(kinds) > 1:
        raise ArtgenError(f"{where}: the parameters' saved states differ in what they hold")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ArtgenError(f"{where}: does not fit this run's optimizer ({first_line(e)})") from None


def _check_hyperparameters(group: dict, where: str) -> None:
    """The optimiser settings a checkpoint restores are in their valid ranges (Adam's betas
    in [0, 1), a positive eps, a learning rate and weight decay >= 0), not only of the
    right type: betas of 5 turn Adam's bias correction complex."""

    def bad(key: str, why: str) -> ArtgenError:
        return ArtgenError(f"{where}.{key} is {_show(group.get(key))}: {why}")

    for key in ("lr", "weight_decay"):
        v = group.get(key, 0)
        if isinstance(v, (int, float)) and not (math.isfinite(v) and v >= 0):
            raise bad(key, "must be a finite number >= 0")
    if "eps" in group and isinstance(group["eps"], (int, float)):
        if not (math.isfinite(group["eps"]) and group["eps"] > 0):
            raise bad("eps", "must be a finite number > 0")
    betas = group.get("betas")
    if isinstance(betas, (list, tuple)):
        if not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise bad("betas", "each must be in [0, 1)")


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


def _words(value: Any, n: int) -> bool:
    """A list of ``n`` 32-bit unsigned integers (a Mersenne Twister's state words)."""
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in value)
    )


def rng_from_tensors(
    tensors: dict[str, torch.Tensor],
    meta: Any,
    generators: dict[str, torch.Generator],
    *,
    where: str = "checkpoint",
) -> None:
    """Restore what rng_to_tensors saved, all or nothing: a state that does not check out
    leaves every generator as it was."""
    for key, like in [
        ("torch", torch.get_rng_state()),
        *((f"gen.{n}", g.get_state()) for n, g in generators.items()),
    ]:
        t = tensors.get(key)
        if t is None:
            raise ArtgenError(f"{where}: no {key} state")
        if t.dtype != like.dtype or tuple(t.shape) != tuple(like.shape):
            raise ArtgenError(
                f"{where}: the {key} state is {t.dtype} {list(t.shape)}, "
                f"not {like.dtype} {list(like.shape)}"
            )
    if not isinstance(meta, dict):
        raise ArtgenError(f"{where}: the random state is {_show(meta)}, not an object")
    py, n = meta.get("python"), meta.get("numpy")
    if not (
        isinstance(py, list)
        and len(py) == 3
        and isinstance(py[0], int)
        and _words(py[1], 625)
        and (py[2] is None or isinstance(py[2], float))
    ):
        raise ArtgenError(f"{where}: python is not a saved Python random state")
    if not (
        isinstance(n, list)
        and len(n) == 5
        and n[0] == "MT19937"
        and _words(n[1], 624)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in n[2:4])
        and isinstance(n[4], (int, float))
    ):
        raise ArtgenError(f"{where}: numpy is not a saved NumPy random state")
    before = (
        torch.get_rng_state(),
        {k: g.get_state() for k, g in generators.items()},
        random.getstate(),
        np.random.get_state(),
    )
    try:
        torch.set_rng_state(tensors["torch"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        for name, g in generators.items():
            g.set_state(tensors[f"gen.{name}"])
        random.setstate((py[0], tuple(py[1]), py[2]))
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    except (RuntimeError, ValueError, TypeError, OverflowError, IndexError) as e:
        torch.set_rng_state(before[0])
        for k, g in generators.items():
            g.set_state(before[1][k])
        random.setstate(before[2])
        np.random.set_state(before[3])
        raise ArtgenError(f"{where}: not a valid random state ({first_line(e)})") from None


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
    check_checkpoint_links(checkpoints)  # (open_run refused them already; a link made since)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for stem, group in tensors.items():
        # safetensors refuses tensors that share memory; checkpoints are small, so copy.
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in group.items()},
            str(tmp / f"{stem}.safetensors"),
        )
    write_json(tmp / "state.json", {**state, "step": step})
    if final.exists():  # the same step saved twice (Ctrl-C right after a save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(checkpoints)[:-keep]:
            if not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
    return final


def usual_permissions(path: str | os.PathLike) -> None:
    """Give a file written through a private temporary (safetensors and mkstemp make them
    0600) the permissions a new file normally gets: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_checkpoint_links(checkpoints: Path) -> None:
    """ArtgenError if ``checkpoints`` or a checkpoint in it (``step-*``, or the temporary
    ``.step-*.tmp``) is a symbolic link. artgen writes, replaces and prunes these folders
    itself: a link would be resumed from (reading files elsewhere) and then fail to be
    replaced or removed only after the training. Checked before a run resumes."""
    where = checkpoints
    try:
        if checkpoints.is_symlink():
            raise ArtgenError(f"{where}: is a symbolic link; a run's checkpoints/ must be a folder")
        if not checkpoints.is_dir():
            return
        for p in checkpoints.iterdir():
            name = p.name
            step_like = STEP_DIR.match(name) or (
                name.startswith(".step-") and name.endswith(".tmp")
            )
            if step_like and p.is_symlink():
                raise ArtgenError(
                    f"{p}: is a symbolic link, not a checkpoint folder; artgen replaces and "
                    "removes checkpoints itself, so remove the link (or copy the folder in "
                    "its place) and resume again"
                )
    except OSError as e:
        raise ArtgenError(f"{where}: unreadable ({first_line(e)})") from None


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    if not checkpoints.is_dir():
        return []
    found = [
        p for p in checkpoints.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) < _INT_LIMIT


class Checkpoint:
    """A checkpoint folder read back; each piece is checked as a trainer takes it out, so a
    damaged or incomplete checkpoint ends in one line naming the file and the field."""

    def __init__(self, path: Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict):
        self.path = path
        self.tensors = tensors
        self.state = state
        self.state_file = path / "state.json"
        self.step: int = state["step"]

    def has(self, stem: str) -> bool:
        return stem in self.tensors

    def group(self, stem: str) -> dict[str, torch.Tensor]:
        """The tensors of ``stem.safetensors``."""
        if stem not in self.tensors:
            raise ArtgenError(
                f"{self.path / (stem + '.safetensors')}: missing (the checkpoint is incomplete)"
            )
        return self.tensors[stem]

    def field(self, key: str) -> Any:
        """A field of state.json that must be there."""
        if key not in self.state:
            raise ArtgenError(
                f"{self.state_file}: no {_show(key)} field (the checkpoint is incomplete)"
            )
        return self.state[key]

    def int_field(self, key: str, default: int) -> int:
        v = self.state.get(key, default)
        if not _is_int(v) or v < 0:
            raise ArtgenError(f"{self.state_file}: {key} is {_show(v)}, not a whole number >= 0")
        return v

    def counts(self, key: str) -> Counter[str]:
        """A {value: count} field (how often each attribute value was drawn)."""
        v = self.state.get(key, {})
        if not isinstance(v, dict) or not all(_is_int(c) and c >= 0 for c in v.values()):
            raise ArtgenError(f"{self.state_file}: {key} is {_show(v)}, not counts per value")
        return Counter(v)

    def _matching(self, stem: str, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of ``stem.safetensors``, checked against ``targets``: exactly their
        names, in their shapes, finite numbers where they are floating-point."""
        where = self.path / f"{stem}.safetensors"
        saved = self.group(stem)
        missing = sorted(set(targets) - set(saved))
        unexpected = sorted(set(saved) - set(targets))
        if missing or unexpected:
            what = f"lacks {missing[0]}" if missing else f"has an unexpected {_show(unexpected[0])}"
            more = len(missing) + len(unexpected) - 1
            more_text = f" and {more} more differences" if more else ""
            raise ArtgenError(f"{where}: does not match this run's networks ({what}{more_text})")
        for name, t in targets.items():
            s = saved[name]
            if tuple(s.shape) != tuple(t.shape) or s.is_floating_point() != t.is_floating_point():
                raise ArtgenError(
                    f"{where}: {name} is {s.dtype} {list(s.shape)}, this run's "
                    f"{t.dtype} {list(t.shape)}"
                )
        check_finite(saved, where)
        return saved

    def load_into(self, stem: str, targets: Mapping[str, torch.Tensor]) -> None:
        """Copy ``stem.safetensors`` into ``targets`` (parameters, EMA copies), in place."""
        saved = self._matching(stem, targets)
        with torch.no_grad():
            for name, t in targets.items():
                t.copy_(saved[name])

    def load_module(self, stem: str, module: torch.nn.Module) -> None:
        """A network's whole state (parameters and buffers), strictly."""
        saved = self._matching(stem, module.state_dict())
        try:
            module.load_state_dict(saved, strict=True)
        except RuntimeError as e:
            raise ArtgenError(
                f"{self.path / stem}.safetensors: does not match this run's networks ({first_line(e)})"
            ) from None

    def load_optimizer(self, stem: str, optimizer: torch.optim.Optimizer) -> None:
        """``stem.safetensors`` plus state.json's ``stem`` field into ``optimizer``."""
        tensors = self.group(stem)
        optimizer_from_tensors(optimizer, tensors, self.field(stem), where=f"{self.path}: {stem}")

    def load_rng(self, stem: str, generators: dict[str, torch.Generator]) -> None:
        tensors = self.group(stem)
        rng_from_tensors(tensors, self.field(stem), generators, where=f"{self.path}: {stem}")

    def load_scheduler(self, key: str, scheduler: Any) -> None:
        """A learning-rate scheduler's state (JSON), shaped like the live one's."""
        saved = self.field(key)
        current = {k: v for k, v in scheduler.state_dict().items() if _jsonable(v)}
        _check_like(saved, current, f"{self.state_file}: {key}")
        try:
            scheduler.load_state_dict(saved)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtgenError(f"{self.state_file}: {key} does not fit ({first_line(e)})") from None


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in ``path``: state.json (an object whose step is the folder's) and
    every ``*.safetensors`` beside it, each readable."""
    state_file = path / "state.json"
    try:
        state = read_json(state_file, "checkpoint state", limit=MAX_STATE_BYTES)
    except FileNotFoundError:
        raise ArtgenError(f"{state_file}: missing (not a complete checkpoint)") from None
    if not isinstance(state, dict):
        raise ArtgenError(f"{state_file}: holds {_show(state)}, not a checkpoint state object")
    step = state.get("step")
    if not _is_int(step) or step < 0:
        raise ArtgenError(f"{state_file}: step is {_show(step)}, not a whole number >= 0")
    m = STEP_DIR.match(path.name)
    if m and int(m.group(1)) != step:
        raise ArtgenError(f"{state_file}: step is {step} but the folder is {path.name}")
    try:
        files = sorted(path.glob("*.safetensors"))
    except OSError as e:
        raise ArtgenError(f"{path}: unreadable checkpoint ({first_line(e)})") from None
    tensors = {p.stem: load_safetensors(p) for p in files}
    return Checkpoint(path, tensors, state)


# -- run configs -------------------------------------------------------------------------


def _field_kinds(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_KIND_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a finite number",
    bool: "true or false",
}


def _check_option(kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` option (str, int, float, bool), or None if it is not one."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        return value if _is_int(value) else None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        try:
            value = float(value)
        except OverflowError:
            return None
        return value if math.isfinite(value) else None
    if kind is str:
        return value if isinstance(value, str) else None
    return value


def resolve_run_path(run: str | os.PathLike, value: str) -> str:
    """A path setting read from a run's config.json, as a path: absolute as written (artgen
    writes absolute paths), or, where relative, relative to the run folder, the one place
    a relative path in that file can mean independently of where a command is run."""
    if not value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    in_run = Path(os.path.abspath(Path(run) / p))
    # Runs written before artgen recorded absolute paths hold paths relative to where
    # they were started: fall back to that reading only when the run has no such entry.
    if not in_run.exists() and p.exists():
        return os.path.abspath(p)
    return str(in_run)


def absolute_paths(options: dict, paths: Collection[str]) -> dict:
    """``options`` (an asdict) with its path settings made absolute, as a run records them,
    so a run resumes from any directory."""
    return {
        k: (os.path.abspath(os.path.expanduser(v)) if k in paths and v else v)
        for k, v in options.items()
    }


def options_from_dict(
    cls: type,
    saved: Any,
    where: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """A ``cls`` options dataclass from the JSON object a run stored, field by field:
    every field there (a run records all of them; one filled in from today's default
    would silently change the run), no unknown ones, each of its declared type, then the
    dataclass's own checks (``__post_init__``)."""
    if not isinstance(saved, dict):
        raise ArtgenError(f"{where}: options is {_show(saved)}, not an object")
    kinds = _field_kinds(cls)
    unknown = sorted(str(k) for k in saved if k not in kinds)
    if unknown:
        raise ArtgenError(
            f"{where}: options has {_show(unknown[0])}, which is not a setting of {cls.__name__}"
        )
    # A setting added after the run was recorded takes the value that reproduces it.
    saved = {**getattr(cls, "ADDED_SETTINGS", {}), **saved}
    missing = [k for k in kinds if k not in saved]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ArtgenError(f"{where}: options.{missing[0]} is missing{more}")
    values = {}
    for k, kind in kinds.items():
        v = _check_option(kind, saved[k])
        if v is None:
            raise ArtgenError(
                f"{where}: options.{k} is {_show(saved[k])}, not "
                f"{_KIND_NAMES.get(kind, kind.__name__)}"
            )
        values[k] = v
    # The sizes the file claims, before the options (or anything they size) are built.
    check_limits(values, getattr(cls, "LIMITS", {}), where, prefix="options.")
    values.update(overrides or {})
    try:
        options = cls(**values)
    except ArtgenError as e:
        raise ArtgenError(f"{where}: {e}") from None
    return options


def read_run_config(
    run_dir: str | os.PathLike,
    cls: type | None = None,
    *,
    method: str | Collection[str] | None = None,
    paths: Collection[str] = (),
    missing_ok: bool = False,
) -> tuple[dict, Any] | None:
    """A run's config.json: the JSON object and, with ``cls``, its ``options`` as a checked
    ``cls``. ``method``: the run kinds ("train-gan"...) expected; ``paths``: the path
    settings, resolved (see resolve_run_path). With ``missing_ok``, None when the run has
    no config.json; otherwise an ArtgenError."""
    run = Path(run_dir)
    path = run / "config.json"
    try:
        config = read_json(path, "run config")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ArtgenError(f"{run}: not an artgen run folder (no config.json)") from None
    if not isinstance(config, dict):
        raise ArtgenError(f"{path}: holds {_show(config)}, not a run config object")
    if method is not None:
        wanted = [method] if isinstance(method, str) else list(method)
        got = config.get("method")
        if got not in wanted:
            raise ArtgenError(
                f"{path}: method is {_show(got)}, not {' or '.join(wanted)} (another kind of run?)"
            )
    if cls is None:
        return config, None
    if "options" not in config:
        raise ArtgenError(f"{path}: no options field")
    saved = config["options"]
    if isinstance(saved, dict):
        saved = {
            k: (resolve_run_path(run, v) if k in paths and isinstance(v, str) else v)
            for k, v in saved.items()
        }
        # Settings that are a path or a name (a diffusion base: a folder or a hub id) are
        # resolved by their options class, against the run folder too.
        resolve = getattr(cls, "resolve_saved", None)
        if callable(resolve):
            saved = resolve(run, saved)
    return config, options_from_dict(cls, saved, path)


# -- resuming a run ---------------------------------------------------------------------


def options_for_resume(
    cls: type,
    run_dir: str | os.PathLike,
    overrides: dict[str, Any],
    *,
    changeable: Collection[str] | None = None,
    method: str | Collection[str] | None = None,
    paths: Collection[str] = (),
) -> Any:
    """The ``cls`` options a run was started with (its config.json), with ``overrides``.

    With ``changeable``, an override of any other setting to a new value is refused, since
    it would silently alter the run being continued.
    """
    if not (Path(run_dir) / "config.json").is_file():
        raise ArtgenError(f"{run_dir}: nothing to resume (no config.json there)")
    _, saved = read_run_config(run_dir, cls, method=method, paths=paths)
    merged = dataclasses.asdict(saved)
    if changeable is not None:
        for k, v in overrides.items():
            if k in (*changeable, "resume", "out") or k not in merged:
                continue
            named = getattr(cls, "NAMED_PATHS", ())  # a path or a name (see resolve_saved)
            same = merged[k] == v or (
                k in (*paths, *named)
                and isinstance(v, str)
                and v
                and os.path.abspath(os.path.expanduser(v)) == merged[k]
            )
            if not same:
                raise ArtgenError(
                    f"--{k.replace('_', '-')} cannot change when resuming (the run "
                    f"uses {_show(merged[k])}); only {', '.join(sorted(changeable))} can"
                )
    merged.update(overrides)
    for k, v in (("out", str(run_dir)), ("resume", True)):
        if k in merged:  # every trainer's options have both
            merged[k] = v
    return options_from_dict(cls, merged, Path(run_dir) / "config.json")


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
