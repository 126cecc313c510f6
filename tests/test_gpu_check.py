"""benchmarks/gpu_check.py, the script to run first on a GPU machine: its --dry-run runs every
section on the CPU at tiny sizes, so a broken section shows here, not on rented GPU time."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


@pytest.fixture(scope="module")
def dry_run(gpu_check, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    t0 = time.perf_counter()
    code = gpu_check.main(["--dry-run", "--out", str(out)])
    seconds = time.perf_counter() - t0
    return code, json.loads((out / "gpu_check.json").read_text()), out, seconds


def test_dry_run_measures_every_section(gpu_check, dry_run):
    code, report, _, seconds = dry_run
    assert code == 0
    assert report["format"] == "artgen-gpu-check" and report["dry_run"] is True
    assert report["device_name"] and report["torch"] and report["date"]
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    for name, sec in report["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("error"), sec.get("traceback"))
        assert "error" not in sec
        assert sec["rows"], name
        for r in sec["rows"]:
            assert isinstance(r["value"], (int, float)), (name, r)
            assert math.isfinite(r["value"]) and r["value"] > 0, (name, r)
        assert sec["seconds"] <= sec["cap_s"] + gpu_check.HARD_GRACE
    assert seconds < 240  # "well under a minute" on an idle machine; CI's cores are shared


def test_dry_run_covers_what_the_gpu_run_measures(dry_run):
    _, report, _, _ = dry_run
    s = report["sections"]
    whats = {name: [r["what"] for r in sec["rows"]] for name, sec in s.items()}
    for precision in (
        "artgen bf16 + channels_last",
        "artgen fp32",
        "fp32 reference loop",
        "bf16 / reference",
        "artgen bf16, no progress callback",
    ):
        assert sum(w.startswith(precision) for w in whats["gatys"]) == 2, precision
    assert [w for w in whats["fast"] if w.startswith("AdaIN")] == [
        "AdaIN 64 px, batch 1",
        "AdaIN 64 px, batch 2",
    ]
    # The real configs are built (on the meta device) even in a dry run: published counts.
    counts = {r["what"].split()[0]: r for r in s["diffusion_lora"]["rows"] if r["unit"] == "params"}
    assert counts["sd15"]["value"] == counts["sd15"]["published"] == 859_520_964
    assert counts["sdxl"]["value"] == counts["sdxl"]["published"] == 2_567_463_684
    runs = s["diffusion_lora"]["runs"]
    assert set(runs) == {"sd15_8_gc", "sdxl_8_gc"}
    assert all(r["finite"] and r["lora_parameters"] > 0 for r in runs.values())
    assert set(s["stylegan2"]["runs"]) == {"train_gan", "loss_fp32", "loss_bf16"}
    assert s["accelerate"]["rows"][0]["num_processes"] == 2
    # Targets are listed but not judged without a GPU.
    assert len(report["targets"]) == 3
    assert all(t["pass"] is None and "no GPU" in t["note"] for t in report["targets"])
    assert report["missing"]


def test_markdown_table(dry_run):
    _, report, out, _ = dry_run
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# artgen GPU check")
    assert "| section | measurement | value | unit | memory | notes |" in md
    assert "| target | value | result |" in md
    for name in report["sections"]:
        assert f"| {name} |" in md
    assert report["device_name"] in md


def test_a_failing_section_is_recorded_and_the_others_run(gpu_check, tmp_path, monkeypatch):
    def broken(dev, dry, deadline):
        raise RuntimeError("kaput")

    monkeypatch.setitem(gpu_check.RUNNERS, "fast", broken)
    code = gpu_check.main(
        ["--dry-run", "--out", str(tmp_path), "--sections", "fast", "environment"]
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1
    assert report["sections"]["fast"]["status"] == "error"
    assert report["sections"]["fast"]["error"] == "RuntimeError: kaput"
    assert report["sections"]["environment"]["status"] == "ok"
    assert "kaput" in (tmp_path / "gpu_check.md").read_text()


def test_a_section_past_its_hard_cap_is_stopped(gpu_check, tmp_path, monkeypatch):
    def endless(dev, dry, deadline):
        while True:  # ignores its deadline
            time.sleep(0.05)

    monkeypatch.setitem(gpu_check.RUNNERS, "fast", endless)
    monkeypatch.setitem(gpu_check.DRY_CAPS, "fast", 0.5)
    monkeypatch.setattr(gpu_check, "HARD_GRACE", 0.5)
    t0 = time.perf_counter()
    gpu_check.main(["--dry-run", "--out", str(tmp_path), "--sections", "fast"])
    assert time.perf_counter() - t0 < 30
    sec = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["fast"]
    assert sec["status"] == "error" and sec["error"].startswith("SectionTimeout")


def test_sections_stop_at_their_deadline(gpu_check):
    d = gpu_check.Deadline(0.0)
    assert d.over() and d.hit and d.left() <= 0
    assert not gpu_check.Deadline(60).over(reserve=1)
