"""Gatys in tiles (issue 12): the whole picture's objective, evaluated tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import artgen
from artgen.cli import main
from artgen.core.errors import ArtgenError
from artgen.core.images import read_params
from artgen.eval.metrics import seam_ratio
from artgen.style import gatys

from .conftest import photo, stripes

W, H = 640, 256  # two 512 px tiles across, overlapping by 384 px
ONE_SCALE = dict(size=W, min_size=W, iterations=5)


@pytest.fixture(scope="module")
def pictures() -> dict[str, Image.Image]:
    return {"content": photo(W, H, seed=0), "style": stripes(128)}


@pytest.fixture(scope="module")
def whole(lite0, pictures) -> np.ndarray:
    out = artgen.stylize(
        pictures["content"], pictures["style"], extractor=lite0, tile=-1, **ONE_SCALE
    )
    return np.asarray(out, dtype=np.float64)


def probe_of(extractor, layers):
    def probe(ph: int, pw: int) -> dict[str, tuple[int, int]]:
        with torch.no_grad():
            out = extractor(torch.zeros(1, 3, ph, pw), layers)
        return {k: tuple(v.shape[-2:]) for k, v in out.items()}

    return probe


def test_spans_start_on_the_stride_overlap_and_reach_the_end():
    for size, tile in ((640, 512), (1000, 512), (4096, 1024), (2049, 768), (512, 512)):
        spans = gatys._spans(size, tile)
        assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == size
        assert all(a % gatys.TILE_STRIDE == 0 for a, _ in spans)
        assert all(p <= tile + gatys.TILE_STRIDE for _, p in spans)
        for (a, p), (b, _) in zip(spans, spans[1:], strict=False):
            assert a + p - b >= gatys.TILE_OVERLAP  # neighbours overlap enough
    assert gatys._spans(300, 512) == [(0, 300)]
    cols, rows = gatys.tile_borders(1000, 300, 512)
    assert rows == [] and cols == sorted(cols) and all(0 < c < 1000 for c in cols)


def test_tile_weights_partition_every_layer(lite0):
    """Summed over the tiles, the weights are 1 at every feature pixel of every layer (so
    a weighted sum over tiles is the whole picture's sum), and 0 in the outer TILE_EDGE
    px of a tile where a neighbour overlaps it."""
    layers = list(dict.fromkeys([*lite0.spec.content_layers, *lite0.spec.style_layers]))
    h, w = 700, 1000
    grid = gatys._Grid(h, w, 512, probe_of(lite0, layers), torch.device("cpu"))
    assert len(grid.tiles) == len(grid.rows) * len(grid.cols) > 2
    for name in [*layers, "pixels"]:
        total = torch.zeros(grid.shape[name])
        for t in range(len(grid.tiles)):
            wt, (ys, xs) = grid.weight(t, name)
            total[ys, xs] += wt[0, 0]
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5), name
    # The first tile's right-hand edge (a neighbour overlaps it there) gets no weight.
    wt, _ = grid.weight(0, "pixels")
    assert float(wt[0, 0, :, -gatys.TILE_EDGE :].abs().max()) == 0.0
    assert float(wt[0, 0, 0, 0]) == 1.0


def test_tiled_picture_is_the_whole_pictures_and_the_dead_band_matters(
    lite0, pictures, whole, monkeypatch
):
    tiled = artgen.stylize(
        pictures["content"], pictures["style"], extractor=lite0, tile=512, **ONE_SCALE
    )
    assert tiled.info["tile"] == 512
    a = np.asarray(tiled, dtype=np.float64)
    exact = float(np.abs(a - whole).mean())
    moved = float(np.abs(np.asarray(pictures["content"], dtype=np.float64) - whole).mean())
    # Measured: 0.10/255 (float rounding through 5 Adam steps), against 11/255 of style.
    assert exact < 0.3 and moved > 5
    # Seams (the judge is checked below): the tiled picture's borders look like the
    # whole picture's at the same lines, within a few percent.
    cols, rows = gatys.tile_borders(W, H, 512)
    assert cols == [128, 512]
    assert seam_ratio(a, cols, rows) == pytest.approx(seam_ratio(whole, cols, rows), rel=0.03)
    # Without the band where a tile's zero padding changes its features, the picture
    # is no longer the whole picture's: measured 2.4/255, 23x the exact error.
    monkeypatch.setattr(gatys, "TILE_EDGE", 0)
    naive = artgen.stylize(
        pictures["content"], pictures["style"], extractor=lite0, tile=512, **ONE_SCALE
    )
    assert float(np.abs(np.asarray(naive, dtype=np.float64) - whole).mean()) > 8 * exact


def test_seam_ratio_sees_a_seam_and_no_seam(lite0, pictures, whole):
    """The judge, on the pictures it judges: about 1 at lines of a stylised picture that
    has no seam; clearly above 1 where two halves stylised apart are pasted together."""
    assert seam_ratio(whole, [W // 2]) == pytest.approx(1.0, abs=0.15)
    halves = [
        artgen.stylize(
            pictures["content"].crop(box),
            pictures["style"],
            extractor=lite0,
            tile=-1,
            size=W // 2,
            min_size=W // 2,
            iterations=5,
        )
        for box in ((0, 0, W // 2, H), (W // 2, 0, W, H))
    ]
    pasted = Image.new("RGB", (W, H))
    pasted.paste(halves[0], (0, 0))
    pasted.paste(halves[1], (W // 2, 0))
    assert seam_ratio(pasted, [W // 2]) > 1.15 * seam_ratio(whole, [W // 2])
    # A step of 10 grey levels along one row of a flat picture with noise of sd 2: the
    # energy is 16 a pixel (2 x 2 sd^2) and 116 on the step's row, so a 4-row band
    # holds (116 + 3 x 16) / 4 = 41, a ratio of about 2.56.
    rng = np.random.default_rng(0)
    flat = rng.normal(128, 2, (100, 120))
    stepped = flat.copy()
    stepped[50:] += 10
    assert seam_ratio(flat, rows=[50]) == pytest.approx(1.0, abs=0.1)
    assert seam_ratio(stepped, rows=[50]) == pytest.approx(2.56, rel=0.1)
    with pytest.raises(ArtgenError, match="column 500"):
        seam_ratio(flat, [500])
    with pytest.raises(ArtgenError, match="at least one"):
        seam_ratio(flat)


def test_regions_in_tiles_are_the_regions_whole(lite0, pictures):
    """Masks are cropped with the tiles: a left/right split of two styles comes out as
    it does whole."""
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1
    styles = [pictures["style"], stripes(128, seed=3).rotate(90)]
    kw = dict(extractor=lite0, masks=[left, 1 - left], **ONE_SCALE)
    a = np.asarray(artgen.stylize(pictures["content"], styles, tile=-1, **kw), np.float64)
    b = np.asarray(artgen.stylize(pictures["content"], styles, tile=512, **kw), np.float64)
    assert float(np.abs(a - b).mean()) < 0.3
    assert float(np.abs(a - np.asarray(pictures["content"], np.float64)).mean()) > 5


def test_tiles_are_chosen_when_the_picture_does_not_fit(lite0, monkeypatch):
    opts = gatys.StylizeOptions(size=2000, min_size=250, tile=0)
    sizes = gatys.scale_sizes(opts)
    bpp = gatys.bytes_per_pixel(lite0, 4)
    cpu = torch.device("cpu")
    whole_need = bpp * 2000 * 1000
    monkeypatch.setattr(gatys, "available_memory", lambda d: int(whole_need / 0.9 * 0.8))
    tile, tiled, note = gatys.plan_tiles(opts, lite0, sizes, (4000, 2000), cpu, 4)
    assert gatys.TILE_MIN <= tile <= 2048 and tile % gatys.TILE_STRIDE == 0
    assert tiled[-1] and not tiled[0]  # the coarse scales run whole
    assert "2000x1000" in note and f"tiles of {tile} px" in note and "\n" not in note
    # Never tiling: the same picture is refused, naming the size that fits.
    with pytest.raises(ArtgenError, match="2000x1000"):
        gatys.plan_tiles(
            gatys.StylizeOptions(size=2000, tile=-1), lite0, sizes, (4000, 2000), cpu, 4
        )
    # Not even tiles fit.
    monkeypatch.setattr(gatys, "available_memory", lambda d: int(bpp * 100 * 100))
    with pytest.raises(ArtgenError, match="largest size that fits"):
        gatys.plan_tiles(opts, lite0, sizes, (4000, 2000), cpu, 4)
    # Plenty of memory: no tiles, no note.
    monkeypatch.setattr(gatys, "available_memory", lambda d: 10**15)
    assert gatys.plan_tiles(opts, lite0, sizes, (4000, 2000), cpu, 4) == (
        0,
        [False] * len(sizes),
        None,
    )


@pytest.mark.parametrize("tile", [100, 520, 20000])
def test_bad_tile_sizes_are_named(tile):
    with pytest.raises(ArtgenError, match="tile"):
        gatys.StylizeOptions(tile=tile)


def test_cli_tile_flag_is_recorded(pictures, tmp_path):
    pictures["content"].save(tmp_path / "c.png")
    pictures["style"].save(tmp_path / "s.png")
    out = tmp_path / "out.png"
    rc = main(
        [
            "stylize",
            str(tmp_path / "c.png"),
            "--style",
            str(tmp_path / "s.png"),
            "--size",
            str(W),
            "--min-size",
            str(W),
            "--iterations",
            "2",
            "--tile",
            "512",
            "-q",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert read_params(out)["options"]["tile"] == 512
