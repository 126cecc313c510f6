"""Gatys with and without tiles (issue 12): peak memory, wall time and seam visibility.

At a size that fits both ways (default 1024x768, EfficientNet-Lite0, one scale, few steps)
each run is a fresh process so that its peak resident memory (ru_maxrss, Linux: the
process's largest resident set, PyTorch and the loaded weights included) is its own. The
seams: artgen.eval.metrics.seam_ratio along the tile borders of the tiled picture, of the
untiled picture at the same lines (the reference: what the picture itself has there),
and of a naive tiling (each tile stylised as a picture of its own and pasted, no overlap:
a deliberate seam). Writes docs/tile_results.json.

    nice -n 19 .venv/bin/python benchmarks/tile_gatys.py [--content PHOTO --style PAINTING]

Without --content/--style it uses the bundled example (styles/examples/chelsea.jpg) and
styles/swirls.jpg.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image

    import artgen
    from artgen.style import gatys

    torch.manual_seed(0)
    ext = gatys.load(gatys.StylizeOptions(backbone="efficientnet-lite0"))
    content = Image.open(args.content).convert("RGB")
    style = Image.open(args.style).convert("RGB")
    opts = dict(size=args.size, min_size=args.size, iterations=args.iterations)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if args.mode == "naive":
        # Each tile a picture of its own, pasted edge to edge: a deliberate seam.
        w, h = gatys._fit(*content.size, args.size)
        photo = content.resize((w, h), Image.Resampling.LANCZOS)
        out = Image.new("RGB", (w, h))
        t = args.tile
        for y in range(0, h, t):
            for x in range(0, w, t):
                box = (x, y, min(w, x + t), min(h, y + t))
                crop = photo.crop(box)
                part = artgen.stylize(
                    crop, style, extractor=ext, tile=-1, **{**opts, "size": max(crop.size)}
                )
                out.paste(part.resize(crop.size), box[:2])
    else:
        out = artgen.stylize(
            content, style, extractor=ext, tile=args.tile if args.mode == "tiled" else -1, **opts
        )
    wall = time.perf_counter() - t0
    out.save(args.out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"wall_s": wall, "peak_rss": peak, "rss_before_run": base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content", default=str(REPO / "styles/examples/chelsea.jpg"))
    ap.add_argument("--style", default=str(REPO / "styles/swirls.jpg"))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--json", default=str(REPO / "docs/tile_results.json"))
    ap.add_argument("--workdir", default="/tmp/tile_gatys")
    ap.add_argument("--mode", choices=("whole", "tiled", "naive"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child(args)
        return

    import numpy as np
    from PIL import Image

    from artgen.eval.metrics import seam_ratio
    from artgen.style.gatys import tile_borders

    os.makedirs(args.workdir, exist_ok=True)
    runs = {}
    for mode in ("whole", "tiled", "naive"):
        out = os.path.join(args.workdir, f"{mode}.png")
        cmd = [sys.executable, __file__, "--mode", mode, "--out", out]
        for k in ("content", "style", "size", "tile", "iterations"):
            cmd += [f"--{k}", str(getattr(args, k))]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[mode] = {**json.loads(line.strip().splitlines()[-1]), "image": out}
    images = {m: Image.open(r["image"]).convert("RGB") for m, r in runs.items()}
    w, h = images["tiled"].size
    cols, rows = tile_borders(w, h, args.tile)
    naive_cols = list(range(args.tile, w, args.tile))
    naive_rows = list(range(args.tile, h, args.tile))
    a = np.asarray(images["whole"], dtype=np.float64)
    b = np.asarray(images["tiled"], dtype=np.float64)
    result = {
        "what": "Gatys (EfficientNet-Lite0, Adam) with and without tiles, one scale, on CPU",
        "content": os.path.basename(args.content),
        "style": os.path.basename(args.style),
        "size": [w, h],
        "tile": args.tile,
        "iterations": args.iterations,
        "threads": int(__import__("torch").get_num_threads()),
        "memory": "peak resident set of each run's own process (ru_maxrss), PyTorch included",
        "peak_rss_mib": {m: round(r["peak_rss"] / 2**20) for m, r in runs.items()},
        "rss_before_stylize_mib": {m: round(r["rss_before_run"] / 2**20) for m, r in runs.items()},
        "wall_s": {m: round(r["wall_s"], 2) for m, r in runs.items()},
        "tile_borders": {"columns": cols, "rows": rows},
        "seam_ratio": {
            "tiled": round(seam_ratio(images["tiled"], cols, rows), 4),
            "whole_at_the_same_lines": round(seam_ratio(images["whole"], cols, rows), 4),
            "naive_tiles_at_their_borders": round(
                seam_ratio(images["naive"], naive_cols, naive_rows), 4
            ),
            "whole_at_the_naive_borders": round(
                seam_ratio(images["whole"], naive_cols, naive_rows), 4
            ),
        },
        "tiled_vs_whole_mean_abs_diff_255": round(float(np.abs(a - b).mean()), 3),
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
