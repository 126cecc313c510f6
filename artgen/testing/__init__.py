"""Small pictures and a tiny diffusion model made in the process, for tests and demos.

artgen's own tests and the docs programs that reproduce their setups (docs/sdedit_demo.py)
use these; so can a user's tests of code built on artgen. Nothing here downloads anything,
and nothing in the library imports this module. The tiny UNet's configuration is that of
diffusers' own tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth 'photo': a sky gradient, a sun, and a dark hill."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 0.4 + 0.4 * yy / h
    img[..., 1] = 0.6 + 0.2 * xx / w
    img[..., 2] = 0.9 - 0.3 * yy / h
    sun = (xx - 0.7 * w) ** 2 + (yy - 0.3 * h) ** 2 < (0.12 * w) ** 2
    img[sun] = [1.0, 0.9, 0.4]
    hill = yy > 0.65 * h + 0.1 * h * np.sin(xx / w * 6)
    img[hill] = [0.15, 0.35, 0.15]
    img += rng.normal(0, 0.01, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def stripes(size: int = 96, seed: int = 1) -> Image.Image:
    """A strongly textured 'painting': diagonal red/blue stripes with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = (np.sin((xx + yy) * 0.6) > 0).astype(np.float32)
    img = np.stack([0.9 * t + 0.1, 0.15 + 0 * t, 0.9 * (1 - t) + 0.1], axis=-1)
    img += rng.normal(0, 0.05, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def tiny_ddpm(folder: Path, size: int = 16, prediction_type: str = "epsilon") -> Path:
    """A 2-level DDPM (about 40 k parameters) saved with save_pretrained in ``folder``."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def image_folder(folder: Path, n: int = 8, size: int = 24) -> Path:
    """A small 'style set': striped paintings, in a few colourings, plus sky photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = stripes(size, seed=i) if i % 2 == 0 else photo(size, size, seed=i)
        im.save(folder / f"img{i:02d}.png")
    return folder
