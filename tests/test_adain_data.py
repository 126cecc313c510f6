"""docs/adain_data.py keeps the held-out set out of the training data by construction."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def D():
    spec = importlib.util.spec_from_file_location("adain_data", ROOT / "docs" / "adain_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_held_out_picture_is_refused_even_re_encoded(D, tmp_path):
    chelsea = Image.open(ROOT / "styles" / "examples" / "chelsea.jpg").convert("RGB")
    coffee = Image.open(ROOT / "styles" / "examples" / "coffee.jpg").convert("RGB")
    prints = {"chelsea": D.fingerprint(chelsea)}
    writer = D.Writer(tmp_path / "data", prints)
    # a half-size, re-encoded, slightly brightened copy is still the held-out picture
    copy = chelsea.resize((chelsea.width // 2, chelsea.height // 2)).point(
        lambda v: min(255, v + 8)
    )
    with pytest.raises(SystemExit, match="pkg: x.png: this is the held-out picture 'chelsea'"):
        writer.add(copy, "content/x.jpg", "pkg", "x.png", "CC0")
    assert not (tmp_path / "data" / "content" / "x.jpg").exists()
    # a greyscale version (the painting variants make these) is refused too
    with pytest.raises(SystemExit, match="held-out picture 'chelsea'"):
        writer.add(chelsea.convert("L").convert("RGB"), "styles/g.jpg", "pkg", "g.png", "CC0")
    # another picture passes, and is recorded with its licence
    writer.add(coffee, "content/coffee.jpg", "pkg", "coffee.png", "CC0")
    assert (tmp_path / "data" / "content" / "coffee.jpg").is_file()
    assert writer.manifest == [
        {"file": "content/coffee.jpg", "package": "pkg", "path": "coffee.png", "licence": "CC0"}
    ]
    # fingerprints are unit vectors; the two photos are far apart
    assert np.linalg.norm(prints["chelsea"]) == pytest.approx(1.0)
    assert float(D.fingerprint(coffee) @ prints["chelsea"]) < 0.5


def test_the_held_out_set_is_the_documented_one(D):
    """At least 8 photos and 6 real paintings, every one with a licence, none of the training
    paintings among them, and the repository's copies of the held-out photos really there."""
    assert len(D.HELD_OUT_PHOTOS) >= 8 and len(D.HELD_OUT_STYLES) >= 6
    for source, where, licence in [*D.HELD_OUT_PHOTOS.values(), *D.HELD_OUT_STYLES.values()]:
        assert source in ("repo", "shared", "skimage", "debian") and licence
        if source == "repo":
            assert (ROOT / where).is_file()
    held_paintings = {where for _, where, _ in D.HELD_OUT_STYLES.values()}
    assert not held_paintings & set(D.SHARED_PAINTINGS)
    recorded = json.loads((ROOT / "docs" / "adain_heldout.json").read_text())
    assert sorted(Path(m["file"]).stem for m in recorded) == sorted(
        [*D.HELD_OUT_PHOTOS, *D.HELD_OUT_STYLES]
    )
