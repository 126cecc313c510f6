"""The training run that every trainer shares (artgen.train.skeleton)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from artgen.core.data import balance_weights, proportions
from artgen.core.errors import ArtgenError
from artgen.runs.options import KINDS, RunOptions, options_class, options_for_resume
from artgen.train.skeleton import Draws


def test_draws_balance_a_90_10_set_and_count_what_was_drawn():
    values = ["a"] * 90 + ["b"] * 10
    balanced = Draws(
        100,
        torch.Generator().manual_seed(1),
        weights=balance_weights(values),
        values=values,
        attribute="x",
    )
    idx = [i for _ in range(500) for i in balanced.draw(40)]
    assert proportions([values[i] for i in idx])["a"] == pytest.approx(0.5, abs=0.02)
    assert sum(balanced.drawn.values()) == 20000
    assert balanced.drawn["b"] == sum(values[i] == "b" for i in idx)
    uniform = Draws(100, torch.Generator().manual_seed(1))
    idx = [i for _ in range(500) for i in uniform.draw(40)]
    assert proportions([values[i] for i in idx])["a"] == pytest.approx(0.9, abs=0.02)
    assert min(idx) == 0 and max(idx) == 99 and len(set(idx)) == 100


def test_draws_are_torch_multinomial_with_replacement_and_resume_from_the_generator():
    g = torch.Generator().manual_seed(3)
    draws = Draws(5, g, weights=[1, 2, 3, 4, 0])
    first = draws.draw(50)
    assert 4 not in first  # zero weight is never drawn
    state = g.get_state()
    rest = draws.draw(50)
    g.set_state(state)
    assert draws.draw(50) == rest
    # exactly the draw the trainers made before the skeleton (runs reproduce)
    w = torch.tensor([1, 2, 3, 4, 0], dtype=torch.float64)
    ref = torch.multinomial(w, 50, replacement=True, generator=torch.Generator().manual_seed(3))
    assert (
        Draws(5, torch.Generator().manual_seed(3), weights=[1, 2, 3, 4, 0]).draw(50) == ref.tolist()
    )
    with pytest.raises(ArtgenError, match="5 finite"):
        Draws(5, g, weights=[1.0, 2.0])


def test_every_recorded_method_has_an_options_class_of_the_shared_base():
    for kind in KINDS:
        cls = options_class(kind)
        assert issubclass(cls, RunOptions) and cls.KIND == kind
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"out", "steps", "seed", "device", "resume", "keep_checkpoints"} <= names
    with pytest.raises(ArtgenError, match="not a training run"):
        options_class("train-magic")


# -- the one resume policy, for each trainer ---------------------------------------------


@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory):
    from artgen.train.gan import train_gan

    from .tiny_gan import shapes_folder, train_options

    root = tmp_path_factory.mktemp("gan")
    images = shapes_folder(root / "images")
    run = train_gan(train_options(images, root / "run", steps=2, checkpoint_every=1))
    return run


def test_api_resume_refuses_a_changed_setting_for_a_gan_too(gan_runs, tmp_path):
    from artgen.train.gan import GanTrainOptions, train_gan

    run = Path(shutil.copytree(gan_runs, tmp_path / "run"))
    resumed = options_for_resume(run, steps=3)
    assert isinstance(resumed, GanTrainOptions)  # config.json says which trainer
    with pytest.raises(ArtgenError, match=r"--lr: the run in .* used 0.0025, not 0.1"):
        train_gan(dataclasses.replace(resumed, lr=0.1))  # the API call, no CLI in between
    train_gan(dataclasses.replace(resumed, sample_every=7))  # resumable settings may change


def test_resume_without_a_checkpoint_is_an_error_for_a_gan(gan_runs, tmp_path):
    from artgen.train.gan import train_gan

    run = Path(shutil.copytree(gan_runs, tmp_path / "run"))
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ArtgenError, match=r"run: no checkpoint to resume from in .*checkpoints"):
        train_gan(options_for_resume(run, steps=3))
