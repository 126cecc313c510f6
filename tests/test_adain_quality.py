"""The shipped fast network's quality on two held-out pairs does not regress.

The photos are the bundled examples (held out of every training set, docs/adain_data.py)
and the styles two bundled ones (generated with seeds the training data never used). The
judges are docs/adain_eval.py's: the Lite0 style-statistics ratio, the edge correlation
with the photo and the colour-histogram distance to the style (Magenta's judge needs the
bench extra and is left to that script). The bounds are the shipped decoder's measured
values (in the comments) with a margin of about 0.03: a new decoder that does worse on
any of them fails here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import artgen
from artgen.core.images import load_image, resize_long_side
from artgen.interop import catalog

ROOT = Path(__file__).resolve().parents[1]
# photo, style, transform, (style ratio at most, edges at least, colour distance at most),
# set from the decoder shipped before (12,000 steps, then 6,000 behind the whitening; its
# values first in the comments) with a margin of about 0.03, and kept for the one shipped
# now (24,000 steps, then 6,000 behind the whitening; its values second), 32 px border,
# 2026-12-07. AdaIN at every level is the decoder's own regression guard; wct (the default)
# whitens the finest level, which moves these two pictures toward the style by Magenta's
# judge (0.500 -> 0.562, 0.341 -> 0.389) at some cost in edges and, on coffee, in Lite0's
# statistics. On chelsea/waves the decoder shipped now is a little behind the one before
# (style ratio +0.02, edges -0.01, colour +0.02) while it is ahead on the 54 held-out pairs.
PAIRS = [
    (
        "chelsea.jpg",
        "waves",
        "adain",
        (0.47, 0.50, 0.43),
    ),  # 0.442, 0.528, 0.397; 0.463, 0.515, 0.416
    (
        "coffee.jpg",
        "mosaic",
        "adain",
        (0.59, 0.69, 0.64),
    ),  # 0.556, 0.724, 0.610; 0.558, 0.739, 0.627
    ("chelsea.jpg", "waves", "wct", (0.48, 0.44, 0.44)),  # 0.445, 0.472, 0.410; 0.467, 0.461, 0.430
    ("coffee.jpg", "mosaic", "wct", (0.64, 0.65, 0.63)),  # 0.608, 0.678, 0.606; 0.611, 0.680, 0.611
]


@pytest.fixture(scope="module")
def judge():
    spec = importlib.util.spec_from_file_location("adain_eval", ROOT / "docs" / "adain_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    j = mod.Judge()
    j.magenta = None  # judged by docs/adain_eval.py, with the bench extra
    return j


@pytest.mark.parametrize(("photo", "style", "transform", "bounds"), PAIRS)
def test_the_shipped_network_keeps_its_held_out_quality(judge, photo, style, transform, bounds):
    p = resize_long_side(load_image(catalog.styles_dir() / "examples" / photo).rgb, 256)
    s = load_image(catalog.resolve(style)).rgb
    out = artgen.stylize(p, s, method="adain", size=256, transform=transform)
    got = judge.all(out, p, s, photo, style)
    ratio, edges, colour = bounds
    assert got["style_ratio"] <= ratio, got
    assert got["edges"] >= edges, got
    assert got["colour"] <= colour, got
