"""Real architectures with random weights: the published diffusion UNets and NVlabs'
StyleGAN2-ADA snapshot configurations, at their real sizes.

- Stable Diffusion 1.5 and SDXL base: the UNets of their published ``unet/config.json``
  (written below), parameter counts checked against the published figures, and one LoRA
  training step each on the CPU (reduced resolution, gradient checkpointing), in a fresh
  process so that its peak memory (ru_maxrss) is its own.
- StyleGAN2-ADA: network pickles with exactly the architecture of the official snapshots
  (FFHQ and MetFaces 1024, AFHQ 512, conditional CIFAR-10, paper256), written the way
  stylegan2-ada-pytorch writes them. Their module trees and tensor shapes come from a
  restatement of the official ``training/networks.py`` below, not from artgen's networks, so
  ``artgen convert`` (run through the CLI) is checked against the official layout; the
  converted G and D then run a forward pass. Two kwargs forms: what ``train.py`` records in a
  ``network-snapshot-*.pkl``, and what ``legacy.py`` records in a pickle converted from a
  TensorFlow one (the form of NVlabs' pretrained pickles as they are printed in use).

Figures (parameters, seconds, peak memory) are printed (pytest -s) and written to
out/real_arch/results.json. Slow tests run with ``make test-slow``
(``pytest -m slow tests/test_real_arch.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import multiprocessing as mp
import resource
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from .stylegan2_pickles import EasyDict, Persistent, write_pickle

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "out" / "real_arch" / "results.json"

# -- the published UNet configs ------------------------------------------------------------------


def _gpu_check():
    spec = importlib.util.spec_from_file_location(
        "gpu_check_for_tests", ROOT / "benchmarks" / "gpu_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The published configs are written once, in benchmarks/gpu_check.py (which measures them
# on a GPU); the tests below check their parameter counts.
_GC = _gpu_check()
SD15_UNET, SDXL_UNET = _GC.SD15_UNET, _GC.SDXL_UNET
UNETS = {
    # name: (config, published parameters, latent side for the CPU step, weight dtype)
    "sd15": (SD15_UNET, 859_520_964, 32, "fp32"),
    # fp32 weights alone are 10.3 GB: built directly in bf16 (5.1 GB) on a shared 23 GB machine.
    "sdxl": (SDXL_UNET, 2_567_463_684, 16, "bf16"),
}


def record(key: str, figures: dict) -> None:
    """Print one architecture's figures and merge them into out/real_arch/results.json."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = {**figures, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n[real-arch] {key}: {json.dumps(figures, sort_keys=True)}")


def _rss_gib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**30
    except ImportError:  # pragma: no cover - psutil ships with the dev environment
        return float("nan")


def _peak_rss_gib() -> float:
    # ru_maxrss: the process's peak resident set (KiB on Linux). tracemalloc would miss
    # torch's allocations; psutil has no peak on Linux. Each step runs in a fresh process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def lora_step_in_this_process(name: str) -> dict:
    """Build the UNet with random weights, add LoRA, one training step (run in a fresh process)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg, _, latent, dtype_name = UNETS[name]
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    gc = _GC
    before = _rss_gib()
    r = gc.lora_step_benchmark(
        cfg, latent, dev=torch.device("cpu"), dtype=dtype, steps=0, warmup=1, checkpointing=True
    )
    return {
        "parameters": r["parameters"],
        "lora_parameters": r["lora_parameters"],
        "build_s": round(r["build_s"], 1),
        "step_s": round(r["warmup_step_s"], 1),
        "peak_rss_gib": round(_peak_rss_gib(), 2),
        "rss_before_build_gib": round(before, 2),
        "latent": latent,
        "pixels": latent * 8,
        "weights": dtype_name,
        "batch": 1,
        "loss": r["loss"],
        "finite": r["finite"],
        "gradient_checkpointing": True,
        "threads": torch.get_num_threads(),
    }


def _fresh(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def test_unet_configs_have_the_published_parameter_counts():
    """Built on the meta device (no memory): the exact published figures, for the configs
    gpu_check.py measures."""
    from diffusers import UNet2DConditionModel

    for cfg, published, _, _ in UNETS.values():
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfg)
        assert sum(p.numel() for p in unet.parameters()) == published


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_unet_lora_step_on_the_cpu(name):
    """Random weights at the real size, one LoRA step (attention projections, rank 8, AdamW)
    with gradient checkpointing at a reduced resolution."""
    _, published, latent, _ = UNETS[name]
    figures = _fresh(lora_step_in_this_process, name)
    record(f"unet_{name}", {**figures, "published_parameters": published})
    assert abs(figures["parameters"] - published) <= 0.01 * published
    assert figures["finite"] and figures["lora_parameters"] > 0
    assert figures["peak_rss_gib"] < 12


# -- StyleGAN2-ADA: the official networks.py, restated ----------------------------------------

SRC = "# training/networks.py of stylegan2-ada-pytorch (not included; never executed)\n"
_FILTER = [1, 3, 3, 1]


def _setup_filter(f=_FILTER) -> torch.Tensor:
    """torch_utils.ops.upfirdn2d.setup_filter: the outer product, normalised to sum 1."""
    t = torch.as_tensor(f, dtype=torch.float32)
    t = torch.outer(t, t)
    return t / t.sum()


def _param(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t, requires_grad=False)  # snapshots: requires_grad_(False)


def node(cls: str, params=(), buffers=(), modules=(), attrs=None, init_kwargs=None) -> Persistent:
    """One persistent module as torch_utils.persistence pickles it: torch.nn.Module's
    internals, its attributes, and _init_args/_init_kwargs."""
    state = dict(vars(torch.nn.Module()))  # training, _parameters, _buffers, hook dicts, ...
    state["training"] = False
    state["_parameters"] = OrderedDict(params)
    state["_buffers"] = OrderedDict(buffers)
    state["_modules"] = OrderedDict(modules)
    state.update(attrs or {})
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    return Persistent(cls, state, SRC)


def fc_layer(i, o, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
    params = [("weight", _param(torch.randn([o, i]) / lr_multiplier))]
    params.append(("bias", _param(torch.full([o], np.float32(bias_init))) if bias else None))
    return node(
        "FullyConnectedLayer",
        params,
        attrs=dict(
            activation=activation,
            weight_gain=np.float64(lr_multiplier / np.sqrt(i)),
            bias_gain=lr_multiplier,
        ),
    )


def conv_layer(
    i,
    o,
    k,
    bias=True,
    activation="linear",
    up=1,
    down=1,
    resample_filter=_FILTER,
    conv_clamp=None,
    trainable=True,
    **_ignored,
):
    weight, b = torch.randn([o, i, k, k]), torch.zeros([o]) if bias else None
    buffers = [("resample_filter", _setup_filter(resample_filter))]
    attrs = dict(
        activation=activation,
        up=up,
        down=down,
        conv_clamp=conv_clamp,
        padding=k // 2,
        weight_gain=np.float64(1 / np.sqrt(i * k * k)),
        act_gain=np.float64(np.sqrt(2) if activation == "lrelu" else 1),
    )
    if trainable:
        params = [("weight", _param(weight)), ("bias", None if b is None else _param(b))]
    else:  # Freeze-D: the frozen layers' tensors are buffers
        params = []
        buffers.append(("weight", weight))
        if b is not None:
            buffers.append(("bias", b))
        else:
            attrs["bias"] = None
    return node("Conv2dLayer", params, buffers, attrs=attrs)


def mapping_network(
    z_dim,
    c_dim,
    w_dim,
    num_ws,
    num_layers=8,
    embed_features=None,
    layer_features=None,
    activation="lrelu",
    lr_multiplier=0.01,
    w_avg_beta=0.995,
):
    if embed_features is None:
        embed_features = w_dim
    if c_dim == 0:
        embed_features = 0
    if layer_features is None:
        layer_features = w_dim
    features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
    modules = []
    if c_dim > 0:
        modules.append(("embed", fc_layer(c_dim, embed_features)))
    for idx in range(num_layers):
        modules.append(
            (
                f"fc{idx}",
                fc_layer(
                    features[idx],
                    features[idx + 1],
                    activation=activation,
                    lr_multiplier=lr_multiplier,
                ),
            )
        )
    buffers = (
        [("w_avg", torch.zeros([w_dim]))] if num_ws is not None and w_avg_beta is not None else []
    )
    return node(
        "MappingNetwork",
        buffers=buffers,
        modules=modules,
        attrs=dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            num_ws=num_ws,
            num_layers=num_layers,
            w_avg_beta=w_avg_beta,
        ),
    )


def synthesis_layer(
    i,
    o,
    w_dim,
    resolution,
    kernel_size=3,
    up=1,
    use_noise=True,
    resample_filter=_FILTER,
    **_ignored,
):
    params = [("weight", _param(torch.randn([o, i, kernel_size, kernel_size])))]
    buffers = [("resample_filter", _setup_filter(resample_filter))]
    if use_noise:
        buffers.append(("noise_const", torch.randn([resolution, resolution])))
        params.append(("noise_strength", _param(torch.zeros([]))))
    params.append(("bias", _param(torch.zeros([o]))))
    return node(
        "SynthesisLayer",
        params,
        buffers,
        [("affine", fc_layer(w_dim, i, bias_init=1))],
        attrs=dict(resolution=resolution, up=up, use_noise=use_noise),
    )


def torgb_layer(i, o, w_dim, kernel_size=1, **_ignored):
    params = [
        ("weight", _param(torch.randn([o, i, kernel_size, kernel_size]))),
        ("bias", _param(torch.zeros([o]))),
    ]
    return node(
        "ToRGBLayer",
        params,
        modules=[("affine", fc_layer(w_dim, i, bias_init=1))],
        attrs=dict(weight_gain=np.float64(1 / np.sqrt(i * kernel_size**2))),
    )


def synthesis_network(
    w_dim,
    img_resolution,
    img_channels,
    channel_base=32768,
    channel_max=512,
    num_fp16_res=0,
    architecture="skip",
    resample_filter=_FILTER,
    conv_clamp=None,
    **layer_kwargs,
):
    log2 = int(np.log2(img_resolution))
    resolutions = [2**i for i in range(2, log2 + 1)]
    ch = {r: min(channel_base // r, channel_max) for r in resolutions}
    modules, num_ws = [], 0
    for res in resolutions:
        c_in, c_out = (ch[res // 2] if res > 4 else 0), ch[res]
        is_last = res == img_resolution
        params, sub = [], []
        if c_in == 0:
            params.append(("const", _param(torch.randn([c_out, res, res]))))
        else:
            sub.append(
                (
                    "conv0",
                    synthesis_layer(
                        c_in,
                        c_out,
                        w_dim,
                        res,
                        up=2,
                        resample_filter=resample_filter,
                        **layer_kwargs,
                    ),
                )
            )
        sub.append(
            (
                "conv1",
                synthesis_layer(
                    c_out, c_out, w_dim, res, resample_filter=resample_filter, **layer_kwargs
                ),
            )
        )
        if is_last or architecture == "skip":
            sub.append(("torgb", torgb_layer(c_out, img_channels, w_dim)))
        if c_in != 0 and architecture == "resnet":
            sub.append(("skip", conv_layer(c_in, c_out, 1, bias=False, up=2)))
        num_conv = 1 if c_in == 0 else 2
        num_ws += num_conv + (1 if is_last else 0)
        modules.append(
            (
                f"b{res}",
                node(
                    "SynthesisBlock",
                    params,
                    [("resample_filter", _setup_filter(resample_filter))],
                    sub,
                    attrs=dict(resolution=res, num_conv=num_conv, num_torgb=1, is_last=is_last),
                ),
            )
        )
    return node(
        "SynthesisNetwork",
        modules=modules,
        attrs=dict(
            w_dim=w_dim, img_resolution=img_resolution, num_ws=num_ws, block_resolutions=resolutions
        ),
    ), num_ws


def official_generator(kwargs: dict) -> Persistent:
    kw = dict(kwargs)
    synthesis, num_ws = synthesis_network(
        kw["w_dim"], kw["img_resolution"], kw["img_channels"], **kw.get("synthesis_kwargs", {})
    )
    mapping = mapping_network(
        kw["z_dim"], kw["c_dim"], kw["w_dim"], num_ws, **kw.get("mapping_kwargs", {})
    )
    return node(
        "Generator",
        modules=[("synthesis", synthesis), ("mapping", mapping)],
        attrs=dict(
            z_dim=kw["z_dim"],
            c_dim=kw["c_dim"],
            w_dim=kw["w_dim"],
            img_resolution=kw["img_resolution"],
            num_ws=num_ws,
        ),
        init_kwargs=kwargs,
    )


def official_discriminator(kwargs: dict) -> Persistent:
    kw = dict(kwargs)
    res_top, c_dim, img_ch = kw["img_resolution"], kw["c_dim"], kw["img_channels"]
    architecture = kw.get("architecture", "resnet")
    base, cmax = kw.get("channel_base", 32768), kw.get("channel_max", 512)
    conv_clamp, cmap_dim = kw.get("conv_clamp"), kw.get("cmap_dim")
    block_kw = dict(kw.get("block_kwargs", {}))
    freeze = block_kw.pop("freeze_layers", 0)
    activation = block_kw.get("activation", "lrelu")
    log2 = int(np.log2(res_top))
    resolutions = [2**i for i in range(log2, 2, -1)]
    ch = {r: min(base // r, cmax) for r in [*resolutions, 4]}
    if cmap_dim is None:
        cmap_dim = ch[4]
    if c_dim == 0:
        cmap_dim = 0
    modules, layer_idx = [], 0
    for res in resolutions:
        c_in, tmp, c_out = (ch[res] if res < res_top else 0), ch[res], ch[res // 2]
        sub, first = [], layer_idx

        def trainable() -> bool:
            nonlocal layer_idx
            layer_idx += 1
            return layer_idx - 1 >= freeze

        common = dict(activation=activation, conv_clamp=conv_clamp)
        if c_in == 0 or architecture == "skip":
            sub.append(("fromrgb", conv_layer(img_ch, tmp, 1, trainable=trainable(), **common)))
        sub.append(("conv0", conv_layer(tmp, tmp, 3, trainable=trainable(), **common)))
        sub.append(("conv1", conv_layer(tmp, c_out, 3, down=2, trainable=trainable(), **common)))
        if architecture == "resnet":
            sub.append(
                ("skip", conv_layer(tmp, c_out, 1, bias=False, down=2, trainable=trainable()))
            )
        modules.append(
            (
                f"b{res}",
                node(
                    "DiscriminatorBlock",
                    buffers=[("resample_filter", _setup_filter())],
                    modules=sub,
                    attrs=dict(
                        resolution=res,
                        first_layer_idx=first,
                        num_layers=layer_idx - first,
                        architecture=architecture,
                    ),
                ),
            )
        )
    if c_dim > 0:
        modules.append(
            (
                "mapping",
                mapping_network(
                    0, c_dim, cmap_dim, None, w_avg_beta=None, **kw.get("mapping_kwargs", {})
                ),
            )
        )
    epi = dict(kw.get("epilogue_kwargs", {}))
    group, mbstd_ch = epi.get("mbstd_group_size", 4), epi.get("mbstd_num_channels", 1)
    c4 = ch[4]
    sub = []
    if architecture == "skip":
        sub.append(("fromrgb", conv_layer(img_ch, c4, 1, activation=activation)))
    sub.append(
        (
            "mbstd",
            node("MinibatchStdLayer", attrs=dict(group_size=group, num_channels=mbstd_ch))
            if mbstd_ch > 0
            else None,
        )
    )
    sub.append(
        ("conv", conv_layer(c4 + mbstd_ch, c4, 3, activation=activation, conv_clamp=conv_clamp))
    )
    sub.append(("fc", fc_layer(c4 * 16, c4, activation=activation)))
    sub.append(("out", fc_layer(c4, 1 if cmap_dim == 0 else cmap_dim)))
    modules.append(
        (
            "b4",
            node("DiscriminatorEpilogue", modules=sub, attrs=dict(cmap_dim=cmap_dim, resolution=4)),
        )
    )
    return node(
        "Discriminator",
        modules=modules,
        attrs=dict(c_dim=c_dim, img_resolution=res_top, block_resolutions=resolutions),
        init_kwargs=kwargs,
    )


def official_state(tree: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict torch would give the official module (parameters, persistent buffers)."""
    out = {}
    for kind in ("_parameters", "_buffers"):
        for k, v in tree.state[kind].items():
            if v is not None:
                out[prefix + k] = v
    for k, child in tree.state["_modules"].items():
        if child is not None:
            out.update(official_state(child, f"{prefix}{k}."))
    return out


def official_parameters(tree: Persistent, frozen: bool = False) -> int:
    """Parameters of the official module; ``frozen`` adds the weights Freeze-D keeps as buffers
    (artgen makes them parameters again: freezing is a training choice)."""
    n = sum(v.numel() for v in tree.state["_parameters"].values() if v is not None)
    if frozen:
        n += sum(v.numel() for k, v in tree.state["_buffers"].items() if k in ("weight", "bias"))
    return n + sum(official_parameters(c, frozen) for c in tree.state["_modules"].values() if c)


# -- the configurations ---------------------------------------------------------------------------

# train.py's cfg_specs: (fmaps, map, mbstd); channel_base = fmaps * 32768, channel_max 512.
CFG_SPECS = {
    "paper256": (0.5, 8, 8),
    "paper512": (1, 8, 8),
    "paper1024": (1, 8, 4),
    "stylegan2": (1, 8, 4),
    "cifar": (1, 2, 32),
}


def train_py_kwargs(cfg: str, resolution: int, c_dim: int = 0, freezed: int | None = None):
    """G and D init kwargs as train.py + training_loop.py record them in a network snapshot:
    G_kwargs/D_kwargs (class_name popped by construct_class_by_name) + common_kwargs."""
    fmaps, mapping, mbstd = CFG_SPECS[cfg]
    common = dict(c_dim=c_dim, img_resolution=resolution, img_channels=3)
    g = EasyDict(
        z_dim=512,
        w_dim=512,
        mapping_kwargs=EasyDict(num_layers=mapping),
        synthesis_kwargs=EasyDict(
            channel_base=int(fmaps * 32768), channel_max=512, num_fp16_res=4, conv_clamp=256
        ),
    )
    d = EasyDict(
        block_kwargs=EasyDict(),
        mapping_kwargs=EasyDict(),
        epilogue_kwargs=EasyDict(mbstd_group_size=mbstd),
        channel_base=int(fmaps * 32768),
        channel_max=512,
        num_fp16_res=4,
        conv_clamp=256,
    )
    if cfg == "cifar":
        d.architecture = "orig"
    if freezed is not None:
        d.block_kwargs.freeze_layers = freezed
    return EasyDict(**g, **common), EasyDict(**d, **common)


def legacy_kwargs(
    resolution: int,
    fmap_base: int,
    c_dim: int = 0,
    mapping_layers: int = 8,
    architecture: str = "resnet",
    fp16: bool = True,
):
    """G and D init kwargs as legacy.py's convert_tf_generator / convert_tf_discriminator write
    them for a TensorFlow pickle whose D did not set its group size or label mapping (the
    form that converted TensorFlow releases in use print): every key present,
    mbstd_group_size=None, the D's label mapping with no layers."""
    g = EasyDict(
        z_dim=512,
        c_dim=c_dim,
        w_dim=512,
        img_resolution=resolution,
        img_channels=3,
        mapping_kwargs=EasyDict(
            num_layers=mapping_layers,
            embed_features=None,
            layer_features=None,
            activation="lrelu",
            lr_multiplier=0.01,
            w_avg_beta=0.995,
        ),
        synthesis_kwargs=EasyDict(
            channel_base=fmap_base * 2,
            channel_max=512,
            num_fp16_res=4 if fp16 else 0,
            conv_clamp=256 if fp16 else None,
            architecture="skip",
            resample_filter=[1, 3, 3, 1],
            use_noise=True,
            activation="lrelu",
        ),
    )
    d = EasyDict(
        c_dim=c_dim,
        img_resolution=resolution,
        img_channels=3,
        architecture=architecture,
        channel_base=fmap_base * 2,
        channel_max=512,
        num_fp16_res=4 if fp16 else 0,
        conv_clamp=256 if fp16 else None,
        cmap_dim=None,
        block_kwargs=EasyDict(activation="lrelu", resample_filter=[1, 3, 3, 1], freeze_layers=0),
        mapping_kwargs=EasyDict(
            num_layers=0,
            embed_features=None,
            layer_features=None,
            activation="lrelu",
            lr_multiplier=0.1,
        ),
        epilogue_kwargs=EasyDict(mbstd_group_size=None, mbstd_num_channels=1, activation="lrelu"),
    )
    return g, d


SNAPSHOTS = {
    # name: ((G kwargs, D kwargs), slow)
    "ffhq-metfaces-1024 (train.py paper1024)": (train_py_kwargs("paper1024", 1024), True),
    "afhq-cat-dog-wild-512 (train.py paper512)": (train_py_kwargs("paper512", 512), True),
    "cifar10-32 (train.py cifar, --cond=1)": (train_py_kwargs("cifar", 32, c_dim=10), False),
    "ffhq-256 (train.py paper256)": (train_py_kwargs("paper256", 256), True),
    "ffhq-256 transfer (paper256, --resume=ffhq256 --freezed=10)": (
        train_py_kwargs("paper256", 256, freezed=10),
        True,
    ),
    "ffhq.pkl / metfaces.pkl 1024 (legacy.py)": (legacy_kwargs(1024, 16384, fp16=False), True),
    "afhq*.pkl 512 (legacy.py)": (legacy_kwargs(512, 16384), True),
    "ffhq-res256-mirror-paper256-noaug.pkl (legacy.py)": (legacy_kwargs(256, 8192), True),
}


def snapshot_pickle(path: Path, g_kwargs: dict, d_kwargs: dict, seed: int = 0) -> tuple:
    """A network-snapshot-*.pkl: {training_set_kwargs, G, D, G_ema, augment_pipe}, in the order
    training_loop.py builds it. G and G_ema are separate module trees over the same tensors
    (pickled once), which keeps the 1024 px files at half their real size."""
    torch.manual_seed(seed)
    g_ema = official_generator(g_kwargs)
    g = Persistent("Generator", dict(g_ema.state), SRC)
    d = official_discriminator(d_kwargs)
    snapshot = {
        "training_set_kwargs": dict(
            class_name="training.dataset.ImageFolderDataset",
            path="~/datasets/data.zip",
            use_labels=bool(g_kwargs["c_dim"]),
            max_size=1000,
            xflip=False,
            resolution=g_kwargs["img_resolution"],
        ),
        "G": g,
        "D": d,
        "G_ema": g_ema,
        "augment_pipe": None,
    }
    write_pickle(path, snapshot)
    return g_ema, d


def convert_and_run(tmp_path: Path, name: str, g_kwargs: dict, d_kwargs: dict) -> dict:
    from artgen.cli import main
    from artgen.models.stylegan2 import Discriminator, Generator

    t0 = time.perf_counter()
    pkl = tmp_path / "network-snapshot-000000.pkl"
    g_tree, d_tree = snapshot_pickle(pkl, g_kwargs, d_kwargs)
    expected = {"generator": official_state(g_tree), "discriminator": official_state(d_tree)}
    counts = {
        "G": official_parameters(g_tree),
        "D": official_parameters(d_tree, frozen=True),
        "D_trainable": official_parameters(d_tree),
    }
    t_write = time.perf_counter() - t0
    assert main(["convert", str(pkl), str(tmp_path / "out")]) == 0
    t_convert = time.perf_counter() - t0 - t_write

    G = Generator.from_pretrained(tmp_path / "out" / "generator")
    D = Discriminator.from_pretrained(tmp_path / "out" / "discriminator")
    for role, net in (("generator", G), ("discriminator", D)):
        state = net.state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            k: tuple(v.shape) for k, v in expected[role].items()
        }, role
        assert all(torch.equal(state[k], v) for k, v in expected[role].items()), role
    assert sum(p.numel() for p in G.parameters()) == counts["G"]
    assert sum(p.numel() for p in D.parameters()) == counts["D"]
    assert G.config.parameter_counts() == {
        "generator": sum(v.numel() for v in expected["generator"].values()),
        "discriminator": sum(v.numel() for v in expected["discriminator"].values()),
    }

    res, c_dim = g_kwargs["img_resolution"], g_kwargs["c_dim"]
    n = 1 if res >= 512 else 4
    gen = torch.Generator().manual_seed(1)
    z = torch.randn([n, 512], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float() if c_dim else None
    t1 = time.perf_counter()
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
        logits = D(img, c)
    t_forward = time.perf_counter() - t1
    assert img.shape == (n, 3, res, res) and logits.shape == (n, 1)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    figures = {
        "resolution": res,
        "c_dim": c_dim,
        "g_parameters": counts["G"],
        "d_parameters": counts["D"],
        "d_frozen_parameters": counts["D"] - counts["D_trainable"],
        "pickle_mib": round(pkl.stat().st_size / 2**20, 1),
        "write_s": round(t_write, 1),
        "convert_s": round(t_convert, 1),
        "forward_s": round(t_forward, 1),
        "forward_batch": n,
        "mbstd_group_size": D.config.mbstd_group_size,
        "d_architecture": D.config.d_architecture,
        "peak_rss_gib_so_far": round(_peak_rss_gib(), 2),
    }
    record(f"stylegan2 {name}", figures)
    return figures


@pytest.mark.parametrize(
    "name",
    [pytest.param(k, marks=[pytest.mark.slow] if v[1] else []) for k, v in SNAPSHOTS.items()],
)
def test_official_snapshot_converts_and_runs(tmp_path, name):
    (g_kwargs, d_kwargs), _ = SNAPSHOTS[name]
    figures = convert_and_run(tmp_path, name, g_kwargs, d_kwargs)
    if "legacy" in name:
        assert figures["mbstd_group_size"] == 1024  # None: the whole minibatch
    if "freezed" in name:  # layers 0-9: b256 (fromrgb, conv0, conv1, skip), b128 and b64 (3 each)
        assert figures["d_frozen_parameters"] > 0
    elif g_kwargs["c_dim"]:
        assert figures["d_architecture"] == "orig" and figures["mbstd_group_size"] == 32


# What stylegan2-ada-pytorch prints for its networks (misc.print_module_summary in
# training_loop.py) at 1024 px with --cfg=auto on one GPU (fmaps 1, map 2, mbstd 4), copied
# from a published training log: parameters and buffers of G and D.
LOGGED_1024_AUTO = {"G": (28_794_124, 2_797_104), "D": (29_012_513, 544)}


def test_restated_layout_has_the_logged_sizes():
    """The restated official layout, and artgen's own count, give exactly the sizes the official
    code prints (counted on the meta device, nothing allocated)."""
    from artgen.interop.convert import config_from_kwargs

    g, d = train_py_kwargs("paper1024", 1024)
    g.mapping_kwargs.num_layers = 2  # cfg=auto
    with torch.device("meta"):
        trees = {"G": official_generator(g), "D": official_discriminator(d)}
    for role, tree in trees.items():
        params = official_parameters(tree)
        buffers = sum(v.numel() for v in official_state(tree).values()) - params
        assert (params, buffers) == LOGGED_1024_AUTO[role], role
    counts = config_from_kwargs("generator", g).parameter_counts()
    assert counts == {
        "generator": sum(LOGGED_1024_AUTO["G"]),
        "discriminator": sum(LOGGED_1024_AUTO["D"]),
    }


def test_published_cifar10_pickle_discriminator_is_refused_by_name(tmp_path):
    """legacy.py writes the converted CIFAR-10 D's label mapping with no layers (TensorFlow's
    D had mapping_layers=0): artgen's D always has the PyTorch default of 8 layers, so that
    D is refused by name; its generator converts alone."""
    from artgen.cli import main
    from artgen.models.stylegan2 import Generator

    g_kwargs, d_kwargs = legacy_kwargs(32, 16384, c_dim=10, mapping_layers=2, architecture="orig")
    pkl = tmp_path / "cifar10.pkl"
    g_tree, _ = snapshot_pickle(pkl, g_kwargs, d_kwargs)
    assert main(["convert", str(pkl), str(tmp_path / "full")]) == 2
    assert not (tmp_path / "full").exists()
    from artgen.core.errors import ArtgenError
    from artgen.interop.convert import convert_stylegan2_pickle

    with pytest.raises(
        ArtgenError,
        match=r"D: Discriminator\.mapping_kwargs: num_layers=0 is not "
        r"supported by artgen \(only 8\)",
    ):
        convert_stylegan2_pickle(pkl, tmp_path / "x")
    out = convert_stylegan2_pickle(pkl, tmp_path / "g", which=("G_ema",))
    G = Generator.from_pretrained(out["generator"])
    state = official_state(g_tree)
    assert all(torch.equal(G.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        img = G(torch.randn([2, 512]), torch.eye(10)[:2], noise_mode="const")
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()


def test_restated_layout_is_the_official_one_at_small_size():
    """The restatement gives the same module tree as artgen's networks (whose names and
    shapes are the official ones, checked against the official code): a cheap guard that the
    restatement itself is right, on a 16 px network of every option used above."""
    from artgen.interop.convert import config_from_kwargs
    from artgen.models.stylegan2 import Discriminator, Generator

    for c_dim, arch, freezed in ((0, "resnet", None), (3, "orig", None), (0, "resnet", 3)):
        g, d = train_py_kwargs("paper256", 16, c_dim=c_dim, freezed=freezed)
        if arch == "orig":
            d.architecture = "orig"
        gt, dt = official_generator(g), official_discriminator(d)
        cfg = config_from_kwargs("generator", g)
        cfg = dataclasses.replace(cfg, d_architecture=arch)
        for tree, net in ((gt, Generator(cfg)), (dt, Discriminator(cfg))):
            ours = {k: tuple(v.shape) for k, v in official_state(tree).items()}
            theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            assert ours == theirs
        fc0 = gt.state["_modules"]["mapping"].state["_modules"]["fc0"]
        assert math.isclose(fc0.state["weight_gain"], 0.01 / math.sqrt(512 + (512 if c_dim else 0)))
