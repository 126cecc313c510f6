"""Speed of artgen's diffusion fine-tuning step next to a plain reference, in the same run.

    python benchmarks/finetune_speed.py [--device auto] [--sizes 32 64] [--steps N]

For each size and method (full, LoRA) it measures optimizer steps per second and
peak memory for
- artgen: ``finetune_diffusion`` (accelerate, EMA, bf16 autocast on CUDA, LoRA
  adapters through peft), timed from its progress callback;
- reference: a plain fp32 loop written below, the shape of diffusers'
  train_unconditional.py (AdamW over the trainable parameters, DDPM noise, MSE),
  on the same UNet; for LoRA the same adapters are injected with peft;
and prints the ratio.

The UNet is google/ddpm-cifar10-32's architecture (35.7 M parameters) at 32 and
64 px and google/ddpm-ema-church-256's (113 M) at larger sizes,
with random weights: speed does not depend on the weights' values, and hub
downloads are impossible on the project's machines. Each measurement runs in a
fresh process so that its peak memory (ru_maxrss on CPU, max_memory_allocated
on CUDA) is its own. Batch size 8 at 32 and 64 px, 4 above.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import torch


def _unet_config(size: int) -> dict:
    if size <= 64:  # google/ddpm-cifar10-32's architecture
        return dict(
            sample_size=size,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    # google/ddpm-ema-church-256's six levels, attention at 1/16 of the size
    return dict(
        sample_size=size,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )


def _base(size: int, folder: Path) -> Path:
    import diffusers
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    diffusers.utils.logging.disable_progress_bar()

    torch.manual_seed(0)
    DDPMPipeline(unet=UNet2DModel(**_unet_config(size)), scheduler=DDPMScheduler()).save_pretrained(
        folder
    )
    return folder


def _images(folder: Path, size: int, n: int = 16) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(
            folder / f"{i:03d}.png"
        )
    return folder


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch(size: int) -> int:
    return 8 if size <= 64 else 4


def run_artgen(size: int, method: str, steps: int, device: str, warmup: int = 3) -> dict:
    from artgen.core.devices import resolve_device
    from artgen.train.diffusion import DiffusionFinetuneOptions, finetune_diffusion

    dev = torch.device(resolve_device(device))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, images = _base(size, tmp / "base"), _images(tmp / "images", size)
        times: list[float] = []
        opts = DiffusionFinetuneOptions(
            base=str(base),
            images=str(images),
            out=str(tmp / "run"),
            method=method,
            steps=steps + warmup,
            batch_size=_batch(size),
            sample_every=10**9,
            checkpoint_every=10**9,
            num_samples=1,
            sample_steps=1,
            device=str(dev),
        )

        def cb(p):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        finetune_diffusion(opts, callback=cb)
    return {"its": steps / (times[-1] - times[warmup - 1]), "peak_mib": _peak(dev)}


def run_reference(size: int, method: str, steps: int, device: str, warmup: int = 3) -> dict:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel

    from artgen.core.devices import resolve_device
    from artgen.train.diffusion import DiffusionFinetuneOptions, lora_config

    dev = torch.device(resolve_device(device))
    torch.manual_seed(0)
    unet = UNet2DModel(**_unet_config(size)).to(dev)
    if method == "lora":
        from peft import inject_adapter_in_model

        unet.requires_grad_(False)
        inject_adapter_in_model(lora_config(DiffusionFinetuneOptions()), unet)
        for n, p in unet.named_parameters():
            p.requires_grad_("lora_" in n)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler()
    b = _batch(size)
    x0 = torch.rand(b, 3, size, size, device=dev) * 2 - 1
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = None
    for i in range(steps + warmup):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,), device=dev)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"its": steps / (time.perf_counter() - t0), "peak_mib": _peak(dev)}


def _in_fresh_process(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="default: 32 64 on CPU, 32 64 256 512 on GPU",
    )
    ap.add_argument("--methods", nargs="+", default=["full", "lora"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps (5 CPU, 50 GPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from artgen.core.devices import resolve_device

    dev = torch.device(resolve_device(args.device))
    gpu = dev.type == "cuda"
    sizes = args.sizes or ([32, 64, 256, 512] if gpu else [32, 64])
    steps = args.steps or (50 if gpu else 5)
    name = torch.cuda.get_device_name(dev) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}; {steps} timed steps after 3 warm-up; "
        f"median of {args.rounds} alternating rounds\n"
    )
    print(
        f"{'size':>5s} {'batch':>5s} {'method':>6s} {'artgen it/s':>12s} {'ref it/s':>9s} "
        f"{'ratio':>6s} {'artgen MiB':>11s} {'ref MiB':>8s}"
    )
    rows = []
    for size in sizes:
        for method in args.methods:
            a_runs, r_runs = [], []
            for _ in range(args.rounds):
                a_runs.append(_in_fresh_process(run_artgen, size, method, steps, args.device))
                r_runs.append(_in_fresh_process(run_reference, size, method, steps, args.device))
            a = sorted(a_runs, key=lambda d: d["its"])[len(a_runs) // 2]
            r = sorted(r_runs, key=lambda d: d["its"])[len(r_runs) // 2]
            rows.append({"size": size, "method": method, "artgen": a, "reference": r})
            print(
                f"{size:5d} {_batch(size):5d} {method:>6s} {a['its']:12.2f} {r['its']:9.2f} "
                f"{a['its'] / r['its']:6.2f} {a['peak_mib']:11.0f} {r['peak_mib']:8.0f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
