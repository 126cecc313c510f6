"""`artgen batch` in data-set mode: folder trees, style pools, variants, the manifest,
--verify, resume after a kill, JPEG outputs, and the Ray engine (a local instance
started here, with a worker killed mid-run)."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from artgen.cli import main
from artgen.core.images import read_params
from artgen.style.batch import (
    MANIFEST,
    BatchOptions,
    draw_styles,
    list_images,
    plan_dataset,
)

from .conftest import REPO, one_line_error, photo, stripes

SMALL = ["--size", "64", "-q"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lines(out: Path) -> list[dict]:
    """The manifest's entries (header and lines cut short by a crash left out), in order."""
    rows = []
    for s in (out / MANIFEST).read_text().splitlines():
        try:
            rows.append(json.loads(s))
        except ValueError:
            assert not s.endswith("}")  # only a line cut short
    assert rows[0] == {"artgen_manifest": 1}
    return rows[1:]


def outputs(out: Path) -> dict[str, str]:
    """Every file under ``out`` but the manifest: relative path -> sha256."""
    return {
        p.relative_to(out).as_posix(): sha(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    """A two-class data set (cats 4, dogs 3 images; a text file and a hidden file among
    them) and a pool of 3 paintings (plus a text file)."""
    root = tmp_path / "data"
    for cls, n, base in (("cats", 4, 0), ("dogs", 3, 10)):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            photo(80, 60, seed=base + k).save(root / cls / f"img{k}.jpg", quality=95)
    (root / "cats" / "labels.txt").write_text("not an image")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0")
    pool = tmp_path / "pool"
    (pool / "old").mkdir(parents=True)
    stripes(64, seed=1).save(pool / "a.png")
    stripes(64, seed=2).rotate(90).save(pool / "b.png")
    stripes(64, seed=3).rotate(45).save(pool / "old" / "c.png")
    (pool / "README").write_text("paintings")
    return {"in": root, "pool": pool, "tmp": tmp_path}


def run(tree, out, *extra, capsys=None) -> tuple[int, str]:
    argv = ["batch", str(tree["in"]), "-o", str(out), "--recursive"]
    argv += ["--style-pool", str(tree["pool"]), *SMALL, *extra]
    rc = main(argv)
    text = capsys.readouterr().out if capsys is not None else ""
    return rc, text


# ------------------------------------------------------------------ the draw and the tree


def test_draw_styles_is_a_pure_function_of_seed_path_and_pool():
    pool = ["a.png", "b.png", "old/c.png"]
    # Fixed values: sha256 of (seed, path, variant, attempt), never Python's hash().
    digest = hashlib.sha256(b"artgen-style-pool\x000\x00cats/img0.jpg\x000\x000").digest()
    assert int.from_bytes(digest[:8], "big") % 3 == 2
    assert draw_styles(0, "cats/img0.jpg", pool) == ["old/c.png"]
    assert draw_styles(0, "cats/img2.jpg", pool) == ["b.png"]
    assert draw_styles(0, "dogs/img0.jpg", pool) == ["a.png"]
    assert draw_styles(1, "cats/img0.jpg", pool) == ["a.png"]
    assert draw_styles(0, "cats/img0.jpg", pool, 3) == ["old/c.png", "a.png", "b.png"]
    names = [f"cls{c}/img{k}.jpg" for c in range(3) for k in range(10)]
    for name in names:
        three = draw_styles(0, name, pool, 3)
        assert sorted(three) == sorted(pool)  # K distinct styles
        assert draw_styles(0, name, pool, 2) == three[:2]  # more variants keep the first
    drawn = [draw_styles(0, n, pool)[0] for n in names]
    assert {s: drawn.count(s) for s in pool} == {"a.png": 13, "b.png": 11, "old/c.png": 6}
    assert drawn != [draw_styles(1, n, pool)[0] for n in names]  # the seed matters
    # Another interpreter with another string-hash seed draws the same.
    code = (
        "from artgen.style.batch import draw_styles;"
        f"print([draw_styles(0, n, {pool!r})[0] for n in {names!r}])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    got = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert got.strip() == repr(drawn)
    with pytest.raises(Exception, match="pool holds only 3"):
        draw_styles(0, "x.jpg", pool, 4)


def test_tree_kept_styles_drawn_manifest_written(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert list_images(tree["in"], recursive=True)[1:] == (1, 0)  # labels.txt counted
    rc = main(
        ["batch", str(tree["in"]), "-o", str(out), "--recursive"]
        + ["--style-pool", str(tree["pool"]), "--size", "64"]  # no --method: adain
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "7 images in" in captured.err and "1 other files skipped" in captured.err
    assert "7 stylised, 0 already done (skipped), 0 failed" in captured.out
    made = outputs(out)
    assert sorted(made) == [f"cats/img{k}.png" for k in range(4)] + [
        f"dogs/img{k}.png" for k in range(3)
    ]
    entries = lines(out)
    assert len(entries) == 7
    pool = ["a.png", "b.png", "old/c.png"]
    for e in entries:
        assert e["method"] == "adain" and e["seed"] == 0 and e["options"]["size"] == 64
        assert e["style"] == draw_styles(0, e["input"], pool)[0]
        assert e["style_sha256"] == sha(tree["pool"] / e["style"])
        assert e["input_sha256"] == sha(tree["in"] / e["input"])
        assert e["output_sha256"] == made[e["output"]]
        assert e["output_bytes"] == (out / e["output"]).stat().st_size
        assert e["output"] == e["input"].replace(".jpg", ".png")
        assert e["format"] == "png" and e["quality"] is None and e["variant"] == 0
        params = read_params(out / e["output"])  # the PNG records its own run too
        assert params["method"] == "adain"
        assert params["styles"][0]["file"] == Path(e["style"]).name
        assert params["styles"][0]["sha256"] == e["style_sha256"]
        with Image.open(out / e["output"]) as im:
            assert im.size == (64, 48)
    assert len({e["style"] for e in entries}) > 1  # a pool, not one style
    # The same command again: all done, nothing rewritten.
    assert (
        main(
            ["batch", str(tree["in"]), "-o", str(out), "--recursive"]
            + ["--style-pool", str(tree["pool"]), *SMALL]
        )
        == 0
    )
    assert "0 stylised, 7 already done (skipped)" in capsys.readouterr().out
    assert outputs(out) == made and len(lines(out)) == 7


def test_pool_gives_the_same_styles_and_bytes_in_any_shard_layout(tree, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(tree, whole, capsys=capsys)[0] == 0
    for i in (3, 1, 2):  # shards in another order, into one tree and one manifest
        rc, text = run(tree, parts, "--shard", f"{i}/3", capsys=capsys)
        assert rc == 0 and f"{[3, 2, 2][i - 1]} stylised" in text
    assert outputs(parts) == outputs(whole)
    key = lambda e: (e["input"], e["style"], e["output_sha256"])  # noqa: E731
    assert sorted(map(key, lines(parts))) == sorted(map(key, lines(whole)))
    assert main(["batch", "--verify", str(parts)]) == 0
    assert "verified: 7 outputs match" in capsys.readouterr().out


def test_styles_per_image_makes_k_variants_with_different_styles(tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text = run(tree, out, "--styles-per-image", "2", capsys=capsys)
    assert rc == 0 and "14 stylised" in text
    assert sorted(outputs(out))[:4] == [
        "cats/img0__0.png",
        "cats/img0__1.png",
        "cats/img1__0.png",
        "cats/img1__1.png",
    ]
    by_input: dict[str, list[str]] = {}
    for e in lines(out):
        by_input.setdefault(e["input"], []).append(e["style"])
    pool = ["a.png", "b.png", "old/c.png"]
    assert by_input == {name: draw_styles(0, name, pool, 2) for name in by_input}
    assert all(len(set(v)) == 2 for v in by_input.values())


# ------------------------------------------------------------------------ verify


def test_verify_finds_tampered_missing_and_unlisted_files(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tree, out, capsys=capsys)[0] == 0
    assert main(["batch", "--verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == f"{out}: verified: 7 outputs match {out / MANIFEST}"

    data = bytearray((out / "cats/img1.png").read_bytes())
    data[-30] ^= 0xFF  # one byte of the image data
    (out / "cats/img1.png").write_bytes(bytes(data))
    (out / "dogs/img2.png").unlink()
    Image.new("RGB", (8, 8)).save(out / "dogs/extra.png")
    assert main(["batch", "--verify", str(out)]) == 1
    text = capsys.readouterr().out.splitlines()
    assert "  changed (sha256 differs from the manifest): cats/img1.png" in text
    assert "  missing: dogs/img2.png" in text and "  not in the manifest: dogs/extra.png" in text
    assert text[-1] == (
        f"{out}: FAILED: 1 changed, 1 missing, 1 not in the manifest "
        f"(5 of 7 listed outputs match {out / MANIFEST})"
    )
    # With the run's own arguments: also what is not made yet and changed inputs.
    (out / "dogs/extra.png").unlink()
    photo(80, 60, seed=99).save(tree["in"] / "dogs" / "new.jpg")
    photo(80, 60, seed=98).save(tree["in"] / "cats" / "img0.jpg")
    rc, text = run(tree, out, "--verify", capsys=capsys)
    assert rc == 1
    assert "  not made yet: dogs/new.png" in text and "  input changed since: cats/img0.jpg" in text
    assert "1 changed, 1 missing, 1 not made yet, 1 inputs changed" in text
    # Resuming makes what is missing and new; a changed output is never overwritten.
    rc, text = run(tree, out, capsys=capsys)
    assert rc == 0 and "2 stylised, 6 already done" in text  # img1.png: its size is the same
    assert main(["batch", "--verify", str(out)]) == 1
    assert "1 changed" in capsys.readouterr().out
    assert main(["batch", "--verify", str(tmp_path)]) == 2  # no manifest there
    one_line_error(capsys, 2, str(tmp_path / MANIFEST), "no manifest")


def test_resume_after_a_kill_between_output_and_manifest_line(tree, tmp_path, capsys):
    """A run killed (os._exit) after its 4th output was written and before its manifest
    line; a torn line at the manifest's end (a crash mid-write). The next run records the
    whole output without making it again, finishes the rest, and matches a clean run."""
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert run(tree, clean, capsys=capsys)[0] == 0
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, sys\n"
        "from artgen.style import batch\n"
        "real, calls = batch.Manifest.append, []\n"
        "def append(self, entry):\n"
        "    calls.append(entry['output'])\n"
        "    if len(calls) == 4:\n"
        "        os._exit(9)\n"
        "    real(self, entry)\n"
        "batch.Manifest.append = append\n"
        "from artgen.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["batch", str(tree["in"]), "-o", str(out), "--recursive"]
    argv += ["--style-pool", str(tree["pool"]), *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True)
    assert r.returncode == 9, r.stderr.decode()[-2000:]
    assert len(outputs(out)) == 4 and len(lines(out)) == 3
    assert [p.name for p in out.rglob(".*")] == [".img3.png.lock"]  # the dead run's claim
    with open(out / MANIFEST, "ab") as f:
        f.write(b'{"input": "cats/im')  # cut short
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 stylised, 4 already done (skipped; 1 found whole and recorded)" in text
    assert outputs(out) == outputs(clean)
    assert sorted(e["output"] for e in lines(out)) == sorted(outputs(out))  # each once
    assert len((out / MANIFEST).read_text().splitlines()) == 1 + 7 + 1  # the torn line kept
    assert main(["batch", "--verify", str(out)]) == 0
    assert "verified: 7 outputs match" in capsys.readouterr().out
    assert "(1 unreadable manifest lines ignored)" in (
        subprocess.run(
            [sys.executable, "-m", "artgen", "batch", "--verify", str(out)],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert not [p for p in out.rglob(".*")]  # no temporary or lock files left


def test_jpeg_outputs_record_their_parameters_in_the_manifest(tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text = run(tree, out, "--format", "jpg", "--quality", "80", capsys=capsys)
    assert rc == 0 and "7 stylised" in text
    assert sorted(outputs(out))[0] == "cats/img0.jpg"
    for e in lines(out):
        assert e["format"] == "jpg" and e["quality"] == 80
        with Image.open(out / e["output"]) as im:
            assert im.format == "JPEG" and im.size == (64, 48)
    assert main(["batch", "--verify", str(out)]) == 0
    capsys.readouterr()
    rc, text = run(tree, out, "--format", "jpg", "--quality", "90", capsys=capsys)
    assert rc == 1 and "0 stylised" in text and "7 failed" in text
    assert "made with other settings" in text  # never overwritten without --overwrite
    rc, text = run(tree, out, "--format", "jpg", "--quality", "90", "--overwrite", capsys=capsys)
    assert rc == 0 and "7 stylised" in text
    assert {e["quality"] for e in lines(out)[7:]} == {90}
    assert main(["batch", "--verify", str(out)]) == 0


def test_gatys_on_a_data_set_and_a_single_style(tree, tmp_path, capsys):
    """The slow method works the same way (one --style for all here)."""
    out = tmp_path / "out"
    style = tree["pool"] / "a.png"
    argv = ["batch", str(tree["in"] / "dogs"), "-o", str(out), "--recursive"]
    argv += ["--style", str(style), "--method", "gatys", "--size", "32", "--min-size", "32"]
    argv += ["--iterations", "2", "-q"]
    assert main(argv) == 0
    assert "3 stylised" in capsys.readouterr().out
    entries = lines(out)
    assert [e["output"] for e in entries] == ["img0.png", "img1.png", "img2.png"]
    assert {e["method"] for e in entries} == {"gatys"}
    assert {e["style"] for e in entries} == {str(style)}
    assert {json.dumps(e["style_sha256"]) for e in entries} == {json.dumps([[sha(style), 1.0]])}
    assert read_params(out / "img0.png")["method"] == "gatys"
    assert main(argv) == 0
    assert "0 stylised, 3 already done" in capsys.readouterr().out


def test_refusals_are_one_line(tree, tmp_path, capsys):
    base = ["batch", str(tree["in"]), "--recursive", "--size", "64", "-q"]
    pool = ["--style-pool", str(tree["pool"])]
    out = ["-o", str(tmp_path / "out")]
    rc = main([*base, *out, *pool, "--styles-per-image", "4"])
    one_line_error(capsys, rc, "--styles-per-image 4", "only 3 pictures")
    rc = main([*base, *out, *pool, "--style", str(tree["pool"] / "a.png")])
    one_line_error(capsys, rc, "--style or --style-pool")
    rc = main([*base, "-o", str(tree["in"] / "cats" / "out"), *pool])
    one_line_error(capsys, rc, "must not be inside the input folder")
    rc = main([*base, *out, "--style-pool", str(tmp_path / "out" / "pool")])
    one_line_error(capsys, rc, "not a folder")
    rc = main([*base, *out, *pool, "--workers", "2"])
    one_line_error(capsys, rc, "need --engine ray")
    rc = main([*base, *out, "--method", "adain"])
    one_line_error(capsys, rc, "needs a style image: --style", "or --style-pool")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / MANIFEST).write_text("my own notes\n")
    rc = main([*base, "-o", str(tmp_path / "mine"), *pool])
    one_line_error(capsys, rc, str(tmp_path / "mine" / MANIFEST), "not an artgen manifest")
    assert (tmp_path / "mine" / MANIFEST).read_text() == "my own notes\n"
    assert not (tmp_path / "mine" / "cats").exists()


def test_plan_refuses_two_inputs_for_one_output(tree, tmp_path):
    photo(80, 60).save(tree["in"] / "cats" / "img0.png")  # beside img0.jpg
    with pytest.raises(Exception, match="would both be written to cats/img0.png"):
        plan_dataset(tree["in"], tmp_path / "out", BatchOptions(recursive=True))


# ------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed here (pip install 'artgen[cluster]')"
    )
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def crash_once(marker: Path, target: str) -> type:
    """A worker class that dies (os._exit) once, on ``target``, before making it. Defined
    in a function, so Ray ships the class itself to its workers."""
    from artgen.style.batch_ray import DatasetActor

    class CrashOnce(DatasetActor):
        def make(self, item):
            if item.input == target and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().make(item)

    return CrashOnce


def test_ray_engine_same_bytes_and_a_killed_worker_loses_nothing(ray_instance, tmp_path, capsys):
    from artgen.style.adain import AdaINOptions
    from artgen.style.batch import dataset_config
    from artgen.style.batch_ray import run_dataset_ray

    data, pool = tmp_path / "data", tmp_path / "pool"
    for k in range(30):  # two classes, a few dozen tiny pictures
        (data / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        photo(72, 56, seed=k).save(data / f"c{k % 2}" / f"p{k:02d}.png")
    pool.mkdir()
    for k in range(4):
        stripes(48, seed=k).rotate(20 * k).save(pool / f"s{k}.png")
    local, ray_out, crashed = tmp_path / "local", tmp_path / "ray", tmp_path / "crashed"
    argv = ["batch", str(data), "--recursive", "--style-pool", str(pool), *SMALL]
    assert main([*argv, "-o", str(local)]) == 0
    assert "30 stylised" in capsys.readouterr().out
    printer = builtins.print
    assert main([*argv, "-o", str(ray_out), "--engine", "ray", "--batch-size", "4"]) == 0
    assert builtins.print is printer  # Ray Data's safe_print does not outlive the run
    assert "30 stylised, 0 already done (skipped), 0 failed" in capsys.readouterr().out
    assert outputs(ray_out) == outputs(local)  # byte-identical PNGs
    assert len(outputs(local)) == 30

    # A worker dies on the third row of a task; Ray restarts it and retries the task.
    batch = BatchOptions(recursive=True, style_pool=str(pool), batch_size=4)
    plan = plan_dataset(data, crashed, batch)
    config = dataset_config(plan, batch, AdaINOptions(size=64))
    marker = tmp_path / "crashed-once"
    target = plan.items[2].input
    results = run_dataset_ray(plan, config, batch_size=4, actor_class=crash_once(marker, target))
    assert marker.exists()  # the worker did die
    assert sorted(r.item.rel_output for r in results) == sorted(outputs(local))
    assert {r.status for r in results} == {"done"}
    assert any(r.note == "made before a retry" for r in results)
    assert outputs(crashed) == outputs(local)
    written = [e["output"] for e in lines(crashed)]
    assert sorted(written) == sorted(outputs(local))  # each output recorded once
    # Resuming with Ray: the manifest holds everything, so nothing is sent to workers.
    assert main([*argv, "-o", str(crashed), "--engine", "ray"]) == 0
    assert "0 stylised, 30 already done (skipped)" in capsys.readouterr().out
    assert main(["batch", "--verify", str(crashed)]) == 0


def test_worker_count():
    from artgen.style.batch_ray import worker_count

    assert worker_count({"CPU": 16.0}, 1, 0) == 16
    assert worker_count({"CPU": 16.0, "GPU": 2.0}, 4, 0) == 4
    assert worker_count({"CPU": 16.0, "GPU": 2.0}, 1, 0.5) == 4
    with pytest.raises(Exception, match="the Ray cluster has 0 GPUs"):
        worker_count({"CPU": 4.0}, 1, 1)
