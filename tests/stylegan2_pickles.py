"""StyleGAN2-ADA network pickles built without NVlabs' code, byte for byte the way
stylegan2-ada-pytorch writes ``network-snapshot-*.pkl`` (see tests/test_convert.py), and
the tiny artgen networks they hold. Shared by the conversion, safe-pickle and
real-architecture tests."""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from artgen.models.stylegan2 import Discriminator, Generator, StyleGAN2Config

CFG = StyleGAN2Config(
    resolution=16,
    img_channels=3,
    z_dim=32,
    w_dim=32,
    mapping_layers=2,
    channel_base=256,
    channel_max=32,
    conv_clamp=256,
    mbstd_group_size=4,
)


# -- writing pickles the way stylegan2-ada-pytorch does -------------------------------------------


def _reconstruct_persistent_obj(meta):  # what the pickle names; never called by these tests
    raise AssertionError("the fake reconstructor was called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """dnnlib.util.EasyDict: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


EasyDict.__module__ = "dnnlib.util"


class OfficialGenerator:  # a non-persistent training.networks class: unpickling would import it
    def __reduce__(self):
        return (OfficialGenerator, ())


OfficialGenerator.__module__ = "training.networks"
OfficialGenerator.__qualname__ = "Generator"


class TFNetwork:  # TensorFlow-era pickles hold dnnlib.tflib.network.Network objects
    def __reduce__(self):
        return (TFNetwork, ())


TFNetwork.__module__ = "dnnlib.tflib.network"
TFNetwork.__qualname__ = "Network"


@contextlib.contextmanager
def official_module_names():
    """Register the official module names so pickle can name the stand-ins above."""
    fake = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": types.ModuleType("dnnlib.util"),
        "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
        "dnnlib.tflib.network": types.ModuleType("dnnlib.tflib.network"),
        "training": types.ModuleType("training"),
        "training.networks": types.ModuleType("training.networks"),
    }
    fake["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    fake["dnnlib.util"].EasyDict = EasyDict
    fake["dnnlib.tflib.network"].Network = TFNetwork
    fake["training.networks"].Generator = OfficialGenerator
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Persistent:
    """Pickles exactly as a torch_utils.persistence class instance does."""

    def __init__(self, class_name: str, state: dict, module_src: str, **meta):
        self.class_name, self.state, self.module_src = class_name, state, module_src
        self.meta = meta

    def __reduce__(self):
        meta = dict(
            type="class",
            version=6,
            module_src=self.module_src,
            class_name=self.class_name,
            state=self.state,
        )
        meta.update(self.meta)
        return (_reconstruct_persistent_obj, (meta,))

    def child(self, dotted: str) -> Persistent:
        node = self
        for name in dotted.split("."):
            node = node.state["_modules"][name]
        return node


def official_tree(module: torch.nn.Module, src: str, init_kwargs=None, init_args=()) -> Persistent:
    """A module as the official persistent class would pickle it: its torch.nn.Module
    internals (parameters, buffers, submodules, hook dicts) and plain attributes, gains as
    numpy float64 (the official code computes them with np.sqrt), and _init_args/_init_kwargs."""
    state = {}
    for key, value in vars(module).items():
        if key == "_modules":
            state[key] = OrderedDict(
                (name, None if sub is None else official_tree(sub, src))
                for name, sub in value.items()
            )
        elif key.startswith("_") or key == "training":  # nn.Module internals, hooks included
            state[key] = value
        elif isinstance(value, float) and key.endswith("gain"):
            state[key] = np.float64(value)
        elif isinstance(value, (bool, int, float, str, type(None))) or (
            isinstance(value, list) and all(isinstance(v, int) for v in value)
        ):
            state[key] = value
        # anything else (the artgen config object) has no official counterpart
    state["_init_args"] = tuple(init_args)
    state["_init_kwargs"] = dict(init_kwargs or {})
    return Persistent(type(module).__name__, state, src)


def g_kwargs(cfg: StyleGAN2Config = CFG, **synthesis) -> dict:
    """Generator kwargs as the official train.py passes them (G_kwargs + common_kwargs)."""
    return dict(
        z_dim=cfg.z_dim,
        w_dim=cfg.w_dim,
        mapping_kwargs=EasyDict(num_layers=cfg.mapping_layers),
        synthesis_kwargs=EasyDict(
            channel_base=cfg.channel_base,
            channel_max=cfg.channel_max,
            num_fp16_res=4,
            conv_clamp=cfg.conv_clamp,
            **synthesis,
        ),
        c_dim=cfg.c_dim,
        img_resolution=cfg.resolution,
        img_channels=cfg.img_channels,
    )


def d_kwargs(cfg: StyleGAN2Config = CFG, **top) -> dict:
    """Discriminator kwargs as the official train.py passes them."""
    return dict(
        block_kwargs=EasyDict(),
        mapping_kwargs=EasyDict(),
        epilogue_kwargs=EasyDict(mbstd_group_size=cfg.mbstd_group_size),
        channel_base=cfg.channel_base,
        channel_max=cfg.channel_max,
        num_fp16_res=4,
        conv_clamp=cfg.conv_clamp,
        c_dim=cfg.c_dim,
        img_resolution=cfg.resolution,
        img_channels=cfg.img_channels,
        **top,
    )


def module_src_for(marker: Path) -> str:
    """A stand-in for training/networks.py whose mere execution leaves a marker file."""
    return (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
        "raise SystemExit('module_src was executed')\n"
        "class Generator: pass\n"
    )


def build_snapshot(src: str, cfg: StyleGAN2Config = CFG, seed: int = 0):
    """(snapshot dict of Persistent trees, {name: the artgen network it was made from})."""
    torch.manual_seed(seed)
    nets = {
        "G": Generator(cfg).eval(),
        "D": Discriminator(cfg).eval(),
        "G_ema": Generator(cfg).eval(),
    }
    augment = Persistent(
        "AugmentPipe",
        {
            "training": False,
            "_parameters": OrderedDict(),
            "_buffers": OrderedDict(
                p=torch.tensor(0.2), Hz_geom=torch.randn(12), Hz_fbank=torch.randn(4, 27)
            ),
            "_modules": OrderedDict(),
            "xflip": 1.0,
            "imgfilter_bands": [1, 1, 1, 1],
            "_init_args": (),
            "_init_kwargs": dict(xflip=1, rotate90=1, xint=1, scale=1),
        },
        src,
    )
    snapshot = {
        "G": official_tree(nets["G"], src, g_kwargs(cfg)),
        "D": official_tree(nets["D"], src, d_kwargs(cfg)),
        "G_ema": official_tree(nets["G_ema"], src, g_kwargs(cfg)),
        "augment_pipe": augment,
        "training_set_kwargs": EasyDict(
            class_name="training.dataset.ImageFolderDataset",
            path="~/datasets/art.zip",
            use_labels=False,
            max_size=1000,
            xflip=False,
            resolution=cfg.resolution,
        ),
    }
    return snapshot, nets


def write_pickle(path: Path, obj, protocol: int = 4) -> Path:
    with official_module_names():
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)
