"""artgen.runs.checkpoint: Ctrl-C between steps; reading checkpoints and run configs back, damaged or
fuzzed (the save/load round trips are tested by the trainers)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from artgen.core.errors import ArtgenError
from artgen.runs.checkpoint import (
    StepInterrupt,
    absolute_paths,
    load_safetensors,
    optimizer_to_tensors,
    options_for_resume,
    read_checkpoint,
    read_run_config,
    rng_to_tensors,
    save_checkpoint,
)

from .fuzz import fuzz_checkpoint


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_inside_a_step_waits_for_the_step_to_end(sigint_default):
    before = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt), StepInterrupt() as stop:
        for step in range(1, 4):
            stop.mid_step = True
            if step == 2:
                ctrl_c()  # deferred: the rest of step 2 still runs
            finished.append(step)
            stop.mid_step = False
            stop.raise_if_requested()
    assert finished == [1, 2]
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_ctrl_c_between_steps_or_twice_stops_at_once(sigint_default):
    with StepInterrupt() as stop:
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # not inside a step
        stop.mid_step = True
        ctrl_c()
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # a second Ctrl-C does not wait


def test_disabled_or_ignored_sigint_is_left_alone(sigint_default):
    before = signal.getsignal(signal.SIGINT)
    with StepInterrupt(enabled=False) as stop:  # several processes: Ctrl-C as usual
        stop.mid_step = True
        assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job ignores SIGINT
    try:
        with StepInterrupt() as stop:
            stop.mid_step = True
            ctrl_c()
            assert not stop.requested and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# -- reading back: a damaged checkpoint or run config is one line, never a traceback ---------


@dataclass(frozen=True)
class Opts:
    """A stand-in for a trainer's options dataclass."""

    images: str = ""
    steps: int = 1
    lr: float = 0.1
    flip: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ArtgenError(f"--steps {self.steps}: must be >= 1")


def tiny_checkpoint(root: Path):
    """A checkpoint laid out as the trainers write one: a network, its Adam state, a
    scheduler, RNG states and counts; plus the live objects to restore it into."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched.step()
    g = torch.Generator().manual_seed(1)
    opt_t, opt_meta = optimizer_to_tensors(opt)
    rng_t, rng_meta = rng_to_tensors({"data": g})
    state = {
        "opt": opt_meta,
        "rng": rng_meta,
        "drawn": {"a": 2},
        "num_processes": 1,
        "sched": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
        | {"lr_lambdas": [None]},
    }
    path = save_checkpoint(
        root / "checkpoints", 3, {"net": net.state_dict(), "opt": opt_t, "rng": rng_t}, state
    )
    return path, (net, opt, g, sched)


def restore_and_step(path: Path, live) -> int:
    """Everything a trainer does with a checkpoint on resume, then one training step on
    the restored state (where a wrong optimizer state would surface)."""
    net, opt, g, sched = live
    ckpt = read_checkpoint(path)
    ckpt.load_module("net", net)
    ckpt.load_optimizer("opt", opt)
    ckpt.load_rng("rng", {"data": g})
    ckpt.load_scheduler("sched", sched)
    ckpt.counts("drawn")
    ckpt.int_field("num_processes", 1)
    net(torch.randn(2, 3, generator=g)).sum().backward()
    opt.step()
    sched.step()
    return ckpt.step


def one_line(e: pytest.ExceptionInfo, *names: str) -> str:
    text = str(e.value)
    assert "\n" not in text and len(text) < 400, text
    for name in names:
        assert name in text, (name, text)
    return text


def test_an_intact_checkpoint_restores(tmp_path):
    path, live = tiny_checkpoint(tmp_path)
    assert restore_and_step(path, live) == 3


def _edit_state(path: Path, edit) -> None:
    state = json.loads((path / "state.json").read_text())
    edit(state)
    (path / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("step is a string", ["state.json", "step"]),
        ("no opt in state.json", ["state.json", "opt"]),
        ("no opt.safetensors", ["opt.safetensors", "missing"]),
        ("garbled python rng", ["rng", "python"]),
        ("garbled numpy rng", ["rng", "numpy"]),
        ("no rng.safetensors", ["rng.safetensors"]),
        ("truncated net.safetensors", ["net.safetensors"]),
        ("truncated opt.safetensors", ["opt.safetensors"]),
        ("state.json is {", ["state.json"]),
        ("state.json is []", ["state.json"]),
        ("an Adam moment of the wrong shape", ["opt", "0.exp_avg"]),
        ("a group setting of the wrong type", ["opt", "lr"]),
        ("scheduler garbage", ["state.json", "sched"]),
        ("drawn is a list", ["state.json", "drawn"]),
        ("non-finite weights", ["net.safetensors", "0.weight"]),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_its_file_and_field(tmp_path, damage, names):
    path, live = tiny_checkpoint(tmp_path)
    if damage == "step is a string":
        _edit_state(path, lambda s: s.update(step="3"))
    elif damage == "no opt in state.json":
        _edit_state(path, lambda s: s.pop("opt"))
    elif damage.startswith("no ") and damage.endswith(".safetensors"):
        (path / damage.split()[1]).unlink()
    elif damage == "garbled python rng":
        _edit_state(path, lambda s: s["rng"]["python"][1].__setitem__(5, "x"))
    elif damage == "garbled numpy rng":
        _edit_state(path, lambda s: s["rng"].update(numpy=[1, 2]))
    elif damage.startswith("truncated"):
        f = path / damage.split()[1]
        f.write_bytes(f.read_bytes()[:-7])
    elif damage.startswith("state.json is"):
        (path / "state.json").write_text(damage.split()[-1])
    elif damage == "an Adam moment of the wrong shape":
        t = load_file(str(path / "opt.safetensors"))
        t["0.exp_avg"] = torch.zeros(2, 2)
        save_file(t, str(path / "opt.safetensors"))
    elif damage == "a group setting of the wrong type":
        _edit_state(path, lambda s: s["opt"]["param_groups"][0].update(lr="fast"))
    elif damage == "scheduler garbage":
        _edit_state(path, lambda s: s.update(sched={"last_epoch": "x"}))
    elif damage == "drawn is a list":
        _edit_state(path, lambda s: s.update(drawn=["a", "b"]))
    elif damage == "non-finite weights":
        t = load_file(str(path / "net.safetensors"))
        t["0.weight"][0, 0] = float("nan")
        save_file(t, str(path / "net.safetensors"))
    with pytest.raises(ArtgenError) as e:
        restore_and_step(path, live)
    one_line(e, str(path), *names)


def test_fuzzed_checkpoints_restore_or_give_an_artgen_error(tmp_path):
    path, live = tiny_checkpoint(tmp_path)
    outcomes = fuzz_checkpoint(path, lambda p: restore_and_step(p, live), cases=300)
    assert outcomes["refused"] > 50 and outcomes["ok"] > 10, outcomes


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a run config object"),
        ('{"options": {}}', "options.images is missing"),
        ('{"options": []}', "options is [], not an object"),
        (
            '{"options": {"images": "", "steps": "abc", "lr": 0.1, "flip": false}}',
            'options.steps is "abc", not a whole number',
        ),
        (
            '{"options": {"images": "", "steps": true, "lr": 0.1, "flip": false}}',
            "options.steps is true",
        ),
        (
            '{"options": {"images": "", "steps": 1, "lr": NaN, "flip": false}}',
            "options.lr is NaN, not a finite number",
        ),
        (
            '{"options": {"images": "", "steps": 0, "lr": 0.1, "flip": false}}',
            "--steps 0: must be >= 1",
        ),
        (
            '{"options": {"images": "", "steps": 1, "lr": 0.1, "flip": false, "x": 1}}',
            'options has "x", which is not a setting',
        ),
        ('{"method": "b", "options": {}}', 'method is "b", not a'),
        ("[" * 100_000, "not valid JSON"),
        ('{"x": "' + "a" * (2 << 20) + '"}', "too large"),
        ("\xff\xfe", "not valid JSON"),
    ],
)
def test_a_damaged_run_config_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(ArtgenError) as e:
        read_run_config(tmp_path, Opts, method="a" if '"method"' in content else None)
    text = one_line(e, str(tmp_path / "config.json"), message)
    assert len(text) < 300  # a huge file is never quoted whole
    with pytest.raises(ArtgenError):
        options_for_resume(Opts, tmp_path, {})


def test_run_config_paths_are_absolute_or_relative_to_the_run(tmp_path, monkeypatch):
    from artgen.runs.checkpoint import resolve_run_path

    # A run written before paths were recorded absolute: relative to where it was started,
    # used only when the run folder holds no such entry.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "pics").mkdir()
    monkeypatch.chdir(tmp_path / "old")
    assert resolve_run_path(tmp_path / "r", "pics") == str(tmp_path / "old" / "pics")
    (tmp_path / "r" / "pics").mkdir(parents=True)
    assert resolve_run_path(tmp_path / "r", "pics") == str(tmp_path / "r" / "pics")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    opts = {"images": "data", "steps": 2, "lr": 1, "flip": True}
    (run / "config.json").write_text(json.dumps({"options": opts}))
    _, o = read_run_config(run, Opts, paths=("images",))
    assert o == Opts(images=str(run / "data"), steps=2, lr=1.0, flip=True)
    assert isinstance(o.lr, float)
    resumed = options_for_resume(Opts, run, {"steps": 3}, changeable=("steps",), paths=("images",))
    assert resumed.images == str(run / "data") and resumed.steps == 3
    # The same folder named another way is no change; another folder is.
    options_for_resume(Opts, run, {"images": str(run / "data")}, changeable=(), paths=("images",))
    with pytest.raises(ArtgenError, match="--images cannot change when resuming"):
        options_for_resume(Opts, run, {"images": "/elsewhere"}, changeable=(), paths=("images",))
    assert absolute_paths({"images": "x", "lr": 1, "labels": ""}, ("images", "labels")) == {
        "images": os.path.abspath("x"),
        "lr": 1,
        "labels": "",
    }


def test_load_safetensors_names_a_truncated_or_missing_file(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(3)}, str(f))
    f.write_bytes(f.read_bytes()[:5])
    for path in (f, tmp_path / "none.safetensors"):
        with pytest.raises(ArtgenError) as e:
            load_safetensors(path)
        one_line(e, str(path))
