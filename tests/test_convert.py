"""Importing StyleGAN2-ADA network pickles (artgen.interop.safe_pickle, artgen.interop.convert).

The pickles are built here without NVlabs' code, byte-for-byte the way
stylegan2-ada-pytorch writes ``network-snapshot-*.pkl``: a plain pickle of
{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} in which every network
module pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``,
meta = dict(type='class', version=6, module_src=..., class_name=..., state=<the
module's __dict__>). The state is that of tiny artgen networks (whose parameter and
buffer names are the official ones), so tensors, parameters and storages go through
torch's own pickling; gains are numpy scalars and nested kwargs dnnlib.EasyDicts, as
in the official code. The names ``torch_utils.persistence`` and ``dnnlib.util`` exist
in ``sys.modules`` only while a pickle is being written.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import io
import os
import pickle
import struct
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from artgen.core.errors import ArtgenError
from artgen.interop import safe_pickle
from artgen.interop.convert import config_from_kwargs, convert_stylegan2_pickle, stylegan2_state
from artgen.interop.safe_pickle import PersistentStub, load_stylegan2_pickle
from artgen.models.stylegan2 import Discriminator, Generator, StyleGAN2Config

from .stylegan2_pickles import (
    CFG,
    EasyDict,
    Evil,
    OfficialGenerator,
    Persistent,
    TFNetwork,
    build_snapshot,
    d_kwargs,
    g_kwargs,
    module_src_for,
    official_tree,
    write_pickle,
)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER"


@pytest.fixture(scope="module")
def snapshot_file(tmp_path_factory):
    """A snapshot pickle (protocol 4, as the official training loop writes) and its networks."""
    folder = tmp_path_factory.mktemp("snapshot")
    marker = folder / "MARKER"
    snapshot, nets = build_snapshot(module_src_for(marker))
    return write_pickle(folder / "network-snapshot-000100.pkl", snapshot), nets, marker


def images(g: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    z = torch.randn([3, CFG.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g(z, noise_mode="const")


def logits(d: torch.nn.Module, seed: int = 2) -> torch.Tensor:
    img = torch.randn(
        [4, 3, CFG.resolution, CFG.resolution], generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return d(img)


# -- conversion gives the same networks -----------------------------------------------------------


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_converted_networks_give_the_same_images_and_logits(snapshot_file, tmp_path):
    pkl, nets, marker = snapshot_file
    out = convert_stylegan2_pickle(pkl, tmp_path / "out")

    assert out == {
        "generator": tmp_path / "out" / "generator",
        "discriminator": tmp_path / "out" / "discriminator",
    }
    g = Generator.from_pretrained(out["generator"])
    d = Discriminator.from_pretrained(out["discriminator"])
    assert g.config == CFG and d.config == CFG  # each config gets the other network's fields
    assert torch.equal(images(g), images(nets["G_ema"]))  # bit for bit
    assert torch.equal(logits(d), logits(nets["D"]))
    assert same_state(g, nets["G_ema"]) and not same_state(g, nets["G"])  # G_ema, not G
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_every_pickle_protocol_converts_exactly(tmp_path, protocol, marker):
    """The official snapshots use protocol 3 or 4 (pickle.dump's default); 2 spells bytes and
    sets with _codecs.encode / __builtin__.set, 5 is the newest."""
    snapshot, nets = build_snapshot(module_src_for(marker), seed=protocol)
    pkl = write_pickle(tmp_path / "net.pkl", snapshot, protocol)
    out = convert_stylegan2_pickle(pkl, tmp_path / "out")
    assert same_state(Generator.from_pretrained(out["generator"]), nets["G_ema"])
    assert same_state(Discriminator.from_pretrained(out["discriminator"]), nets["D"])
    assert not marker.exists()


def test_loading_gives_inert_stubs_with_the_official_state(snapshot_file):
    pkl, nets, marker = snapshot_file
    data = load_stylegan2_pickle(pkl)

    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    g = data["G_ema"]
    assert isinstance(g, PersistentStub)
    assert (g.class_name, g.module_name_hint) == ("Generator", "training.networks")
    src_hash = hashlib.sha256(module_src_for(marker).encode()).hexdigest()
    assert g.module_src_sha256 == src_hash
    assert not hasattr(g, "module_src")
    fc = g.state["_modules"]["mapping"].state["_modules"]["fc0"]
    assert fc.class_name == "FullyConnectedLayer"
    assert type(fc.state["weight_gain"]) is np.float64
    assert fc.state["weight_gain"] == nets["G_ema"].mapping.fc0.weight_gain
    assert data["training_set_kwargs"] == dict(
        class_name="training.dataset.ImageFolderDataset",
        path="~/datasets/art.zip",
        use_labels=False,
        max_size=1000,
        xflip=False,
        resolution=CFG.resolution,
    )
    assert data["augment_pipe"].class_name == "AugmentPipe"
    assert data["augment_pipe"].module_name_hint == "training.augment"

    kwargs, state = stylegan2_state(g)
    expected = nets["G_ema"].state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert kwargs == dict(
        z_dim=32,
        w_dim=32,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={
            "channel_base": 256,
            "channel_max": 32,
            "num_fp16_res": 4,
            "conv_clamp": 256,
        },
        c_dim=0,
        img_resolution=16,
        img_channels=3,
    )
    assert type(kwargs["mapping_kwargs"]) is dict
    assert config_from_kwargs("generator", kwargs) == CFG
    d_kw, d_state = stylegan2_state(data["D"])
    assert d_state.keys() == nets["D"].state_dict().keys()
    # The D knows nothing of the mapping network: those fields keep their defaults here
    # (convert_stylegan2_pickle fills them from the G).
    d_defaults = StyleGAN2Config()
    assert config_from_kwargs("discriminator", d_kw) == dataclasses.replace(
        CFG,
        z_dim=d_defaults.z_dim,
        w_dim=d_defaults.w_dim,
        mapping_layers=d_defaults.mapping_layers,
    )


def test_plain_torch_modules_become_stubs(tmp_path):
    linear = torch.nn.Linear(3, 2)
    pkl = write_pickle(
        tmp_path / "net.pkl",
        {
            "G": Persistent(
                "Generator",
                {
                    "_parameters": OrderedDict(),
                    "_buffers": OrderedDict(),
                    "_modules": OrderedDict(head=linear, act=torch.nn.LeakyReLU(0.2)),
                },
                "",
            )
        },
    )
    g = load_stylegan2_pickle(pkl)["G"]
    head, act = g.state["_modules"]["head"], g.state["_modules"]["act"]
    assert (head.class_name, head.module_name_hint) == ("Linear", "torch.nn.modules.linear")
    assert act.class_name == "LeakyReLU" and act.state["negative_slope"] == 0.2
    assert isinstance(head, PersistentStub) and head.module_src_sha256 is None
    _, state = stylegan2_state(g)
    assert state.keys() == {"head.weight", "head.bias"}
    assert torch.equal(state["head.weight"], linear.weight)


def test_module_src_is_never_executed(snapshot_file, tmp_path):
    pkl, _, marker = snapshot_file
    # The marker mechanism works: executing the source, as the official loader does, leaves it.
    control = tmp_path / "CONTROL"
    with pytest.raises(SystemExit):
        exec(module_src_for(control), {})
    assert control.exists()

    load_stylegan2_pickle(pkl)
    convert_stylegan2_pickle(pkl, tmp_path / "out")
    assert not marker.exists()


# -- refusing code ------------------------------------------------------------------------------


def _evil_cases(marker: Path):
    return [
        (os.system, (f"touch {marker}",), f"{os.system.__module__}.system"),
        (builtins.eval, (f"open({str(marker)!r}, 'w')",), "builtins.eval"),
        (builtins.exec, (f"open({str(marker)!r}, 'w')",), "builtins.exec"),
        (subprocess.Popen, (["touch", str(marker)],), "subprocess.Popen"),
    ]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("where", ["top", "deep"])
def test_code_in_the_pickle_is_refused_before_it_runs(tmp_path, marker, case, where):
    func, args, name = _evil_cases(marker)[case]
    snapshot, _ = build_snapshot(module_src_for(marker))
    if where == "top":
        snapshot["G"] = Evil(func, *args)
    else:  # hidden in a hook dict of a layer deep in G_ema
        layer = snapshot["G_ema"].child("synthesis.b8.conv0")
        layer.state["_forward_hooks"] = OrderedDict({0: Evil(func, *args)})
    pkl = write_pickle(tmp_path / "net.pkl", snapshot)

    with pytest.raises(ArtgenError) as err:
        load_stylegan2_pickle(pkl)
    assert str(err.value) == (
        f"{pkl}: refuses to load '{name}': a StyleGAN2-ADA pickle holds only network state; "
        "this file would run code"
    )
    with pytest.raises(ArtgenError, match="refuses to load"):
        convert_stylegan2_pickle(pkl, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_official_classes_and_tensorflow_pickles_are_refused(tmp_path):
    pkl = write_pickle(tmp_path / "plain.pkl", {"G": OfficialGenerator()})
    with pytest.raises(ArtgenError, match=r"refuses to load 'training\.networks\.Generator'"):
        load_stylegan2_pickle(pkl)
    pkl = write_pickle(tmp_path / "tf.pkl", (TFNetwork(), TFNetwork(), TFNetwork()))
    with pytest.raises(ArtgenError, match="TensorFlow"):
        load_stylegan2_pickle(pkl)


def test_reduce_to_an_allowed_function_with_bad_data_is_refused(tmp_path):
    """Allowed names still only accept the data the official format writes."""
    cases = {
        "version": {"G": Persistent("Generator", {}, "", version=5)},
        "type": {"G": Persistent("Generator", {}, "", type="function")},
        "storage": {
            "G": Evil(
                torch._utils._rebuild_tensor_v2,
                "not a storage",
                0,
                (1,),
                (1,),
                False,
                OrderedDict(),
            )
        },
        "dtype": {"G": Evil(np.dtype, "O8", False, True)},
    }
    for what, obj in cases.items():
        pkl = write_pickle(tmp_path / f"{what}.pkl", obj)
        with pytest.raises(ArtgenError, match="not a valid StyleGAN2-ADA pickle"):
            load_stylegan2_pickle(pkl)


def test_a_storage_reaching_past_its_data_is_refused(tmp_path):
    t = torch.arange(4.0)

    class Overreach:
        def __reduce__(self):
            func, args = t.__reduce_ex__(4)  # (_rebuild_tensor_v2, (storage, 0, size, stride...))
            return (func, (args[0], 2, (4,), (1,), *args[4:]))

    pkl = write_pickle(tmp_path / "over.pkl", {"G": Overreach()})
    with pytest.raises(ArtgenError, match="reaches past its storage"):
        load_stylegan2_pickle(pkl)


class _StorageRef:
    """A storage pickled as torch does: torch.storage._load_from_bytes(<legacy torch.save>)."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.data,))


def legacy_storage_bytes(
    values: list[float], location: str = "cuda:0", *, keys=("94051",), numel: int | None = None
) -> bytes:
    """One float32 storage in the legacy torch.save layout, written by hand as torch 1.7-1.9
    (the stylegan2-ada-pytorch era) wrote it: magic number, protocol version, system info,
    a pickle of a persistent id ('storage', torch.FloatStorage, key, location, numel, None),
    the key list, then the element count (int64) and the raw little-endian data."""
    f = io.BytesIO()
    info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 8},
    }
    for header in (0x1950A86A20F9469CFC6C, 1001, info):
        pickle.dump(header, f, protocol=2)
    storage = object()

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return (
                    "storage",
                    torch.FloatStorage,
                    "94051",
                    location,
                    len(values) if numel is None else numel,
                    None,
                )
            return None

    LegacyPickler(f, protocol=2).dump(storage)
    pickle.dump(list(keys), f, protocol=2)
    f.write(struct.pack("<q", len(values)) + struct.pack(f"<{len(values)}f", *values))
    return f.getvalue()


def test_legacy_storage_bytes_of_the_torch_1_era(tmp_path):
    """A cuda storage written in the torch 1.x layout loads (onto the CPU) through torch's
    weights_only reader; strides and offsets are honoured."""
    storage = _StorageRef(legacy_storage_bytes([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    weight = Evil(
        torch._utils._rebuild_parameter,
        Evil(torch._utils._rebuild_tensor_v2, storage, 1, (2, 3), (1, 2), True, OrderedDict()),
        True,
        OrderedDict(),
    )
    layer = Persistent("FullyConnectedLayer", {"_parameters": OrderedDict(weight=weight)}, "")
    pkl = write_pickle(tmp_path / "net.pkl", {"G": layer}, protocol=3)
    _, state = stylegan2_state(load_stylegan2_pickle(pkl)["G"])
    assert state["weight"].device.type == "cpu"
    assert state["weight"].tolist() == [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]

    short = _StorageRef(legacy_storage_bytes([1.0, 2.0])[:-4])  # data ends early
    bad = Evil(torch._utils._rebuild_tensor_v2, short, 0, (2,), (1,), False, OrderedDict())
    pkl = write_pickle(tmp_path / "short.pkl", {"G": bad})
    with pytest.raises(ArtgenError, match="unreadable tensor storage"):
        load_stylegan2_pickle(pkl)


@pytest.mark.parametrize("kind", ["no key", "claims more", "two keys"])
def test_a_storage_must_hold_every_element_it_claims(tmp_path, kind):
    """torch allocates what the storage's pickle claims and fills only what the key list
    names: a storage that claims more than it holds would carry uninitialised memory."""
    make = {
        "no key": dict(keys=()),
        "claims more": dict(numel=16 * 16),
        "two keys": dict(keys=("94051", "1")),
    }[kind]
    data = legacy_storage_bytes([1.0, 2.0, 3.0, 4.0], **make)
    weight = Evil(
        torch._utils._rebuild_tensor_v2, _StorageRef(data), 0, (2, 2), (2, 1), False, OrderedDict()
    )
    pkl = write_pickle(tmp_path / "u.pkl", {"G": weight})
    with pytest.raises(ArtgenError, match="tensor storage"):
        load_stylegan2_pickle(pkl)


def test_storages_use_only_torchs_own_allow_list(tmp_path):
    """A global that other code registered for its own torch.load calls does not widen what a
    pickled storage may name; the registration is restored afterwards."""

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled",))

    data = io.BytesIO()
    torch.save({"x": Payload()}, data, _use_new_zipfile_serialization=False)
    pkl = write_pickle(
        tmp_path / "net.pkl",
        {
            "G": Evil(
                torch._utils._rebuild_tensor_v2,
                _StorageRef(data.getvalue()),
                0,
                (1,),
                (1,),
                False,
                OrderedDict(),
            )
        },
    )
    saved = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([print])
    try:
        # Refused while reading (had print been called, the storage would be "a dict").
        with pytest.raises(
            ArtgenError, match=r"unreadable tensor storage \(Unsupported global: GLOBAL print "
        ):
            load_stylegan2_pickle(pkl)
        assert print in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_old_torch_is_refused_for_storages(snapshot_file, monkeypatch):
    pkl, _, _ = snapshot_file
    monkeypatch.setattr(safe_pickle, "_torch_version", lambda: (2, 9))
    with pytest.raises(ArtgenError, match=r"needs torch >= 2\.10"):
        load_stylegan2_pickle(pkl)


# -- broken files ------------------------------------------------------------------------------


def test_truncated_and_non_pickle_files(snapshot_file, tmp_path):
    pkl, _, _ = snapshot_file
    data = pkl.read_bytes()
    for cut in (1, 2, 40, len(data) // 3, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.pkl"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtgenError, match=rf"^{bad}: (truncated|corrupt|not a pickle)"):
            load_stylegan2_pickle(bad)

    text = tmp_path / "notes.pkl"
    text.write_text("these are not the weights you are looking for\n")
    with pytest.raises(ArtgenError, match="not a pickle file"):
        load_stylegan2_pickle(text)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(ArtgenError, match="not a pickle file"):
        load_stylegan2_pickle(empty)
    archive = tmp_path / "model.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ArtgenError, match="zip archive"):
        load_stylegan2_pickle(archive)
    with pytest.raises(ArtgenError, match="no such file"):
        load_stylegan2_pickle(tmp_path / "missing.pkl")
    with pytest.raises(ArtgenError, match="larger than"):
        load_stylegan2_pickle(pkl, max_bytes=1000)
    not_networks = write_pickle(tmp_path / "list.pkl", [1, 2, 3])
    with pytest.raises(ArtgenError, match="not the dict of networks"):
        load_stylegan2_pickle(not_networks)
    no_networks = write_pickle(tmp_path / "dict.pkl", {"G": 1})
    with pytest.raises(ArtgenError, match="holds no StyleGAN2-ADA network"):
        load_stylegan2_pickle(no_networks)


# -- the output folder ---------------------------------------------------------------------------


def test_an_existing_folder_is_never_overwritten(snapshot_file, tmp_path):
    pkl, _, _ = snapshot_file
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ArtgenError, match="already exists"):
        convert_stylegan2_pickle(pkl, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ArtgenError, match="already exists"):
        convert_stylegan2_pickle(pkl, a_file)

    empty = tmp_path / "empty"
    empty.mkdir()
    paths = convert_stylegan2_pickle(pkl, empty)
    assert sorted(p.name for p in empty.iterdir()) == ["discriminator", "generator"]
    assert paths["generator"] == empty / "generator"


def test_which_networks(tmp_path, marker):
    snapshot, nets = build_snapshot(module_src_for(marker))
    del snapshot["G_ema"]
    pkl = write_pickle(tmp_path / "net.pkl", snapshot)
    out = convert_stylegan2_pickle(pkl, tmp_path / "g", which=("G_ema",))
    assert list(out) == ["generator"]
    assert Generator.from_pretrained(out["generator"]).config == CFG  # mbstd fields from the D
    assert same_state(Generator.from_pretrained(out["generator"]), nets["G"])
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["generator"]

    out = convert_stylegan2_pickle(pkl, tmp_path / "d", which=("D",))
    assert list(out) == ["discriminator"]
    assert Discriminator.from_pretrained(out["discriminator"]).config == CFG  # mapping from G
    with pytest.raises(ArtgenError, match="which must name"):
        convert_stylegan2_pickle(pkl, tmp_path / "x", which=("H",))
    del snapshot["D"]
    pkl = write_pickle(tmp_path / "g_only.pkl", snapshot)
    with pytest.raises(ArtgenError, match=r"holds no discriminator \(D\)"):
        convert_stylegan2_pickle(pkl, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- what artgen does not support ----------------------------------------------------------------


def test_orig_discriminator_with_positional_arguments(tmp_path, marker):
    """The official CIFAR-10 D ("orig"), built with positional arguments."""
    cfg = StyleGAN2Config(**{**CFG.to_dict(), "d_architecture": "orig"})
    torch.manual_seed(3)
    g, d = Generator(cfg).eval(), Discriminator(cfg).eval()
    src = module_src_for(marker)
    kw = d_kwargs(cfg, architecture="orig")
    args = tuple(kw.pop(k) for k in ("c_dim", "img_resolution", "img_channels"))
    snapshot = {
        "G_ema": official_tree(g, src, g_kwargs(cfg)),
        "D": official_tree(d, src, kw, init_args=args),
    }
    out = convert_stylegan2_pickle(write_pickle(tmp_path / "net.pkl", snapshot), tmp_path / "o")
    converted = Discriminator.from_pretrained(out["discriminator"])
    assert converted.config == cfg
    assert Generator.from_pretrained(out["generator"]).config == cfg
    assert torch.equal(logits(converted), logits(d))


@pytest.mark.parametrize(
    "network, change, message",
    [
        (
            "G_ema",
            lambda kw: kw["synthesis_kwargs"].update(architecture="resnet"),
            "architecture='resnet' is not supported",
        ),
        ("D", lambda kw: kw.update(architecture="skip"), "architecture='skip' is not supported"),
        (
            "G_ema",
            lambda kw: kw["mapping_kwargs"].update(activation="relu"),
            "activation='relu' is not supported",
        ),
        ("G_ema", lambda kw: kw.update(init_res=[4, 4]), "unknown option 'init_res'"),
        ("G_ema", lambda kw: kw.pop("z_dim"), "missing z_dim"),
    ],
)
def test_unsupported_options_are_refused_by_name(tmp_path, marker, network, change, message):
    snapshot, _ = build_snapshot(module_src_for(marker))
    change(snapshot[network].state["_init_kwargs"])
    pkl = write_pickle(tmp_path / "net.pkl", snapshot)
    with pytest.raises(ArtgenError, match=message) as err:
        convert_stylegan2_pickle(pkl, tmp_path / "out")
    assert str(err.value).startswith(f"{pkl}: {network}: ")
    assert not (tmp_path / "out").exists()


def test_mbstd_group_of_the_whole_minibatch(tmp_path, marker):
    """mbstd_group_size=None, which legacy.py records for a TensorFlow network that did not set
    it: one group of the whole minibatch."""
    snapshot, nets = build_snapshot(module_src_for(marker))
    snapshot["D"].state["_init_kwargs"]["epilogue_kwargs"] = EasyDict(
        mbstd_group_size=None, mbstd_num_channels=1, activation="lrelu"
    )
    out = convert_stylegan2_pickle(write_pickle(tmp_path / "net.pkl", snapshot), tmp_path / "o")
    d = Discriminator.from_pretrained(out["discriminator"])
    assert d.config.mbstd_group_size == 1024  # the largest group artgen's config allows
    assert Generator.from_pretrained(out["generator"]).config.mbstd_group_size == 1024
    img = torch.randn([8, 3, 16, 16], generator=torch.Generator().manual_seed(5))
    for n in (1, 3, 8):  # any batch is one group, as the official layer makes it
        whole = Discriminator(dataclasses.replace(CFG, mbstd_group_size=n)).eval()
        whole.load_state_dict(nets["D"].state_dict())
        with torch.no_grad():
            assert torch.equal(d(img[:n]), whole(img[:n]))


def test_missing_and_extra_tensors_are_named(tmp_path, marker):
    snapshot, _ = build_snapshot(module_src_for(marker))
    snapshot["G_ema"].child("mapping.fc1").state["_parameters"].pop("bias")
    pkl = write_pickle(tmp_path / "missing.pkl", snapshot)
    with pytest.raises(ArtgenError, match=r"G_ema: does not match .*missing mapping\.fc1\.bias"):
        convert_stylegan2_pickle(pkl, tmp_path / "out")

    snapshot, _ = build_snapshot(module_src_for(marker))
    snapshot["D"].child("b4.fc").state["_buffers"]["extra"] = torch.zeros(2)
    pkl = write_pickle(tmp_path / "extra.pkl", snapshot)
    with pytest.raises(ArtgenError, match=r"D: does not match .*unexpected b4\.fc\.extra"):
        convert_stylegan2_pickle(pkl, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_from_official_preset_kwargs():
    """train.py --cfg=paper256 (fmaps 0.5, map 8, mbstd 8) as the official pickle records it."""
    g = dict(
        z_dim=512,
        w_dim=512,
        c_dim=0,
        img_resolution=256,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        synthesis_kwargs={
            "channel_base": 16384,
            "channel_max": 512,
            "num_fp16_res": 4,
            "conv_clamp": 256,
        },
    )
    d = dict(
        c_dim=0,
        img_resolution=256,
        img_channels=3,
        channel_base=16384,
        channel_max=512,
        num_fp16_res=4,
        conv_clamp=256,
        block_kwargs={"freeze_layers": 0},
        mapping_kwargs={},
        epilogue_kwargs={"mbstd_group_size": 8},
    )
    gc, dc = config_from_kwargs("generator", g), config_from_kwargs("discriminator", d)
    assert (gc.resolution, gc.channel_base, gc.mapping_layers, gc.conv_clamp) == (
        256,
        16384,
        8,
        256,
    )
    assert (dc.mbstd_group_size, dc.d_architecture, dc.channel_base) == (8, "resnet", 16384)
    with pytest.raises(ArtgenError, match="kind must be"):
        config_from_kwargs("G", g)


def test_stub_copies_but_refuses_state_from_a_pickle(tmp_path):
    stub = PersistentStub("Generator", "training.networks", {"a": 1}, "00")
    copy = pickle.loads(pickle.dumps(stub))
    assert (copy.class_name, copy.state, copy.module_src_sha256) == ("Generator", {"a": 1}, "00")

    class Rebuilt(Persistent):  # the reconstructed object then gets a BUILD opcode
        def __reduce__(self):
            return (*super().__reduce__(), {"class_name": "Evil"})

    pkl = write_pickle(tmp_path / "build.pkl", {"G": Rebuilt("Generator", {}, "")})
    with pytest.raises(ArtgenError, match="sets state on the reconstructed Generator"):
        load_stylegan2_pickle(pkl)


def test_cli_convert_then_finetune_from_the_converted_base(snapshot_file, tmp_path, capsys):
    from artgen.cli import main
    from artgen.train.gan import load_gan

    path, _, _ = snapshot_file
    out = tmp_path / "converted"
    assert main(["convert", str(path), str(out)]) == 0
    assert "artgen finetune gan --base" in capsys.readouterr().out
    G, D = load_gan(out)
    assert G.config.resolution == CFG.resolution
    # Converting again into the same folder is refused and leaves it alone.
    assert main(["convert", str(path), str(out)]) == 2
    assert "artgen: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "network, key, value, message",
    [
        ("G_ema", "z_dim", 2**31, "z_dim must be in [1, 4096], got 2147483648"),
        ("D", "channel_max", 10**6, "channel_max must be in [1, 4096], got 1000000"),
        # Once a TypeError: the D's cmap_dim default was computed before the fields were checked.
        ("D", "channel_base", "abc", "channel_base must be an integer, got 'abc'"),
    ],
)
def test_network_sizes_from_a_pickle_are_bounded(
    tmp_path, marker, capsys, network, key, value, message
):
    from artgen.cli import main

    snapshot, _ = build_snapshot(module_src_for(marker))
    snapshot[network].state["_init_kwargs"][key] = value
    pkl = write_pickle(tmp_path / "net.pkl", snapshot)
    assert main(["convert", str(pkl), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"artgen: error: {pkl}: {network}: StyleGAN2 config: {message}"
    ]
    assert not (tmp_path / "out").exists()
