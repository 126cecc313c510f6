"""Gather the training data of the shipped AdaIN decoder (see docs/adain.md).

    python docs/adain_data.py --out /tmp/adain-data [--shared ../shared/images]

Writes OUT/content/ (photos), OUT/styles/ (paintings, textures, generated styles) and
OUT/manifest.json (every file with its package, path and licence). Everything comes
from packages these machines can install (PyPI: scikit-image's wheel; Debian:
mate-backgrounds, plasma-workspace-wallpapers, ukui-wallpapers, mypaint-data-extras),
from styles/make_styles.py with seeds the bundled styles do not use, and from the
public-domain paintings in shared/images whose README allows training a network that
ships. Held out (never written here): the example photos chelsea and coffee, the
photos tubingen and golden_gate, the paintings mondrian and woman_in_peasant_dress,
and the four bundled styles (seeds 1-4).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE = "scikit-image==0.26.0"
SKIMAGE_PHOTOS = {  # licence lines from skimage/data/_fetchers.py
    "astronaut.png": "public domain (NASA)",
    "rocket.jpg": "public domain (SpaceX)",
    "hubble_deep_field.jpg": "public domain (NASA)",
}
DEBIAN_PHOTOS = [
    ("mate-backgrounds", "GPL-2+", "/usr/share/backgrounds/mate/nature/*.jpg"),
    ("mate-backgrounds", "GPL-2+", "/usr/share/backgrounds/mate/desktop/GreenTraditional.jpg"),
    (
        "plasma-workspace-wallpapers",
        "GPL-2+",
        "/usr/share/wallpapers/{Autumn,BytheWater,ColdRipple,ColorfulCups,DarkestHour,EveningGlow,"
        "FallenLeaf,Kite,OneStandsOut,Path,SafeLanding,summer_1am}/contents/images/*.jpg",
    ),
    ("ukui-wallpapers", "CC-BY-SA-3.0", "/usr/share/backgrounds/*.jpg"),
]
DEBIAN_STYLES = [
    (
        "mate-backgrounds",
        "GPL-2+",
        "/usr/share/backgrounds/mate/abstract/{Flow,Gulp,Silk,Spring,Waves,Elephants}.*",
    ),
    ("mypaint-data-extras", "GPL-2+", "/usr/share/mypaint/backgrounds/*/*.png"),
]
SHARED_PAINTINGS = {
    "starry_night.jpg": "Vincent van Gogh, The Starry Night (1889), public domain",
    "shipwreck.jpg": "J. M. W. Turner, The Shipwreck (1805), public domain",
    "paintings/contrast_of_forms.jpg": "Fernand Leger, Contrast of Forms (1913), public domain",
}
GENERATED_SEEDS = range(100, 112)  # the bundled styles use seeds 1-4


def expand(pattern: str) -> list[str]:
    if "{" in pattern:
        head, rest = pattern.split("{", 1)
        alts, tail = rest.split("}", 1)
        return sorted(p for a in alts.split(",") for p in expand(head + a + tail))
    return sorted(glob.glob(pattern))


def save(im: Image.Image, path: Path, long_side: int = 1024) -> None:
    im = im.convert("RGB")
    s = long_side / max(im.size)
    if s < 1:
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
    im.save(path, quality=92)


def recolour(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random hue rotation and saturation change: new palettes for the generated styles."""
    a = np.asarray(im.convert("HSV"), dtype=np.float32)
    a[..., 0] = (a[..., 0] + rng.uniform(0, 255)) % 255
    a[..., 1] = np.clip(a[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "HSV").convert("RGB")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="", help="folder for content/, styles/ and manifest.json")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "images"))
    ap.add_argument(
        "--artist-out",
        default="",
        help="also write the artist set of docs/adain.md: 6 crops of the held-out "
        "red-chalk drawing (woman_in_peasant_dress), as an artist's 'my_art/'",
    )
    args = ap.parse_args()
    if args.artist_out:
        art = Path(args.artist_out)
        art.mkdir(parents=True, exist_ok=True)
        im = Image.open(Path(args.shared) / "paintings" / "woman_in_peasant_dress.jpg").convert(
            "RGB"
        )
        w, h = im.size
        side = min(w, h) * 2 // 3
        for k, (fx, fy) in enumerate([(0, 0), (1, 0), (0, 0.5), (1, 0.5), (0, 1), (1, 1)]):
            x, y = round(fx * (w - side)), round(fy * (h - side))
            im.crop((x, y, x + side, y + side)).save(art / f"drawing-{k}.jpg", quality=92)
        print(f"{art}: 6 crops of the red-chalk drawing")
    if not args.out:
        return 0
    out = Path(args.out)
    (out / "content").mkdir(parents=True, exist_ok=True)
    (out / "styles").mkdir(parents=True, exist_ok=True)
    manifest: list[dict] = []

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, SKIMAGE],
            check=True,
        )
        wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
        for name, licence in SKIMAGE_PHOTOS.items():
            with wheel.open(f"skimage/data/{name}") as f:
                im = Image.open(f)
                im.load()
            dest = f"skimage-{Path(name).stem}.jpg"
            save(im, out / "content" / dest)
            manifest.append(
                {
                    "file": f"content/{dest}",
                    "package": f"PyPI {SKIMAGE}",
                    "path": f"skimage/data/{name}",
                    "licence": licence,
                }
            )

    for package, licence, pattern in DEBIAN_PHOTOS:
        seen = set()
        for p in expand(pattern):
            parts = Path(p).parts
            stem = parts[4] if "wallpapers" in p else Path(p).stem
            dest = f"{package.split('-')[0]}-{stem}.jpg"
            if dest in seen:  # KDE ships each wallpaper at several sizes: take the first
                continue
            seen.add(dest)
            save(Image.open(p), out / "content" / dest)
            manifest.append(
                {
                    "file": f"content/{dest}",
                    "package": f"Debian {package}",
                    "path": p,
                    "licence": licence,
                }
            )

    for package, licence, pattern in DEBIAN_STYLES:
        for p in expand(pattern):
            dest = f"{package.split('-')[0]}-{Path(p).stem.replace(' ', '_')}.jpg"
            save(Image.open(p), out / "styles" / dest, 768)
            manifest.append(
                {
                    "file": f"styles/{dest}",
                    "package": f"Debian {package}",
                    "path": p,
                    "licence": licence,
                }
            )

    shared = Path(args.shared)
    for name, what in SHARED_PAINTINGS.items():
        dest = f"painting-{Path(name).stem}.jpg"
        save(Image.open(shared / name), out / "styles" / dest, 768)
        manifest.append(
            {
                "file": f"styles/{dest}",
                "package": "shared/images (project data)",
                "path": name,
                "licence": what,
            }
        )

    spec = importlib.util.spec_from_file_location("make_styles", ROOT / "styles" / "make_styles.py")
    ms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ms)
    rng = np.random.default_rng(0)
    for kind in ("swirls", "mosaic", "waves", "facets"):
        for seed in GENERATED_SEEDS:
            im = getattr(ms, kind)(seed)
            if seed % 3:  # two in three get a new palette
                im = recolour(im, rng)
            dest = f"generated-{kind}-{seed}.jpg"
            save(im, out / "styles" / dest)
            manifest.append(
                {
                    "file": f"styles/{dest}",
                    "package": "styles/make_styles.py",
                    "path": f"{kind}(seed={seed})" + (", recoloured" if seed % 3 else ""),
                    "licence": "CC0-1.0 (this project)",
                }
            )

    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    n_c = sum(m["file"].startswith("content/") for m in manifest)
    print(f"{out}: {n_c} content photos, {len(manifest) - n_c} style images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
