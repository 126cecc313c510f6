"""GPU check: the first script to run on a machine with a GPU (under 8 minutes on one H100/H200).

    python benchmarks/gpu_check.py [--out out/gpu_check] [--device auto] [--dry-run]
                                   [--sections gatys fast ...] [--budget 420]

It writes ``gpu_check.json`` and ``gpu_check.md`` (a table) into ``--out`` and measures, in
one run, with random weights (speed does not depend on the weights' values; nothing is
downloaded):

- ``gatys``: artgen's Gatys engine (``artgen.stylize``) with torchvision's VGG19
  (``vgg19(weights=None)``, handed in as ``artgen.models.backbones.vgg19(state_dict)``) at
  512 and 1024 px: optimisation steps per second with ``precision="bf16"`` (bf16 autocast +
  channels_last on CUDA) and ``precision="fp32"``, and a plain fp32 reference loop (the
  PyTorch-tutorial way, as benchmarks/stylize_speed.py), alternating, median of 3 rounds;
  also the bf16 rate without a progress callback (artgen reads the loss back every step
  when it has one);
- ``fast``: the fast method (AdaIN, ``stylize_many`` with the shipped decoder) at 1024 px,
  batch 1 and 8: pictures per second, end to end from PIL to PIL;
- ``diffusion_lora``: one LoRA training step of the Stable Diffusion 1.5 UNet at 512 px
  (latent 64) and of the SDXL base UNet at 1024 px (latent 128, with ``text_embeds`` and
  ``time_ids``), built from their published configs (below): bf16 weights, peft adapters on
  to_q/to_k/to_v/to_out.0 (artgen's ``lora_config`` with ``lora_targets="attention"``) kept
  in fp32 with AdamW, bf16 autocast, gradient checkpointing (SD 1.5 also without), batch 1,
  cached latents and text embeddings (random tensors of the right shapes): steps per second,
  peak allocated and reserved memory;
- ``stylegan2``: artgen's StyleGAN2 at 256 px (the paper256 widths: channel_base 16384,
  8 mapping layers, z = w = 512), trained through ``artgen.train_gan`` (its real step:
  logistic loss, lazy R1 every 16 steps, DiffAugment, EMA), timed from its progress
  callback: kimg per second; also the bare StyleGAN2Loss phases in fp32 and, as a what-if
  artgen does not offer, under bf16 autocast;
- ``accelerate``: ``accelerate launch --multi_gpu --num_processes 2 -m artgen train gan``
  when the machine has two GPUs (else "skipped: 1 GPU").

Targets (pass/fail in the JSON and the table): Gatys VGG19 at 512 px >= 400 it/s in bf16,
and >= 1.5x the fp32 reference in the same run (judged on the rate with a progress callback,
which is how the CLI runs); the SDXL LoRA step at 1024 px fits in 24 GiB (peak reserved
memory, what the card must hold) with gradient checkpointing and cached latents.

Each section runs under its own time cap (a deadline its loops respect, and a hard alarm
a little later); an exception in one is recorded as its error and the others still run.
``--dry-run`` runs every section on the CPU at tiny sizes (tiny UNets of the same block
types, a 16 px StyleGAN2, two CPU processes through torchrun for the accelerate section) in
about a minute on 2 CPU cores, most of it importing libraries and starting processes;
tests/test_gpu_check.py runs it. ``--budget`` bounds the whole run: a section that would
start past it is skipped, and each gets at most what is left.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "styles" / "examples" / "chelsea.jpg"
STYLE = ROOT / "styles" / "mosaic.jpg"
FORMAT = "artgen-gpu-check"
VERSION = 1
GIB = 2**30

# Seconds per section on a GPU (the whole run: about 7 minutes at most, start-up included).
CAPS = {
    "environment": 20,
    "gatys": 110,
    "fast": 40,
    "diffusion_lora": 150,
    "stylegan2": 70,
    "accelerate": 60,
}
DRY_CAPS = {name: 60 for name in CAPS}
HARD_GRACE = 20  # the alarm fires this long after a section's cap (its loops stop at the cap)
SECTIONS = tuple(CAPS)

TARGET_GATYS_ITS = 400.0
TARGET_GATYS_RATIO = 1.5
TARGET_SDXL_GIB = 24.0

# -- published UNet configs (unet/config.json of the hub repos), random weights ----------------

# runwayml/stable-diffusion-v1-5, unet/config.json (859,520,964 parameters).
SD15_UNET = json.loads("""{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                       "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                     "CrossAttnUpBlock2D"]
}""")

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (2,567,463,684 parameters).
SDXL_UNET = json.loads("""{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256,
  "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280],
  "center_input_sample": false,
  "class_embed_type": null,
  "class_embeddings_concat": false,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "cross_attention_dim": 2048,
  "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "encoder_hid_dim": null,
  "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_only_cross_attention": null,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_attention_heads": null,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": 2816,
  "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default",
  "sample_size": 128,
  "time_cond_proj_dim": null,
  "time_embedding_act_fn": null,
  "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "timestep_post_act": null,
  "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": null,
  "use_linear_projection": true
}""")
PUBLISHED_PARAMETERS = {"sd15": 859_520_964, "sdxl": 2_567_463_684}
SDXL_POOLED_DIM = 1280  # text_encoder_2's pooled projection: 2816 = 1280 + 6 * 256


def tiny_unet_config(kind: str) -> dict:
    """The same block types at toy widths (for --dry-run)."""
    cfg = dict(SD15_UNET if kind == "sd15" else SDXL_UNET)
    width = [32, 64] if kind == "sd15" else [32, 64, 64]
    cfg.update(
        block_out_channels=width,
        norm_num_groups=8,
        layers_per_block=1,
        cross_attention_dim=32,
        sample_size=8,
    )
    if kind == "sd15":
        cfg.update(
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            attention_head_dim=4,
        )
    else:
        cfg.update(
            attention_head_dim=[2, 4, 4],
            transformer_layers_per_block=[1, 1, 2],
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
            addition_embed_type_num_heads=4,
        )
    return cfg


# -- helpers ---------------------------------------------------------------------------------


class SectionTimeout(Exception):
    """A section ran past its hard cap."""


class Deadline:
    """A section's time cap: its loops ask ``over()`` and stop, keeping what they measured."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.perf_counter() + seconds
        self.hit = False

    def left(self) -> float:
        return self.end - time.perf_counter()

    def over(self, reserve: float = 0.0) -> bool:
        if self.left() <= reserve:
            self.hit = True
        return self.hit


@contextlib.contextmanager
def hard_cap(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds``, raising SectionTimeout (main thread on POSIX only)."""
    usable = hasattr(signal, "setitimer") and _main_thread()
    if not usable:
        yield
        return

    def fire(_signum, _frame):
        raise SectionTimeout(f"ran past its hard cap of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak(dev: torch.device) -> dict[str, float]:
    """Peak memory since the last reset_peak (CUDA), or of the process so far (CPU)."""
    if dev.type == "cuda":
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(dev) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(dev) / GIB,
        }
    import resource

    return {"process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def free(dev: torch.device) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def row(what: str, value: float, unit: str, **extra: Any) -> dict:
    return {"what": what, "value": value, "unit": unit, **extra}


def _images(size: int):
    from PIL import Image

    content = Image.open(CONTENT).convert("RGB")
    s = size / max(content.size)
    content = content.resize(
        (max(1, round(content.width * s)), max(1, round(content.height * s))),
        Image.Resampling.LANCZOS,
    )
    return content, Image.open(STYLE).convert("RGB")


def _square(size: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


# -- environment -------------------------------------------------------------------------------


def environment(dev: torch.device, dry: bool, deadline: Deadline) -> dict:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "gpus": torch.cuda.device_count(),
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(
            device_name=torch.cuda.get_device_name(dev),
            capability=[p.major, p.minor],
            memory_gib=p.total_memory / GIB,
            bf16=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    else:
        info["device_name"] = f"cpu ({platform.processor() or platform.machine()})"
    for mod in ("diffusers", "peft", "accelerate", "torchvision"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            info[mod] = f"unavailable: {e}"
    if dev.type == "cuda":
        rows = [
            row("GPUs visible", info["gpus"], "count"),
            row("device memory", info["memory_gib"], "GiB"),
        ]
    else:
        rows = [row("CPU threads", info["cpu_threads"], "count")]
    return {"info": info, "rows": rows}


# -- Gatys -------------------------------------------------------------------------------------


def _vgg19(dev: torch.device, dry: bool = False):
    """torchvision's VGG19 with random weights, as artgen's feature extractor. The dry run
    builds only its conv trunk (``make_layers``, the same modules and keys): the classifier's
    120 M parameters take seconds to initialise on a CPU and artgen drops them anyway."""
    import torchvision

    from artgen.models import backbones

    torch.manual_seed(0)
    if dry:
        trunk = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
        sd = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    else:
        tv = torchvision.models.vgg19(weights=None)
        sd = {k: v for k, v in tv.state_dict().items() if k.startswith("features.")}
        del tv
    return backbones.vgg19(sd).to(dev)


def gatys_artgen(
    ext,
    size: int,
    iters: int,
    precision: str,
    dev: torch.device,
    warmup: int = 5,
    callback: bool = True,
) -> float:
    """Steps per second of artgen.stylize at one scale."""
    import artgen

    content, style = _square(size, 1), _square(size, 2)
    kw = dict(
        extractor=ext, device=dev, size=size, min_size=size, backbone="vgg19", precision=precision
    )
    if callback:
        stamps: list[float] = []

        def cb(_p):
            sync(dev)
            stamps.append(time.perf_counter())

        artgen.stylize(content, style, iterations=iters + warmup, callback=cb, **kw)
        return iters / (stamps[-1] - stamps[warmup - 1])

    # Without a callback: the difference of two whole runs, so set-up cancels out.
    def whole(n: int) -> float:
        sync(dev)
        t0 = time.perf_counter()
        artgen.stylize(content, style, iterations=n, **kw)
        sync(dev)
        return time.perf_counter() - t0

    short, long = whole(warmup), whole(warmup + iters)
    return iters / max(long - short, 1e-9)


def gatys_reference(ext, size: int, iters: int, dev: torch.device, warmup: int = 5) -> float:
    """Plain Gatys (fp32, contiguous, every stage up to the last loss layer, MSE on features
    and Gram matrices, Adam): the loop of benchmarks/stylize_speed.py, on the same weights."""
    from artgen.core.images import to_tensor

    spec = ext.spec
    names = list(ext.stage_names)
    last = max(names.index(n) for n in (*spec.content_layers, *spec.style_layers))
    stages = [(n, ext.stages[n]) for n in names[: last + 1]]
    ext = ext.to(memory_format=torch.contiguous_format)
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

    content = to_tensor(_square(size, 1)).to(dev)
    style = to_tensor(_square(size, 2)).to(dev)
    with torch.no_grad():
        fc, fs = feats(content), feats(style)
        c_t = {n: fc[n] for n in spec.content_layers}
        s_t = {n: gram(fs[n]) for n in spec.style_layers}
    x = content.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)
    mse = torch.nn.functional.mse_loss
    t0 = 0.0
    for i in range(iters + warmup):
        if i == warmup:
            sync(dev)
            t0 = time.perf_counter()
        opt.zero_grad()
        f = feats(x)
        loss = sum(mse(f[n], c_t[n]) for n in c_t)
        loss = loss + 1e3 * sum(mse(gram(f[n]), s_t[n]) for n in s_t)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    sync(dev)
    return iters / (time.perf_counter() - t0)


def gatys(dev: torch.device, dry: bool, deadline: Deadline) -> dict:
    # (bf16 on a CPU without native bf16 is slow: the dry run keeps to 16 and 24 px.)
    sizes = [16, 24] if dry else [512, 1024]
    iters = {16: 1, 24: 1, 512: 200, 1024: 60}
    warmup = 1 if dry else 5
    rounds = 1 if dry else 3
    ext = _vgg19(dev, dry)
    rows, notes, raw = [], [], {}
    for size in sizes:
        n = iters[size]
        runs: dict[str, list[float]] = {"bf16": [], "fp32": [], "reference": []}
        for _ in range(rounds):
            if deadline.over(reserve=10):
                notes.append(f"{size} px: rounds cut short by the section's time cap")
                break
            runs["bf16"].append(gatys_artgen(ext, size, n, "bf16", dev, warmup))
            runs["reference"].append(gatys_reference(ext, size, n, dev, warmup))
            runs["fp32"].append(gatys_artgen(ext, size, n, "fp32", dev, warmup))
        if not runs["bf16"]:
            continue
        med = {k: statistics.median(v) for k, v in runs.items() if v}
        raw[size] = runs
        rows.append(
            row(f"artgen bf16 + channels_last, {size} px", med["bf16"], "it/s", all=runs["bf16"])
        )
        if "fp32" in med:
            rows.append(row(f"artgen fp32, {size} px", med["fp32"], "it/s", all=runs["fp32"]))
        if "reference" in med:
            rows.append(
                row(
                    f"fp32 reference loop, {size} px",
                    med["reference"],
                    "it/s",
                    all=runs["reference"],
                )
            )
            rows.append(row(f"bf16 / reference, {size} px", med["bf16"] / med["reference"], "x"))
        if not deadline.over(reserve=10):
            its = gatys_artgen(ext, size, n, "bf16", dev, warmup, callback=False)
            rows.append(row(f"artgen bf16, no progress callback, {size} px", its, "it/s"))
    if dev.type == "cuda":
        notes.append(
            "artgen's Gatys has bf16 (precision=bf16/auto) and channels_last on CUDA; "
            "channels_last is not separable from it: precision=fp32 also runs "
            "channels_last on CUDA"
        )
    notes.append(
        "with a progress callback artgen reads the loss back (float) every step, "
        "a host-device sync per step; the no-callback row shows its cost"
    )
    return {"rows": rows, "notes": notes, "weights": "torchvision vgg19(weights=None)"}


# -- fast method -------------------------------------------------------------------------------


def fast(dev: torch.device, dry: bool, deadline: Deadline) -> dict:
    import artgen
    from artgen.style import get_method

    size = 64 if dry else 1024
    batches = [1, 2] if dry else [1, 8]
    reps = 2 if dry else 20
    method = get_method("adain")
    options = artgen.AdaINOptions(size=size)
    model = method.load(options, dev)
    content, style = _images(size)
    rows, notes = [], []
    for batch in batches:
        if deadline.over(reserve=5):
            notes.append(f"batch {batch}: skipped by the section's time cap")
            continue
        method.stylize_many([content] * batch, style, options, model=model, device=dev)  # warm-up
        reset_peak(dev)
        done, t0 = 0, time.perf_counter()
        for _ in range(reps):
            method.stylize_many([content] * batch, style, options, model=model, device=dev)
            done += batch
            if deadline.over(reserve=5):
                notes.append(f"batch {batch}: {done // batch} of {reps} calls (time cap)")
                break
        sync(dev)
        ips = done / (time.perf_counter() - t0)
        rows.append(row(f"AdaIN {size} px, batch {batch}", ips, "images/s", **peak(dev)))
    return {"rows": rows, "notes": notes, "precision": "auto (bf16 + channels_last on CUDA)"}


# -- diffusion LoRA step -------------------------------------------------------------------------


def count_parameters(cfg: dict) -> int:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    return sum(p.numel() for p in unet.parameters())


def build_unet(cfg: dict, dev: torch.device, dtype: torch.dtype):
    """The UNet with random weights, created directly in ``dtype`` on ``dev`` (no fp32 copy)."""
    from diffusers import UNet2DConditionModel

    old = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(dev):
            unet = UNet2DConditionModel.from_config(cfg)
    finally:
        torch.set_default_dtype(old)
    return unet


def add_lora(unet: torch.nn.Module, rank: int = 8) -> list[torch.nn.Parameter]:
    """artgen's LoRA config on the attention projections; the adapters train in fp32."""
    from peft import inject_adapter_in_model

    from artgen.train.diffusion import DiffusionFinetuneOptions, lora_config

    unet.requires_grad_(False)
    cfg = lora_config(DiffusionFinetuneOptions(lora_targets="attention", lora_rank=rank))
    inject_adapter_in_model(cfg, unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def unet_inputs(
    cfg: dict, latent: int, batch: int, dev: torch.device, dtype: torch.dtype, pooled_dim: int
) -> tuple[tuple, dict]:
    """Cached latents and text-encoder outputs as random tensors of the right shapes."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(shape, generator=g).to(dev, dtype)

    latents = rnd(batch, cfg["in_channels"], latent, latent)
    hidden = rnd(batch, 77, cfg["cross_attention_dim"])
    kw: dict[str, Any] = {}
    if cfg.get("addition_embed_type") == "text_time":
        px = latent * 8
        time_ids = torch.tensor([[px, px, 0, 0, px, px]] * batch, dtype=dtype, device=dev)
        kw["added_cond_kwargs"] = {"text_embeds": rnd(batch, pooled_dim), "time_ids": time_ids}
    return (latents, hidden), kw


def lora_step_benchmark(
    cfg: dict,
    latent: int,
    *,
    dev: torch.device,
    dtype: torch.dtype,
    batch: int = 1,
    steps: int = 10,
    warmup: int = 2,
    checkpointing: bool = True,
    pooled_dim: int = SDXL_POOLED_DIM,
    deadline: Deadline | None = None,
) -> dict:
    """Build, add LoRA, run ``warmup`` + up to ``steps`` training steps; seconds and memory."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    t_build = time.perf_counter()
    unet = build_unet(cfg, dev, dtype)
    params = add_lora(unet)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    build_s = time.perf_counter() - t_build
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    (latents, hidden), kw = unet_inputs(cfg, latent, batch, dev, dtype, pooled_dim)
    g = torch.Generator().manual_seed(1)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    losses: list[float] = []

    def step() -> None:
        noise = torch.randn(latents.shape, generator=g).to(latents)
        t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
        noisy = sched.add_noise(latents, noise, t)
        with amp:
            pred = unet(noisy, t, hidden, **kw).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    reset_peak(dev)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(dev)
    first_s = (time.perf_counter() - t0) / max(warmup, 1)
    done, t1 = 0, time.perf_counter()
    while done < steps and not (deadline is not None and deadline.over(reserve=first_s + 2)):
        step()
        done += 1
    sync(dev)
    dt = time.perf_counter() - t1
    out = {
        "parameters": sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n),
        "lora_parameters": sum(p.numel() for p in params),
        "build_s": build_s,
        "warmup_step_s": first_s,
        "timed_steps": done,
        "its": done / dt if done else 1 / first_s,
        "loss": losses[-1],
        "finite": all(math.isfinite(v) for v in losses),
        **peak(dev),
    }
    return out  # the caller frees the memory (free()) once this frame is gone


def diffusion_lora(dev: torch.device, dry: bool, deadline: Deadline) -> dict:
    rows, notes, runs = [], [], {}
    counts = {k: count_parameters(c) for k, c in (("sd15", SD15_UNET), ("sdxl", SDXL_UNET))}
    for k, n in counts.items():
        rows.append(
            row(
                f"{k} UNet parameters (published config, meta build)",
                n,
                "params",
                published=PUBLISHED_PARAMETERS[k],
            )
        )
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dry:
        plan = [
            ("sd15", tiny_unet_config("sd15"), 8, True, 16),
            ("sdxl", tiny_unet_config("sdxl"), 8, True, 16),
        ]
    else:
        plan = [
            ("sd15", SD15_UNET, 64, True, SDXL_POOLED_DIM),
            ("sd15", SD15_UNET, 64, False, SDXL_POOLED_DIM),
            ("sdxl", SDXL_UNET, 128, True, SDXL_POOLED_DIM),
        ]
    for kind, cfg, latent, ckpt, pooled in plan:
        label = f"{kind} LoRA step, latent {latent} ({latent * 8} px), batch 1, " + (
            "gradient checkpointing" if ckpt else "no checkpointing"
        )
        if deadline.over(reserve=15 if not dry else 1):
            notes.append(f"{label}: skipped by the section's time cap")
            continue
        try:
            r = lora_step_benchmark(
                cfg,
                latent,
                dev=dev,
                dtype=dtype,
                checkpointing=ckpt,
                steps=2 if dry else 10,
                warmup=1 if dry else 2,
                pooled_dim=pooled,
                deadline=deadline,
            )
        except torch.OutOfMemoryError as e:
            notes.append(f"{label}: out of memory ({str(e).splitlines()[0][:160]})")
            continue
        finally:
            free(dev)
        runs[f"{kind}_{latent}_{'gc' if ckpt else 'nogc'}"] = r
        mem = {k: v for k, v in r.items() if k.startswith(("peak", "process"))}
        rows.append(
            row(
                label,
                r["its"],
                "it/s",
                build_s=r["build_s"],
                **mem,
                lora_parameters=r["lora_parameters"],
                timed_steps=r["timed_steps"],
            )
        )
    notes.append(
        f"weights {str(dtype).removeprefix('torch.')}, LoRA rank 8 on "
        "to_q/to_k/to_v/to_out.0 in fp32, AdamW, bf16 autocast on CUDA"
    )
    notes.append(
        "artgen's own finetune_diffusion keeps the UNet's weights in fp32 (autocast "
        "only) and passes no added_cond_kwargs, so it cannot train an SDXL UNet yet; "
        "this section measures the step artgen would need"
    )
    return {"rows": rows, "notes": notes, "runs": runs}


# -- StyleGAN2 ---------------------------------------------------------------------------------


def _png_folder(folder: Path, size: int, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _square(size, i).save(folder / f"{i:03d}.png")
    return folder


def gan_settings(dry: bool) -> dict:
    if dry:
        return dict(
            resolution=16,
            z_dim=32,
            w_dim=32,
            mapping_layers=2,
            channel_base=256,
            channel_max=32,
            batch_size=4,
        )
    # paper256 (stylegan2-ada-pytorch train.py): fmaps 0.5 -> channel_base 16384, map 8.
    return dict(
        resolution=256,
        z_dim=512,
        w_dim=512,
        mapping_layers=8,
        channel_base=16384,
        channel_max=512,
        batch_size=8,
    )


def gan_trainer_benchmark(dev: torch.device, dry: bool, steps: int, warmup: int, tmp: Path) -> dict:
    """artgen.train_gan (its real step), timed from the progress callback."""
    from artgen.train.gan import GanTrainOptions, train_gan

    s = gan_settings(dry)
    images = _png_folder(tmp / "images", s["resolution"], 16)
    stamps: list[float] = []

    def cb(_p):
        sync(dev)
        stamps.append(time.perf_counter())

    opts = GanTrainOptions(
        images=str(images),
        out=str(tmp / "run"),
        steps=warmup + steps,
        sample_every=10**9,
        checkpoint_every=10**9,
        device=str(dev),
        **s,
    )
    reset_peak(dev)
    train_gan(opts, callback=cb)
    # The last step's stamp includes the final checkpoint: leave it out.
    timed = len(stamps) - 1 - warmup
    dt = stamps[-2] - stamps[warmup - 1]
    return {
        "kimg_s": s["batch_size"] * timed / dt / 1000,
        "its": timed / dt,
        "timed_steps": timed,
        "batch": s["batch_size"],
        **peak(dev),
    }


def gan_loss_benchmark(
    dev: torch.device, dry: bool, steps: int, bf16: bool, deadline: Deadline
) -> dict:
    """The StyleGAN2Loss phases with Adam, out of the trainer (bf16: a what-if)."""
    from artgen.core.augment import diff_augment
    from artgen.models.stylegan2 import Discriminator, Generator, StyleGAN2Config
    from artgen.train.gan_loss import StyleGAN2Loss

    s = gan_settings(dry)
    batch = s.pop("batch_size")
    cfg = StyleGAN2Config(**s)
    torch.manual_seed(0)
    G, D = Generator(cfg).to(dev).train(), Discriminator(cfg).to(dev).train()
    g = torch.Generator(device=dev).manual_seed(0)
    loss = StyleGAN2Loss(
        G,
        D,
        generator=g,
        augment=lambda x: diff_augment(x, "color,translation", generator=g),
        cond=lambda n: None,
        r1_gamma=2e-4 * cfg.resolution**2 / batch,
        r1_every=16,
    )
    # The trainer's settings: lr and betas scaled by c = interval / (interval + 1).
    c_g, c_d = 4 / 5, 16 / 17
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0025 * c_g, betas=(0.0, 0.99**c_g), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=0.0025 * c_d, betas=(0.0, 0.99**c_d), eps=1e-8)
    real = torch.rand(batch, 3, cfg.resolution, cfg.resolution, generator=g, device=dev) * 2 - 1
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def update(opt, value):
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    def step(i: int) -> None:
        with amp:
            ld = loss.d_main(real)
        update(opt_d, ld)
        with amp:
            r1 = loss.d_reg(real, i)
        if r1 is not None:
            update(opt_d, r1)
        with amp:
            lg = loss.g_main(batch)
        update(opt_g, lg)
        float((ld + lg).detach())  # the trainer reads both losses back every step

    reset_peak(dev)
    step(1)  # warm-up (no R1: 1 % 16)
    sync(dev)
    t0, done = time.perf_counter(), 0
    for i in range(steps):
        step(i)  # i = 0 runs R1, as the trainer's first step does
        done += 1
        if deadline.over(reserve=3):
            break
    sync(dev)
    dt = time.perf_counter() - t0
    return {
        "kimg_s": batch * done / dt / 1000,
        "its": done / dt,
        "timed_steps": done,
        "batch": batch,
        **peak(dev),
    }


def stylegan2(dev: torch.device, dry: bool, deadline: Deadline) -> dict:
    rows, notes, runs = [], [], {}
    res = gan_settings(dry)["resolution"]
    with tempfile.TemporaryDirectory(prefix="gpu_check_gan_") as tmp:
        r = gan_trainer_benchmark(
            dev, dry, steps=3 if dry else 17, warmup=1 if dry else 3, tmp=Path(tmp)
        )
    runs["train_gan"] = r
    mem = {k: v for k, v in r.items() if k.startswith(("peak", "process"))}
    rows.append(
        row(
            f"artgen train_gan, {res} px, batch {r['batch']} (fp32)",
            r["kimg_s"],
            "kimg/s",
            its=r["its"],
            **mem,
        )
    )
    for bf16 in (False, True):
        name = "bf16 autocast (what-if)" if bf16 else "fp32"
        if deadline.over(reserve=10 if not dry else 1):
            notes.append(f"StyleGAN2Loss {name}: skipped by the section's time cap")
            continue
        try:
            r = gan_loss_benchmark(dev, dry, steps=3 if dry else 16, bf16=bf16, deadline=deadline)
        except Exception as e:  # noqa: BLE001 - the what-if may fail; recorded
            notes.append(f"StyleGAN2Loss {name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        runs[f"loss_{'bf16' if bf16 else 'fp32'}"] = r
        mem = {k: v for k, v in r.items() if k.startswith(("peak", "process"))}
        rows.append(
            row(
                f"StyleGAN2Loss phases, {res} px, batch {r['batch']}, {name}",
                r["kimg_s"],
                "kimg/s",
                its=r["its"],
                **mem,
            )
        )
    notes.append(
        "artgen's StyleGAN2 is fp32 only (no fp16/bf16 blocks, no custom CUDA ops; "
        "the official code runs its 4 highest resolutions in fp16); the trainer has "
        "no precision setting, so the bf16 row is not something artgen can run yet"
    )
    return {"rows": rows, "notes": notes, "runs": runs}


# -- accelerate, two processes ----------------------------------------------------------------


def accelerate_two(dev: torch.device, dry: bool, deadline: Deadline) -> dict:
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    if not dry and gpus < 2:
        return {"skipped": f"skipped: {gpus} GPU" if gpus else "skipped: no GPU", "rows": []}
    s = gan_settings(dry)
    steps = 4 if dry else 20
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        tmp = Path(tmp)
        images = _png_folder(tmp / "images", s["resolution"], 16)
        run = tmp / "run"
        args = [
            "-m",
            "artgen",
            "train",
            "gan",
            "--images",
            str(images),
            "--out",
            str(run),
            "--steps",
            str(steps),
            "--checkpoint-every",
            str(10**9),
            "--sample-every",
            str(10**9),
            "--device",
            "cpu" if dry else "cuda",
            "-q",
        ]
        args += [f"--{k.replace('_', '-')}={v}" for k, v in s.items()]
        bindir = Path(sys.executable).parent
        if dry:  # accelerate launch --cpu runs one process; torchrun is what it wraps
            # --standalone: a free port, not the fixed 29500 that another run may hold
            launcher = [str(bindir / "torchrun"), "--standalone", "--nproc_per_node", "2"]
            how = "torchrun --standalone --nproc_per_node 2 (2 CPU processes, gloo)"
        else:
            launcher = [
                str(bindir / "accelerate"),
                "launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
            ]
            how = "accelerate launch --multi_gpu --num_processes 2"
        cmd = [*launcher, *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        code, _, err = run_group(cmd, env, timeout=max(5.0, deadline.left()))
        wall = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"{how} failed (exit {code}): {err.strip()[-600:]}")
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        config = json.loads((run / "config.json").read_text())
    first = 1 if len(log) > 2 else 0
    dt = log[-1]["seconds"] - log[first]["seconds"]
    global_batch = s["batch_size"] * config["num_processes"]
    kimg = global_batch * (len(log) - 1 - first) / max(dt, 1e-9) / 1000
    return {
        "rows": [
            row(
                f"2 processes, {s['resolution']} px, global batch {global_batch}",
                kimg,
                "kimg/s",
                wall_s=wall,
                num_processes=config["num_processes"],
            )
        ],
        "launcher": how,
    }


def run_group(cmd: list[str], env: dict, timeout: float) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group; on a timeout (or the section's hard cap) the
    whole group goes, launcher and workers alike."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out, err


# -- running the sections ----------------------------------------------------------------------

RUNNERS: dict[str, Callable[[torch.device, bool, Deadline], dict]] = {
    "environment": environment,
    "gatys": gatys,
    "fast": fast,
    "diffusion_lora": diffusion_lora,
    "stylegan2": stylegan2,
    "accelerate": accelerate_two,
}


def run_section(name: str, dev: torch.device, dry: bool, cap: float) -> dict:
    deadline = Deadline(cap)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"cap_s": cap}
    try:
        with hard_cap(cap + HARD_GRACE):
            result = RUNNERS[name](dev, dry, deadline)
        if "skipped" in result:
            out["status"] = "skipped"
        else:
            out["status"] = "ok"
        out.update(result)
        if deadline.hit:
            out.setdefault("notes", []).append("stopped early by the section's time cap")
    except BaseException as e:  # noqa: BLE001 - one section's failure must not end the run
        if isinstance(e, KeyboardInterrupt):
            raise
        out["status"] = "error"
        out["error"] = f"{type(e).__name__}: {str(e).strip()[:1000]}"
        out["traceback"] = traceback.format_exc()[-3000:]
        out.setdefault("rows", [])
    finally:
        with contextlib.suppress(Exception):
            free(dev)
    out["seconds"] = time.perf_counter() - t0
    return out


def _find(sections: dict, section: str, prefix: str) -> float | None:
    for r in sections.get(section, {}).get("rows", []):
        if r["what"].startswith(prefix):
            return r["value"]
    return None


def targets(sections: dict, dev: torch.device) -> list[dict]:
    applies = dev.type == "cuda"
    bf16 = _find(sections, "gatys", "artgen bf16 + channels_last, 512 px")
    ratio = _find(sections, "gatys", "bf16 / reference, 512 px")
    sdxl = sections.get("diffusion_lora", {}).get("runs", {}).get("sdxl_128_gc")
    out = [
        {
            "target": f"Gatys VGG19 512 px bf16 >= {TARGET_GATYS_ITS:g} it/s",
            "value": bf16,
            "unit": "it/s",
            "pass": (bf16 >= TARGET_GATYS_ITS) if applies and bf16 else None,
        },
        {
            "target": f"Gatys VGG19 512 px bf16 >= {TARGET_GATYS_RATIO:g}x the fp32 reference",
            "value": ratio,
            "unit": "x",
            "pass": (ratio >= TARGET_GATYS_RATIO) if applies and ratio else None,
        },
    ]
    mem = sdxl.get("peak_reserved_gib") if sdxl else None
    out.append(
        {
            "target": f"SDXL LoRA step, 1024 px, gradient checkpointing, fits in "
            f"{TARGET_SDXL_GIB:g} GiB (peak reserved)",
            "value": mem,
            "unit": "GiB",
            "allocated_gib": sdxl.get("peak_allocated_gib") if sdxl else None,
            "pass": (mem <= TARGET_SDXL_GIB) if applies and mem else None,
        }
    )
    for t in out:
        if not applies:
            t["note"] = "not judged: no GPU (dry run or CPU)"
        elif t["value"] is None:
            t["note"] = "not measured (see the section's error or notes)"
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "PASS", False: "FAIL", None: "-"}[v]
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown(report: dict) -> str:
    info = report["sections"].get("environment", {}).get("info", {})
    lines = [
        f"# artgen GPU check ({report['date']})",
        "",
        f"device: {report['device_name']}; torch {report['torch']}; "
        f"{'DRY RUN (CPU, tiny sizes)' if report['dry_run'] else 'full run'}; "
        f"{report['seconds']:.0f} s in all",
        "",
    ]
    if info.get("gpus", 0) > 1:
        lines[-2] += f"; {info['gpus']} GPUs"
    lines += [
        "| section | measurement | value | unit | memory | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, sec in report["sections"].items():
        if sec["status"] != "ok" and not sec.get("rows"):
            why = sec.get("error") or sec.get("skipped") or sec["status"]
            lines.append(f"| {name} | {sec['status']} | | | | {why[:200].replace('|', '/')} |")
            continue
        for r in sec.get("rows", []):
            mem = ", ".join(
                f"{k.removesuffix('_gib').replace('_', ' ')} {v:.2f} GiB"
                for k, v in r.items()
                if k.endswith("_gib")
            )
            lines.append(f"| {name} | {r['what']} | {_fmt(r['value'])} | {r['unit']} | {mem} | |")
        for note in sec.get("notes", []):
            lines.append(f"| {name} | note | | | | {note.replace('|', '/')} |")
        if sec["status"] == "error":
            lines.append(f"| {name} | error | | | | {sec['error'][:200].replace('|', '/')} |")
    lines += ["", "| target | value | result |", "|---|---|---|"]
    for t in report["targets"]:
        val = "-" if t["value"] is None else f"{_fmt(t['value'])} {t['unit']}"
        lines.append(
            f"| {t['target']} | {val} | {_fmt(t['pass'])}"
            f"{' (' + t['note'] + ')' if t.get('note') else ''} |"
        )
    if report.get("missing"):
        lines += ["", "Missing in artgen for a full GPU measurement:", ""]
        lines += [f"- {m}" for m in report["missing"]]
    return "\n".join(lines) + "\n"


MISSING = [
    "diffusion: finetune_diffusion keeps the UNet's base weights in fp32 (bf16 autocast only), "
    "about twice the weight memory of bf16 weights (SDXL: 10.3 GB instead of 5.1 GB), and passes "
    "no added_cond_kwargs (text_embeds, time_ids), so an SDXL UNet cannot be fine-tuned; "
    "there is no latent/embedding cache either",
    "stylegan2: fp32 only (no mixed precision, no custom CUDA kernels) and train_gan has no "
    "precision option, so the bf16 StyleGAN2 row is a what-if outside artgen",
    "gatys: channels_last is tied to CUDA (precision=fp32 also runs channels_last), so bf16 and "
    "channels_last cannot be measured apart inside artgen; a progress callback forces a "
    "device sync per step",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "gpu_check"), help="output folder")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="every section on the CPU at tiny sizes (seconds, not minutes)",
    )
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for the whole run; sections that would start later are skipped",
    )
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    if args.dry_run:
        dev = torch.device("cpu")
    elif args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False  # as artgen runs (its default)
    caps = DRY_CAPS if args.dry_run else CAPS
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_name": name,
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "device": str(dev),
        "sections": {},
    }
    print(
        f"gpu_check: {name}, torch {torch.__version__}"
        f"{', dry run' if args.dry_run else ''}; writing {out_dir}",
        flush=True,
    )
    for sec in args.sections:
        spent = time.perf_counter() - t_start
        if spent + min(caps[sec], 30) > args.budget:
            report["sections"][sec] = {
                "status": "skipped",
                "rows": [],
                "skipped": f"skipped: the run's budget of {args.budget:.0f} s was spent",
            }
            continue
        cap = min(caps[sec], max(10.0, args.budget - spent))
        print(f"  {sec} (cap {cap:.0f} s) ...", end="", flush=True)
        report["sections"][sec] = res = run_section(sec, dev, args.dry_run, cap)
        print(
            f" {res['status']} in {res['seconds']:.1f} s"
            f"{': ' + res['error'][:200] if res['status'] == 'error' else ''}",
            flush=True,
        )
        _write(report, out_dir, dev, t_start)  # partial results survive a crash later on
    _write(report, out_dir, dev, t_start)
    print(markdown(report))
    return 0 if all(s["status"] != "error" for s in report["sections"].values()) else 1


def _write(report: dict, out_dir: Path, dev: torch.device, t_start: float) -> None:
    report["seconds"] = time.perf_counter() - t_start
    report["targets"] = targets(report["sections"], dev)
    report["missing"] = MISSING
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "gpu_check.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
