"""Synthetic "portraits" with a known binary sensitive attribute, for fair-transfer experiments.

Data for the setting of Teo et al., "Fair Generative Models via Transfer Learning" (AAAI
2023): a large set biased on a binary attribute, a small balanced reference set, a held-out
set and a separate target domain for few-shot adaptation, all made offline by this script.

Each image is a head-and-shoulders figure: a smooth two-colour background gradient, shoulders
in a random shirt colour, a neck, an oval head of random skin tone, a hair cap of random colour,
eyes and a mouth, with position and size jitter. The attribute (``ATTRIBUTES[a]`` is its CSV
value) is hair length: ``long_hair`` falls behind the head past the jaw onto the shoulders,
``short_hair`` is a cap only. It is chosen because it is coarse: at 32 px it covers a few
hundred pixels, so a small generator either draws it or does not, and a probe's reading of
generated images can be trusted. (An earlier version used glasses, a few pixels around the
eyes: a small generator's blurry eyes then fooled the probe; see docs/fairtl.md.)

Domains: ``"source"``: gradient backgrounds, borderless shapes, natural colours; ``"target"``:
the same layout in a flat comic style (pastel paper, ink outlines, a small pop palette).

Shapes are drawn at 4x and downsampled with LANCZOS; each image then gets a random slight blur
and grain, which keeps a probe fitted on them accurate on blurrier or noisier generated images.

    make_set("data/biased", 2000, 0.1, seed=1)      # 90% short_hair / 10% long_hair
    make_set("data/reference", 200, 0.5, seed=2)    # small balanced reference
    make_set("data/target10", 10, 0.5, seed=3, domain="target")
"""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ATTRIBUTES = ("short_hair", "long_hair")
DOMAINS = ("source", "target")
SUPERSAMPLE = 4
MAX_BLUR = 0.8  # Gaussian radius in pixels at 32 px
MAX_GRAIN = 6.0  # standard deviation of pixel noise, 0-255 scale

SKIN = [(255, 224, 196), (241, 194, 158), (224, 172, 125), (198, 134, 90), (141, 85, 54)]
SKIN += [(92, 58, 38)]  # darkest tone
HAIR = [(30, 24, 20), (70, 45, 30), (120, 80, 45), (190, 150, 90), (160, 60, 30), (150, 150, 150)]
POP_SKIN = [(255, 205, 170), (250, 170, 150), (200, 140, 100), (120, 80, 60)]
POP_HAIR = [(40, 40, 120), (200, 30, 90), (20, 140, 140), (240, 190, 20), (30, 30, 30)]
POP_SHIRT = [(230, 60, 60), (40, 110, 220), (250, 200, 40), (40, 170, 90), (150, 70, 190)]
PAPER = [(250, 240, 215), (215, 235, 245), (245, 215, 230), (225, 245, 215)]


def _pick(rng: np.random.Generator, palette, jitter: float = 0.0) -> tuple[int, ...]:
    c = np.asarray(palette[int(rng.integers(len(palette)))], float) + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def make_image(
    rng: np.random.Generator, attribute: int, resolution: int = 32, domain: str = "source"
) -> Image.Image:
    """One RGB portrait; ``attribute`` 1 draws long hair, 0 short hair."""
    if attribute not in (0, 1) or domain not in DOMAINS:
        raise ValueError(f"attribute must be 0 or 1 and domain in {DOMAINS}: {attribute}, {domain}")
    s = resolution * SUPERSAMPLE
    target = domain == "target"
    if target:
        skin, hair, shirt = _pick(rng, POP_SKIN), _pick(rng, POP_HAIR), _pick(rng, POP_SHIRT)
        ink, line = (25, 20, 30), max(1, round(s * 0.025))
        bg = np.broadcast_to(np.array(_pick(rng, PAPER), np.uint8), (s, s, 3))
    else:
        skin, hair = _pick(rng, SKIN, 8), _pick(rng, HAIR, 10)
        shirt = tuple(int(v) for v in rng.integers(30, 230, 3))
        ink, line = None, 0
        c0, c1, angle = rng.integers(40, 230, 3), rng.integers(40, 230, 3), rng.uniform(0, 7)
        yy, xx = np.mgrid[0:s, 0:s] / (s - 1) - 0.5
        t = np.clip(0.5 + np.cos(angle) * xx + np.sin(angle) * yy, 0, 1)[..., None]
        bg = ((1 - t) * c0 + t * c1).astype(np.uint8)  # a linear gradient in a random direction
    img = Image.fromarray(np.ascontiguousarray(bg), "RGB")
    d = ImageDraw.Draw(img)

    def box(cx, cy, rx, ry):
        return [s * (cx - rx), s * (cy - ry), s * (cx + rx), s * (cy + ry)]

    scale, cx, cy = rng.uniform(0.88, 1.12), rng.uniform(0.44, 0.56), rng.uniform(0.4, 0.48)
    rx, ry = 0.20 * scale * rng.uniform(0.9, 1.08), 0.25 * scale  # head radii
    # 0: a short crop; 1: long hair, drawn behind the head and over the shoulders
    hair_len = rng.uniform(0.65, 1.0) if attribute else rng.uniform(0.0, 0.35)
    d.ellipse(box(cx, 1.02, 0.42 * scale, 0.26 * scale), fill=shirt, outline=ink, width=line)
    d.rectangle(box(cx, cy + ry * 0.95, rx * 0.38, ry * 0.35), fill=skin)
    if attribute:
        bottom = cy + ry * (1.0 + 0.8 * hair_len)  # from the chin down onto the shoulders
        hb = [s * (cx - rx * 1.35), s * (cy - ry * 1.02), s * (cx + rx * 1.35), s * bottom]
        d.rounded_rectangle(hb, radius=s * rx * 0.9, fill=hair, outline=ink, width=line)
    d.ellipse(box(cx, cy, rx, ry), fill=skin, outline=ink, width=line)
    # hair cap: the top half of an ellipse, its lower edge between brow and hairline
    top = ry * (0.3 + 0.15 * hair_len)
    cap = box(cx, cy - top, rx * 1.07, ry * 1.1 - top)
    d.chord(cap, 180, 360, fill=hair, outline=ink, width=line)
    ey, ex = cy + ry * rng.uniform(-0.02, 0.1), rx * rng.uniform(0.38, 0.46)  # eyes
    for sx in (-1, 1):
        d.ellipse(box(cx + sx * ex, ey, rx * 0.1, rx * 0.1), fill=(20, 20, 25))
    my, mw = cy + ry * rng.uniform(0.36, 0.46), rx * rng.uniform(0.25, 0.45)  # mouth
    mouth = ink if target else (150, 40, 50)
    d.arc(box(cx, my, mw, ry * 0.14), 20, 160, fill=mouth, width=round(s * 0.02) or 1)
    img = img.resize((resolution, resolution), Image.LANCZOS)  # then camera-like blur and grain
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, MAX_BLUR) * resolution / 32))
    grain = rng.normal(0, rng.uniform(0, MAX_GRAIN), (resolution, resolution, 3))
    return Image.fromarray(np.clip(np.asarray(img, float) + grain, 0, 255).astype(np.uint8))


def make_set(
    folder,
    n: int,
    fraction_attr1: float,
    seed: int,
    resolution: int = 32,
    domain: str = "source",
    exact: bool = True,
) -> list[tuple[str, int]]:
    """Write ``n`` PNGs and ``labels.csv`` ("file,attr") into an empty or new ``folder``.

    With ``exact``, exactly ``round(n * fraction_attr1)`` images have attribute 1 (in a
    random order); otherwise each image has it independently with that probability.
    Returns ``[(file name, attribute), ...]``.
    """
    if not 0.0 <= fraction_attr1 <= 1.0 or (os.path.isdir(folder) and os.listdir(folder)):
        raise ValueError(f"need fraction_attr1 in [0, 1] and {folder} empty or new")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    if exact:
        attrs = np.zeros(n, int)
        attrs[: round(n * fraction_attr1)] = 1
        rng.shuffle(attrs)
    else:
        attrs = (rng.random(n) < fraction_attr1).astype(int)
    rows = [(f"img-{i:05d}.png", a) for i, a in enumerate(attrs.tolist())]
    for name, a in rows:
        make_image(rng, a, resolution, domain).save(os.path.join(folder, name))
    with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("file", "attr")] + [(m, ATTRIBUTES[a]) for m, a in rows])
    return rows


if __name__ == "__main__":  # preview: per domain, 3 rows short_hair, then 3 rows long_hair
    rng, r, cols = np.random.default_rng(0), 96, 8
    for dom in DOMAINS:
        grid = Image.new("RGB", (cols * r, 6 * r + 4), "white")
        for k in range(6 * cols):
            im = make_image(rng, k // (3 * cols), 32, dom).resize((r, r), Image.NEAREST)
            grid.paste(im, ((k % cols) * r, (k // cols) * r + 4 * (k >= 3 * cols)))
        grid.save(f"/tmp/fairtl_preview_{dom}.png")
        print(f"/tmp/fairtl_preview_{dom}.png")
