"""Gather the training data and the held-out set of the shipped AdaIN decoder (docs/adain.md).

    python docs/adain_data.py --out /tmp/adain-data [--shared ../shared/images]
    python docs/adain_data.py --heldout-out /tmp/adain-heldout

--out writes OUT/content/ (photos), OUT/styles/ (paintings, textures, generated styles)
and OUT/manifest.json (every file with its package, path and licence). Everything comes
from packages these machines can install (PyPI: scikit-image's wheel; Debian:
mate-backgrounds, plasma-workspace-wallpapers, ukui-wallpapers, lomiri-wallpapers-16.04
and -20.04, mypaint-data-extras), from styles/make_styles.py with seeds the bundled
styles do not use, and from the public-domain paintings in shared/images whose README
allows training a network that ships.

--heldout-out writes the held-out set (HELD_OUT below: 9 photos, 6 paintings) that
docs/adain_eval.py judges on. It is kept apart by construction: no training file is
written whose pixels match a held-out picture (:func:`refuse_held_out`, by a greyscale
thumbnail that survives re-encoding and resizing), and the four bundled styles (seeds
1-4) are never regenerated.
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
    "rocket.jpg": "public domain (SpaceX)",
    "hubble_deep_field.jpg": "public domain (NASA)",
}
LOMIRI_16 = "/usr/share/doc/lomiri-wallpapers-16.04/copyright"
DEBIAN_PHOTOS = [
    ("mate-backgrounds", "GPL-2+", "/usr/share/backgrounds/mate/nature/*.jpg"),
    ("mate-backgrounds", "GPL-2+", "/usr/share/backgrounds/mate/desktop/GreenTraditional.jpg"),
    (
        "plasma-workspace-wallpapers",
        "GPL-2+",
        "/usr/share/wallpapers/{Autumn,BytheWater,ColdRipple,ColorfulCups,DarkestHour,EveningGlow,"
        "FallenLeaf,Kite,OneStandsOut,Path,SafeLanding,summer_1am}/contents/images/*.jpg",
    ),
    ("ukui-wallpapers", "CC-BY-SA-3.0", "/usr/share/backgrounds/{2004default,firstgeneration}.jpg"),
    (
        "lomiri-wallpapers-16.04",
        f"per file in {LOMIRI_16} (CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0)",
        "/usr/share/backgrounds/{Bridge_by_Sander_Klootwijk,Dragonfly_by_Bolly,"
        "aitzgorri_by_Aitzol_Berasategi,free_by_Peter_Nerlich,friends_by_Aitzol_Berasategi,"
        "life_by_Aitzol_Berasategi,Picture_0B_by_freespace,Picture_1A_by_freespace,"
        "seeding_by_Clements_Engelhardt,sunset_by_Aitzol_Berasategi}.jpg",
    ),
    (
        "lomiri-wallpapers-20.04",
        "CC-BY-SA-3.0 (/usr/share/doc/lomiri-wallpapers-20.04/copyright)",
        "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
    ),
]
DEBIAN_STYLES = [
    (
        "mate-backgrounds",
        "GPL-2+",
        "/usr/share/backgrounds/mate/abstract/{Flow,Gulp,Silk,Spring,Waves,Elephants}.*",
    ),
    ("mypaint-data-extras", "GPL-2+", "/usr/share/mypaint/backgrounds/*/*.png"),
    (
        "plasma-workspace-wallpapers",
        "GPL-2+ / LGPL (/usr/share/doc/plasma-workspace-wallpapers/copyright)",
        "/usr/share/wallpapers/{Altai,Cluster,Honeywave,IceCold,Kokkini,Opal,PastelHills,"
        "Volna}/contents/images/*.*",
    ),
    (
        "ukui-wallpapers",
        "CC-BY-SA-3.0",
        "/usr/share/backgrounds/{calla,city,desert,goldfish,rollpaper,string,rhythm}.*",
    ),
]
# Real paintings for training: the ones of shared/images that are not held out. Each is
# also given as variants (greyscale, recoloured, a detail at 2x) so that the decoder
# learns to paint any palette the statistics ask for, not the photo's.
SHARED_PAINTINGS = {
    "starry_night.jpg": "Vincent van Gogh, The Starry Night (1889), public domain",
    "shipwreck.jpg": "J. M. W. Turner, The Shipwreck (1805), public domain",
    "paintings/contrast_of_forms.jpg": "Fernand Leger, Contrast of Forms (1913), public domain",
    "paintings/turner_shipwreck_of_the_minotaur.jpg": (
        "J. M. W. Turner, The Wreck of a Transport Ship (about 1810), public domain"
    ),
}
PAINTING_VARIANTS = 6  # recoloured copies of each painting (plus one greyscale, one detail)
GENERATED_SEEDS = range(100, 106)  # the bundled styles use seeds 1-4

# The held-out set of docs/adain_eval.py: never in any training set (refuse_held_out).
# name -> (source, where, licence)
HELD_OUT_PHOTOS = {
    "chelsea": ("repo", "styles/examples/chelsea.jpg", "public domain (scikit-image data)"),
    "coffee": ("repo", "styles/examples/coffee.jpg", "CC0 (scikit-image data)"),
    "astronaut": ("skimage", "astronaut.png", "public domain (NASA)"),
    "cameraman": ("skimage", "camera.png", "CC0 (Lav Varshney)"),
    "tubingen": ("shared", "tubingen.jpg", "photo for checks only (shared/images)"),
    "golden_gate": ("shared", "golden_gate.jpg", "photo for checks only (shared/images)"),
    "night_sea": (
        "debian",
        "/usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg",
        "CC-BY-SA-3.0, Aury88 (Debian lomiri-wallpapers-20.04)",
    ),
    "mountains": (
        "debian",
        "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "CC-BY-4.0, Aitzol Berasategi (Debian lomiri-wallpapers-16.04)",
    ),
    "interior": (
        "debian",
        "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg",
        "CC-BY-4.0, Jakub Mede (Debian lomiri-wallpapers-16.04)",
    ),
}
HELD_OUT_STYLES = {
    "mondrian": ("shared", "paintings/mondrian.jpg", "Piet Mondrian, Composition (~1913), PD"),
    "red_chalk": (
        "shared",
        "paintings/woman_in_peasant_dress.jpg",
        "red-chalk drawing, woman in peasant dress, PD",
    ),
    "great_wave": (
        "shared",
        "paintings/hokusai_great_wave.jpg",
        "Katsushika Hokusai, The Great Wave off Kanagawa (~1831), PD",
    ),
    "kandinsky": (
        "shared",
        "paintings/kandinsky_composition_vii.jpg",
        "Wassily Kandinsky, Composition VII (1913), PD",
    ),
    "udnie": ("shared", "paintings/picabia_udnie.jpg", "Francis Picabia, Udnie (1913), PD"),
    "water_lilies": (
        "shared",
        "paintings/monet_water_lilies_crop.jpg",
        "Claude Monet, Water Lilies (crop), PD",
    ),
}


def fingerprint(im: Image.Image) -> np.ndarray:
    """A 32x32 greyscale thumbnail, zero mean and unit norm: the same for a picture after
    re-encoding, resizing or a colour-preserving format change."""
    a = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    a = a - a.mean()
    return (a / (np.linalg.norm(a) + 1e-9)).ravel()


def same_picture(a: np.ndarray, b: np.ndarray, threshold: float = 0.95) -> bool:
    return float(a @ b) > threshold


def refuse_held_out(im: Image.Image, name: str, held_out: dict[str, np.ndarray]) -> None:
    """Raise SystemExit naming the file when ``im`` is one of the held-out pictures."""
    f = fingerprint(im)
    for other, g in held_out.items():
        if same_picture(f, g):
            raise SystemExit(
                f"{name}: this is the held-out picture {other!r}; it cannot be trained on"
            )


def expand(pattern: str) -> list[str]:
    if "{" in pattern:
        head, rest = pattern.split("{", 1)
        alts, tail = rest.split("}", 1)
        return sorted(p for a in alts.split(",") for p in expand(head + a + tail))
    return sorted(glob.glob(pattern))


def save(im: Image.Image, path: Path, long_side: int = 1024, fmt: str = "JPEG") -> None:
    im = im.convert("RGB")
    s = long_side / max(im.size)
    if s < 1:
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
    im.save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def recolour(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random hue rotation and saturation change: new palettes for the generated styles."""
    a = np.asarray(im.convert("HSV"), dtype=np.float32)
    a[..., 0] = (a[..., 0] + rng.uniform(0, 255)) % 255
    a[..., 1] = np.clip(a[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "HSV").convert("RGB")


class Sources:
    """Opens a picture from the repository, shared/images, scikit-image's wheel or Debian."""

    def __init__(self, shared: Path, tmp: str):
        self.shared, self.tmp = shared, tmp
        self._wheel: zipfile.ZipFile | None = None

    def wheel(self) -> zipfile.ZipFile:
        if self._wheel is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "-d",
                    self.tmp,
                    SKIMAGE,
                ],
                check=True,
            )
            self._wheel = zipfile.ZipFile(glob.glob(f"{self.tmp}/*.whl")[0])
        return self._wheel

    def open(self, source: str, where: str) -> Image.Image:
        if source == "skimage":
            with self.wheel().open(f"skimage/data/{where}") as f:
                im = Image.open(f)
                im.load()
            return im.convert("RGB")
        base = {"repo": ROOT, "shared": self.shared, "debian": Path("/")}[source]
        return Image.open(base / where).convert("RGB")


def held_out_pictures(src: Sources) -> dict[str, tuple[str, Image.Image, str]]:
    """name -> (kind, picture, licence) for every held-out photo and painting."""
    out = {}
    for kind, table in (("photo", HELD_OUT_PHOTOS), ("style", HELD_OUT_STYLES)):
        for name, (source, where, licence) in table.items():
            out[name] = (kind, src.open(source, where), licence)
    return out


def write_held_out(folder: Path, pictures: dict) -> None:
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "styles").mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, (kind, im, licence) in pictures.items():
        table = HELD_OUT_PHOTOS if kind == "photo" else HELD_OUT_STYLES
        dest = f"{'photos' if kind == 'photo' else 'styles'}/{name}.png"
        save(im, folder / dest, 1024, fmt="PNG")
        manifest.append(
            {"file": dest, "source": table[name][0], "path": table[name][1], "licence": licence}
        )
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{folder}: {len(HELD_OUT_PHOTOS)} held-out photos, {len(HELD_OUT_STYLES)} paintings")


def write_artist_set(folder: Path, shared: Path) -> None:
    """The artist set of docs/adain.md: 6 crops of the held-out red-chalk drawing."""
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(shared / "paintings" / "woman_in_peasant_dress.jpg").convert("RGB")
    w, h = im.size
    side = min(w, h) * 2 // 3
    for k, (fx, fy) in enumerate([(0, 0), (1, 0), (0, 0.5), (1, 0.5), (0, 1), (1, 1)]):
        x, y = round(fx * (w - side)), round(fy * (h - side))
        im.crop((x, y, x + side, y + side)).save(folder / f"drawing-{k}.jpg", quality=92)
    print(f"{folder}: 6 crops of the red-chalk drawing")


class Writer:
    """Writes training files and their manifest, refusing any held-out picture."""

    def __init__(self, out: Path, held_out: dict[str, np.ndarray]):
        self.out, self.held_out, self.manifest = out, held_out, []
        (out / "content").mkdir(parents=True, exist_ok=True)
        (out / "styles").mkdir(parents=True, exist_ok=True)

    def add(
        self, im: Image.Image, dest: str, package: str, path: str, licence: str, long_side=1024
    ):
        refuse_held_out(im, f"{package}: {path}", self.held_out)
        save(im, self.out / dest, long_side)
        self.manifest.append({"file": dest, "package": package, "path": path, "licence": licence})


def painting_variants(im: Image.Image, rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """Greyscale, PAINTING_VARIANTS recoloured copies and a detail (the middle half at 2x)."""
    out = [("grey", im.convert("L").convert("RGB"))]
    out += [(f"recoloured{k}", recolour(im, rng)) for k in range(PAINTING_VARIANTS)]
    w, h = im.size
    out.append(("detail", im.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2))))
    return out


def write_training(out: Path, src: Sources, held_out: dict[str, np.ndarray]) -> None:
    wr = Writer(out, held_out)
    for name, licence in SKIMAGE_PHOTOS.items():
        wr.add(
            src.open("skimage", name),
            f"content/skimage-{Path(name).stem}.jpg",
            f"PyPI {SKIMAGE}",
            f"skimage/data/{name}",
            licence,
        )
    for package, licence, pattern in DEBIAN_PHOTOS:
        seen = set()
        for p in expand(pattern):
            stem = Path(p).parts[4] if "/wallpapers/" in p else Path(p).stem
            dest = f"content/{package.split('-')[0]}-{stem}.jpg"
            if dest in seen:  # KDE ships each wallpaper at several sizes: take the first
                continue
            seen.add(dest)
            wr.add(Image.open(p).convert("RGB"), dest, f"Debian {package}", p, licence)
    for package, licence, pattern in DEBIAN_STYLES:
        seen = set()
        for p in expand(pattern):
            stem = Path(p).parts[4] if "/wallpapers/" in p else Path(p).stem.replace(" ", "_")
            dest = f"styles/{package.split('-')[0]}-{stem}.jpg"
            if dest in seen:
                continue
            seen.add(dest)
            wr.add(Image.open(p).convert("RGB"), dest, f"Debian {package}", p, licence, 768)
    rng = np.random.default_rng(0)
    for name, what in SHARED_PAINTINGS.items():
        im = src.open("shared", name)
        stem = f"styles/painting-{Path(name).stem}"
        wr.add(im, f"{stem}.jpg", "shared/images (project data)", name, what, 768)
        for tag, v in painting_variants(im, rng):
            wr.add(
                v, f"{stem}-{tag}.jpg", "shared/images (project data)", f"{name}, {tag}", what, 768
            )
    spec = importlib.util.spec_from_file_location("make_styles", ROOT / "styles" / "make_styles.py")
    ms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ms)
    for kind in ("swirls", "mosaic", "waves", "facets"):
        for seed in GENERATED_SEEDS:
            im = getattr(ms, kind)(seed)
            if seed % 3:  # two in three get a new palette
                im = recolour(im, rng)
            wr.add(
                im,
                f"styles/generated-{kind}-{seed}.jpg",
                "styles/make_styles.py",
                f"{kind}(seed={seed})" + (", recoloured" if seed % 3 else ""),
                "CC0-1.0 (this project)",
            )
    (out / "manifest.json").write_text(json.dumps(wr.manifest, indent=1) + "\n")
    n_c = sum(m["file"].startswith("content/") for m in wr.manifest)
    print(f"{out}: {n_c} content photos, {len(wr.manifest) - n_c} style images")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="", help="folder for content/, styles/ and manifest.json")
    ap.add_argument("--heldout-out", default="", help="folder for the held-out set")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "images"))
    ap.add_argument(
        "--artist-out",
        default="",
        help="also write the artist set of docs/adain.md: 6 crops of the held-out "
        "red-chalk drawing (woman_in_peasant_dress), as an artist's 'my_art/'",
    )
    args = ap.parse_args()
    shared = Path(args.shared)
    if args.artist_out:
        write_artist_set(Path(args.artist_out), shared)
    if not (args.out or args.heldout_out):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Sources(shared, tmp)
        pictures = held_out_pictures(src)
        if args.heldout_out:
            write_held_out(Path(args.heldout_out), pictures)
        if args.out:
            prints = {name: fingerprint(im) for name, (_, im, _) in pictures.items()}
            write_training(Path(args.out), src, prints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
