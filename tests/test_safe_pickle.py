"""Hostile pickles against artgen.interop.safe_pickle: state set on tensors, pickle bombs, fuzzing.

The files are written opcode by opcode (:class:`Asm`), as an attacker would, or with the
helpers of test_convert.py, which write snapshots the way stylegan2-ada-pytorch does. The
bombs run in a child process whose address space is capped, so that a regression fails the
test instead of taking the machine: each one must be refused in under 2 s with under
200 MB traced, through ``artgen convert`` (exit code 2, one line naming the file).
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from artgen.core.errors import ArtgenError
from artgen.interop import safe_pickle
from artgen.interop.convert import config_from_kwargs, stylegan2_state
from artgen.interop.safe_pickle import load_stylegan2_pickle, short_repr
from artgen.models.stylegan2 import StyleGAN2Config

from .stylegan2_pickles import (
    Evil,
    Persistent,
    build_snapshot,
    module_src_for,
    write_pickle,
)

# -- writing pickles opcode by opcode -------------------------------------------------------------


class Asm:
    """A protocol-4 pickle written opcode by opcode; memo entries numbered as MEMOIZE does."""

    def __init__(self):
        self.parts = [pickle.PROTO + b"\x04"]
        self.memo = 0

    def op(self, *raw: bytes) -> Asm:
        self.parts.extend(raw)
        return self

    def memoize(self) -> int:
        self.parts.append(pickle.MEMOIZE)
        self.memo += 1
        return self.memo - 1

    def get(self, index: int) -> Asm:
        return self.op(pickle.LONG_BINGET + struct.pack("<I", index))

    def str(self, text: str) -> Asm:
        data = text.encode()
        return self.op(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def int(self, value: int) -> Asm:
        return self.op(pickle.BININT + struct.pack("<i", value))

    def global_(self, module: str, name: str) -> Asm:
        return self.op(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def bomb(self, kind: str, levels: int) -> Asm:
        """X[0] = 'laugh'; X[i+1] = a container holding X[i] twice, by memo reference: a few
        bytes per level, 2**levels leaves when walked."""
        self.str("laugh")
        index = self.memoize()
        for _ in range(levels):
            self.op(pickle.POP)  # every level is in the memo; the stack holds only the last
            if kind == "tuple":
                self.get(index).get(index).op(pickle.TUPLE2)
                index = self.memoize()
            elif kind == "list":
                self.op(pickle.EMPTY_LIST)
                new = self.memoize()
                self.op(pickle.MARK).get(index).get(index).op(pickle.APPENDS)
                index = new
            else:  # frozenset({X, (X,)}): hashable, and its hash is cached
                self.op(pickle.MARK).get(index).get(index).op(pickle.TUPLE1, pickle.FROZENSET)
                index = self.memoize()
        return self

    def persistent(self, class_name: str, type_: Asm | None = None, state: Asm | None = None):
        """_reconstruct_persistent_obj(dict(type=..., version=6, ..., state=...))."""
        self.global_("torch_utils.persistence", "_reconstruct_persistent_obj")
        self.op(pickle.EMPTY_DICT, pickle.MARK)
        self.str("type")
        self.parts.extend(type_.parts[1:]) if type_ else self.str("class")
        self.str("version").int(6).str("module_src").str("").str("class_name").str(class_name)
        self.str("state")
        self.parts.extend(state.parts[1:]) if state else self.op(pickle.EMPTY_DICT)
        return self.op(pickle.SETITEMS, pickle.TUPLE1, pickle.REDUCE)

    def bytes(self) -> bytes:
        return b"".join(self.parts) + pickle.STOP


def sub(kind: str, levels: int, base: int) -> Asm:
    """A bomb to splice into another Asm whose memo already has ``base`` entries."""
    part = Asm()
    part.memo = base
    return part.bomb(kind, levels)


def kwargs_bomb() -> bytes:
    """G_ema and D whose _init_kwargs hold z_dim = a list bomb."""
    a = Asm().op(pickle.EMPTY_DICT, pickle.MARK)
    for key, cls in (("G_ema", "Generator"), ("D", "Discriminator")):
        a.str(key)
        state = Asm()
        state.op(pickle.EMPTY_DICT, pickle.MARK).str("_init_kwargs")
        state.op(pickle.EMPTY_DICT, pickle.MARK).str("z_dim")
        state.memo = a.memo
        state.bomb("list", 25)  # 2**25 values, within the depth limit: the budget stops it
        a.memo = state.memo
        state.op(pickle.SETITEMS, pickle.SETITEMS)
        a.persistent(cls, state=state)
    return a.op(pickle.SETITEMS).bytes()


def bombs() -> dict[str, tuple[bytes, str]]:
    """name: (file contents, what the one-line message must say)."""
    out = {}
    for kind, expected in (("tuple", "tuples nested"), ("list", "persistent object of type")):
        a = Asm().op(pickle.EMPTY_DICT).str("G")
        a.persistent("Generator", type_=sub(kind, 40, a.memo))
        out[f"meta-type-{kind}s"] = (a.op(pickle.SETITEM).bytes(), expected)
    for kind, expected in (
        ("tuple", "tuples nested"),
        ("frozenset", "dict key or set member is a"),
    ):
        a = Asm().op(pickle.EMPTY_DICT).bomb(kind, 40).int(1).op(pickle.SETITEM)
        out[f"top-key-{kind}s"] = (a.bytes(), expected)
    out["kwargs-lists"] = (kwargs_bomb(), "init arguments hold more than")
    # 9 bytes: a memo index of 2**26 (the C unpickler sizes its memo array to the index).
    memo = pickle.PROTO + b"\x04" + pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", 1 << 26)
    out["memo-index"] = (memo + pickle.STOP, "memo index 67108864 out of order")
    out["bytes-length"] = (
        pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", 1 << 40) + b"x" * 20,
        "truncated pickle",
    )
    out["unicode-length"] = (
        pickle.PROTO + b"\x04" + pickle.BINUNICODE8 + struct.pack("<Q", 1 << 33) + b"x" * 20,
        "truncated pickle",
    )
    out["deep-marks"] = (pickle.PROTO + b"\x04" + pickle.MARK * 100_000, "marks nested")
    big = b"\x01" * (1 << 20)
    out["big-int"] = (
        pickle.PROTO + b"\x04" + pickle.LONG4 + struct.pack("<i", len(big)) + big + pickle.STOP,
        "an integer of",
    )
    return out


# -- the bombs, refused fast, small and in one line ------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys, time, tracemalloc
    from artgen.cli import main
    import artgen.interop.convert  # noqa: F401  (imports torch before the cap)
    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    # A regression must fail the test, not exhaust the machine: 2 GiB more address space at most.
    cap = vm_bytes() + (2 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    results = {}
    for path, out in json.loads(sys.argv[1]):
        err = io.StringIO()
        tracemalloc.start()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err):
            rc = main(["convert", path, out])
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[path] = {"rc": rc, "stderr": err.getvalue(), "seconds": seconds, "peak": peak}
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="caps the child's memory through /proc")
def test_pickle_bombs_are_refused_quickly_in_one_line(tmp_path):
    cases = bombs()
    jobs = []
    for name, (data, _) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        assert len(data) < 2_000_000 and (len(data) < 2000 or name in ("big-int", "deep-marks"))
        jobs.append((str(path), str(tmp_path / f"{name}-out")))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, expected) in cases.items():
        path = str(tmp_path / f"{name}.pkl")
        result = results[path]
        lines = result["stderr"].splitlines()
        assert result["rc"] == 2, (name, result)
        assert len(lines) == 1 and lines[0].startswith(f"artgen: error: {path}: "), (name, lines)
        assert expected in lines[0], (name, lines[0])
        assert len(lines[0]) < len(path) + 400, (name, lines[0])
        assert result["seconds"] < 2, (name, result["seconds"])
        assert result["peak"] < 200 * 2**20, (name, result["peak"])
        assert not (tmp_path / f"{name}-out").exists()


def test_short_repr_is_bounded_whatever_the_value():
    x: object = "laugh"
    for _ in range(60):  # 2**60 leaves
        x = [x, (x,), {"k": x}]
    start = time.perf_counter()
    text = short_repr(x)
    assert time.perf_counter() - start < 0.1
    assert len(text) == 203 and text.endswith("...") and text.startswith("[[[[")
    assert short_repr(10**5000) == "<int of 16610 bits>"
    assert short_repr("a" * 10**7, 10) == "'aaaaaaaaa..."
    assert short_repr(torch.zeros(2, 3)) == "<tensor [2, 3] torch.float32>"
    assert short_repr({"a": (1,), "b": set()}) == "{'a': (1,), 'b': set()}"


def test_kwargs_are_walked_with_a_budget(tmp_path):
    x: object = 1
    for _ in range(20):  # 3**20 values, 20 deep
        x = [x, x, x]
    stub = safe_pickle.PersistentStub("Generator", None, {"_init_kwargs": {"z_dim": x}})
    with pytest.raises(ArtgenError, match="init arguments hold more than 10000 values"):
        stylegan2_state(stub)
    stub.state["_init_kwargs"] = {("a",) * 3: 1}
    with pytest.raises(ArtgenError, match="init argument name .* is not a string"):
        stylegan2_state(stub)


def test_opcode_and_tuple_limits(tmp_path, monkeypatch):
    snapshot, _ = build_snapshot(module_src_for(tmp_path / "MARKER"))
    pkl = write_pickle(tmp_path / "net.pkl", snapshot)
    load_stylegan2_pickle(pkl)  # within every limit
    monkeypatch.setattr(safe_pickle, "MAX_OPCODES", 1000)
    with pytest.raises(ArtgenError, match="more than 1000 opcodes"):
        load_stylegan2_pickle(pkl)
    monkeypatch.undo()
    wide = tmp_path / "wide.pkl"  # a tuple of 20,000 tuples, each once: nothing shared
    a = Asm().op(pickle.EMPTY_DICT).op(pickle.MARK)
    for _ in range(20_000):
        a.op(pickle.EMPTY_TUPLE, pickle.TUPLE1)
    wide.write_bytes(a.op(pickle.TUPLE).int(1).op(pickle.SETITEM).bytes())
    with pytest.raises(ArtgenError, match="tuples nested 2 deep, 20001 in all"):
        load_stylegan2_pickle(wide)


# -- state and items given to objects that must not take them --------------------------------------


class Grow:
    """A tensor followed by BUILD: Tensor.__setstate__((source, offset, size, stride)) calls
    set_, which points it at ``source``'s storage and grows that to ``size``."""

    def __init__(self, source: torch.Tensor, size: tuple[int, ...]):
        self.source, self.size = source, size

    def __reduce__(self):
        func, args = torch.arange(4.0).__reduce_ex__(4)
        stride = tuple(int(np.prod(self.size[i + 1 :])) for i in range(len(self.size)))
        return (func, args, (self.source, 0, self.size, stride))


def _layer(weight) -> dict:
    return {"G": Persistent("Generator", {"_parameters": OrderedDict(weight=weight)}, "")}


@pytest.mark.parametrize("size", [(32, 32), (1 << 14, 1 << 14)])  # heap leftovers; 1 GiB
def test_build_cannot_reach_tensor_setstate(tmp_path, size):
    pkl = write_pickle(tmp_path / "grow.pkl", _layer(Grow(torch.arange(4.0), size)))
    assert len(pkl.read_bytes()) < 1000
    with pytest.raises(ArtgenError, match=r"sets state \(BUILD\) on a Tensor$"):
        load_stylegan2_pickle(pkl)


class WithState:
    """Any allowed object followed by BUILD with some state."""

    def __init__(self, reduced, state):
        self.reduced, self.state = reduced, state

    def __reduce__(self):
        return (*self.reduced, self.state)


def _storage_reduce():
    (_, (storage, *_)) = torch.arange(2.0).__reduce_ex__(4)
    return storage.__reduce_ex__(4)[:2]


@pytest.mark.parametrize(
    "reduced, state, kind",
    [
        (lambda: _storage_reduce(), (None, {"flat": torch.zeros(9)}), "_Storage"),
        (lambda: (torch.device, ("cpu",)), {"type": "cuda"}, "device"),
        (lambda: (OrderedDict, ()), {"items": 1}, "OrderedDict"),
        (lambda: np.float64(1.5).__reduce__()[:2], (None, {"x": 1}), "float64"),
    ],
)
def test_build_is_refused_on_everything_but_stubs(tmp_path, reduced, state, kind):
    pkl = write_pickle(tmp_path / "s.pkl", _layer(WithState(reduced(), state)))
    with pytest.raises(ArtgenError, match=rf"sets state \(BUILD\) on a {kind}$"):
        load_stylegan2_pickle(pkl)


def test_items_only_go_into_containers_and_calls_only_to_allowed_functions(tmp_path):
    device = Asm().global_("torch", "device").str("cpu").op(pickle.TUPLE1, pickle.REDUCE)
    cases = {
        "SETITEM": Asm().op(*device.parts[1:]).int(0).int(1).op(pickle.SETITEM),
        "SETITEMS": Asm().op(*device.parts[1:], pickle.MARK).int(0).int(1).op(pickle.SETITEMS),
        "APPENDS": Asm().op(*device.parts[1:], pickle.MARK).int(0).op(pickle.APPENDS),
        "ADDITEMS": Asm().op(pickle.EMPTY_DICT, pickle.MARK).int(0).op(pickle.ADDITEMS),
        "REDUCE": Asm().op(*device.parts[1:], pickle.EMPTY_TUPLE, pickle.REDUCE),
        "NEWOBJ": Asm().global_("collections", "OrderedDict").op(pickle.EMPTY_TUPLE, pickle.NEWOBJ),
        "INST": Asm().op(pickle.MARK, pickle.INST + b"builtins\nset\n"),
    }
    for opcode, asm in cases.items():
        path = tmp_path / f"{opcode}.pkl"
        path.write_bytes(asm.bytes())
        with pytest.raises(ArtgenError, match=rf"not a valid StyleGAN2-ADA pickle: .*{opcode}"):
            load_stylegan2_pickle(path)
    # set(x) iterates x: only a list, as protocol 2 writes sets.
    a = Asm().global_("builtins", "set").op(*device.parts[1:], pickle.TUPLE1, pickle.REDUCE)
    (tmp_path / "set.pkl").write_bytes(a.bytes())
    with pytest.raises(ArtgenError, match="set built from a non-list"):
        load_stylegan2_pickle(tmp_path / "set.pkl")


def test_a_view_larger_than_its_storage_is_refused(tmp_path):
    """A stride-0 view of one stored value could stand for 2**60 elements."""
    (func, (storage, *rest)) = torch.zeros(1).__reduce_ex__(4)
    big = Evil(func, storage, 0, (1 << 30, 1 << 30), (0, 0), *rest[3:])
    pkl = write_pickle(tmp_path / "big.pkl", _layer(big))
    with pytest.raises(ArtgenError, match="has more elements than its storage of 1"):
        load_stylegan2_pickle(pkl)


def test_tensors_are_checked_after_loading(tmp_path, monkeypatch):
    """Belt and braces: were BUILD on a tensor let through again, the check after loading
    still sees the storage that changed under it."""
    dispatch = dict(safe_pickle.SafeUnpickler.dispatch)
    dispatch[pickle.BUILD[0]] = pickle._Unpickler.load_build
    monkeypatch.setattr(safe_pickle.SafeUnpickler, "dispatch", dispatch)
    source = torch.arange(4.0)
    pkl = write_pickle(tmp_path / "grow.pkl", _layer(Grow(source, (32, 32))))
    with pytest.raises(ArtgenError, match="storage was changed after it was read"):
        load_stylegan2_pickle(pkl)


# -- fuzzing --------------------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_mutated_snapshots_load_or_fail_with_an_artgen_error(tmp_path):
    # The smallest networks the official layout allows, and no G (G_ema stands for it): each
    # case then costs a few tens of milliseconds, most of it torch reading the storages.
    cfg = StyleGAN2Config(
        resolution=8,
        z_dim=8,
        w_dim=8,
        mapping_layers=2,
        channel_base=64,
        channel_max=8,
        conv_clamp=256,
    )
    snapshot, _ = build_snapshot(module_src_for(tmp_path / "MARKER"), cfg)
    del snapshot["G"]
    pkl = write_pickle(tmp_path / "net.pkl", snapshot)
    data = pkl.read_bytes()
    # Most of the file is tensor data; aim half the mutations at opcode positions.
    starts = [pos for _, _, pos in pickletools.genops(io.BytesIO(data)) if pos is not None]
    rng = random.Random(15)
    bad = tmp_path / "mutated.pkl"
    outcomes = {"loaded": 0, "refused": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(250):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                at = rng.choice(starts) + rng.randint(0, 8) if rng.random() < 0.5 else None
                at = min(at, len(data) - 1) if at is not None else rng.randrange(len(data))
                how = rng.random()
                if how < 0.7:
                    mutated[at] = rng.randrange(256)
                elif how < 0.85:
                    del mutated[at : at + rng.randint(1, 16)]
                else:
                    mutated[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            if rng.random() < 0.1:
                mutated = mutated[: rng.randrange(len(mutated))]
            bad.write_bytes(bytes(mutated))
            signal.setitimer(signal.ITIMER_REAL, 5)  # no case may hang
            try:
                loaded = load_stylegan2_pickle(bad)
                for key in ("G_ema", "G", "D"):
                    stub = loaded.get(key)
                    if isinstance(stub, safe_pickle.PersistentStub):
                        kwargs, _ = stylegan2_state(stub)
                        role = (
                            "discriminator" if stub.class_name == "Discriminator" else "generator"
                        )
                        config_from_kwargs(role, kwargs)
                outcomes["loaded"] += 1
            except ArtgenError as e:
                assert "\n" not in str(e) and len(str(e)) < len(str(bad)) + 400, (case, str(e))
                outcomes["refused"] += 1
            except _Hang:
                pytest.fail(f"mutation {case} took more than 5 s")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["loaded"] > 10 and outcomes["refused"] > 10, outcomes


def _pickled_dict_with_keys(keys) -> bytes:
    """The pickle (protocol 2) of {"G": None, "x": {k: 0 for k in keys}}, written opcode by
    opcode: building that dict here would cost what the loader must refuse to spend (30,000
    colliding keys took 6-11 s of the test suite to build)."""

    def body(obj) -> bytes:
        f = io.BytesIO()
        p = pickle.Pickler(f, protocol=2)
        p.fast = True  # no memo opcodes
        p.dump(obj)
        return f.getvalue()[2:-1]  # without PROTO and STOP

    items = b"".join(body(k) + b"K\x00" for k in keys)  # BININT1 0
    return b"\x80\x02}(" + body("G") + b"N" + body("x") + b"}(" + items + b"uu."


@pytest.mark.parametrize("key", ["int", "float", "tuple"])
def test_dict_keys_cannot_be_crafted_to_collide(tmp_path, key):
    """Ints, floats and tuples hash without randomisation: 30,000 keys i * (2**61 - 1) all
    hash to 0 and made building one dict take 18 s. Only strings and small ints are keys."""
    n = 30_000
    make = {
        "int": lambda i: i * (2**61 - 1),
        "float": lambda i: float(i) * 2.0**61,
        "tuple": lambda i: (i * (2**61 - 1),),
    }[key]
    few = [make(i) for i in range(1, 4)]  # the hand-written pickle is the dict's
    assert pickle.loads(_pickled_dict_with_keys(few)) == {"G": None, "x": dict.fromkeys(few, 0)}
    data = _pickled_dict_with_keys(make(i) for i in range(n))
    path = tmp_path / "collide.pkl"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(ArtgenError, match="dict key or set member"):
        safe_pickle.load_stylegan2_pickle(path)
    assert time.perf_counter() - t0 < 2.0
