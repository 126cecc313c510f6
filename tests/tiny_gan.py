"""Tiny StyleGAN2 runs for the tests: the network size (16 px, 16 channels at most), a
folder of shapes with labels, and the options of a few-step training or fine-tuning run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from artgen.models.stylegan2 import StyleGAN2Config
from artgen.train.gan import GanFinetuneOptions, GanTrainOptions

TINY = {
    "resolution": 16,
    "z_dim": 16,
    "w_dim": 16,
    "mapping_layers": 2,
    "channel_base": 128,
    "channel_max": 16,
}


def tiny_config() -> StyleGAN2Config:
    return StyleGAN2Config(**TINY)


def shapes_folder(folder: Path, n: int = 8, size: int = 16) -> Path:
    """Discs ('round') and squares ('square') on noisy backgrounds, with a labels CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["file,shape"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        a = rng.uniform(0, 80, (size, size, 3))
        r = size / 4
        mask = (
            ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r)
            if i % 4 == 0
            else ((abs(yy - size / 2) < r) & (abs(xx - size / 2) < r))
        )
        a[mask] = [230, 180, 40]
        name = f"im{i:02d}.png"
        Image.fromarray(a.astype(np.uint8)).save(folder / name)
        rows.append(f"{name},{'round' if i % 4 == 0 else 'square'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def train_options(images: Path, out: Path, **kw) -> GanTrainOptions:
    base = dict(
        images=str(images),
        out=str(out),
        steps=4,
        batch_size=4,
        sample_every=100,
        checkpoint_every=2,
        device="cpu",
        **TINY,
    )
    base.update(kw)
    return GanTrainOptions(**base)


def ft_options(base: Path, images: Path, out: Path, **kw) -> GanFinetuneOptions:
    o = dict(
        base=str(base),
        images=str(images),
        out=str(out),
        steps=3,
        batch_size=4,
        sample_every=100,
        checkpoint_every=100,
        device="cpu",
    )
    o.update(kw)
    return GanFinetuneOptions(**o)
