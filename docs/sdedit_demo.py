"""The numbers and the picture of docs/sdedit.md: SDEdit with tiny fine-tuned generators.

    python docs/sdedit_demo.py [--out out/sdedit-demo] [--steps 800]

1. The test setup (tests/test_sdedit.py): the tiny DDPM of artgen.testing,
   fully fine-tuned for 200 steps on its small striped/sky set; the edge correlation
   (artgen.eval.metrics.edge_correlation) between the test photo and its SDEdit output
   at each noise level, mean and spread over 8 seeds.
2. A demo strip: the same tiny architecture trained (from scratch: no pretrained model
   can be downloaded here) on 32 px crops of the bundled "mosaic" style, then the
   example photo "chelsea" repainted at noise 0 to 1.

About 2 minutes on 2 CPU cores. Writes docs/sdedit_results.json and
docs/images/sdedit_strengths.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def finetune(base: Path, images: Path, out: Path, steps: int) -> Path:
    import artgen

    return artgen.finetune_diffusion(
        artgen.DiffusionFinetuneOptions(
            base=str(base),
            images=str(images),
            out=str(out),
            steps=steps,
            method="full",
            batch_size=4,
            lr=3e-3,
            warmup_steps=0,
            ema_decay=0.0,
            sample_every=100000,
            checkpoint_every=100000,
            num_samples=1,
            sample_steps=1,
            device="cpu",
        )
    )


def measure(run: Path, seeds: int = 8) -> dict:
    """Edge correlation per noise level, as tests/test_sdedit.py measures it."""
    from artgen.eval.metrics import edge_correlation
    from artgen.style.sdedit import SDEditOptions, load, stylize
    from artgen.testing import photo

    model = load(SDEditOptions(generator=str(run)))
    p = photo(96, 64)
    ref = p.resize((32, 22), Image.Resampling.LANCZOS)
    table = {}
    for s in STRENGTHS:
        c = [
            edge_correlation(
                ref,
                stylize(
                    p,
                    None,
                    SDEditOptions(generator=str(run), noise=s, size=32, steps=20, seed=k),
                    model=model,
                ),
            )
            for k in range(seeds)
        ]
        table[f"{s:g}"] = {"mean": round(float(np.mean(c)), 3), "std": round(float(np.std(c)), 3)}
    return table


def crops(style: str, n: int, folder: Path, size: int = 32, seed: int = 0) -> Path:
    from artgen.core.images import load_image

    im = load_image(REPO / "styles" / f"{style}.jpg").rgb
    im = im.resize((160, round(160 * im.height / im.width)), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x, y = rng.integers(0, im.width - size), rng.integers(0, im.height - size)
        im.crop((x, y, x + size, y + size)).save(folder / f"{style}-{i:03d}.png")
    return folder


def strip(run: Path, photo_path: Path, size: int, scale: int = 4) -> tuple[Image.Image, dict]:
    from artgen.eval.metrics import edge_correlation
    from artgen.style.sdedit import SDEditOptions, load, stylize

    model = load(SDEditOptions(generator=str(run)))
    tiles, corr = [], {}
    ref = None
    for s in STRENGTHS:
        out = stylize(
            photo_path,
            None,
            SDEditOptions(generator=str(run), noise=s, size=size, seed=0),
            model=model,
        )
        ref = ref or out
        corr[f"{s:g}"] = round(edge_correlation(ref, out), 3)
        tiles.append(out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST))
    w, h = tiles[0].size
    sheet = Image.new("RGB", (len(tiles) * (w + 4) - 4, h + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (s, t) in enumerate(zip(STRENGTHS, tiles, strict=True)):
        sheet.paste(t, (i * (w + 4), 18))
        draw.text((i * (w + 4) + 2, 3), f"noise {s:g}", fill="black")
    return sheet, corr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "out" / "sdedit-demo"))
    ap.add_argument("--steps", type=int, default=800, help="training steps of the demo run")
    args = ap.parse_args()
    from artgen.testing import image_folder, tiny_ddpm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    test_run = finetune(
        tiny_ddpm(out / "ddpm"), image_folder(out / "images", n=8, size=24), out / "test-run", 200
    )
    table = measure(test_run)
    t1 = time.perf_counter()
    demo_run = finetune(
        tiny_ddpm(out / "ddpm32", size=32),
        crops("mosaic", 48, out / "mosaic"),
        out / "demo",
        args.steps,
    )
    sheet, corr = strip(demo_run, REPO / "styles" / "examples" / "chelsea.jpg", 48)
    sheet.save(REPO / "docs" / "images" / "sdedit_strengths.png")
    results = {
        "test_setup": {
            "run": "tiny DDPM (artgen.testing), full fine-tune, 200 steps",
            "measure": "edge_correlation(photo at 32 px, output), 20-step DDIM schedule, 8 seeds",
            "edge_correlation": table,
            "seconds": round(t1 - t0, 1),
        },
        "demo": {
            "run": f"tiny DDPM at 32 px trained {args.steps} steps on 48 crops of mosaic",
            "photo": "styles/examples/chelsea.jpg at 48 px, seed 0, 50-step DDIM schedule",
            "edge_correlation_to_strength_0": corr,
            "seconds": round(time.perf_counter() - t1, 1),
        },
    }
    (REPO / "docs" / "sdedit_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
