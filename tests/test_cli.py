"""The CLI, run in-process through main([...])."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from artgen.cli import main
from artgen.core.images import read_params
from artgen.interop.weights import VGG19_FILE, torch_checkpoint_dir
from artgen.style import gatys as gatys_mod

from .conftest import REPO, photo

FAST = ["--size", "48", "--min-size", "48", "--iterations", "5", "-q"]


def test_stylize_writes_png_with_parameters_and_info_reproduces(
    images, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out.png"
    rc = main(
        [
            "stylize",
            str(images["content"]),
            "--style",
            f"{images['style']}:0.7",
            "--style",
            f"{images['style2']}:0.3",
            "--seed",
            "7",
            "-o",
            str(out),
            *FAST,
        ]
    )
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
    rc = main(
        [
            "stylize",
            str(images["content"]),
            "--style",
            str(tmp_path / "s.png"),
            "-o",
            str(tmp_path / "s.png"),
            "--overwrite",
            *FAST,
        ]
    )
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
    assert (
        rc == 2
        and err.strip()
        == f"artgen: error: {tmp_path / 'bad.jpg'}: not a readable image "
        "(accepted formats: PNG, JPEG, WEBP, BMP, TIFF, GIF)"
    )
    rc = main(
        [
            "stylize",
            str(images["content"]),
            "--style",
            str(images["style"]),
            "--backbone",
            "vgg19",
            "-o",
            str(tmp_path / "o.png"),
        ]
    )
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
                    f"{i}/2",
                    *FAST,
                ]
            )
            == 0
        )
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


def test_help_names_the_other_methods_flags_and_they_exist(capsys):
    """The default help's examples use --generator; it is named there, and every flag the
    help names for another method is one of that method's."""
    from artgen.cli.stylize import METHOD_FLAGS

    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    text = capsys.readouterr().out
    assert "--method sdedit: --generator, --prompt" in text and "--method adain: --model" in text
    for method, flags in METHOD_FLAGS.items():
        with pytest.raises(SystemExit):
            main(["stylize", "--method", method, "--help"])
        own = capsys.readouterr().out.split("other methods' flags:")[0]
        for flag in flags.split(", "):
            assert re.search(rf"^  {re.escape(flag)}\b", own, re.M), (method, flag)


def test_styles_and_weights_list(capsys):
    assert main(["styles", "list"]) == 0
    text = capsys.readouterr().out
    assert "swirls" in text and "starry-night" in text and "[not downloaded]" in text
    assert main(["weights", "list"]) == 0
    assert "vgg19: not on disk" in capsys.readouterr().out


def test_catalogue_files_exist_and_fetch_checks_hashes(tmp_path, monkeypatch, capsys):
    from artgen.interop import catalog

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
    assert main(["styles", "fetch", "starry-night"]) == 2
    assert "corrupt: sha256" in capsys.readouterr().err
    from artgen.core.images import sha256_file

    manifest["fetchable"][0]["sha256"] = sha256_file(src)
    (styles / "manifest.json").write_text(json.dumps(manifest))
    assert main(["styles", "fetch", "starry-night"]) == 0
    assert catalog.resolve("starry-night").is_file()


# ---------------------------------------------------------------- the fast method


def test_fast_method_from_the_cli_and_info_reproduces(images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "fast.png"
    rc = main(
        [
            "stylize",
            str(images["content"]),
            "--method",
            "adain",
            "--style",
            f"{images['style']}:0.6",
            "--style",
            f"{images['style2']}:0.4",
            "--strength",
            "0.8",
            "--size",
            "80",
            "-o",
            str(out),
            "-q",
        ]
    )
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
    base = [
        "stylize",
        str(images["content"]),
        "--style",
        str(images["style"]),
        "-o",
        str(tmp_path / "x.png"),
        "-q",
    ]
    with pytest.raises(SystemExit):  # a Gatys flag is not the fast method's
        main([*base, "--method", "adain", "--iterations", "5"])
    assert "unrecognized arguments: --iterations" in capsys.readouterr().err
    assert main([*base, "--method", "adain", "--strength", "3"]) == 2
    assert "strength=3.0: must be between 0 and 2" in capsys.readouterr().err
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

    monkeypatch.setattr(
        adain_mod,
        "METHOD",
        adain_mod.METHOD.__class__(**{**adain_mod.METHOD.__dict__, "stylize_many": counting}),
    )
    argv = [
        "batch",
        str(folder),
        "--method",
        "adain",
        "--style",
        str(images["style"]),
        "-o",
        str(out),
        "--size",
        "48",
        "--batch-size",
        "3",
        "-q",
    ]
    assert main(argv) == 1  # broken.jpg fails, the rest are done
    text = capsys.readouterr().out
    assert "4 stylised, 0 already done (skipped), 1 failed" in text and "broken.jpg" in text
    assert calls == [3, 1]  # passes fill up to 3 loaded pictures; broken.jpg fails to load
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(4)]
    assert read_params(out / "img0.png")["method"] == "adain"
    (out / "img1.png").unlink()
    assert main(argv) == 1
    assert "1 stylised, 3 already done (skipped), 1 failed" in capsys.readouterr().out


def test_info_refuses_tampered_metadata_without_running_it(images, tmp_path, capsys):
    from artgen.core.images import save_png

    good = tmp_path / "good.png"
    assert (
        main(
            [
                "stylize",
                str(images["content"]),
                "--method",
                "adain",
                "--style",
                str(images["style"]),
                "--size",
                "48",
                "-o",
                str(good),
                "-q",
            ]
        )
        == 0
    )
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
        from artgen.core.images import load_image, resize_long_side

        rgb = content.rgb if hasattr(content, "rgb") else load_image(content).rgb
        return resize_long_side(rgb, options.size)

    mod.METHOD = style.StyleMethod(
        "identity", "the photo as it is", IdentityOptions, load=lambda *a: None, stylize=stylize
    )
    monkeypatch.setitem(sys.modules, "artgen_test_identity", mod)
    monkeypatch.setitem(style.METHODS, "identity", "artgen_test_identity")
    out = tmp_path / "id.png"
    assert (
        main(
            [
                "stylize",
                str(images["content"]),
                "--method",
                "identity",
                "--style",
                str(images["style"]),
                "--size",
                "32",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (32, 21) and read_params(out)["method"] == "identity"
    assert main(["info", str(out)]) == 0
    assert "--method identity" in capsys.readouterr().out


# ----------------------------------------------------------------- input hardening (#15)


def _never_stylize(monkeypatch):
    """Make any stylisation fail the test: errors must come before the work."""

    def boom(*a, **k):
        raise AssertionError("stylised before the output was checked")

    monkeypatch.setattr(gatys_mod, "stylize", boom)


def test_bad_outputs_are_refused_before_any_work(images, tmp_path, capsys, monkeypatch):
    _never_stylize(monkeypatch)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "x.png").mkdir()
    cases = [
        ([str(tmp_path / "afile" / "out.png")], "is a file, not a folder"),
        ([str(tmp_path / "x.png"), "--overwrite"], "is a folder"),
        ([str(tmp_path / ("n" * 300 + ".png"))], "the limit is 255"),
        (["/proc/artgen-out.png"], "inside /proc"),
        (["/sys/artgen-out.png", "--overwrite"], "inside /sys"),
    ]
    for out, why in cases:
        rc = main(
            ["stylize", str(images["content"]), "--style", str(images["style"]), "-o", *out, *FAST]
        )
        err = capsys.readouterr().err
        assert rc == 2 and why in err and err.count("\n") == 1, (out, err)
        assert "Traceback" not in err
    assert (tmp_path / "x.png").is_dir() and (tmp_path / "afile").read_text() == "x"


def test_batch_refuses_an_unwritable_output_folder_before_any_work(
    folder, images, tmp_path, capsys, monkeypatch
):
    _never_stylize(monkeypatch)
    (tmp_path / "afile").write_text("x")
    for out, why in (
        (tmp_path / "afile" / "out", "is a file, not a folder"),
        ("/proc/artgen-batch", "cannot write in /proc/artgen-batch"),
    ):
        rc = main(["batch", str(folder), "--style", str(images["style"]), "-o", str(out), *FAST])
        err = capsys.readouterr().err
        assert rc == 2 and why in err and err.count("\n") == 1, err


def test_batch_never_overwrites_an_input_through_a_symlink(images, tmp_path, capsys):
    shared = tmp_path / "sh"
    shared.mkdir()
    photo(48, 40).save(shared / "f1.png")
    before = (shared / "f1.png").read_bytes()
    nest = tmp_path / "nest" / "in"
    nest.mkdir(parents=True)
    (nest / "f1.png").symlink_to(shared / "f1.png")
    rc = main(
        [
            "batch",
            str(nest),
            "--style",
            str(images["style"]),
            "-o",
            str(shared),
            "--overwrite",
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "never overwrites an input" in err and err.count("\n") == 1
    assert (shared / "f1.png").read_bytes() == before


def test_reproduce_lines_work_for_bundled_fetched_and_path_styles(
    images, tmp_path, capsys, monkeypatch
):
    from artgen.interop import catalog

    # A fetched painting: put a file where `styles fetch` would (its checksum is not checked
    # on use, only on download).
    entry = next(e for e in catalog.load_manifest() if e.name == "shipwreck")
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(images["style2"], entry.path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for spec, expected in (
        ("swirls", "--style swirls:1"),
        ("shipwreck", "--style shipwreck:1"),
        (str(images["style"]), "--style style.png:1"),
    ):
        out = tmp_path / f"{os.path.basename(spec)}.png"
        assert (
            main(["stylize", str(images["content"]), "--style", spec, "-o", str(out), *FAST]) == 0
        )
        capsys.readouterr()
        assert main(["info", str(out)]) == 0
        cmd = capsys.readouterr().out.strip().splitlines()[-1].strip()
        assert expected in cmd, cmd
        # The line runs where the inputs are (a catalogue name resolves from anywhere).
        cwd = images["content"].parent
        if spec in ("swirls", "shipwreck"):
            shutil.copy(images["content"], elsewhere / "content.png")
            cwd = elsewhere
        monkeypatch.chdir(cwd)
        again = tmp_path / f"again-{os.path.basename(spec)}.png"
        assert main(cmd.split()[1:-2] + ["-o", str(again), "-q"]) == 0, cmd
        assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
        capsys.readouterr()


def test_the_reproduce_line_keeps_relative_paths_as_given(images, tmp_path, capsys, monkeypatch):
    """`--style my_art/m00.png` comes back as my_art/m00.png (it once came back as m00.png,
    which fails from the folder where the command ran); an absolute path is not recorded,
    only its file name."""
    (tmp_path / "my_art").mkdir()
    (tmp_path / "photos").mkdir()
    shutil.copy(images["style"], tmp_path / "my_art" / "m00.png")
    shutil.copy(images["content"], tmp_path / "photos" / "p.png")
    monkeypatch.chdir(tmp_path)
    argv = ["stylize", "photos/p.png", "--style", "my_art/m00.png", "-o", "out.png", *FAST]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["info", "out.png"]) == 0
    said = capsys.readouterr().out
    assert "…" not in said and re.search(r"sha256 [0-9a-f]{16}\.\.\.\n", said), said
    cmd = said.strip().splitlines()[-1].strip()
    assert cmd.startswith("artgen stylize photos/p.png") and "--style my_art/m00.png:1" in cmd
    assert main(cmd.split()[1:-2] + ["-o", "again.png", "-q"]) == 0, cmd
    assert np.array_equal(np.asarray(Image.open("again.png")), np.asarray(Image.open("out.png")))
    p = read_params("out.png")
    assert p["styles"][0]["path"] == "my_art/m00.png" and p["styles"][0]["file"] == "m00.png"
    absolute = str(tmp_path / "my_art" / "m00.png")
    assert main(["stylize", "photos/p.png", "--style", absolute, "-o", "abs.png", *FAST]) == 0
    assert "path" not in read_params("abs.png")["styles"][0]


def test_info_survives_fuzzed_metadata(images, tmp_path, capsys):
    """Random mutations of real metadata: every outcome is a printed report or one line."""
    import random
    import shlex

    from artgen.core.images import save_png

    good = tmp_path / "good.png"
    assert (
        main(["stylize", str(images["content"]), "--style", "swirls", "-o", str(good), *FAST]) == 0
    )
    capsys.readouterr()
    params = read_params(good)
    base = Image.open(good)
    base.load()
    rng = random.Random(0)
    odd = [
        None,
        True,
        -1,
        0,
        1e308,
        float("nan"),
        "",
        "x" * 5000,
        "$(touch /tmp/artgen-fz)",
        [],
        {},
        [[[[]]]],
        {"a": {"b": {}}},
        "cuda:0",
        2**70,
        "a\nb",
    ]

    def mutate(obj, depth=0):
        if isinstance(obj, dict) and obj and rng.random() < 0.7:
            obj = dict(obj)
            key = rng.choice(list(obj))
            r = rng.random()
            if r < 0.2:
                del obj[key]
            elif r < 0.3:
                obj[rng.choice(["nope", "file", "weight", "name", "sha256"])] = rng.choice(odd)
            elif r < 0.7 and depth < 3:
                obj[key] = mutate(obj[key], depth + 1)
            else:
                obj[key] = rng.choice(odd)
            return obj
        if isinstance(obj, list) and obj and rng.random() < 0.7:
            obj = list(obj)
            k = rng.randrange(len(obj))
            obj[k] = mutate(obj[k], depth + 1) if rng.random() < 0.6 else rng.choice(odd)
            return obj
        return rng.choice(odd)

    path = tmp_path / "fz.png"
    outcomes = {0: 0, 2: 0}
    for _ in range(300):
        p = mutate(params)
        try:
            text = json.dumps(p)
        except ValueError:
            continue
        if path.exists():
            path.unlink()
        save_png(base, path, params=json.loads(text))
        rc = main(["info", str(path)])
        out, err = capsys.readouterr()
        outcomes[rc] += 1
        if rc == 0:
            cmd = out.strip().splitlines()[-1].strip()
            words = shlex.split(cmd)
            assert words[:2] == ["artgen", "stylize"] and words[-2:] == ["-o", "OUT.png"]
        else:
            assert err.count("\n") == 1 and "Traceback" not in err, err
    assert outcomes[0] > 10 and outcomes[2] > 100, outcomes
    assert not os.path.exists("/tmp/artgen-fz")


def test_concurrent_batches_share_the_work(folder, images, tmp_path):
    """Two identical `artgen batch` runs at once: every picture made once, none 'failed'."""
    import subprocess
    import sys

    (folder / "broken.jpg").unlink()
    for k in range(4, 10):
        photo(48, 40, seed=k).save(folder / f"img{k}.png")
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "artgen",
        "batch",
        str(folder),
        "--method",
        "adain",
        "--style",
        str(images["style"]),
        "-o",
        str(out),
        "--size",
        "48",
        "--batch-size",
        "1",
        "-q",
    ]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, results, strict=True):
        assert p.returncode == 0, (o, e)
        assert "0 failed" in o, o
    made = [int(o.split(" stylised")[0].strip().splitlines()[-1]) for o, _ in results]
    assert sum(made) == 10, results  # each picture was made by exactly one of the two
    print("made by each run:", made)
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(10)]


def test_batch_counts_what_another_run_does_as_skipped(folder, images, tmp_path, capsys):
    """In-process: one output claimed by 'another run', one finished by it after planning."""
    from artgen.core.images import OutputClaim, load_image
    from artgen.style import get_method
    from artgen.style.batch import BatchOptions, plan_batch, run_batch

    (folder / "broken.jpg").unlink()
    out = tmp_path / "out"
    jobs = plan_batch(folder, out, BatchOptions())
    out.mkdir()
    (out / ".img3.png.a1b2c3d4.tmp").write_bytes(b"left by a killed run")
    photo(48, 40).save(out / "img2.png")  # another run finished it after we planned
    adain = get_method("adain")
    options = adain.options(size=48)
    with OutputClaim(out / "img1.png"):  # another run is making it
        results = run_batch(
            jobs, [(load_image(images["style"]), 1.0)], options, BatchOptions(batch_size=1)
        )
    status = {r.job.output.name: (r.status, r.error) for r in results}
    assert status["img0.png"] == ("done", None) and status["img3.png"] == ("done", None)
    assert status["img1.png"] == ("skipped", "another artgen run is making it")
    assert status["img2.png"] == ("skipped", "another artgen run made it")
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img2.png", "img3.png"]


def test_batch_saves_on_a_thread_and_reports_in_order_on_this_one(folder, images, tmp_path):
    """Groups are saved on a thread while the next is stylised; every result still reaches
    the caller on the calling thread (the CLI's bars are not thread-safe), in job order."""
    import threading

    from artgen.core.images import load_image
    from artgen.style import get_method
    from artgen.style.batch import BatchOptions, plan_batch, run_batch

    out = tmp_path / "out"
    jobs = plan_batch(folder, out, BatchOptions())
    seen = []
    results = run_batch(
        jobs,
        [(load_image(images["style"]), 1.0)],
        get_method("adain").options(size=48),
        BatchOptions(batch_size=2),
        on_result=lambda r: seen.append((r.job.output.name, r.status, threading.current_thread())),
    )
    assert [(n, st) for n, st, _ in seen] == [(r.job.output.name, r.status) for r in results]
    assert [n for n, _, _ in seen] == [j.output.name for j in jobs]  # broken.png among them
    assert {t for _, _, t in seen} == {threading.current_thread()}
    assert sorted(p.name for p in out.iterdir()) == [f"img{k}.png" for k in range(4)]


def test_a_saving_error_is_raised_not_lost(folder, images, tmp_path, monkeypatch):
    """An unexpected error while a group is saved stops the run; when the next group fails
    too, the saving error is named beside that one, and no claim or partial file is left."""
    import dataclasses
    import time

    from artgen.core.images import load_image
    from artgen.style import batch as batch_mod
    from artgen.style import get_method
    from artgen.style.batch import BatchOptions, plan_batch, run_batch

    (folder / "broken.jpg").unlink()
    adain = get_method("adain")
    real_params, calls = batch_mod.run_params, []

    def params(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("disk on fire")
        return real_params(*a, **k)

    def second_group_fails(contents, *a, **k):
        if second_group_fails.n:
            for _ in range(500):  # fail only once the saving thread has failed
                if len(calls) >= 2:
                    break
                time.sleep(0.01)
            time.sleep(0.1)
            raise RuntimeError("out of memory")
        second_group_fails.n += 1
        return adain.stylize_many(contents, *a, **k)

    second_group_fails.n = 0
    monkeypatch.setattr(batch_mod, "run_params", params)
    monkeypatch.setattr(
        batch_mod,
        "method_of",
        lambda o: dataclasses.replace(adain, stylize_many=second_group_fails),
    )
    out = tmp_path / "out"
    jobs = plan_batch(folder, out, BatchOptions())
    style = [(load_image(images["style"]), 1.0)]
    with pytest.raises(RuntimeError, match="out of memory") as e:
        run_batch(jobs, style, adain.options(size=48), BatchOptions(batch_size=2))
    assert any("disk on fire" in note for note in getattr(e.value, "__notes__", []))
    assert sorted(p.name for p in out.iterdir()) == ["img0.png"]  # no claim, no temporary

    monkeypatch.setattr(batch_mod, "method_of", lambda o: adain)
    calls.clear()
    with pytest.raises(ValueError, match="disk on fire"):
        run_batch(plan_batch(folder, out, BatchOptions()), style, adain.options(size=48),
                  BatchOptions(batch_size=1, overwrite=True))  # fmt: skip


def test_messages_name_the_right_flag_and_defaults_once(tmp_path, capsys):
    from artgen.eval.metrics import load_fid_network

    with pytest.raises(Exception) as e:
        load_fid_network("vgg19")
    assert "--fid-network efficientnet-lite0" in str(e.value)
    assert "--backbone" not in str(e.value)
    for argv in (
        ["stylize", "--help"],
        ["eval", "--help"],
        ["finetune", "gan", "--help"],
        ["stylize", "--method", "adain", "--help"],
        ["batch", "--help"],
    ):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        for chunk in text.split("(default:")[1:]:
            assert "(default:" not in chunk.split(")")[0]
        for line in text.split("--"):
            assert line.count("(default:") <= 1, (argv, line)


def test_info_never_prints_control_characters_flags_or_long_echoes(images, tmp_path, capsys):
    from artgen.core.images import save_png

    good = tmp_path / "good.png"
    assert (
        main(["stylize", str(images["content"]), "--style", "swirls", "-o", str(good), *FAST]) == 0
    )
    capsys.readouterr()
    p = read_params(good)
    overdraw = "x\r\x1b[K  artgen stylize content.png -o OUT.png; touch /tmp/artgen-pw #"
    bad = [
        {**p, "content": {**p["content"], "file": overdraw}},
        {**p, "content": {**p["content"], "file": "c.png\nreproduce with:\n  rm -rf ~"}},
        {**p, "styles": [{**p["styles"][0], "name": "swirls\x1b[2K"}]},
        {"method": "sample", "run": "r\nreproduce with:\n  $(touch /tmp/artgen-pw)"},
        {**p, "options": {**p["options"], "k" * 5000: 1}},
        {**p, "options": {**p["options"], **{f"key{i:05d}" * 4: 1 for i in range(3000)}}},
        {**p, "options": {**p["options"], "preserve_color": "x" * 50_000}},
        {**p, "options": {**p["options"], "size": 10**4000}},
        {**p, "options": {**p["options"], "a\nartgen: fake\x1b[31m": 1}},
        {**p, "options": {**p["options"], "backbone": "vgg19$(id)"}},
        {**p, "options": {**p["options"], "size": 48.5}},
    ]
    for k, params in enumerate(bad):
        path = save_png(Image.open(good), tmp_path / f"b{k}.png", params=params)
        rc = main(["info", str(path)])
        out, err = capsys.readouterr()
        assert all(c.isprintable() for c in (out + err).replace("\n", "")), (k, out, err)
        if rc == 2:
            assert err.count("\n") == 1 and len(err) < 1100, (k, len(err))
        else:
            assert "reproduce with:" not in out or out.count("reproduce with:") == 1, k
    # A raw 5000-digit integer: json refuses to convert it; one line, not a traceback.
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("artgen", '{"options": {"size": ' + "9" * 5000 + "}}")
    Image.open(good).save(tmp_path / "int.png", pnginfo=info)
    assert main(["info", str(tmp_path / "int.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # An input whose name starts with a dash is given as ./-name in the line.
    params = {**p, "content": {**p["content"], "file": "-photo.png"}}
    path = save_png(Image.open(good), tmp_path / "dash.png", params=params)
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert "artgen stylize ./-photo.png " in capsys.readouterr().out
    assert not os.path.exists("/tmp/artgen-pw")


def test_sample_and_eval_flags_come_from_the_run_kinds_and_eval_options(capsys):
    for argv, flags in [
        (["sample", "--help"], ["--steps", "--prompt", "--truncation", "--class-index", "-n N"]),
        (["eval", "--help"], ["--metrics", "--images", "--labels"]),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        for flag in flags:
            assert flag in text, (argv, flag)
        for line in text.split(" --"):
            assert line.count("(default:") <= 1, (argv, line)


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """`artgen styles list | head -1`: the closed pipe ends the command without a traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "artgen", "styles", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
