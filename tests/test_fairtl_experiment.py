"""The table arithmetic of docs/fairtl_experiment.py: intervals and paired changes."""

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))
import fairtl_experiment as fx  # noqa: E402


def test_mean_interval_is_the_student_t_interval():
    # mean 2, sample sd 1, n = 3: half-width t(0.975, 2) * 1 / sqrt(3) = 4.303 / 1.732
    m, lo, hi = fx.mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0
    assert hi - m == pytest.approx(4.303 / 3**0.5, abs=1e-9)
    assert m - lo == pytest.approx(hi - m)
    assert fx.mean_interval([5.0]) == (5.0, 5.0, 5.0)


def row(key, base, seed, **m):
    return {"key": key, "base": base, "seed": seed, "method": key, **m}


RESULTS = [
    row("pretrained", 0, 0, fd=0.6, fid=100.0, diversity=0.5),
    row("pretrained", 1, 0, fd=0.5, fid=110.0, diversity=0.6),
    *(
        row("fairtl", b, s, fd=0.4 + 0.1 * b + 0.01 * s, fid=99.0, diversity=0.5)
        for b in (0, 1)
        for s in (0, 1, 2)
    ),  # fmt: skip
    row("fairtl++", 0, 0, fd=0.45, fid=98.0, diversity=0.5),
    row("fairtl++", 0, 2, fd=0.35, fid=97.0, diversity=0.5),
    row("full10", 0, 0, fid=150.0, diversity=0.3),  # target rows have no FD
    row("diffaug10", 0, 0, fid=148.0, diversity=0.4),
]


def test_an_adaptation_is_paired_with_the_base_it_started_from():
    # base 0: 0.40, 0.41, 0.42 - 0.6; base 1: 0.50, 0.51, 0.52 - 0.5
    d = fx.paired_changes(RESULTS, "fairtl", "pretrained", "fd")
    assert d == pytest.approx([-0.2, -0.19, -0.18, 0.0, 0.01, 0.02])
    assert fx.paired_changes(RESULTS, "fairtl", "pretrained", "fid") == pytest.approx(
        [-1.0] * 3 + [-11.0] * 3
    )


def test_runs_of_two_adaptations_are_paired_by_base_and_seed():
    # fairtl++ (base 0, seed 2) pairs with fairtl (base 0, seed 2), not with seed 0
    assert fx.paired_changes(RESULTS, "fairtl++", "fairtl", "fd") == pytest.approx(
        [0.45 - 0.40, 0.35 - 0.42]
    )


def test_the_paired_table_counts_pairs_and_falls():
    lines = fx.paired_table(RESULTS)
    fairtl = next(line for line in lines if line.startswith("| fairtl | pretrained"))
    assert "| 6 |" in fairtl
    m, lo, hi = fx.mean_interval([-0.2, -0.19, -0.18, 0.0, 0.01, 0.02])
    assert f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}], 3 of 6 down" in fairtl
    diffaug = next(line for line in lines if line.startswith("| diffaug10"))
    assert "| n/a | -2.0 [-2.0, -2.0], 1 of 1 down | +0.100" in diffaug
    # rows whose partner was not run are left out
    assert not any(line.startswith("| cdc10") for line in lines)


def test_jobs_run_in_list_order_once_what_they_wait_for_is_done():
    calls = []
    jobs = [
        fx.Job("adapt", calls.append, ("adapt",), after=("base",)),
        fx.Job("base", calls.append, ("base",)),
        fx.Job("check", calls.append, ("check",)),
    ]
    finished = []
    fx.run_jobs(jobs, workers=1, on_done=finished.append)
    # "adapt" comes first in the list but waits for "base"; "check" waits for nothing
    assert calls == ["base", "adapt", "check"]
    assert finished == calls


def test_jobs_that_wait_on_nothing_known_or_on_each_other_are_refused():
    with pytest.raises(ValueError, match="unknown jobs \\['nope'\\]"):
        fx.run_jobs([fx.Job("a", print, after=("nope",))])
    with pytest.raises(ValueError, match="wait on each other"):
        fx.run_jobs([fx.Job("a", print, after=("b",)), fx.Job("b", print, after=("a",))])
    with pytest.raises(ValueError, match="unique"):
        fx.run_jobs([fx.Job("a", print), fx.Job("a", print)])


def test_worker_processes_keep_the_order_and_report_a_failure(tmp_path):
    # Each job copies the file the job it waits for wrote: run out of order, one would
    # find no file. The copies run in two spawned processes.
    (tmp_path / "0").write_text("seed")
    chain = [
        fx.Job(str(i), shutil.copyfile, (tmp_path / str(i - 1), tmp_path / str(i)), (str(i - 1),))
        for i in range(2, 5)
    ]
    jobs = [fx.Job("1", shutil.copyfile, (tmp_path / "0", tmp_path / "1")), *chain]
    done = []
    fx.run_jobs(jobs[::-1], workers=2, on_done=done.append)
    assert done == ["1", "2", "3", "4"]
    assert (tmp_path / "4").read_text() == "seed"
    with pytest.raises(FileNotFoundError):
        fx.run_jobs([fx.Job("x", shutil.copyfile, (tmp_path / "missing", tmp_path / "y"))], 2)


def test_a_finished_run_with_other_settings_is_named_field_by_field(tmp_path):
    from artgen.train.gan import GanTrainOptions

    run = tmp_path / "runs" / "pretrained"
    asked = GanTrainOptions(images=str(tmp_path / "data"), out=str(run), steps=3000)
    assert fx.changed_settings(run, asked) == []  # nothing there yet
    run.mkdir(parents=True)
    recorded = {**asdict(asked), "out": str(run.resolve()), "steps": 4000, "resume": True}
    (run / "config.json").write_text(json.dumps({"options": recorded}))
    # the same paths written another way and "resume" are not differences
    assert fx.changed_settings(run, asked) == ["steps: 4000 -> 3000"]
