"""Regenerate the README's pictures from the bundled images (efficientnet-lite0, CPU).

.venv/bin/python docs/make_gallery.py        # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

import artgen
from artgen.interop.weights import choose_backbone, load_backbone

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"
CELL = 256


def tile(images: list[Image.Image], labels: list[str]) -> Image.Image:
    thumbs = []
    for im in images:
        im = im.convert("RGB")
        im.thumbnail((CELL, CELL))
        thumbs.append(im)
    height = max(t.height for t in thumbs)
    cells = []
    for im, label in zip(thumbs, labels, strict=True):
        cell = Image.new("RGB", (CELL, height + 22), "white")
        cell.paste(im, ((CELL - im.width) // 2, 0))
        ImageDraw.Draw(cell).text((6, height + 5), label, fill="black")
        cells.append(cell)
    grid = Image.new("RGB", (CELL * len(cells), height + 22), "white")
    for k, c in enumerate(cells):
        grid.paste(c, (k * CELL, 0))
    return grid


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ext = load_backbone(choose_backbone("efficientnet-lite0"))
    cat = ROOT / "styles/examples/chelsea.jpg"
    styles = ["swirls", "mosaic", "waves", "facets"]
    results = [
        artgen.stylize(cat, ROOT / f"styles/{s}.jpg", extractor=ext, size=384) for s in styles
    ]
    tile(
        [Image.open(cat)] + results, ["content: chelsea.jpg"] + [f"--style {s}" for s in styles]
    ).save(OUT / "gallery.png")
    tile(
        [Image.open(ROOT / f"styles/{s}.jpg") for s in styles], [f"styles/{s}.jpg" for s in styles]
    ).save(OUT / "styles.png")

    cup = ROOT / "styles/examples/coffee.jpg"
    waves, swirls = ROOT / "styles/waves.jpg", ROOT / "styles/swirls.jpg"
    variants = [
        ("--style waves", artgen.stylize(cup, waves, extractor=ext, size=384)),
        (
            "waves:0.5 + swirls:0.5",
            artgen.stylize(cup, {waves: 0.5, swirls: 0.5}, extractor=ext, size=384),
        ),
        (
            "--preserve-color luminance",
            artgen.stylize(cup, waves, extractor=ext, size=384, preserve_color="luminance"),
        ),
        (
            "--strength 3 --style-scale 2",
            artgen.stylize(cup, waves, extractor=ext, size=384, strength=3, style_scale=2),
        ),
    ]
    tile(
        [Image.open(cup)] + [v for _, v in variants],
        ["content: coffee.jpg"] + [k for k, _ in variants],
    ).save(OUT / "options.png")
    print(f"wrote {OUT}/gallery.png, styles.png, options.png")


if __name__ == "__main__":
    main()
