"""DiffAugment: shapes, gradients, seeding, and the numbers each policy should produce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from artgen.core.augment import (
    diff_augment,
    rand_brightness,
    rand_color,
    rand_contrast,
    rand_cutout,
    rand_saturation,
    rand_translation,
    random_flip,
)
from artgen.core.errors import ArtgenError


def _batch(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_shape_gradients_and_seeding(policy):
    x = _batch(4, 24).requires_grad_(True)
    y = diff_augment(x, policy, _gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(diff_augment(x, policy, _gen(1)), y)
        assert not torch.equal(diff_augment(x, policy, _gen(2)), y)


def test_global_rng_and_purity():
    x = _batch()
    before = x.clone()
    torch.manual_seed(7)
    a = diff_augment(x)
    torch.manual_seed(7)
    assert torch.equal(diff_augment(x), a)
    assert torch.equal(x, before)  # the input is never modified
    assert torch.equal(diff_augment(x, ""), x)  # empty policy: identity


def test_unknown_policy():
    with pytest.raises(ArtgenError, match=r"'colour'.*valid: color, translation, cutout"):
        diff_augment(_batch(), "colour,cutout")


def test_brightness_shifts_means_within_half():
    x = _batch(256, 8)
    y = rand_brightness(x, _gen())
    shift = (y - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6)  # one shift per image
    s = shift[:, 0]
    assert s.min() >= -0.5 and s.max() < 0.5
    assert s.min() < -0.4 and s.max() > 0.4  # spans the range
    assert s.mean().abs() < 0.06


def test_saturation_scales_distance_from_grey():
    x = _batch(256, 8)
    y = rand_saturation(x, _gen())
    mean = x.mean(1, keepdim=True)
    assert torch.allclose(y.mean(1, keepdim=True), mean, atol=1e-5)  # grey level kept
    factor = ((y - mean).flatten(1).norm(dim=1)) / (x - mean).flatten(1).norm(dim=1)
    assert factor.min() >= 0 and factor.max() < 2
    assert factor.min() < 0.1 and factor.max() > 1.9
    grey = torch.full((2, 3, 4, 4), 0.3)
    assert torch.allclose(rand_saturation(grey, _gen()), grey)


def test_contrast_keeps_the_mean_and_scales_spread():
    x = _batch(256, 8)
    y = rand_contrast(x, _gen())
    assert torch.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    factor = y.flatten(1).std(dim=1) / x.flatten(1).std(dim=1)
    assert factor.min() >= 0.5 and factor.max() < 1.5
    assert factor.min() < 0.6 and factor.max() > 1.4


def test_color_is_brightness_then_saturation_then_contrast():
    x = _batch()
    g1, g2 = _gen(3), _gen(3)
    expected = rand_contrast(rand_saturation(rand_brightness(x, g2), g2), g2)
    assert torch.equal(rand_color(x, g1), expected)
    assert torch.equal(diff_augment(x, "color", _gen(3)), expected)


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], zero outside (a slow reference)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)))
    return p[..., abs(dy) + dy : abs(dy) + dy + h, abs(dx) + dx : abs(dx) + dx + w]


def test_translation_moves_a_one_hot_pixel():
    n, size = 64, 32
    x = torch.zeros(n, 1, size, size)
    x[:, :, 16, 10] = 1.0
    y = rand_translation(x, _gen(4))
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(n))  # the pixel is moved, never lost
    pos = y[:, 0].flatten(1).argmax(1)
    rows, cols = pos // size, pos % size
    dy, dx = rows - 16, cols - 10
    assert dy.abs().max() == 4 and dx.abs().max() == 4  # round(32 / 8) = 4 pixels at most
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 20  # many different shifts
    assert (dy != 0).any() and (dx != 0).any()


def test_translation_is_a_zero_padded_shift():
    x = _batch(16, 16)
    y = rand_translation(x, _gen(5))
    for i in range(16):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(y[i], _shifted(x[i], dy, dx))
        ]
        assert len(matches) == 1


def test_cutout_zeroes_a_quarter_square():
    n, size = 2000, 32
    x = torch.ones(n, 3, size, size)
    y = rand_cutout(x, _gen(6))
    zero = y == 0
    assert torch.equal(zero[:, :1].expand_as(zero), zero)  # same mask in every channel
    frac = zero[:, 0].flatten(1).float().mean(1)
    assert frac.max() == 0.25  # a 16x16 square when it lies fully inside
    assert (frac > 0).all()  # always covers some of the image
    # The square is centred on one of 33 positions per axis and clipped at the border.
    c = torch.arange(size + 1)
    cover = ((c + 8).clamp(max=size) - (c - 8).clamp(min=0)).float().mean() / size
    assert frac.mean() == pytest.approx(cover.item() ** 2, abs=0.01)  # about 0.19
    inside = zero[:, 0]
    rows, cols = inside.any(2), inside.any(1)
    assert torch.equal(inside, rows[:, :, None] & cols[:, None, :])  # a rectangle


def test_random_flip():
    x = _batch(64, 8)
    y = random_flip(x, _gen(8))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 15 < flipped.sum() < 49
