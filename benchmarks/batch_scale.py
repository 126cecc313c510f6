"""Data-set batches: ``--engine local`` against ``--engine ray`` on the same machine, in
the same run, and one style for every image against a style pool.

    python benchmarks/batch_scale.py [--images 200] [--size 256] [--repeats 2] \
        [--json docs/batch_scale.json]

Each configuration is a whole ``artgen batch DATA -o OUT --recursive --method adain
--size 256`` command (start-up, and for Ray starting a local instance, included), run
``--repeats`` times, the four configurations taking turns so a drift of the machine's
speed hits all of them. Reported per configuration (medians):

- ``img/s, whole command``: images / the command's wall time;
- ``img/s, steady``: (images - 1) / (last output's mtime - first output's mtime): the rate
  once workers are up, without start-up and the first picture;
- ``ray / local``: the ratios of those rates, for one style, a pool, and with the same
  compute on both sides (``--threads 1`` against ``--workers 1``: one core each), which is
  Ray's own overhead apart from how the cores are used;
- ``peak MiB``: the largest sum of proportional set sizes (PSS: shared pages counted once
  in all) of the command's whole process tree, sampled every 0.1 s (for Ray: the driver,
  the GCS, the raylet and the workers).

The data: ``--images`` photos in two class folders, crops and flips of the two example
photos in styles/examples at 384x288 (so it runs from a fresh clone); the pool: the four
bundled styles and their crops, 16 paintings. Ray needs ``pip install 'artgen[cluster]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
ARTGEN = [sys.executable, "-m", "artgen"]


def make_data(folder: Path, n: int) -> tuple[Path, Path]:
    data, pool = folder / "data", folder / "pool"
    sources = [Image.open(ROOT / "styles" / "examples" / f) for f in ("chelsea.jpg", "coffee.jpg")]
    for k in range(n):
        src = sources[k % 2].convert("RGB")
        w, h = src.size
        f = 0.55 + 0.4 * ((k * 7) % 13) / 13
        x = int((1 - f) * w * ((k * 5) % 11) / 10)
        y = int((1 - f) * h * ((k * 3) % 7) / 6)
        crop = src.crop((x, y, x + int(f * w), y + int(f * h))).resize((384, 288))
        if k % 3 == 0:
            crop = ImageOps.mirror(crop)
        cls = data / ("cats" if k % 2 == 0 else "cups")
        cls.mkdir(parents=True, exist_ok=True)
        crop.save(cls / f"img{k:04d}.jpg", quality=92)
    pool.mkdir(parents=True)
    for name in ("facets", "mosaic", "swirls", "waves"):
        im = Image.open(ROOT / "styles" / f"{name}.jpg").convert("RGB")
        w, h = im.size
        im.save(pool / f"{name}.jpg", quality=92)
        for j, box in enumerate(
            [(0, 0, w // 2, h // 2), (w // 2, h // 2, w, h), (w // 4, 0, w, h)]
        ):
            im.crop(box).save(pool / f"{name}_{j}.jpg", quality=92)
    return data, pool


def tree_pss(root: int) -> int:
    """Bytes: the sum of PSS over ``root`` and its descendants (0 for processes gone)."""
    import psutil

    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak MiB of the process tree's PSS) of one whole command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.decode()[-3000:]}")
    return wall, peak[0] / 2**20


def steady_rate(out: Path) -> float:
    times = sorted(p.stat().st_mtime for p in out.rglob("*.png"))
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    import onnxruntime
    import ray

    load0 = round(os.getloadavg()[0], 2)  # the machine is shared: say how busy it was
    tmp = Path(tempfile.mkdtemp(prefix="artgen-batch-scale-"))
    try:
        data, pool = make_data(tmp, args.images)
        one = ["--style", str(ROOT / "styles" / "mosaic.jpg")]
        configs = {
            "local, one style": one,
            "ray, one style": [*one, "--engine", "ray"],
            "local, style pool": ["--style-pool", str(pool)],
            "ray, style pool": ["--style-pool", str(pool), "--engine", "ray"],
            # the same compute on both sides (one core): Ray's own overhead
            "local, one style, 1 thread": [*one, "--threads", "1"],
            "ray, one style, 1 worker": [*one, "--engine", "ray", "--workers", "1"],
        }
        base = [*ARTGEN, "batch", str(data), "--recursive", "--method", "adain"]
        base += ["--size", str(args.size), "-q"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in configs}
        for r in range(args.repeats):
            for name, extra in configs.items():
                out = tmp / f"out-{r}-{name.replace(', ', '-').replace(' ', '_')}"
                wall, mib = run([*base, "-o", str(out), *extra], env)
                made = len(list(out.rglob("*.png")))
                if made != args.images:
                    raise SystemExit(f"{name}: {made} outputs, not {args.images}")
                runs[name].append((args.images / wall, steady_rate(out), mib))
                print(
                    f"{name:20s} {wall:6.1f} s  {args.images / wall:6.1f} img/s whole, "
                    f"{steady_rate(out):6.1f} steady, {mib:6.0f} MiB",
                    flush=True,
                )
                shutil.rmtree(out)
        table = {
            name: {
                "img_per_s_whole_command": round(statistics.median(x[0] for x in v), 2),
                "img_per_s_steady": round(statistics.median(x[1] for x in v), 2),
                "peak_pss_mib": round(statistics.median(x[2] for x in v)),
                "runs": [[round(a, 2), round(b, 2), round(c)] for a, b, c in v],
            }
            for name, v in runs.items()
        }
        pairs = {
            "one style": ("local, one style", "ray, one style"),
            "style pool": ("local, style pool", "ray, style pool"),
            "one core each": ("local, one style, 1 thread", "ray, one style, 1 worker"),
        }
        for what, (a, b) in pairs.items():
            loc, ray_ = table[a], table[b]
            table[f"ray / local, {what}"] = {
                "whole_command": round(
                    ray_["img_per_s_whole_command"] / loc["img_per_s_whole_command"], 3
                ),
                "steady": round(ray_["img_per_s_steady"] / loc["img_per_s_steady"], 3),
            }
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "images": args.images,
            "size": args.size,
            "repeats": args.repeats,
            "machine": {
                "cores": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "ray": ray.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "engine_settings": "local: one process, onnxruntime's default threads (or "
            "--threads 1); ray: a local instance started by the command, one worker per CPU "
            "(or --workers 1), one thread each",
            "load_average_1min": {"start": load0, "end": round(os.getloadavg()[0], 2)},
            "results": table,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
