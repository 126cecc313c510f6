"""artgen.core.palette: the style's colour mean and covariance on the fast method's picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from artgen.core import palette

from .conftest import photo, stripes


def _rand(seed, shape=(40, 30, 3)):
    """Colours around mid-grey with correlated channels, far from 0 and 1."""
    rng = np.random.default_rng(seed)
    mix = np.eye(3) + rng.uniform(0.0, 0.5, (3, 3))
    return 0.5 + 0.06 * rng.normal(size=shape) @ mix + rng.uniform(-0.1, 0.1, 3)


def test_the_moved_picture_has_the_targets_mean_and_covariance():
    """Gatys et al. 2016b's linear transfer: x' = Cov_t^1/2 Cov_x^-1/2 (x - mu_x) + mu_t,
    so the result's mean and covariance are the target's (no value leaves [0, 1] here)."""
    out, style = _rand(0), _rand(1)
    target = palette.colour_stats(style)
    moved = palette.move_palette(out, target, palette.colour_stats(out), 1.0)
    assert 0 < moved.min() and moved.max() < 1  # nothing clipped
    mu, cov = palette.colour_stats(moved)
    assert np.allclose(mu, target[0], atol=1e-9)
    assert np.allclose(cov, target[1], atol=3e-5)  # up to the 1e-5 ridge of colour_stats

    # by hand, with eigendecompositions written out
    def sqrtm(m, p):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(w**p) @ v.T

    mu_o, cov_o = palette.colour_stats(out)
    # the sums-of-products statistics are numpy's centred ones (plus the ridge)
    p = out.reshape(-1, 3)
    assert np.allclose(mu_o, p.mean(0), atol=1e-14)
    assert np.allclose(cov_o, np.cov(p.T) + 1e-5 * np.eye(3), rtol=0, atol=1e-14)
    a = sqrtm(target[1], 0.5) @ sqrtm(cov_o, -0.5)
    want = ((out.reshape(-1, 3) - mu_o) @ a.T + target[0]).reshape(out.shape)
    assert np.allclose(moved, np.clip(want, 0, 1), atol=1e-12)


def test_strength_moves_the_target_toward_the_photo():
    out, style, ph = _rand(2), _rand(3), _rand(4)
    s, p = palette.colour_stats(style), palette.colour_stats(ph)
    for alpha in (0.0, 0.3):
        moved = palette.move_palette(out, s, p, alpha)
        mu, _ = palette.colour_stats(moved)
        assert np.allclose(mu, alpha * s[0] + (1 - alpha) * p[0], atol=2e-3)  # clipping aside


def test_blend_weights_and_pictures_are_measured_the_same_way():
    a, b = palette.colour_stats(_rand(5)), palette.colour_stats(_rand(6))
    mu, cov = palette.blend([a, b], [3.0, 1.0])
    assert np.allclose(mu, 0.75 * a[0] + 0.25 * b[0]) and np.allclose(
        cov, 0.75 * a[1] + 0.25 * b[1]
    )
    im = stripes(64, seed=1)
    arr = np.asarray(im, np.float64) / 255
    assert np.allclose(palette.colour_stats(im)[0], palette.colour_stats(arr)[0])
    assert palette.to_picture(np.full((2, 2, 3), 0.5 / 255)).getpixel((0, 0)) == (
        0,
        0,
        0,
    )  # half to even


def test_the_fast_method_takes_the_styles_palette_by_default(tmp_path):
    """A photo in warm colours and a blue-and-green style: by default the output's colour
    mean is the style's; with --palette network (the paper's) it stays near the photo's;
    and a record made before --palette existed reproduces as network."""
    import artgen
    from artgen.style import validate_params

    p = photo(96, 72, seed=0)
    p = Image.merge(
        "RGB",
        (
            p.getchannel(0),
            p.getchannel(1).point(lambda v: v // 2),
            p.getchannel(2).point(lambda v: v // 3),
        ),
    )
    st = Image.merge(
        "RGB",
        (
            Image.new("L", (80, 80), 10),
            stripes(80, seed=2).getchannel(1),
            stripes(80, seed=3).getchannel(2),
        ),
    )
    mu_s = palette.colour_stats(st)[0]
    mu_p = palette.colour_stats(p)[0]
    out = artgen.stylize(p, st, method="adain", size=96)
    net = artgen.stylize(p, st, method="adain", size=96, palette="network")
    mu_o, mu_n = palette.colour_stats(out)[0], palette.colour_stats(net)[0]
    assert np.abs(mu_o - mu_s).max() < 0.02
    assert np.abs(mu_n - mu_s).max() > 3 * np.abs(mu_o - mu_s).max()
    assert np.linalg.norm(mu_n - mu_p) < np.linalg.norm(mu_o - mu_p)
    old = {
        "method": "adain",
        "options": {k: v for k, v in artgen.AdaINOptions().to_dict().items() if k != "palette"},
        "styles": [{"file": "s.png", "sha256": "0" * 64, "weight": 1.0}],
        "content": {"file": "c.png", "sha256": "0" * 64},
    }
    _, options = validate_params(old)
    assert options.palette == "network"
    with pytest.raises(artgen.ArtgenError, match="palette"):
        artgen.AdaINOptions(palette="photo")


def test_square_roots_from_many_threads_and_non_finite_statistics():
    """The studio moves palettes from several threads at once (OpenBLAS's eigensolver is not
    reliably thread-safe there: numpy issues 24512, 32028); a NaN in the statistics is named."""
    from concurrent.futures import ThreadPoolExecutor

    from artgen.core import palette

    rng = np.random.default_rng(0)
    mats = [a @ a.T + np.eye(3) * 1e-5 for a in rng.random((32, 3, 3))]

    def one(_):
        return max(float(np.abs(palette._sqrtm(m) @ palette._sqrtm(m) - m).max()) for m in mats)

    with ThreadPoolExecutor(8) as pool:
        assert max(pool.map(one, range(64))) < 1e-9
    bad = mats[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        palette._sqrtm(bad)
