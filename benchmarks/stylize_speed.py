"""Speed of artgen's style transfer next to a plain reference, in the same run.

    python benchmarks/stylize_speed.py [--device auto] [--sizes 256 512] [--iters N]

For each backbone and size it measures optimisation steps per second and peak
memory for
- artgen: the engine (truncated backbone, BatchNorm folded into convs for
  EfficientNet, bf16 autocast + channels_last on CUDA, fp32 Gram), one scale;
- reference: a straightforward single-scale fp32 Gatys loop written below (the
  PyTorch-tutorial way: the backbone's stages run in order up to the last loss
  layer, MSE losses on features and Gram matrices, Adam), on the same weights;
and prints the ratio. It also times a whole default run (coarse-to-fine) against
one scale at the full size with the same number of steps at that size.

Speed does not depend on the weights' values: if VGG19's weights are not on
disk, a randomly initialised VGG19 is timed (and said so). Each measurement runs
in a fresh process so that peak memory (ru_maxrss on CPU, max_memory_allocated
on CUDA) is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import torch


def _extractor(backbone: str, device: torch.device, fold_bn: bool = True):
    from artgen.interop.weights import choose_backbone, find_vgg19, load_backbone
    from artgen.models import backbones

    if backbone == "vgg19" and find_vgg19() is None:
        return backbones.vgg19().to(device), "random weights (VGG19 not on disk)"
    if backbone == "efficientnet-lite0" and not fold_bn:
        from artgen.interop.weights import efficientnet_lite0_path, read_state_dict

        sd = read_state_dict(efficientnet_lite0_path(), "")
        return backbones.efficientnet_lite0(sd, fold_bn=False).to(device), "pretrained"
    return load_backbone(choose_backbone(backbone), device), "pretrained"


def _content(size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    a = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    return Image.fromarray(a).resize((size, size))


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def run_artgen(backbone: str, size: int, iters: int, device: str, warmup: int = 3) -> dict:
    import artgen
    from artgen.core.devices import resolve_device

    dev = resolve_device(device)
    ext, note = _extractor(backbone, dev)
    stamps: list[float] = []

    def cb(p):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    artgen.stylize(
        _content(size),
        _content(size),
        extractor=ext,
        device=dev,
        size=size,
        min_size=size,
        iterations=iters + warmup,
        callback=cb,
        backbone=backbone,
    )
    its = iters / (stamps[-1] - stamps[warmup - 1])
    return {"its": its, "peak_mib": _peak(dev), "weights": note}


def run_reference(backbone: str, size: int, iters: int, device: str, warmup: int = 3) -> dict:
    """Plain Gatys: fp32, contiguous, un-fused backbone, MSE on features and Grams, Adam."""
    from artgen.core.devices import resolve_device
    from artgen.core.images import to_tensor

    dev = resolve_device(device)
    ext, note = _extractor(backbone, dev, fold_bn=False)
    spec = ext.spec
    names = list(ext.stage_names)
    last = max(names.index(n) for n in (*spec.content_layers, *spec.style_layers))
    stages = [(n, ext.stages[n]) for n in names[: last + 1]]
    mean, std = ext.mean, ext.std

    def feats(x):
        out, h = {}, (x - mean) / std
        for n, m in stages:
            h = m(h)
            out[n] = h
        return out

    def gram(f):
        _, c, h, w = f.shape
        f = f.view(c, h * w)
        return f @ f.t() / (c * h * w)

    content = to_tensor(_content(size)).to(dev)
    style = to_tensor(_content(size)).to(dev)
    with torch.no_grad():
        fc, fs = feats(content), feats(style)
        c_t = {n: fc[n] for n in spec.content_layers}
        s_t = {n: gram(fs[n]) for n in spec.style_layers}
    x = content.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)
    t0 = None
    for i in range(iters + warmup):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad()
        f = feats(x)
        loss = sum(torch.nn.functional.mse_loss(f[n], c_t[n]) for n in c_t)
        loss = loss + 1e3 * sum(torch.nn.functional.mse_loss(gram(f[n]), s_t[n]) for n in s_t)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"its": iters / (time.perf_counter() - t0), "peak_mib": _peak(dev), "weights": note}


def run_end_to_end(backbone: str, size: int, iters: int, device: str, multiscale: bool) -> dict:
    import artgen
    from artgen.core.devices import resolve_device

    dev = resolve_device(device)
    ext, note = _extractor(backbone, dev)
    t0 = time.perf_counter()
    artgen.stylize(
        _content(size),
        _content(size),
        extractor=ext,
        device=dev,
        size=size,
        min_size=128 if multiscale else size,
        iterations=iters,
        backbone=backbone,
    )
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "peak_mib": _peak(dev), "weights": note}


def _in_fresh_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _median(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda d: d["its"])
    return {**runs[len(runs) // 2], "all_its": [round(d["its"], 3) for d in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--backbones", nargs="+", default=["efficientnet-lite0", "vgg19"])
    ap.add_argument(
        "--iters", type=int, default=None, help="timed steps (default: 10 on CPU, 50 on GPU)"
    )
    ap.add_argument(
        "--end-to-end-iters",
        type=int,
        default=None,
        help="steps per scale for the whole-run timing",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating artgen/reference rounds (median kept)"
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from artgen.core.devices import resolve_device

    dev = resolve_device(args.device)
    iters = args.iters or (50 if dev.type == "cuda" else 10)
    e2e_iters = args.end_to_end_iters or (200 if dev.type == "cuda" else 20)
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}; torch {torch.__version__}; {iters} timed steps after 3 warm-up steps; "
        f"median of {args.rounds} alternating rounds\n"
    )
    rows = []
    print(
        f"{'backbone':20s} {'size':>5s} {'artgen it/s':>12s} {'ref it/s':>9s} {'ratio':>6s} "
        f"{'artgen MiB':>11s} {'ref MiB':>8s}  weights"
    )
    for bb in args.backbones:
        for size in args.sizes:
            # Alternate the two, each in a fresh process, and keep the medians: these
            # machines are noisy (about +-15% between identical runs on 2 CPU cores).
            runs_a, runs_r = [], []
            for _ in range(args.rounds):
                runs_a.append(_in_fresh_process(run_artgen, bb, size, iters, args.device))
                runs_r.append(_in_fresh_process(run_reference, bb, size, iters, args.device))
            a, r = _median(runs_a), _median(runs_r)
            rows.append({"backbone": bb, "size": size, "artgen": a, "reference": r})
            print(
                f"{bb:20s} {size:5d} {a['its']:12.2f} {r['its']:9.2f} {a['its'] / r['its']:6.2f} "
                f"{a['peak_mib']:11.0f} {r['peak_mib']:8.0f}  {a['weights']}",
                flush=True,
            )
    size = max(args.sizes)
    print(f"\nwhole run at {size} px, {e2e_iters} steps per scale (efficientnet-lite0):")
    ms = _in_fresh_process(run_end_to_end, "efficientnet-lite0", size, e2e_iters, args.device, True)
    ss = _in_fresh_process(
        run_end_to_end, "efficientnet-lite0", size, e2e_iters, args.device, False
    )
    print(
        f"  coarse-to-fine 128..{size}: {ms['seconds']:.1f} s; one scale at {size}: {ss['seconds']:.1f} s "
        f"(ratio {ms['seconds'] / ss['seconds']:.2f}: the extra coarse scales cost this much more)"
    )
    rows.append({"end_to_end": {"multiscale": ms, "single": ss, "size": size, "iters": e2e_iters}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
