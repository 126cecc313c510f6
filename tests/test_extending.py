"""Extending artgen, as docs/architecture.md says: each kind of extension is one new file
plus one registration, and everything else (the CLI, the PNG record, resume, load_run,
``artgen sample``) then works for it. Each test writes its extension as a real module in
a temporary folder and registers it the way a contributor would (one line), so these are
the examples the architecture page points to. (A metric: tests/test_evaluate.py's
test_a_registered_metric_is_computed_and_printed_by_name.)"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from artgen.cli import main

from .conftest import photo

# -- a style method: one file defining METHOD, one line in artgen.style.METHODS ----------

NEGATIVE = '''
"""A toy style method: the photo's negative, darkened by ``amount``."""
from dataclasses import dataclass

from PIL import Image, ImageOps

from artgen.core.options import option
from artgen.style import OptionsRecord, StyleMethod


@dataclass(frozen=True)
class NegativeOptions(OptionsRecord):
    amount: float = option(0.0, "how much darker (0 to 1)")
    size: int = option(0, "long side (0: the photo's)")
    seed: int = option(0, "unused")


def load(options, device="cpu", weights=None):
    return None  # no network


def stylize(content, styles, options, *, model=None, device="cpu", callback=None):
    out = ImageOps.invert(content.rgb)  # content: an artgen.core.images.LoadedImage
    out = out.point(lambda v: round(v * (1 - options.amount)))
    out.info["amount"] = options.amount
    return out


METHOD = StyleMethod(
    name="negative",
    summary="the photo's negative (a toy)",
    options=NegativeOptions,
    load=load,
    stylize=stylize,
    resolved=("amount",),
    needs_styles=False,
)
'''


def test_a_style_method_is_one_file_and_one_line(tmp_path, monkeypatch):
    from artgen.style import METHODS

    (tmp_path / "negative_method.py").write_text(NEGATIVE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHODS, "negative", "negative_method")  # the one line

    src = tmp_path / "photo.png"
    photo(32, 24).save(src)
    out = tmp_path / "out.png"
    rc = main(["stylize", str(src), "--method", "negative", "--amount", "0.5", "-o", str(out)])
    assert rc == 0
    got = np.asarray(Image.open(out).convert("RGB"), dtype=np.int64)
    want = np.round((255 - np.asarray(photo(32, 24), dtype=np.int64)) * 0.5)
    assert np.abs(got - want).max() <= 1
    record = Image.open(out).info  # the shared PNG record names the method and its options
    assert "negative" in json.dumps(record) and "0.5" in json.dumps(record)


# -- a trainer and its run kind: a module under artgen/runs/ (what the run records) plus
# one line in artgen.runs.options.KINDS, and a trainer file on the shared skeleton ---------

MEAN_COLOUR_RUNS = '''
"""The record of a toy kind of run: a learned colour."""
import json
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image

from artgen.core.options import option
from artgen.runs.options import RunOptions
from artgen.runs.record import Run


@dataclass(frozen=True)
class MeanColourOptions(RunOptions):
    KIND: ClassVar[str] = "train-mean-colour"
    PATHS: ClassVar[tuple[str, ...]] = ("out", "images")

    images: str = option("", "folder of images")
    lr: float = option(0.2, "learning rate")


@dataclass(frozen=True)
class MeanColourSettings:
    size: int = option(8, "mean-colour runs: picture size")


class MeanColourRun(Run):
    kind, title, settings = "mean-colour", "mean-colour", MeanColourSettings

    @classmethod
    def load(cls, path, config, device, **kw):
        run = cls(path, config or {}, device)
        run.colour = tuple(json.loads((path / "colour.json").read_text()))
        return run

    def _generate(self, n, seed, options, **extra):
        return [Image.new("RGB", (options.size, options.size), self.colour) for _ in range(n)]


OPTIONS, RUN = (MeanColourOptions,), MeanColourRun
'''

MEAN_COLOUR_TRAINER = '''
"""A toy trainer on the shared skeleton: SGD on one colour towards random pixels."""
import json

import torch
from PIL import Image

from artgen.core.data import list_images
from artgen.core.images import load_image, to_tensor
from artgen.train.skeleton import open_run, train
from mean_colour_runs import MeanColourOptions


class _Trainer:
    draws = None

    def __init__(self, options, pixels):
        self.options, self.pixels = options, pixels
        self.g = torch.Generator().manual_seed(options.seed)
        self.colour = torch.zeros(3, requires_grad=True)
        self.opt = torch.optim.SGD([self.colour], lr=options.lr)

    def generators(self):
        return {"data": self.g}

    def state(self):
        return {"model": {"colour": self.colour.detach().clone()}}, {}

    def load_state(self, ckpt):
        ckpt.load_into("model", {"colour": self.colour.data})

    def step(self, step):
        pick = self.pixels[torch.randint(len(self.pixels), (16,), generator=self.g)]
        loss = ((self.colour - pick) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss)}

    def rgb(self):
        return tuple(round(float(v) * 255) for v in self.colour.detach().clamp(0, 1))

    def sample(self):
        return Image.new("RGB", (8, 8), self.rgb())

    def finish(self, run, resolved):
        (run / "colour.json").write_text(json.dumps(self.rgb()))
        return None

    def progress(self, step, logs, elapsed, sample, checkpoint):
        return step


def train_mean_colour(options: MeanColourOptions, callback=None):
    run = open_run(options)
    images = [to_tensor(load_image(p).rgb)[0] for p in list_images(options.images)]  # (3, H, W)
    pixels = torch.cat([im.flatten(1).T for im in images])
    resolved = {"method": options.KIND, "images": len(images)}
    return train(_Trainer(options, pixels), options, run, resolved, callback=callback)
'''


def test_a_trainer_and_its_run_kind_are_two_files_and_one_line(tmp_path, monkeypatch):
    import artgen
    from artgen.runs.options import KINDS, options_for_resume

    (tmp_path / "mean_colour_runs.py").write_text(textwrap.dedent(MEAN_COLOUR_RUNS))
    (tmp_path / "mean_colour_trainer.py").write_text(textwrap.dedent(MEAN_COLOUR_TRAINER))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KINDS, "train-mean-colour", "mean_colour_runs")  # the one line
    from mean_colour_runs import MeanColourOptions
    from mean_colour_trainer import train_mean_colour

    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate([(200, 40, 40), (220, 60, 20)]):
        Image.new("RGB", (16, 16), colour).save(images / f"{i}.png")
    options = MeanColourOptions(
        out=str(tmp_path / "run"), images=str(images), steps=6, checkpoint_every=3
    )
    run = train_mean_colour(options)

    # The skeleton did the run folder: config.json, log.jsonl, checkpoints, samples.
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "train-mean-colour" and config["options"]["steps"] == 6
    assert len((run / "log.jsonl").read_text().splitlines()) == 6
    colour = json.loads((run / "colour.json").read_text())
    assert colour[0] > colour[1] > 0  # it learned a red, from zero

    # Resume is exact: 3 steps, then 3 more from the checkpoint, equal 6 at once.
    half = MeanColourOptions(**{**options.__dict__, "out": str(tmp_path / "half"), "steps": 3})
    train_mean_colour(half)
    train_mean_colour(options_for_resume(tmp_path / "half", steps=6))
    assert json.loads((tmp_path / "half" / "colour.json").read_text()) == colour

    # load_run and `artgen sample` find the kind through the registry line alone.
    drawn = artgen.load_run(run).generate(2, size=4)
    assert [im.getpixel((0, 0)) for im in drawn] == [tuple(colour)] * 2
    out = tmp_path / "grid.png"
    assert main(["sample", str(run), "-n", "2", "--size", "5", "-o", str(out)]) == 0
    assert Image.open(out).convert("RGB").getpixel((0, 0)) == tuple(colour)
    with pytest.raises(artgen.ArtgenError, match="--truncation: only for GAN runs"):
        artgen.load_run(run).generate(1, truncation=0.5)
