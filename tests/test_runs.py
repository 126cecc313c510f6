"""artgen.load_run: one run object for diffusion and GAN runs, dispatched on config.json."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import artgen
from artgen.core.errors import ArtgenError
from artgen.runs import record as runs
from artgen.runs.diffusion import DiffusionRun
from artgen.runs.gan import GanRun, load_generator
from artgen.runs.record import load_run
from artgen.testing import image_folder, tiny_ddpm
from artgen.train.diffusion import finetune_diffusion
from artgen.train.diffusion import generate as generate_pipeline
from artgen.train.gan import generate_gan, train_gan

from .conftest import edit_json, one_line_error
from .tiny_gan import shapes_folder, train_options


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffusion")
    options = artgen.DiffusionFinetuneOptions(
        base=str(tiny_ddpm(root / "ddpm")),
        images=str(image_folder(root / "images", n=4)),
        out=str(root / "run"),
        steps=2,
        batch_size=2,
        sample_every=1000,
        checkpoint_every=1000,
        num_samples=1,
        sample_steps=1,
        device="cpu",
    )
    return finetune_diffusion(options)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gan")
    return train_gan(train_options(shapes_folder(root / "images"), root / "run", steps=2))


def pixels(images: list[Image.Image]) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in images]


def test_load_run_dispatches_on_the_method_in_config_json(diffusion_run, gan_run):
    d, g = load_run(diffusion_run), load_run(gan_run)
    assert isinstance(d, DiffusionRun) and d.kind == "diffusion"
    assert isinstance(g, GanRun) and g.kind == "gan"
    assert d.method == "finetune-diffusion" and g.method == "train-gan"
    assert d.path == diffusion_run and g.config["method"] == "train-gan"
    assert artgen.load_run is load_run
    assert {k: runs.kind_class(k) for k in ("finetune-diffusion", "train-gan", "finetune-gan")} == {
        "finetune-diffusion": DiffusionRun,
        "train-gan": GanRun,
        "finetune-gan": GanRun,
    }
    assert runs.kind_class("train-adain") is None  # decoder runs draw no images
    assert "GanRun gan" in repr(g)


def test_diffusion_generate_is_per_seed_and_equals_the_pipelines(diffusion_run):
    run = load_run(diffusion_run)
    a = run.generate(3, seed=5, steps=2)
    assert pixels(a) == pixels(run.generate(3, seed=5, steps=2))
    assert pixels(a)[1] == pixels(run.generate(1, seed=6, steps=2))[0]  # image i: seed + i
    assert pixels(a) != pixels(run.generate(3, seed=7, steps=2))
    plain = generate_pipeline(run.pipeline, 3, seed=5, steps=2, resolution=16)
    assert pixels(a) == pixels(plain)
    assert run.sample_grid(4, seed=5, steps=2, cols=2).size == (2 * 16 + 2, 2 * 16 + 2)


def test_gan_generate_is_per_seed_and_equals_the_generators(gan_run):
    run = load_run(gan_run)
    a = run.generate(3, seed=5)
    assert pixels(a) == pixels(run.generate(3, seed=5))
    assert pixels(a) != pixels(run.generate(3, seed=9))
    g = load_generator(gan_run)
    assert pixels(a) == pixels(generate_gan(g, 3, seed=5))
    t = run.generate(2, seed=1, truncation=0.5)
    assert pixels(t) == pixels(generate_gan(g, 2, seed=1, truncation_psi=0.5))
    assert pixels(run.generate(2, seed=1, truncation=0.5, batch_size=1)) == pixels(t)
    assert run.sample_options(n=2, truncation=0.5) == {
        "n": 2,
        "seed": 0,
        "truncation": 0.5,
        "class_index": -1,
    }


def test_folders_without_a_run_method_are_sniffed_as_before(gan_run, tmp_path):
    # A generator folder itself, and an `artgen convert`-style folder (no config.json).
    bare = tmp_path / "converted"
    for part in ("generator", "discriminator"):
        shutil.copytree(gan_run / part, bare / part)
    want = pixels(generate_gan(load_generator(gan_run), 2, seed=3))
    for folder in (gan_run / "generator", bare):
        run = load_run(folder)
        assert isinstance(run, GanRun) and run.config == {} and run.method is None
        assert pixels(run.generate(2, seed=3)) == want
    # Anything else is taken as a diffusion run, which then says what is missing.
    with pytest.raises(ArtgenError, match="not an artgen run folder"):
        load_run(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("some-new-trainer", "method 'some-new-trainer' is not a kind of run"),
        ("train-adain", "method 'train-adain' is not a kind of run artgen can draw images"),
        (7, "method int is not a kind of run"),
    ],
)
def test_an_unknown_method_is_one_clear_error(gan_run, tmp_path, method, message):
    run = Path(shutil.copytree(gan_run, tmp_path / "run"))
    edit_json(run / "config.json", lambda c: c.update(method=method))
    with pytest.raises(ArtgenError, match=message) as e:
        load_run(run)
    assert str(run / "config.json") in str(e.value)
    assert "finetune-diffusion, train-gan, finetune-gan" in str(e.value)


def test_settings_of_another_kind_are_refused(diffusion_run, gan_run, tmp_path, capsys):
    with pytest.raises(ArtgenError, match="--truncation: only for GAN runs, and .* diffusion run"):
        load_run(diffusion_run).generate(2, truncation=0.5)
    with pytest.raises(ArtgenError, match="--steps: only for diffusion runs, and .* GAN run"):
        load_run(gan_run).generate(2, steps=3)
    with pytest.raises(ArtgenError, match="colour: not a sampling setting of GAN runs"):
        load_run(gan_run).generate(2, colour=3)
    with pytest.raises(ArtgenError, match="-n 0: must be >= 1"):
        load_run(gan_run).generate(0)
    from artgen.cli import main

    out = ["-n", "1", "-o", str(tmp_path / "s.png"), "--device", "cpu"]
    capsys.readouterr()
    one_line_error(capsys, main(["sample", str(gan_run), *out, "--steps", "3"]), "--steps")
    one_line_error(
        capsys,
        main(["sample", str(diffusion_run), *out, "--truncation", "0.5"]),
        "--truncation",
        "only for GAN runs",
    )


def test_cli_sample_draws_through_the_run_object_and_records_its_settings(gan_run, tmp_path):
    from artgen.cli import main
    from artgen.core.images import read_params

    grid, each = tmp_path / "grid.png", tmp_path / "each"
    assert (
        main(
            [
                "sample",
                str(gan_run),
                "-n",
                "2",
                "--seed",
                "4",
                "--truncation",
                "0.7",
                "-o",
                str(grid),
                "--each",
                str(each),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    params = read_params(grid)
    assert params["options"] == {"n": 2, "seed": 4, "truncation": 0.7, "class_index": -1}
    want = load_run(gan_run).generate(2, seed=4, truncation=0.7)
    got = [Image.open(each / f"sample-{4 + i:05d}.png").convert("RGB") for i in range(2)]
    assert pixels(got) == pixels(want)


def test_run_options_record_as_style_options_do():
    """Every options class records itself with to_dict and reads back with from_dict (run
    options strictly: a missing field is refused, not filled from today's default)."""
    from artgen.runs.options import KINDS, options_class

    for kind in KINDS:
        cls = options_class(kind)
        options = cls(out="somewhere")
        d = options.to_dict()
        assert cls.from_dict(d) == cls(**{**dataclasses.asdict(options), "out": d["out"]})
        missing = dict(d)
        missing.pop("steps")
        with pytest.raises(ArtgenError, match="options.steps is missing"):
            cls.from_dict(missing, "config.json")
