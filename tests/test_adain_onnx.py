"""The fast method on onnxruntime: the same pictures as the PyTorch path, without PyTorch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artgen.cli import main
from artgen.core.images import read_params

from .conftest import photo, stripes

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture
def files(tmp_path):
    c, s = tmp_path / "content.png", tmp_path / "style.png"
    photo(120, 90, seed=3).save(c)
    stripes(100, seed=2).save(s)
    return c, s


def test_the_shipped_graphs_are_the_shipped_decoders():
    """fast.json records the sha256 of the decoder the graphs were exported from; it must be
    the one that ships beside them, or the CLI would paint with an older network."""
    from artgen.interop.onnx_export import RUNTIME_FILES
    from artgen.style import adain_onnx

    d = adain_onnx.shipped_dir()
    meta = json.loads((d / "fast.json").read_text())
    assert (
        meta["decoder_sha256"]
        == hashlib.sha256((d / "decoder.safetensors").read_bytes()).hexdigest()
    )
    assert meta["files"] == RUNTIME_FILES
    files = adain_onnx.graph_files(d)
    assert sum(f.stat().st_size for f in files.values()) < 7_000_000  # the weights once


class _Counting:
    """A session that counts its runs."""

    def __init__(self, session):
        self.session, self.shapes = session, []

    def run(self, names, feeds):
        self.shapes.append(feeds["style"].shape)
        return self.session.run(names, feeds)


def test_a_folder_encodes_its_painting_once(files):
    """For several pictures the statistics of the style are remembered per picture of the
    style (size and pixels): a folder runs the statistics graph once, and the pictures are
    those of the whole graph run picture by picture."""
    import artgen
    from artgen.style import adain_onnx

    _, s = files
    options = artgen.AdaINOptions(size=64)
    folder = adain_onnx.usable(options, "auto", [(s, 1.0)], None, None)
    model = adain_onnx.load(folder, workers=2)
    model.stats_session = counted = _Counting(model.stats_session)
    contents = [photo(80, 56, seed=k) for k in range(3)]
    many = adain_onnx.stylize_many(contents, str(s), options, model)
    assert counted.shapes == [(1, 3, 64, 64)]  # one size of picture: one style size
    one = adain_onnx.stylize_many(contents, str(s), options, adain_onnx.load(folder))
    for a, b in zip(many, one, strict=True):
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # the same network, two graphs
    adain_onnx.stylize_many([photo(60, 100, seed=9)], str(s), options, model)
    assert len(counted.shapes) == 1  # a portrait at 64 px: the style at 64 px again
    larger = artgen.AdaINOptions(size=96)
    adain_onnx.stylize_many([photo(60, 100, seed=9)], str(s), larger, model)
    assert counted.shapes == [(1, 3, 64, 64), (1, 3, 96, 96)]  # another size: another entry
    model.stats_of(Image.new("RGB", (96, 96), (9, 9, 9)))
    assert len(counted.shapes) == 3  # and so are other pixels


@pytest.mark.parametrize("strength", ["1", "0.5"])
def test_the_cli_paints_the_same_picture_with_either_runtime(
    files, tmp_path, monkeypatch, capsys, strength
):
    c, s = files
    args = ["stylize", str(c), "--style", str(s), "--method", "adain", "--size", "96"]
    args += ["--strength", strength, "-q"]
    assert main([*args, "-o", str(tmp_path / "ort.png")]) == 0
    assert "(onnxruntime)" in capsys.readouterr().err
    monkeypatch.setenv("ARTGEN_RUNTIME", "torch")
    assert main([*args, "-o", str(tmp_path / "torch.png")]) == 0
    assert "(onnxruntime)" not in capsys.readouterr().err
    a = np.asarray(Image.open(tmp_path / "ort.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "torch.png"), dtype=int)
    assert a.shape == b.shape == (72, 96, 3)
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    # the same record: the reproduce line cannot tell them apart
    pa, pb = read_params(tmp_path / "ort.png"), read_params(tmp_path / "torch.png")
    assert pa == pb


def test_runs_the_graph_cannot_do_take_the_pytorch_path(files, tmp_path, capsys):
    c, s = files
    # a side at most the 16 px border: the graph cannot reflect it, PyTorch replicates
    assert (
        main(
            [
                "stylize",
                str(c),
                "--style",
                str(s),
                "--method",
                "adain",
                "--size",
                "16",
                "-q",
                "-o",
                str(tmp_path / "tiny.png"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "tiny.png").size == (16, 12)
    capsys.readouterr()
    base = ["stylize", str(c), "--style", str(s), "--method", "adain", "--size", "64", "-q"]
    for extra in (["--preserve-color", "luminance"], ["--style", str(c)]):
        assert main([*base, *extra, "-o", str(tmp_path / f"{len(extra)}{extra[1][-3:]}.png")]) == 0
        assert "(onnxruntime)" not in capsys.readouterr().err


def test_a_fast_command_imports_no_pytorch(files, tmp_path):
    c, s = files
    code = (
        "import sys\nfrom artgen.cli import main\n"
        f"rc = main(['stylize', {str(c)!r}, '--style', {str(s)!r}, '--method', 'adain', "
        f"'--size', '64', '-q', '-o', {str(tmp_path / 'o.png')!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARTGEN_RUNTIME"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.splitlines()[-1].split() == ["0", "False"], out.stderr[-2000:]
    assert (tmp_path / "o.png").is_file()


def test_batch_takes_the_graph_too(files, tmp_path, capsys):
    c, s = files
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        photo(80, 60 + 8 * k, seed=k).save(folder / f"p{k}.png")
    args = ["batch", str(folder), "--style", str(s), "--method", "adain", "--size", "64", "-q"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    assert "(onnxruntime)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert Image.open(tmp_path / "out" / "p2.png").width == 64


def test_several_workers_paint_the_same_pictures_in_order(files):
    """A folder runs pictures two at a time (artgen.style.adain_onnx.batch_workers): the
    same bytes, in the same order, as one at a time."""
    import artgen
    from artgen.style import adain_onnx

    _, s = files
    options = artgen.AdaINOptions(size=64)
    path = adain_onnx.usable(options, "auto", [(s, 1.0)], None, None)
    assert path is not None
    contents = [photo(80, 56 + 8 * k, seed=k) for k in range(5)]
    two = adain_onnx.stylize_many(contents, str(s), options, adain_onnx.load(path, workers=2))
    model = adain_onnx.load(path, workers=2)  # the same graphs, one picture at a time
    one = [adain_onnx.stylize_many([c], str(s), options, model)[0] for c in contents]
    assert [im.size for im in two] == [im.size for im in one]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, two, strict=True))
    assert adain_onnx.load(path, workers=2).workers == 2


def test_the_optimised_graph_is_kept_and_paints_the_same(files, tmp_path, monkeypatch):
    """The first session on a machine keeps onnxruntime's optimised graph under
    $ARTGEN_HOME/onnx and later ones open it without optimising: the same pictures bit for
    bit. A damaged copy is made again; a cache that cannot be written is only not used."""
    import onnxruntime as ort

    from artgen.style import adain_onnx

    folder = adain_onnx.shipped_dir()
    whole = adain_onnx.graph_files(folder)["one"]
    rng = np.random.default_rng(0)
    c = rng.random((1, 3, 72, 104), np.float32)
    style = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    s = np.ascontiguousarray((np.asarray(style, np.float32) / 255.0).transpose(2, 0, 1)[None])
    plain = ort.InferenceSession(str(whole), providers=["CPUExecutionProvider"])
    want = plain.run(None, {"content": c, "style": s, "alpha": np.array(0.8, np.float32)})[0]

    monkeypatch.setenv("ARTGEN_HOME", str(tmp_path / "artgen"))
    cached = adain_onnx._cached_graph(ort, whole)
    assert cached.parent == tmp_path / "artgen" / "onnx"
    assert not cached.exists()
    first = adain_onnx.load(folder)
    assert cached.stat().st_size > 1_000_000  # the weights inside
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary left
    made = cached.stat().st_ino  # a copy made again would be another file
    quick = ort.SessionOptions()
    quick.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(str(cached), quick, providers=["CPUExecutionProvider"])  # alone
    second = adain_onnx.load(folder)
    assert cached.stat().st_ino == made  # opened, not made again
    assert np.array_equal(first.paint(c, style, 0.8), want)
    assert np.array_equal(second.paint(c, style, 0.8), want)

    cached.write_bytes(b"not a graph")
    assert np.array_equal(adain_onnx.load(folder).paint(c, style, 0.8), want)
    assert cached.stat().st_size > 1_000_000  # made again

    for k in range(adain_onnx.CACHE_KEPT + 3):  # other installs' copies, older
        stale = cached.parent / f"fast-stale{k}.onnx"
        stale.write_bytes(b"x")
        os.utime(stale, (1e9 + k, 1e9 + k))
    cached.unlink()
    adain_onnx.load(folder)  # writes a copy again, and prunes
    left = sorted(p.name for p in cached.parent.glob("fast-*.onnx"))
    assert len(left) == adain_onnx.CACHE_KEPT and cached.name in left
    assert "fast-stale0.onnx" not in left and f"fast-stale{adain_onnx.CACHE_KEPT + 2}.onnx" in left

    # Ctrl-C while onnxruntime writes the copy: no temporary is left behind
    real = ort.InferenceSession

    def interrupted(path, so=None, **kw):
        if so is not None and so.optimized_model_filepath:
            Path(so.optimized_model_filepath).write_bytes(b"half a graph")
            raise KeyboardInterrupt
        return real(path, so, **kw)

    cached.unlink()
    monkeypatch.setattr(ort, "InferenceSession", interrupted)
    with pytest.raises(KeyboardInterrupt):
        adain_onnx.load(folder)
    monkeypatch.setattr(ort, "InferenceSession", real)
    assert not list(cached.parent.glob(".fast-*"))
    old_tmp = cached.parent / ".fast-killed.1.2.tmp"  # a killed process's, two hours old
    old_tmp.write_bytes(b"x")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    adain_onnx.load(folder)
    assert not old_tmp.exists() and cached.is_file()

    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    monkeypatch.setenv("ARTGEN_HOME", str(blocked / "home"))  # cannot be created
    assert np.array_equal(adain_onnx.load(folder).paint(c, style, 0.8), want)
    assert not (blocked / "home").exists()
