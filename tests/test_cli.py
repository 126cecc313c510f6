"""The CLI, run in-process through main([...])."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from artgen.cli import main
from artgen.images import read_params
from artgen.style import gatys as gatys_mod
from artgen.weights import VGG19_FILE, torch_checkpoint_dir

from .conftest import REPO, photo

FAST = ["--size", "48", "--min-size", "48", "--iterations", "5", "-q"]


def test_stylize_writes_png_with_parameters_and_info_reproduces(
    images, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out.png"
    rc = main(["stylize", str(images["content"]), "--style", f"{images['style']}:0.7",
               "--style", f"{images['style2']}:0.3", "--seed", "7", "-o", str(out), *FAST])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "backbone: efficientnet-lite0" in captured.err and f"wrote {out}" in captured.out
    im = Image.open(out)
    assert im.size == (48, 32) and im.format == "PNG"
    p = read_params(out)
    assert p["options"]["seed"] == 7 and p["options"]["backbone"] == "efficientnet-lite0"
    assert [s["weight"] for s in p["styles"]] == [0.7, 0.3]
    assert p["content"]["file"] == "content.png" and len(p["content"]["sha256"]) == 64

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    cmd = text.strip().splitlines()[-1].strip()
    assert cmd.startswith("artgen stylize content.png --style style.png:0.7 --style style2.png:0.3")
    assert "--seed 7" in cmd and "--iterations 5" in cmd and "--backbone efficientnet-lite0" in cmd

    # The stored parameters are enough to make the same picture again.
    monkeypatch.chdir(images["content"].parent)
    again = tmp_path / "again.png"
    argv = cmd.split()[1:-2] + ["-o", str(again), "-q"]
    assert main(argv) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(im))
    capsys.readouterr()
    assert main(["info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["options"]["size"] == 48


def test_bundled_style_by_name(images, tmp_path):
    assert (
        main(
            [
                "stylize",
                str(images["content"]),
                "--style",
                "waves",
                "-o",
                str(tmp_path / "w.png"),
                *FAST,
            ]
        )
        == 0
    )


def test_refuses_to_overwrite(images, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    assert (
        main(
            [
                "stylize",
                str(images["content"]),
                "--style",
                str(images["style"]),
                "-o",
                str(out),
                *FAST,
            ]
        )
        == 2
    )
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    # An input is never an output, even with --overwrite.
    shutil.copy(images["style"], tmp_path / "s.png")
    rc = main(["stylize", str(images["content"]), "--style", str(tmp_path / "s.png"), "-o", str(tmp_path / "s.png"),
               "--overwrite", *FAST])  # fmt: skip
    assert rc == 2 and "is one of the inputs" in capsys.readouterr().err


def test_bad_image_and_missing_weights_messages(images, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_text("not an image")
    rc = main(
        [
            "stylize",
            str(tmp_path / "bad.jpg"),
            "--style",
            str(images["style"]),
            "-o",
            str(tmp_path / "o.png"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"artgen: error: {tmp_path / 'bad.jpg'}: not a readable image " \
        "(accepted formats: PNG, JPEG, WEBP, BMP, TIFF, GIF)"  # fmt: skip
    rc = main(["stylize", str(images["content"]), "--style", str(images["style"]), "--backbone", "vgg19",
               "-o", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert VGG19_FILE in err and "artgen weights fetch vgg19" in err and "Traceback" not in err
    rc = main(
        [
            "stylize",
            str(images["content"]),
            "--style",
            "no-such-style",
            "-o",
            str(tmp_path / "o.png"),
        ]
    )
    assert rc == 2 and "not a style name (known styles: facets, mosaic" in capsys.readouterr().err


def test_vgg19_backbone_runs_from_the_cli(images, tmp_path, vgg_file):
    dest = torch_checkpoint_dir()
    dest.mkdir(parents=True)
    os.symlink(vgg_file, dest / VGG19_FILE)
    out = tmp_path / "v.png"
    assert (
        main(
            [
                "stylize",
                str(images["content"]),
                "--style",
                str(images["style"]),
                "-o",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert read_params(out)["options"]["backbone"] == "vgg19"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for k in range(4):
        photo(48, 40, seed=k).save(d / f"img{k}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def test_batch_reports_bad_file_and_goes_on(folder, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["batch", str(folder), "--style", str(images["style"]), "-o", str(out), *FAST])
    assert rc == 1  # not every image succeeded
    text = capsys.readouterr().out
    assert "4 stylised, 0 already done (skipped), 1 failed" in text and "broken.jpg" in text
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(4)]


def test_batch_resumes_after_interruption(folder, images, tmp_path, monkeypatch, capsys):
    (folder / "broken.jpg").unlink()
    out = tmp_path / "out"
    real = gatys_mod.stylize  # batch reaches it through the method registry
    calls = {"n": 0}

    def dies_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gatys_mod, "stylize", dies_on_third)
    rc = main(["batch", str(folder), "--style", str(images["style"]), "-o", str(out), *FAST])
    assert rc == 130 and "run the same command again to resume" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["img0.png", "img1.png"]  # whole files only, no temporaries
    first = (out / "img0.png").stat().st_mtime_ns

    monkeypatch.setattr(gatys_mod, "stylize", real)
    assert main(["batch", str(folder), "--style", str(images["style"]), "-o", str(out), *FAST]) == 0
    assert "2 stylised, 2 already done (skipped), 0 failed" in capsys.readouterr().out
    assert (out / "img0.png").stat().st_mtime_ns == first
    assert (
        main(
            [
                "batch",
                str(folder),
                "--style",
                str(images["style"]),
                "-o",
                str(out),
                "--overwrite",
                *FAST,
            ]
        )
        == 0
    )
    assert "4 stylised, 0 already done" in capsys.readouterr().out


def test_batch_shards_split_the_folder(folder, images, tmp_path, capsys):
    (folder / "broken.jpg").unlink()
    out = tmp_path / "out"
    for i in (1, 2):
        assert main(["batch", str(folder), "--style", str(images["style"]), "-o", str(out),
                     "--shard", f"{i}/2", *FAST]) == 0  # fmt: skip
        assert "2 stylised" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(4)]
    assert (
        main(
            [
                "batch",
                str(folder),
                "--style",
                str(images["style"]),
                "-o",
                str(out),
                "--shard",
                "3/2",
            ]
        )
        == 2
    )
    assert "need 1 <= I <= N" in capsys.readouterr().err


def test_batch_refuses_output_into_input(folder, images, capsys):
    assert main(["batch", str(folder), "--style", str(images["style"]), "-o", str(folder)]) == 2
    assert "must not be the input folder" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    text = capsys.readouterr().out
    assert "--preserve-color {none,luminance,histogram}" in text and "examples:" in text
    assert "(default: 512)" in text


def test_styles_and_weights_list(capsys):
    assert main(["styles", "list"]) == 0
    text = capsys.readouterr().out
    assert "swirls" in text and "starry-night" in text and "[not downloaded]" in text
    assert main(["weights", "list"]) == 0
    assert "vgg19: not on disk" in capsys.readouterr().out


def test_catalogue_files_exist_and_fetch_checks_hashes(tmp_path, monkeypatch, capsys):
    from artgen import catalog

    entries = catalog.load_manifest()
    for e in entries:
        assert e.licence and e.source and e.author
        if e.kind != "fetchable":
            assert e.available, e.path
            Image.open(e.path).verify()
        else:
            assert len(e.sha256) == 64 and e.url.startswith("https://")
    # Fetch from a local copy (no network here): a good file lands, a bad hash is refused.
    src = tmp_path / "starry.jpg"
    shutil.copy(REPO / "styles/swirls.jpg", src)
    manifest = json.loads((REPO / "styles/manifest.json").read_text())
    manifest["fetchable"][0]["url"] = src.as_uri()
    styles = tmp_path / "styles"
    shutil.copytree(REPO / "styles", styles)
    (styles / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ARTGEN_STYLES_DIR", str(styles))
    assert main(["styles", "fetch", "starry-night"]) == 1
    assert "corrupt: sha256" in capsys.readouterr().err
    from artgen.images import sha256_file

    manifest["fetchable"][0]["sha256"] = sha256_file(src)
    (styles / "manifest.json").write_text(json.dumps(manifest))
    assert main(["styles", "fetch", "starry-night"]) == 0
    assert catalog.resolve("starry-night").is_file()


# ---------------------------------------------------------------- the fast method


def test_fast_method_from_the_cli_and_info_reproduces(images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "fast.png"
    rc = main(["stylize", str(images["content"]), "--method", "adain", "--style",
               f"{images['style']}:0.6", "--style", f"{images['style2']}:0.4", "--strength", "0.8",
               "--size", "80", "-o", str(out), "-q"])  # fmt: skip
    assert rc == 0
    assert "AdaIN with efficientnet-lite0" in capsys.readouterr().err
    p = read_params(out)
    assert p["method"] == "adain" and p["options"]["strength"] == 0.8
    assert p["options"]["model"] == "shipped" and Image.open(out).size == (80, 53)
    assert main(["info", str(out)]) == 0
    cmd = capsys.readouterr().out.strip().splitlines()[-1].strip()
    assert cmd.startswith("artgen stylize content.png --method adain --style style.png:0.6")
    assert "--strength 0.8" in cmd and "--iterations" not in cmd
    monkeypatch.chdir(images["content"].parent)
    again = tmp_path / "again.png"
    assert main(cmd.split()[1:-2] + ["-o", str(again), "-q"]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_fast_method_flags_are_its_own(images, tmp_path, capsys):
    base = ["stylize", str(images["content"]), "--style", str(images["style"]), "-o",
            str(tmp_path / "x.png"), "-q"]  # fmt: skip
    with pytest.raises(SystemExit):  # a Gatys flag is not the fast method's
        main([*base, "--method", "adain", "--iterations", "5"])
    assert "unrecognized arguments: --iterations" in capsys.readouterr().err
    assert main([*base, "--method", "adain", "--strength", "2"]) == 2
    assert "strength=2.0: must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--method", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_fast_batch_goes_in_batches_and_resumes(folder, images, tmp_path, capsys, monkeypatch):
    from artgen.style import adain as adain_mod

    out = tmp_path / "out"
    calls = []
    real = adain_mod.stylize_many

    def counting(contents, *a, **k):
        calls.append(len(contents))
        return real(contents, *a, **k)

    monkeypatch.setattr(adain_mod, "METHOD", adain_mod.METHOD.__class__(
        **{**adain_mod.METHOD.__dict__, "stylize_many": counting}))  # fmt: skip
    argv = ["batch", str(folder), "--method", "adain", "--style", str(images["style"]), "-o",
            str(out), "--size", "48", "--batch-size", "3", "-q"]  # fmt: skip
    assert main(argv) == 1  # broken.jpg fails, the rest are done
    text = capsys.readouterr().out
    assert "4 stylised, 0 already done (skipped), 1 failed" in text and "broken.jpg" in text
    assert calls == [2, 2]  # passes of 3 files; broken.jpg (first) fails to load, 2 + 2 remain
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(4)]
    assert read_params(out / "img0.png")["method"] == "adain"
    (out / "img1.png").unlink()
    assert main(argv) == 1
    assert "1 stylised, 3 already done (skipped), 1 failed" in capsys.readouterr().out


def test_info_refuses_tampered_metadata_without_running_it(images, tmp_path, capsys):
    from artgen.images import save_png

    good = tmp_path / "good.png"
    assert main(["stylize", str(images["content"]), "--method", "adain", "--style",
                 str(images["style"]), "--size", "48", "-o", str(good), "-q"]) == 0  # fmt: skip
    params = read_params(good)
    capsys.readouterr()
    bad = [
        {**params, "device": "cpu$(touch /tmp/artgen-pwned)"},
        {**params, "options": {**params["options"], "model": "x; rm -rf ~"}},
        {**params, "options": {**params["options"], "strength": "1; ls"}},
        {**params, "options": {**params["options"], "nope": 1}},
        {**params, "method": "evil"},
        {**params, "styles": [{"file": 3}]},
        ["not", "a", "dict"],
    ]
    for k, p in enumerate(bad):
        path = save_png(Image.open(good), tmp_path / f"bad{k}.png", params=p)
        rc = main(["info", str(path)])
        out, err = capsys.readouterr()
        if rc == 0:  # printed: every field must be shell-quoted
            cmd = out.strip().splitlines()[-1]
            assert "'x; rm -rf ~'" in cmd, cmd
        else:
            assert rc == 2 and err.count("\n") == 1 and "cannot use" in err, err
    assert not os.path.exists("/tmp/artgen-pwned")


def test_a_third_method_is_one_file_and_one_registry_line(images, tmp_path, monkeypatch, capsys):
    """The seam: register a method module and every interface reaches it."""
    import sys
    import types
    from dataclasses import dataclass

    from artgen import style

    mod = types.ModuleType("artgen_test_identity")

    @dataclass(frozen=True)
    class IdentityOptions:
        size: int = 40
        seed: int = 0

        def to_dict(self):
            return {"size": self.size, "seed": self.seed}

        @classmethod
        def from_dict(cls, d):
            return cls(**d)

    def stylize(content, styles, options, *, model=None, device=None, callback=None):
        from artgen.images import load_image, resize_long_side

        rgb = content.rgb if hasattr(content, "rgb") else load_image(content).rgb
        return resize_long_side(rgb, options.size)

    mod.METHOD = style.StyleMethod("identity", "the photo as it is", IdentityOptions,
                                   load=lambda *a: None, stylize=stylize)  # fmt: skip
    monkeypatch.setitem(sys.modules, "artgen_test_identity", mod)
    monkeypatch.setitem(style.METHODS, "identity", "artgen_test_identity")
    out = tmp_path / "id.png"
    assert main(["stylize", str(images["content"]), "--method", "identity", "--style",
                 str(images["style"]), "--size", "32", "-o", str(out), "-q"]) == 0  # fmt: skip
    assert Image.open(out).size == (32, 21) and read_params(out)["method"] == "identity"
    assert main(["info", str(out)]) == 0
    assert "--method identity" in capsys.readouterr().out
