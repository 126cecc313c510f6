"""Convert StyleGAN2-ADA network pickles into artgen StyleGAN2 models (no code from the file runs).

Source format: ``network-snapshot-*.pkl`` from NVlabs/stylegan2-ada-pytorch
(``training/training_loop.py`` pickles ``{'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}``; the networks are ``training/networks.py`` classes made
persistent by ``torch_utils/persistence.py``). The file is read by
:func:`artgen.interop.safe_pickle.load_stylegan2_pickle`, which never executes the
``module_src`` carried by the pickle nor imports anything outside an explicit
allow-list (see that module for the security model). Each network comes back as
a :class:`~artgen.interop.safe_pickle.PersistentStub`; here its ``_parameters`` and
persistent ``_buffers`` are gathered under the official dotted names, its
constructor arguments (``_init_args`` / ``_init_kwargs``) are mapped onto a
:class:`~artgen.models.stylegan2.StyleGAN2Config`, and the artgen network is
built from that config and loaded strictly, so any missing, extra or
mis-shaped tensor is an error. Options artgen cannot reproduce are refused by
name rather than approximated.

Everything read from the pickle is bounded before it is used: init kwargs are
walked with a budget of :data:`MAX_KWARGS_NODES` values (shared references
counted each time they occur, so a few hundred bytes of memo references cannot
expand into billions), names are at most :data:`MAX_NAME_CHARS` characters, and
values quoted in messages go through :func:`artgen.interop.safe_pickle.short_repr`
(at most ~200 characters). The network sizes are bounded by
:class:`~artgen.models.stylegan2.StyleGAN2Config` itself.

The output folder holds ``generator/`` and ``discriminator/``, each written by
``save_pretrained`` (config.json + model.safetensors: no pickles), and appears
atomically: everything is written into a temporary sibling folder that is then
renamed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from artgen.core.errors import ArtgenError, clip
from artgen.interop.safe_pickle import PersistentStub, load_stylegan2_pickle, short_repr
from artgen.models.stylegan2 import (
    CONFIG_LIMITS,
    D_MAPPING_LAYERS,
    D_MAPPING_LR_MULTIPLIER,
    Discriminator,
    Generator,
    StyleGAN2Config,
)

__all__ = ["config_from_kwargs", "convert_stylegan2_pickle", "stylegan2_state"]

# Positional parameter names of the official constructors (training/networks.py), to name
# ``_init_args`` when a network was built with positional arguments.
_POSITIONAL = {
    "Generator": (
        "z_dim",
        "c_dim",
        "w_dim",
        "img_resolution",
        "img_channels",
        "mapping_kwargs",
        "synthesis_kwargs",
    ),
    "Discriminator": (
        "c_dim",
        "img_resolution",
        "img_channels",
        "architecture",
        "channel_base",
        "channel_max",
        "num_fp16_res",
        "conv_clamp",
        "cmap_dim",
        "block_kwargs",
        "mapping_kwargs",
        "epilogue_kwargs",
    ),
}
_FILTER = [1, 3, 3, 1]  # the official default resample_filter, the only one artgen implements
_MAX_DEPTH = 64  # module nesting; the official networks are 5 deep
MAX_KWARGS_NODES = 10_000  # values in one network's init kwargs; the official ones have ~30
MAX_NAME_CHARS = 100  # parameter, buffer and submodule names (official: at most 14 characters)
# mbstd_group_size=None (the whole minibatch, which legacy.py can record) becomes the largest
# group artgen's config allows: the minibatch-stddev layer groups min(group, batch) samples.
WHOLE_BATCH_GROUP = CONFIG_LIMITS["mbstd_group_size"][1]

_NETWORK_KINDS = {"generator": "Generator", "discriminator": "Discriminator"}
# Config fields that only one of the two networks uses; the rest (resolution, img_channels,
# c_dim, channel_base, channel_max, conv_clamp) describe both and come from the network itself.
_G_ONLY = ("z_dim", "w_dim", "mapping_layers", "mapping_lr_multiplier", "w_avg_beta")
_D_ONLY = ("mbstd_group_size", "mbstd_num_channels", "d_architecture")


def _plain(value: Any, where: str, budget: list[int], depth: int = 0) -> Any:
    """Init kwargs as plain JSON-like data (EasyDict -> dict, tuple -> list, numpy -> python).

    ``budget`` ([values left]) is shared by the whole walk: a list holding the same list
    twice, 30 levels deep, is 2**30 values although the file names each one once.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise ArtgenError(f"{where}: init arguments hold more than {MAX_KWARGS_NODES} values")
    if depth > 32:
        raise ArtgenError(f"{where}: init arguments nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in dict.items(value) if isinstance(value, dict) else value.items():
            if not isinstance(k, str):  # EasyDict keys are argument names
                raise ArtgenError(f"{where}: init argument name {short_repr(k)} is not a string")
            out[k] = _plain(v, where, budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, where, budget, depth + 1) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return value.item()
    raise ArtgenError(f"{where}: init argument of unexpected type {type(value).__name__}")


def _init_kwargs(stub: PersistentStub) -> dict[str, Any]:
    state = stub.state
    args = state.get("_init_args") or ()
    kwargs = state.get("_init_kwargs") or {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping):
        raise ArtgenError(f"{stub.class_name}: malformed _init_args / _init_kwargs")
    budget = [MAX_KWARGS_NODES]
    out = _plain(kwargs, stub.class_name, budget)
    if args:
        names = _POSITIONAL.get(stub.class_name)
        if names is None or len(args) > len(names):
            raise ArtgenError(
                f"{stub.class_name}: cannot name {len(args)} positional init arguments"
            )
        for name, value in zip(names[: len(args)], args, strict=True):
            if name in out:
                raise ArtgenError(f"{stub.class_name}: init argument {name} given twice")
            out[name] = _plain(value, stub.class_name, budget)
    return out


def _collect(
    stub: PersistentStub, prefix: str, out: dict[str, torch.Tensor], seen: set[int], depth: int
) -> None:
    where = prefix.rstrip(".") or stub.class_name
    if depth > _MAX_DEPTH or id(stub) in seen:
        raise ArtgenError(f"{clip(where)}: module tree is cyclic, shared or too deep")
    seen.add(id(stub))
    state = stub.state
    if not isinstance(state, Mapping):
        raise ArtgenError(f"{clip(where)}: module without state")
    params = state.get("_parameters") or {}
    buffers = state.get("_buffers") or {}
    modules = state.get("_modules") or {}
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind, table in (("_parameters", params), ("_buffers", buffers), ("_modules", modules)):
        if not isinstance(table, Mapping):
            raise ArtgenError(f"{clip(where)}: {kind} is not a dict")
    if not isinstance(non_persistent, (set, frozenset)):
        raise ArtgenError(f"{clip(where)}: _non_persistent_buffers_set is not a set")

    def valid(name: Any) -> bool:
        return isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and "." not in name

    def add(name: Any, tensor: Any) -> None:
        if not valid(name):
            raise ArtgenError(f"{clip(where)}: bad tensor name {short_repr(name)}")
        if tensor is None:  # a registered-but-unset slot (e.g. bias=False): not in a state dict
            return
        if not isinstance(tensor, torch.Tensor):
            raise ArtgenError(f"{clip(prefix + name)}: is a {type(tensor).__name__}, not a tensor")
        if prefix + name in out:
            raise ArtgenError(f"{clip(prefix + name)}: appears twice")
        out[prefix + name] = tensor

    for name, tensor in params.items():
        add(name, tensor)
    for name, tensor in buffers.items():
        # As torch's state_dict: non-persistent buffers are not saved.
        if name not in non_persistent:
            add(name, tensor)
    for name, child in modules.items():
        if not valid(name):
            raise ArtgenError(f"{clip(where)}: bad submodule name {short_repr(name)}")
        if child is None:
            continue
        if not isinstance(child, PersistentStub):
            raise ArtgenError(f"{clip(prefix + name)}: is a {type(child).__name__}, not a module")
        _collect(child, f"{prefix}{name}.", out, seen, depth + 1)


def stylegan2_state(stub: PersistentStub) -> tuple[dict, dict[str, torch.Tensor]]:
    """A network stub's constructor kwargs and its state dict under the official names.

    The kwargs are ``_init_kwargs`` as plain data (EasyDicts become dicts), with
    ``_init_args`` named after the official signature. The state dict holds every
    ``_parameters`` entry and every persistent ``_buffers`` entry of the module tree
    (``_modules``), keyed as ``torch.nn.Module.state_dict`` keys them
    (``synthesis.b8.conv0.weight``, ``mapping.w_avg``...).
    """
    if not isinstance(stub, PersistentStub):
        raise ArtgenError(
            f"expected a network from a StyleGAN2-ADA pickle, got {type(stub).__name__}"
        )
    tensors: dict[str, torch.Tensor] = {}
    _collect(stub, "", tensors, set(), 0)
    return _init_kwargs(stub), tensors


class _Options:
    """Reads a kwargs dict, noting which keys were used, so leftovers can be refused by name."""

    def __init__(self, kwargs: Any, where: str):
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise ArtgenError(f"{where}: expected a dict, got {type(kwargs).__name__}")
        self.kwargs, self.where, self.used = dict(kwargs), where, set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.kwargs.get(key, default)  # a None given explicitly stays None

    def require(self, key: str) -> Any:
        if self.kwargs.get(key) is None:
            raise ArtgenError(f"{self.where}: missing {key}")
        return self.get(key)

    def ignore(self, *keys: str) -> None:
        self.used.update(keys)

    def expect(self, key: str, supported: Any, default: Any) -> None:
        value = self.get(key, default)
        if value != supported:
            raise ArtgenError(
                f"{self.where}: {key}={short_repr(value)} is not supported by artgen "
                f"(only {supported!r})"
            )

    def sub(self, key: str) -> _Options:
        self.used.add(key)
        return _Options(self.kwargs.get(key), f"{self.where}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.kwargs) - self.used)
        if unknown:
            raise ArtgenError(
                f"{self.where}: unknown option {short_repr(unknown[0])} (not converted)"
            )


def config_from_kwargs(kind: str, kwargs: dict) -> StyleGAN2Config:
    """Map an official Generator / Discriminator's constructor kwargs onto a StyleGAN2Config.

    ``kind`` is "generator" or "discriminator". Fields the other network owns keep their
    defaults (``convert_stylegan2_pickle`` fills them from that network). Anything artgen
    does not implement is refused with an ArtgenError naming the option.
    """
    if kind not in _NETWORK_KINDS:
        raise ArtgenError(f'kind must be "generator" or "discriminator", got {kind!r}')
    top = _Options(kwargs, _NETWORK_KINDS[kind])
    fields: dict[str, Any] = {
        "resolution": top.require("img_resolution"),
        "img_channels": top.require("img_channels"),
        "c_dim": top.get("c_dim", 0),
    }
    if kind == "generator":
        fields["z_dim"] = top.require("z_dim")
        fields["w_dim"] = top.require("w_dim")

        mapping = top.sub("mapping_kwargs")
        fields["mapping_layers"] = mapping.get("num_layers", 8)
        fields["mapping_lr_multiplier"] = mapping.get("lr_multiplier", 0.01)
        w_avg_beta = mapping.get("w_avg_beta", 0.995)
        if w_avg_beta is None:
            raise ArtgenError(
                "Generator.mapping_kwargs: w_avg_beta=None (no W average) is not supported"
            )
        fields["w_avg_beta"] = w_avg_beta
        for key in ("embed_features", "layer_features"):  # None = w_dim, what artgen does
            value = mapping.get(key)
            if value not in (None, fields["w_dim"]):
                raise ArtgenError(
                    f"Generator.mapping_kwargs: {key}={short_repr(value)} is not supported"
                )
        mapping.expect("activation", "lrelu", "lrelu")
        mapping.done()

        synthesis = top.sub("synthesis_kwargs")
        fields["channel_base"] = synthesis.get("channel_base", 32768)
        fields["channel_max"] = synthesis.get("channel_max", 512)
        fields["conv_clamp"] = synthesis.get("conv_clamp")
        synthesis.expect("architecture", "skip", "skip")
        synthesis.expect("resample_filter", _FILTER, _FILTER)
        synthesis.expect("use_noise", True, True)
        synthesis.expect("activation", "lrelu", "lrelu")
        synthesis.expect("kernel_size", 3, 3)
        # fp16 only changes the arithmetic of the highest resolutions (the weights are stored in
        # fp32 either way); artgen runs fp32, which the official code also does with
        # force_fp32=True. Channels-last is a memory layout.
        synthesis.ignore("num_fp16_res", "fp16_channels_last")
        synthesis.done()
    else:
        architecture = top.get("architecture", "resnet")
        if architecture not in ("resnet", "orig"):
            raise ArtgenError(
                f"Discriminator: architecture={short_repr(architecture)} is not supported by "
                "artgen (only 'resnet' and 'orig')"
            )
        fields["d_architecture"] = architecture
        fields["channel_base"] = top.get("channel_base", 32768)
        fields["channel_max"] = top.get("channel_max", 512)
        fields["conv_clamp"] = top.get("conv_clamp")
        top.ignore("num_fp16_res")  # fp32 inference; see the generator's note above
        cmap_dim = top.get("cmap_dim")  # checked below, once the config has checked its fields

        block = top.sub("block_kwargs")
        block.expect("activation", "lrelu", "lrelu")
        block.expect("resample_filter", _FILTER, _FILTER)
        # Freeze-D only turns the first layers' weights into buffers (same names, same values);
        # freezing is a training choice (artgen: requires_grad_(False) on the first blocks).
        block.ignore("freeze_layers", "fp16_channels_last")
        block.done()

        mapping = top.sub("mapping_kwargs")  # label mapping; only built when c_dim > 0
        if fields["c_dim"]:
            mapping.expect("num_layers", D_MAPPING_LAYERS, D_MAPPING_LAYERS)
            mapping.expect("lr_multiplier", D_MAPPING_LR_MULTIPLIER, 0.01)
            mapping.expect("activation", "lrelu", "lrelu")
            for key in ("embed_features", "layer_features"):
                mapping.expect(key, None, None)
        else:
            mapping.ignore(*mapping.kwargs)
        mapping.done()

        epilogue = top.sub("epilogue_kwargs")
        group_size = epilogue.get("mbstd_group_size", 4)
        fields["mbstd_num_channels"] = epilogue.get("mbstd_num_channels", 1)
        # None is one group of the whole minibatch: what legacy.py records when it converts a
        # TensorFlow network that did not set the group size (converted TensorFlow releases
        # seen in use record it so). artgen's group is min(group_size, batch), so its largest
        # group size is the same layer for any batch up to that size (a D's batches are far
        # smaller).
        fields["mbstd_group_size"] = WHOLE_BATCH_GROUP if group_size is None else group_size
        epilogue.expect("activation", "lrelu", "lrelu")
        epilogue.done()
    top.done()
    config = StyleGAN2Config(**fields)
    if kind == "discriminator" and config.c_dim and cmap_dim not in (None, config.channels(4)):
        raise ArtgenError(f"Discriminator: cmap_dim={short_repr(cmap_dim)} is not supported")
    return config


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    problems = [f"missing {k}" for k in missing] + [f"unexpected {clip(k, 120)}" for k in extra]
    problems += [
        f"{k} has shape {list(state[k].shape)}, artgen expects {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems += [
        f"{k} has dtype {state[k].dtype}"
        for k in expected
        if k in state and not state[k].is_floating_point()
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ArtgenError(
            f"{what}: does not match the artgen network: {'; '.join(problems[:3])}{more}"
        )
    model.load_state_dict(state, strict=True)


def _merge(own: StyleGAN2Config, other: StyleGAN2Config | None, fields: Iterable[str]):
    if other is None:
        return own
    return dataclasses.replace(own, **{f: getattr(other, f) for f in fields})


def _pick_networks(data: dict, which: tuple[str, ...], source: str) -> dict[str, str]:
    """{'generator': key, 'discriminator': key} for the requested, present networks."""
    if not which or not set(which) <= {"G_ema", "G", "D"}:
        raise ArtgenError(f'which must name networks among "G_ema", "G" and "D", got {which!r}')
    picked: dict[str, str] = {}
    gens = [k for k in which if k in ("G_ema", "G")]
    if gens:
        order = gens + (["G"] if "G" not in gens else [])  # G_ema falls back to G
        key = next((k for k in order if isinstance(data.get(k), PersistentStub)), None)
        if key is None:
            raise ArtgenError(f"{source}: holds no generator ({' or '.join(order)})")
        picked["generator"] = key
    if "D" in which:
        if not isinstance(data.get("D"), PersistentStub):
            raise ArtgenError(f"{source}: holds no discriminator (D)")
        picked["discriminator"] = "D"
    return picked


def _other_config(data: dict, role: str) -> StyleGAN2Config | None:
    """The config of a network that is not converted, for its fields only; None if unusable."""
    keys = ("G_ema", "G") if role == "generator" else ("D",)
    stub = next((data[k] for k in keys if isinstance(data.get(k), PersistentStub)), None)
    if stub is None or stub.class_name != _NETWORK_KINDS[role]:
        return None
    try:
        return config_from_kwargs(role, _init_kwargs(stub))
    except ArtgenError:
        return None


def _check_class(stub: PersistentStub, expected: str, key: str, source: str) -> None:
    if stub.class_name != expected:
        raise ArtgenError(f"{source}: {key} is a {stub.class_name}, not a {expected}")


def convert_stylegan2_pickle(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    which: tuple[str, ...] = ("G_ema", "D"),
) -> dict[str, Path]:
    """Convert a stylegan2-ada-pytorch ``network-snapshot-*.pkl`` into artgen models.

    Writes ``out_dir/generator`` (from G_ema, or G where the pickle has no G_ema) and
    ``out_dir/discriminator`` (from D) with ``save_pretrained``, as requested by ``which``,
    and returns {"generator": path, "discriminator": path}. ``out_dir`` must not exist or be
    an empty folder; it appears complete or not at all. Raises ArtgenError for an unsafe,
    corrupt or unsupported pickle.
    """
    source = str(path)
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ArtgenError(f"{out}: already exists and is not an empty folder (not overwritten)")

    data = load_stylegan2_pickle(path)
    which = (which,) if isinstance(which, str) else tuple(which)
    picked = _pick_networks(data, which, source)
    stubs = {role: data[key] for role, key in picked.items()}
    for role, stub in stubs.items():
        _check_class(stub, _NETWORK_KINDS[role], picked[role], source)

    kwargs, states, configs = {}, {}, {}
    for role, stub in stubs.items():
        where = f"{source}: {picked[role]}"
        try:
            kwargs[role], states[role] = stylegan2_state(stub)
            configs[role] = config_from_kwargs(role, kwargs[role])
        except ArtgenError as e:
            raise ArtgenError(f"{where}: {e}") from None
    # Each saved config describes both networks: fill what one network does not know from the
    # other (the D's mbstd settings in the generator's config and vice versa), read from the
    # pickle even when that other network is not converted.
    for role, other_role, fields in (
        ("generator", "discriminator", _D_ONLY),
        ("discriminator", "generator", _G_ONLY),
    ):
        if role in configs:
            other = configs.get(other_role) or _other_config(data, other_role)
            configs[role] = _merge(configs[role], other, fields)

    models: dict[str, torch.nn.Module] = {}
    for role in stubs:
        where = f"{source}: {picked[role]}"
        try:
            model = (Generator if role == "generator" else Discriminator)(configs[role])
        except ArtgenError as e:
            raise ArtgenError(f"{where}: {e}") from None
        _load_strict(model, states[role], where)
        models[role] = model.eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden sibling (same file system, so the rename is atomic); mkdir, unlike
    # tempfile.mkdtemp, gives the folder the usual permissions.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()
    try:
        for role, model in models.items():
            model.save_pretrained(tmp / role)
        try:
            if out.is_dir() and os.name == "nt":  # Windows renames only onto a missing name
                out.rmdir()  # (fails, untouched, if someone filled it meanwhile)
            os.replace(tmp, out)  # atomic; POSIX replaces only a missing or empty folder
        except OSError as e:
            raise ArtgenError(f"{out}: could not be created ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {role: out / role for role in models}
