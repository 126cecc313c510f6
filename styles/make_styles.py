"""Make the bundled style images. They are this project's own work (CC0-1.0).

    python styles/make_styles.py            # writes styles/*.jpg

Each generator paints with numpy and Pillow only, from a fixed seed, so the
files are reproducible. They imitate painterly textures (brush strokes along a
flow field, stained glass, woodblock waves, cubist facets) without copying any
artwork.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 512
HERE = Path(__file__).resolve().parent


def _noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: random grid upsampled bicubically."""
    g = rng.random((size // scale + 3, size // scale + 3)).astype(np.float32)
    im = Image.fromarray((g * 255).astype(np.uint8)).resize(
        ((size // scale + 3) * scale, (size // scale + 3) * scale), Image.Resampling.BICUBIC
    )
    return np.asarray(im, dtype=np.float32)[:size, :size] / 255.0


def _canvas_texture(im: Image.Image, rng: np.random.Generator, amount: float = 10.0) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    grain = rng.normal(0, amount, a.shape[:2])[..., None]
    return Image.fromarray(np.clip(a + grain, 0, 255).astype(np.uint8))


def swirls(seed: int = 1) -> Image.Image:
    """Short thick strokes that follow a field of vortices, in night blues and gold."""
    rng = np.random.default_rng(seed)
    palette = np.array(
        [[20, 40, 110], [35, 70, 160], [60, 110, 200], [110, 160, 220], [230, 200, 80],
         [245, 225, 120], [25, 30, 60], [90, 140, 180]], dtype=np.float32
    )  # fmt: skip
    vortices = [(rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(40, 140), rng.choice([-1, 1]))
                for _ in range(9)]  # fmt: skip
    warm = _noise(rng, SIZE, 96)

    def field(x: float, y: float) -> tuple[float, float]:
        vx, vy = 1.0, 0.15  # a gentle drift, like wind
        for cx, cy, r, s in vortices:
            dx, dy = x - cx, y - cy
            d2 = dx * dx + dy * dy
            f = s * math.exp(-d2 / (2 * r * r)) * 3.0
            vx += -dy / r * f
            vy += dx / r * f
        n = math.hypot(vx, vy) + 1e-6
        return vx / n, vy / n

    im = Image.new("RGB", (SIZE, SIZE), (30, 50, 120))
    draw = ImageDraw.Draw(im)
    for _ in range(9000):
        x, y = rng.uniform(-10, SIZE + 10), rng.uniform(-10, SIZE + 10)
        t = warm[int(min(max(y, 0), SIZE - 1)), int(min(max(x, 0), SIZE - 1))]
        k = rng.choice(len(palette), p=_palette_weights(t))
        c = palette[k] * rng.uniform(0.85, 1.15)
        pts = [(x, y)]
        for _ in range(rng.integers(5, 12)):
            vx, vy = field(x, y)
            x, y = x + vx * 3.0, y + vy * 3.0
            pts.append((x, y))
        w = int(rng.integers(3, 7))
        draw.line(pts, fill=tuple(int(v) for v in np.clip(c, 0, 255)), width=w, joint="curve")
        draw.line(pts, fill=tuple(int(v) for v in np.clip(c * 0.7, 0, 255)), width=1)
    return _canvas_texture(im, rng, 6)


def _palette_weights(t: float) -> np.ndarray:
    # More gold where the warm noise is high, more blue elsewhere.
    w = np.array([1.2, 1.5, 1.3, 0.8, 2.5 * t**3, 1.6 * t**3, 0.6, 0.7])
    return w / w.sum()


def mosaic(seed: int = 2) -> Image.Image:
    """Stained glass: Voronoi cells of jewel colours with dark leading."""
    rng = np.random.default_rng(seed)
    n = 260
    pts = rng.uniform(0, SIZE, (n, 2)).astype(np.float32)
    palette = np.array(
        [[170, 30, 40], [30, 80, 170], [230, 180, 40], [40, 140, 80], [120, 40, 140],
         [220, 110, 30], [40, 150, 170], [200, 200, 190]], dtype=np.float32
    )  # fmt: skip
    cols = palette[rng.integers(0, len(palette), n)] * rng.uniform(0.75, 1.1, (n, 1))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    best = np.full((SIZE, SIZE), np.inf, np.float32)
    second = np.full((SIZE, SIZE), np.inf, np.float32)
    idx = np.zeros((SIZE, SIZE), np.int32)
    for i, (px, py) in enumerate(pts):
        d = np.sqrt((xx - px) ** 2 + (yy - py) ** 2)
        closer = d < best
        second = np.where(closer, best, np.minimum(second, d))
        idx = np.where(closer, i, idx)
        best = np.where(closer, d, best)
    img = cols[idx]
    # Light through glass: brighter near each cell's centre, with mottling.
    shade = 1.15 - 0.4 * np.clip(best / 40.0, 0, 1)
    img = img * shade[..., None] * (0.85 + 0.3 * _noise(rng, SIZE, 8))[..., None]
    lead = (second - best) < 3.0
    img[lead] = [25, 22, 20]
    return _canvas_texture(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), rng, 4)


def waves(seed: int = 3) -> Image.Image:
    """Woodblock-print waves: layered indigo bands with white crests on paper."""
    rng = np.random.default_rng(seed)
    paper = np.array([236, 226, 200], np.float32)
    blues = np.array([[20, 40, 90], [35, 70, 130], [70, 110, 160], [130, 160, 190]], np.float32)
    img = np.tile(paper, (SIZE, SIZE, 1))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    for layer in range(14):
        base = 40 + layer * 34 + rng.uniform(-8, 8)
        amp, freq, phase = rng.uniform(10, 28), rng.uniform(0.015, 0.04), rng.uniform(0, 2 * np.pi)
        crest = base + amp * np.sin(xx * freq + phase) + 6 * np.sin(xx * freq * 3.1 + phase * 2)
        below = yy > crest
        colour = blues[layer % len(blues)]
        stripes = 0.9 + 0.1 * np.sin((yy - crest) * 0.8)
        img = np.where(below[..., None], colour * stripes[..., None], img)
        foam = np.abs(yy - crest) < 3.0 + 2.0 * (np.sin(xx * 0.3 + layer) > 0.6)
        img = np.where(foam[..., None], paper, img)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(500):  # spray
        x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(1, 3)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in paper))
    return _canvas_texture(im.filter(ImageFilter.SMOOTH), rng, 5)


def facets(seed: int = 4) -> Image.Image:
    """Cubist facets: overlapping translucent shards in ochre, umber and grey, outlined."""
    rng = np.random.default_rng(seed)
    palette = np.array(
        [[181, 137, 76], [120, 84, 52], [92, 96, 98], [200, 180, 140], [60, 52, 46], [150, 110, 70],
         [170, 160, 150]], dtype=np.float32
    )  # fmt: skip
    im = Image.new("RGB", (SIZE, SIZE), (150, 120, 90))
    for _ in range(220):
        cx, cy = rng.uniform(-40, SIZE + 40, 2)
        k = int(rng.integers(3, 6))
        r = rng.uniform(30, 120)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        poly = [(cx + r * rng.uniform(0.5, 1) * math.cos(a), cy + r * rng.uniform(0.5, 1) * math.sin(a))
                for a in angles]  # fmt: skip
        c = palette[rng.integers(0, len(palette))] * rng.uniform(0.8, 1.15)
        layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        d.polygon(poly, fill=(*[int(v) for v in np.clip(c, 0, 255)], int(rng.integers(110, 200))))
        d.line([*poly, poly[0]], fill=(40, 32, 26, 230), width=int(rng.integers(1, 4)))
        im = Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")
    # Hatching, as in analytic cubism's brushwork.
    draw = ImageDraw.Draw(im)
    for _ in range(2500):
        x, y = rng.uniform(0, SIZE, 2)
        a = rng.choice([0.7, 2.3]) + rng.normal(0, 0.1)
        ln = rng.uniform(4, 10)
        c = tuple(int(v) for v in np.clip(palette[rng.integers(0, len(palette))] * 0.8, 0, 255))
        draw.line([(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))], fill=c, width=1)
    return _canvas_texture(im, rng, 5)


STYLES = {"swirls": swirls, "mosaic": mosaic, "waves": waves, "facets": facets}

if __name__ == "__main__":
    for name, make in STYLES.items():
        path = HERE / f"{name}.jpg"
        make().save(path, format="JPEG", quality=92)
        print(f"wrote {path}")
