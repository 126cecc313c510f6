"""Differentiable augmentation for training generators on a handful of images.

DiffAugment (Zhao, Liu, Lin, Zhu and Han, "Differentiable Augmentation for Data-Efficient GAN
Training", NeurIPS 2020, arXiv:2006.10738) applies the same random, differentiable transforms to
real and generated images before the discriminator sees them, so the discriminator cannot
memorise a 10 to 100 image training set while gradients still reach the generator.

The maths follows the authors' reference code (``DiffAugment_pytorch.py`` in
mit-han-lab/data-efficient-gans), on batches ``(N, C, H, W)`` in ``[-1, 1]``:

- ``color``: brightness ``x + U(-0.5, 0.5)``, then saturation ``(x - mean_c) * U(0, 2) + mean_c``
  (mean over channels, per pixel), then contrast ``(x - mean) * U(0.5, 1.5) + mean`` (mean over
  the whole image); one draw per image, no clamping.
- ``translation``: an integer shift of up to ``round(size / 8)`` pixels per axis, drawn per
  image; pixels shifted in from outside are zero.
- ``cutout``: a zero square with sides ``round(size / 2)`` (a quarter of the area) centred on a
  uniformly drawn pixel; near the border it is clipped, so on average it covers about
  ``(7/16)**2``, roughly 19%, of the image, as in the reference code.

Every function is pure: it returns a new tensor and draws its randomness from the
``generator`` it is given (torch's global RNG when ``None``), so the same seed gives the same
augmentation and a training run can be resumed exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from artgen.core.errors import ArtgenError

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` uniform draws in [0, 1) shaped (n, 1, 1, 1), in x's dtype and on x's device."""
    device = generator.device if generator is not None else x.device
    r = torch.rand(n, 1, 1, 1, generator=generator, device=device)
    return r.to(device=x.device, dtype=x.dtype)


def _randint(
    low: int, high: int, n: int, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``n`` integers in [low, high) shaped (n, 1, 1), on x's device."""
    device = generator.device if generator is not None else x.device
    r = torch.randint(low, high, (n, 1, 1), generator=generator, device=device)
    return r.to(x.device)


def rand_brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add one offset in [-0.5, 0.5) per image."""
    return x + (_rand(x.size(0), x, generator) - 0.5)


def rand_saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each pixel's distance from its channel mean by one factor in [0, 2) per image."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x.size(0), x, generator) * 2) + mean


def rand_contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale distances from the image mean by one factor in [0.5, 1.5) per image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x.size(0), x, generator) + 0.5) + mean


def rand_color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, then saturation, then contrast (the reference ``color`` policy)."""
    x = rand_brightness(x, generator)
    x = rand_saturation(x, generator)
    return rand_contrast(x, generator)


def rand_translation(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    ratio: float = TRANSLATION_RATIO,
) -> torch.Tensor:
    """Shift each image by whole pixels, up to ``ratio`` of its size per axis, filling with zero.

    Output pixel ``(i, j)`` is input pixel ``(i + ty, j + tx)``, so content moves by
    ``(-ty, -tx)``; ``ty`` and ``tx`` are drawn per image from ``[-shift, shift]``.
    """
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-sy, sy + 1, n, x, generator)  # (N, 1, 1)
    tx = _randint(-sx, sx + 1, n, x, generator)
    # Pad by one zero pixel and clamp indices into that border: anything from outside reads 0.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + ty + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + tx + 1).clamp(0, w + 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    padded = F.pad(x, (1, 1, 1, 1))
    # Advanced indices around a slice: the result is (N, H, W, C).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def rand_cutout(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    ratio: float = CUTOUT_RATIO,
) -> torch.Tensor:
    """Zero one square per image with sides ``ratio`` of the image's, clipped at the border."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # Centres as in the reference code (one extra position when the side is even).
    cy = _randint(0, h + (1 - ch % 2), n, x, generator)  # (N, 1, 1)
    cx = _randint(0, w + (1 - cw % 2), n, x, generator)
    top, left = cy - ch // 2, cx - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (differentiable)."""
    flip = _rand(x.size(0), x, generator) < 0.5
    return torch.where(flip, x.flip(3), x)


Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

POLICIES: dict[str, Sequence[Augment]] = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}


def parse_policy(policy: str) -> list[str]:
    """Split ``"color,translation"`` into names; ArtgenError for an unknown one."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    for name in names:
        if name not in POLICIES:
            raise ArtgenError(
                f"unknown augmentation policy {name!r} (valid: {', '.join(POLICIES)})"
            )
    return names


def diff_augment(
    x: torch.Tensor,
    policy: str = "color,translation,cutout",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply the comma-separated DiffAugment ``policy`` to a batch (N, C, H, W) in [-1, 1].

    An empty policy returns ``x`` unchanged. Use the same call on real and generated images.
    """
    if x.dim() != 4:
        raise ValueError(f"diff_augment expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    for name in parse_policy(policy):
        for fn in POLICIES[name]:
            x = fn(x, generator)
    return x.contiguous()
