"""What limits the fast method's quality: decoders trained at one short budget, judged held out.

    python docs/adain_data.py --out DATA --heldout-out HELDOUT
    python docs/adain_ablation.py --data DATA --old-data OLD --heldout HELDOUT --runs RUNS \
        [--steps 1500] [--rows all]

Each row trains a decoder from scratch (EfficientNet-Lite0 encoder, ``artgen train
adain``) with the same steps, batch, crop, learning rate and seed, changing one thing
against the row it names, then stylises the held-out pairs of docs/adain_eval.py and
judges them there. A row whose run folder already holds a model is judged again
without training; a row stopped part-way resumes exactly (``--resume``). Writes
docs/adain_ablation.json and prints the table of docs/adain.md. ``OLD`` is the data set
of the previous shipped decoder (docs/adain_data.json's file list).

    python docs/adain_ablation.py ... --continue ROW --to 3000,6000,9000

trains the chosen row on (``artgen train adain --resume --steps N``, exact), judging the
held-out set at each N: the "curve" entry of the JSON (held-out quality against steps,
with each part's steps and wall time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

# name -> (what changes, train flags beyond the common ones)
ROWS = {
    "all-levels": (
        "the previous recipe: content loss at all three levels, lambda 10",
        {"content_levels": "all", "style_weight": 10},
    ),
    "deepest": (
        "content loss at the deepest level only (the paper)",
        {"content_levels": "deepest", "style_weight": 10},
    ),
    "all-l30": ("style weight 30", {"content_levels": "all", "style_weight": 30}),
    "all-cov": (
        "plus a channel-covariance style loss (weight 200)",
        {"content_levels": "all", "style_weight": 10, "cov_weight": 200},
    ),
    "all-old-data": (
        "on the previous data (33 photos, 74 styles, 48 generated)",
        {"content_levels": "all", "style_weight": 10, "data": "old"},
    ),
    "all-wide": (
        "decoder 1.5x as wide (1.85 M parameters)",
        {"content_levels": "all", "style_weight": 10, "width_scale": 1.5},
    ),
}


def train(run: Path, data: Path, flags: dict, args) -> float:
    """Train (or resume) one row; returns the wall seconds spent now."""
    if (run / "model" / "config.json").is_file():
        return 0.0
    cmd = [
        str(Path(sys.executable).parent / "artgen"),
        "train",
        "adain",
        "--out",
        str(run),
        "--content",
        str(data / "content"),
        "--styles",
        str(data / "styles"),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--crop",
        str(args.crop),
        "--lr",
        str(args.lr),
        "--checkpoint-every",
        "250",
        "--sample-every",
        str(args.steps),
        "--seed",
        "0",
    ]
    for k, v in flags.items():
        if k != "data":
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    if (run / "checkpoints").is_dir():
        cmd += ["--resume"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def resume_to(run: Path, steps: int) -> float:
    """Continue ``run`` exactly to ``steps`` in all; returns the wall seconds of this part."""
    cmd = [str(Path(sys.executable).parent / "artgen"), "train", "adain", "--out", str(run)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--resume", "--steps", str(steps)], check=True)
    return time.perf_counter() - t0


def judge_row(model: Path, heldout: Path, size: int) -> dict:
    import adain_eval as E

    from artgen.core.images import load_image, resize_long_side

    photos, styles = E.held_out(heldout)
    # the network's own colours and AdaIN at every level, as the decoders were trained: the
    # rows compare decoders, not the palette step or the transform
    methods = E.Methods([f"row={model}"], size, 0, None, ("network",), ("adain",))
    methods.peer = None
    judge = E.Judge()
    rows = []
    for pname, ppath in photos.items():
        photo = resize_long_side(load_image(ppath).rgb, size)
        for sname, spath in styles.items():
            style = load_image(spath).rgb
            key = "fast:row (network colours, adain transform)"
            out, _ = methods.run(key, photo, style, f"{pname}__{sname}")
            rows.append(judge.all(out, photo, style, pname, sname))
    return {j: E.summarise([r[j] for r in rows]) for j in rows[0]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--old-data", default="")
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--rows", default="all", help="comma-separated row names, or all")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--json", default=str(ROOT / "docs" / "adain_ablation.json"))
    ap.add_argument("--continue", dest="cont", default="", help="a row to train on")
    ap.add_argument("--to", default="", help="comma-separated step counts for --continue")
    args = ap.parse_args()
    if args.cont:
        return continue_row(args)
    names = list(ROWS) if args.rows == "all" else args.rows.split(",")
    out_path = Path(args.json)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {"rows": {}}
    results["budget"] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
        "eval_size": args.size,
    }
    for name in names:
        what, flags = ROWS[name]
        data = Path(args.old_data if flags.get("data") == "old" else args.data)
        run = Path(args.runs) / name
        secs = train(run, data, flags, args)
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        row = {
            "what": what,
            "flags": flags,
            "train_seconds": log[-1]["seconds"],
            "steps": log[-1]["step"],
            "final_loss_mean_last_100": statistics.fmean(r["loss"] for r in log[-100:]),
            "held_out": judge_row(run / "model", Path(args.heldout), args.size),
            "date": time.strftime("%Y-%m-%d"),
        }
        results["rows"][name] = row
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        h = row["held_out"]
        print(
            f"{name}: trained {secs:.0f} s now; "
            + " ".join(f"{j} {h[j]['mean']:.3f}±{h[j]['ci95']:.3f}" for j in h),
            flush=True,
        )
    return 0


def continue_row(args) -> int:
    out_path = Path(args.json)
    results = json.loads(out_path.read_text())
    run = Path(args.runs) / args.cont
    curve = results.setdefault("curve", {"row": args.cont, "points": []})
    for steps in [int(v) for v in args.to.split(",")]:
        done = {p["steps"] for p in curve["points"]}
        if steps in done:
            continue
        part = resume_to(run, steps)
        point = {
            "steps": steps,
            "part_wall_seconds": round(part, 1),
            "held_out": judge_row(run / "model", Path(args.heldout), args.size),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        curve["points"].append(point)
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        h = point["held_out"]
        print(f"{steps}: " + " ".join(f"{j} {h[j]['mean']:.3f}" for j in h), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
