"""Read StyleGAN2-ADA network pickles without running any code stored in them.

Format
------
NVlabs/stylegan2-ada-pytorch (training/training_loop.py) writes
``network-snapshot-*.pkl`` with a plain ``pickle.dump`` of a dict
``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}``. The networks
are ``torch_utils.persistence`` persistent classes: each one pickles as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=6, module_src=<source of the defining
module>, class_name=..., state=<the module's __dict__>)``. Loading such a file
with ``pickle.load`` *executes* ``module_src`` (``exec`` in a fresh module),
then imports whatever other globals the file names: a pickle is a program.
Tensors inside ``state`` are pickled by torch (``torch._utils._rebuild_*``,
``collections.OrderedDict``), their storages as
``torch.storage._load_from_bytes(<legacy torch.save bytes>)``; plain
attributes such as ``weight_gain = 1 / np.sqrt(n)`` are numpy scalars;
``training_set_kwargs`` and the nested init kwargs are ``dnnlib.EasyDict``.

Security model
--------------
The file is untrusted. :class:`SafeUnpickler` resolves every global through an
explicit allow-list and nothing else; there is no fall-back to importing:

* ``_reconstruct_persistent_obj`` becomes a function that checks
  ``meta['type'] == 'class'`` and the version and returns a
  :class:`PersistentStub` (class name + state dict). ``module_src`` is never
  compiled nor executed: only its SHA-256 is kept, to tell modules apart.
* Tensor rebuild functions are replaced by checked re-implementations that
  only accept data (storage, offset, sizes, strides) and return plain CPU
  tensors; backward hooks and Python attributes on tensors are dropped.
* Storage bytes are read with ``torch.load(..., weights_only=True)``, torch's
  own restricted unpickler (which reads the legacy, non-zip format used
  here), on torch >= 2.10 only: older releases have published
  ``weights_only`` bypasses (CVE-2025-32434, fixed in 2.6; CVE-2026-24747,
  storage-size mismatches and SETITEM on non-dicts, fixed in 2.10).
* ``OrderedDict``, ``set``, ``frozenset``, ``EasyDict`` (as a dict), numpy
  scalars of numeric dtypes (rebuilt from their raw bytes, never via numpy's
  ``__setstate__``), torch dtypes, and plain ``torch.nn`` modules (as stubs
  holding their state) are the only other names a file may use.
* Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``,
  the original ``training.networks`` classes...) is refused with an
  :class:`~artgen.core.errors.ArtgenError` naming the file and the global, before
  it is called. Persistent ids are refused too. The file size is capped.
* Opcodes that act on an object already built only act on the kinds the
  official format uses them on: BUILD (which would call ``__setstate__`` or set
  attributes) only on module stubs, EasyDicts and numpy dtype markers, never on
  a tensor (``Tensor.__setstate__`` calls ``set_``, which can grow a storage
  over uninitialised memory), a storage, a device or a container; SETITEM(S)
  only on dicts, APPEND(S) only on lists, ADDITEMS only on sets; REDUCE only
  calls the allowed functions and NEWOBJ only creates stubs and EasyDicts. The
  protocol-0/1 object opcodes (INST, OBJ), extension codes and out-of-band
  buffers, which the official pickles never contain, are refused. After
  loading, every tensor is checked to be the view that was built, onto the
  unchanged storage read from the file.

Resource limits
---------------
A pickle is a program, so a tiny file can ask for a lot of memory or time. Before
anything is unpickled, the whole opcode stream is scanned (``pickletools.genops``,
linear in the file: about 0.15 s for a 360 MB snapshot) and refused past limits
far above what the official snapshots need (a 1024 px snapshot has about 38,000
opcodes, marks nested 16 deep, strings up to ~70 kB, only small integers):

* at most :data:`MAX_OPCODES` opcodes and marks nested :data:`MAX_MARK_DEPTH` deep;
* memo indexes in the order a pickler writes them (at most one past the highest
  so far; a stored index of 2**26 would otherwise make a 9-byte file cost ~1 GB
  with the C unpickler), and no memo read of an index never written;
* every length (bytes, strings, frames) within what is left of the file, checked
  before anything is allocated, and integers of at most :data:`MAX_INT_BYTES` bytes.

While unpickling, tuples are limited to :data:`MAX_TUPLE_NODES` tuples in all and
:data:`MAX_TUPLE_DEPTH` levels, counting shared references as often as they occur:
a few hundred bytes of memo references can otherwise describe a tuple of 2**40
elements, which hashing (as a dict key or set element) or printing walks in full.
Tensors are views of at most 8 dimensions and never have more elements than their
storage. Nothing from the file goes into a message unabridged: :func:`short_repr`
writes at most about 200 characters without building the full repr first.

What comes back is inert data: dicts, lists, tuples, strings, numbers,
tensors and :class:`PersistentStub` objects; ``artgen.interop.convert`` turns the
stubs into artgen models.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artgen.core.errors import MESSAGE_CHARS, ArtgenError, clip
from artgen.core.errors import short_repr as _short_repr

PERSISTENCE_VERSION = 6  # torch_utils/persistence.py: _version = 6
DEFAULT_MAX_BYTES = 4 << 30  # the largest official snapshots (1024 px, G + D + G_ema) are ~400 MB
MIN_TORCH_FOR_STORAGES = (2, 10)  # first torch without known weights_only bypasses (see above)

# Resource limits (see "Resource limits" above). Measured on the official layout: a 1024 px
# snapshot (G, D, G_ema, augment_pipe) has ~38,000 opcodes and marks nested 16 deep; its
# tuples are sizes, strides and argument lists (a handful of tuples, 3 levels).
MAX_OPCODES = 1_000_000  # ~25x a 1024 px snapshot; the memo and stack grow at most this far
MAX_MARK_DEPTH = 512
MAX_INT_BYTES = 64  # LONG1 / LONG4 payloads: a snapshot's integers are sizes and counts
MAX_TUPLE_NODES = 10_000  # tuples reachable from one tuple, shared references counted each time
MAX_TUPLE_DEPTH = 64
MAX_TENSOR_DIMS = 8  # weights have at most 4
MAX_NAME_CHARS = 100  # persistent class names (the official ones have at most 21 characters)
MAX_LINE_BYTES = 1 << 20  # text-line arguments (GLOBAL names and the protocol-0 opcodes)

# Where each official class is defined; only a hint for messages and reports (the pickle itself
# carries the module's source, not its name).
_MODULE_HINTS = {
    **dict.fromkeys(
        (
            "FullyConnectedLayer Conv2dLayer MappingNetwork SynthesisLayer ToRGBLayer "
            "SynthesisBlock SynthesisNetwork Generator DiscriminatorBlock MinibatchStdLayer "
            "DiscriminatorEpilogue Discriminator"
        ).split(),
        "training.networks",
    ),
    "AugmentPipe": "training.augment",
}


class PersistentStub:
    """What a persistent object of the pickle becomes: its class name and its state, no code.

    ``state`` is the object's ``__dict__`` as pickled: for a ``torch.nn.Module``,
    ``_parameters``, ``_buffers`` and ``_modules`` (dicts), ``_init_args`` and
    ``_init_kwargs`` (for persistent classes), hook dicts and plain attributes.
    ``module_src_sha256`` identifies the (never executed) defining source; it is
    None for plain ``torch.nn`` modules, whose ``module_name_hint`` is exact.
    """

    __slots__ = ("class_name", "module_name_hint", "state", "module_src_sha256")

    def __init__(
        self,
        class_name: str,
        module_name_hint: str | None,
        state: dict,
        module_src_sha256: str | None = None,
    ):
        self.class_name = class_name
        self.module_name_hint = module_name_hint
        self.state = state
        self.module_src_sha256 = module_src_sha256

    def __repr__(self) -> str:
        where = f"{self.module_name_hint}." if self.module_name_hint else ""
        return f"<PersistentStub {where}{self.class_name}>"

    def __reduce__(self):
        # copy.deepcopy / pickle of a stub go through the constructor, never through __setstate__.
        return (
            PersistentStub,
            (self.class_name, self.module_name_hint, self.state, self.module_src_sha256),
        )

    def __setstate__(self, state):
        # A BUILD opcode aimed at a stub: the official format never does this.
        raise _Malformed(f"sets state on the reconstructed {self.class_name}")


class _Malformed(ValueError):
    """The data handed to an allowed function is not what the official format writes."""


def short_repr(value: Any, limit: int = MESSAGE_CHARS) -> str:
    """:func:`artgen.core.errors.short_repr`, showing the unpickler's own placeholders as
    themselves."""
    return _short_repr(value, limit, special=_placeholder)


def _placeholder(v: Any) -> str | None:
    return repr(v) if isinstance(v, (PersistentStub, _TypeToken)) else None


# ---------------------------------------------------------------------------------------------
# Replacements for the allowed globals. Each one validates its arguments; a mismatch raises
# _Malformed, which load_stylegan2_pickle reports as a corrupt file.


def _reconstruct_persistent_obj(meta):
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj; never runs module_src."""
    if not isinstance(meta, dict):
        raise _Malformed("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise _Malformed(
            f"persistent object of type {short_repr(meta.get('type'))} (only 'class' exists)"
        )
    version = meta.get("version")
    if not _is_int(version) or version != PERSISTENCE_VERSION:
        raise _Malformed(
            f"torch_utils.persistence version {short_repr(version)} "
            f"(this reader knows version {PERSISTENCE_VERSION})"
        )
    class_name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if (
        not isinstance(class_name, str)
        or len(class_name) > MAX_NAME_CHARS
        or not class_name.isidentifier()
    ):
        raise _Malformed(f"persistent class name {short_repr(class_name)}")
    if not isinstance(src, str):
        raise _Malformed(f"module_src of {class_name} is not a string")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise _Malformed(f"state of {class_name} is not a dict")
    digest = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()
    return PersistentStub(class_name, _MODULE_HINTS.get(class_name), dict(state), digest)


class _TorchModuleStub(PersistentStub):
    """A plain (non-persistent) ``torch.nn`` module: created by NEWOBJ, filled by one BUILD."""

    __slots__ = ()
    _stub_class_name = ""
    _stub_module_name = ""

    def __new__(cls, *args):
        if args:
            raise _Malformed(f"{cls._stub_class_name} created with arguments")
        self = object.__new__(cls)
        PersistentStub.__init__(self, cls._stub_class_name, cls._stub_module_name, None)
        return self

    def __init__(self, *args):  # construction is __new__'s job (NEWOBJ never calls __init__)
        pass

    def __setstate__(self, state):
        if self.state is not None or not isinstance(state, dict):
            raise _Malformed(f"bad state for torch.nn module {self.class_name}")
        self.state = dict(state)


_torch_module_stub_classes: dict[tuple[str, str], type] = {}


def _torch_module_stub_class(module: str, name: str) -> type | None:
    """A stub class for ``torch.nn.modules.*.<name>`` if that names a torch.nn.Module subclass."""
    if not module.startswith("torch.nn.modules.") or not name.isidentifier():
        return None
    real = vars(torch.nn).get(name)  # a plain dict lookup: no module __getattr__, no import
    if not (isinstance(real, type) and issubclass(real, torch.nn.Module)):
        return None
    if real.__module__ != module:
        return None
    key = (module, name)
    if key not in _torch_module_stub_classes:
        _torch_module_stub_classes[key] = type(
            f"{name}Stub",
            (_TorchModuleStub,),
            {"__slots__": (), "_stub_class_name": name, "_stub_module_name": module},
        )
    return _torch_module_stub_classes[key]


class _PlainDict(dict):
    """dnnlib.EasyDict read as an ordinary dict (no attribute access, no code)."""

    def __init__(self, *args, **kwargs):
        # The official pickles create EasyDicts empty (NEWOBJ, then SETITEMS); dict(x) would
        # iterate whatever x is (a tensor of millions of elements, say).
        if args or kwargs:
            raise _Malformed("EasyDict created with arguments")

    def __setstate__(self, state):
        # EasyDict keeps everything in its items; an instance __dict__, if pickled, is empty.
        if not (state is None or (type(state) is dict and not state)):
            raise _Malformed("EasyDict with instance attributes")


class _Storage:
    """A storage read from legacy torch.save bytes, as a flat tensor of its dtype.

    Also what was read (the storage's address and size) and every view built onto it, for the
    check after loading that no tensor was changed or re-pointed meanwhile.
    """

    __slots__ = ("flat", "data_ptr", "nbytes", "views")

    def __init__(self, flat: torch.Tensor):
        self.flat = flat
        storage = flat.untyped_storage()
        self.data_ptr, self.nbytes = storage.data_ptr(), storage.nbytes()
        self.views: list[tuple[torch.Tensor, tuple, tuple, int]] = []

    def check(self) -> None:
        for tensor in (self.flat, *(view for view, *_ in self.views)):
            storage = tensor.untyped_storage()
            if storage.data_ptr() != self.data_ptr or storage.nbytes() != self.nbytes:
                raise _Malformed("a tensor's storage was changed after it was read")
        for view, size, stride, offset in self.views:
            if (tuple(view.shape), view.stride(), view.storage_offset()) != (size, stride, offset):
                raise _Malformed("a tensor was reshaped after it was built")


def _torch_version() -> tuple[int, int]:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def _torch_load_reason(error: Exception) -> str:
    """The informative sentence of a torch.load error (not its advice to trust the file)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\.?$)", text, re.S)
    reason = found.group(1) if found else next(iter(text.strip().splitlines()), "")
    return " ".join(reason.split())[:200] or type(error).__name__


def _load_storage_from_bytes(data):
    """Stands in for torch.storage._load_from_bytes, which calls torch.load(weights_only=False).

    The bytes are a legacy (pre-zip) ``torch.save`` of one storage: magic number, protocol,
    system info, a pickle whose only object is a persistent id
    ``('storage', torch.FloatStorage, key, location, numel, None)``, the key list, then the raw
    data. torch's weights_only unpickler reads this format (checked against torch 2.14): its
    allow-list holds the storage classes and nothing callable beyond tensor rebuilding.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise _Malformed("storage data is not bytes")
    if _torch_version() < MIN_TORCH_FOR_STORAGES:
        raise _Malformed(
            "reading pickled tensors safely needs torch >= "
            f"{'.'.join(map(str, MIN_TORCH_FOR_STORAGES))} (found {torch.__version__}): "
            "pip install -U torch"
        )
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own restricted reader refused or could not parse it
        raise _Malformed(f"unreadable tensor storage ({_torch_load_reason(e)})") from None
    if isinstance(storage, torch.storage.TypedStorage):
        flat = torch.empty((0,), dtype=storage.dtype)
        flat.set_(storage.untyped())
    else:
        raise _Malformed(f"tensor storage holds a {type(storage).__name__}")
    _check_storage_bytes(bytes(data), flat.numel(), flat.element_size())
    return _Storage(flat)


def _check_storage_bytes(data: bytes, numel: int, element_size: int) -> None:
    """The legacy layout's data must account for every element of the storage.

    torch allocates the storage from the element count its pickle claims and then fills it
    from the data records of the keys listed after it; a file that claims more than it holds
    (or lists no key) would hand back uninitialised memory. So the tail after the four
    pickles must be exactly one record: the element count (int64) and that many elements.
    """
    f = io.BytesIO(data)
    try:
        for _ in range(4):  # magic number, protocol, system info, the storage's pickle
            for _op in pickletools.genops(f):
                pass
        keys = [
            arg
            for op, arg, _ in pickletools.genops(f)
            if isinstance(arg, str) and "UNICODE" in op.name
        ]
    except (ValueError, EOFError) as e:
        raise _Malformed(f"unreadable tensor storage layout ({clip(e, 80)})") from None
    tail = data[f.tell() :]
    if len(keys) != 1 or len(tail) != 8 + numel * element_size:
        raise _Malformed(
            f"tensor storage of {numel} elements holds {max(0, len(tail) - 8)} bytes of data "
            f"for {len(keys)} key(s); the file does not hold what it claims"
        )
    if struct.unpack("<q", tail[:8])[0] != numel:
        raise _Malformed("tensor storage's element count does not match its data")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
):
    """torch._utils._rebuild_tensor_v2 for data only: a bounds-checked strided view.

    The real function also attaches ``backward_hooks`` (arbitrary objects from the file) to
    the tensor and applies ``metadata`` through torch internals; neither means anything for
    stored weights, so hooks must be empty and metadata absent.
    """
    if not isinstance(storage, _Storage):
        raise _Malformed("tensor without a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise _Malformed(f"tensor storage offset {short_repr(storage_offset)}")
    if (
        not isinstance(size, tuple)
        or len(size) > MAX_TENSOR_DIMS
        or not all(_is_int(s) and s >= 0 for s in size)
    ):
        raise _Malformed(f"tensor size {short_repr(size)}")
    if not isinstance(stride, tuple) or len(stride) != len(size):
        raise _Malformed(f"tensor stride {short_repr(stride)}")
    if not all(_is_int(s) and s >= 0 for s in stride):
        raise _Malformed(f"tensor stride {short_repr(stride)}")
    if not isinstance(requires_grad, bool):
        raise _Malformed("tensor requires_grad is not a bool")
    if backward_hooks:
        raise _Malformed("tensor with backward hooks")
    if metadata:
        raise _Malformed("tensor with extra metadata")
    flat = storage.flat
    if all(s > 0 for s in size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.numel():
            raise _Malformed(
                f"tensor of size {list(size)} reaches past its storage of {flat.numel()} elements"
            )
    elif storage_offset > flat.numel():
        raise _Malformed("empty tensor offset past its storage")
    # Stored weights never overlap themselves; a stride-0 view of one element could otherwise
    # stand for 2**60 elements, which the first copy (or iteration) would try to make.
    if math.prod(size) > flat.numel():
        raise _Malformed(
            f"tensor of size {list(size)} has more elements than its storage of {flat.numel()}"
        )
    view = flat.as_strided(size, stride, storage_offset)
    storage.views.append((view, size, stride, storage_offset))
    return view


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """torch._utils._rebuild_parameter: a Parameter is only its data here (a plain tensor)."""
    if not isinstance(data, torch.Tensor):
        raise _Malformed("parameter without tensor data")
    if backward_hooks:
        raise _Malformed("parameter with backward hooks")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """torch._utils._rebuild_parameter_with_state: Python attributes on a Parameter are dropped."""
    return _rebuild_parameter(data, requires_grad, backward_hooks)


class _TypeToken:
    """Stands for torch.Tensor / torch.nn.Parameter as the ``new_type`` of _rebuild_from_type_v2.

    The real classes are not handed out: calling them from a pickle would construct objects.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_TENSOR_TYPE = _TypeToken("torch.Tensor")
_PARAMETER_TYPE = _TypeToken("torch.nn.Parameter")


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2 (tensors with Python attributes): the plain tensor.

    The real function calls ``func`` (any global) and the subclass's ``__setstate__``; here
    ``func`` must be one of the checked rebuilders above and the attributes are dropped.
    """
    if not any(
        func is f for f in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state)
    ):
        raise _Malformed(f"tensor rebuilt by {short_repr(func)}")
    if not (new_type is _TENSOR_TYPE or new_type is _PARAMETER_TYPE):
        raise _Malformed(f"tensor subclass {short_repr(new_type)}")
    if not isinstance(args, tuple):
        raise _Malformed("tensor rebuild arguments are not a tuple")
    return func(*args)


# numpy scalars: numpy.core.multiarray.scalar(numpy.dtype(code, False, True) + BUILD, raw bytes).
_NUMPY_CODES = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8 c8 c16".split())


class _NumpyDtype:
    """numpy.dtype(code, align, copy) followed by BUILD, recorded without calling numpy."""

    __slots__ = ("code", "byteorder")

    def __init__(self, code: str):
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags); only simple
        # numeric dtypes are accepted: no subarray, no fields.
        if not (
            isinstance(state, tuple)
            and len(state) >= 5
            and isinstance(state[1], str)
            and state[1] in ("<", ">", "|", "=")
        ):
            raise _Malformed("numpy dtype state")
        if any(x is not None for x in state[2:5]):
            raise _Malformed("structured numpy dtype")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype if self.byteorder in ("|", "=") else dtype.newbyteorder(self.byteorder)


def _numpy_dtype(code, align=False, copy=False):
    if not (isinstance(code, str) and code in _NUMPY_CODES):
        raise _Malformed(f"numpy dtype {short_repr(code)}")
    return _NumpyDtype(code)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDtype):
        raise _Malformed("numpy scalar without a numeric dtype")
    real = dtype.to_numpy()
    if not isinstance(data, bytes) or len(data) != real.itemsize:
        raise _Malformed("numpy scalar data")
    return np.frombuffer(data, dtype=real)[0]


def _codecs_encode(text, encoding="utf-8"):
    """_codecs.encode(str, 'latin1'): how protocol-2 pickles spell a bytes object."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise _Malformed("_codecs.encode used for anything but bytes")
    if encoding not in ("latin1", "latin-1"):
        raise _Malformed("_codecs.encode used for anything but bytes")
    return text.encode("latin1")


def _torch_device(spec):
    # Only the spellings torch writes ("cpu", "cuda:0"): torch.device of anything else raises
    # a RuntimeError quoting the whole string.
    if not isinstance(spec, str) or not re.fullmatch(r"[a-z]{1,16}(:[0-9]{1,4})?", spec):
        raise _Malformed(f"torch.device({short_repr(spec)})")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise _Malformed(f"torch.device({spec!r})") from None


# The containers take only what the official pickles give them: protocol 2 writes
# set([...]) and frozenset([...]), OrderedDict() is always created empty (then SETITEMS). A
# plain set(x) would iterate whatever x is: a tensor of millions of elements, say.


def _keys(items):
    """Dict keys and set members: strings and small ints only, as the official pickles hold.

    Python randomises string hashes, but not those of ints, floats or tuples: a file could
    give thousands of keys that all hash alike (i * (2**61 - 1)), and building the dict would
    then take quadratic time (a 400 KB file, a minute).
    """
    for k in items:
        if not (
            type(k) is str
            or (type(k) is int and -(2**31) <= k < 2**31)
            or k is None
            or type(k) is bool
        ):
            raise _Malformed(f"a dict key or set member is a {_type_name(k)}")
    return items


def _set(items=()):
    if type(items) not in (list, tuple):
        raise _Malformed("set built from a non-list")
    return set(_keys(items))


def _frozenset(items=()):
    if type(items) not in (list, tuple):
        raise _Malformed("frozenset built from a non-list")
    return frozenset(_keys(items))


def _ordered_dict(*args):
    if args:
        raise _Malformed("OrderedDict created with arguments")
    return OrderedDict()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._tensor", "Tensor"): _TENSOR_TYPE,
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "device"): _torch_device,
    # Pure containers: building them calls no user code.
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # pickles written with numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # ... and numpy 2.x
}

# Python-2 names that protocol < 3 pickles use (pickle's fix_imports, done here by hand because
# find_class is overridden).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

_REFUSED_HINTS = {
    ("dnnlib.tflib.network", "Network"): (
        "is a TensorFlow-era StyleGAN pickle; only stylegan2-ada-pytorch pickles are supported"
    ),
}


_STATEFUL = (PersistentStub, _PlainDict, _NumpyDtype)  # what BUILD may give state to
_CALLABLE_IDS = frozenset(id(f) for f in _ALLOWED.values() if not isinstance(f, _TypeToken))
_DICT_TYPES = (dict, OrderedDict, _PlainDict)


def _op(name: str) -> int:
    return getattr(pickle, name)[0]


class SafeUnpickler(pickle._Unpickler):
    """An Unpickler whose globals come from an explicit allow-list (see the module docstring).

    Built on pickle's pure-Python unpickler (``pickle._Unpickler``, the reference the C one
    mirrors), because the C unpickler's opcodes cannot be overridden: here the opcodes that act
    on an existing object check what that object is. The memo is a dict, so a memo index
    costs nothing however large; on a real snapshot this is no slower than the C unpickler,
    whose time goes into the tensor storages either way.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source
        self.storages: list[_Storage] = []
        self._storage_loader = self._load_storage  # one bound method, to know it when called
        # id -> (the tuple, tuples reachable from it counting repeats, nesting depth); the
        # tuple itself is kept so that its id is not reused while loading.
        self._tuples: dict[int, tuple[tuple, int, int]] = {}

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is _load_storage_from_bytes:
            return self._storage_loader
        if found is not None:
            return found
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]  # torch.float32 etc. pickle by name; a dtype is a constant
        stub_class = _torch_module_stub_class(module, name)
        if stub_class is not None:
            return stub_class
        hint = _REFUSED_HINTS.get((module, name))
        if hint:
            raise ArtgenError(f"{self.source}: {hint}")
        raise ArtgenError(
            f"{self.source}: refuses to load '{clip(module, 80)}.{clip(name, 80)}': a "
            "StyleGAN2-ADA pickle holds only network state; this file would run code"
        )

    def persistent_load(self, pid):
        raise ArtgenError(
            f"{self.source}: refuses a pickle persistent id: StyleGAN2-ADA pickles have none"
        )

    def _load_storage(self, data):
        storage = _load_storage_from_bytes(data)
        self.storages.append(storage)
        return storage

    def check_tensors(self) -> None:
        """Every tensor built is still the view it was built as, onto the storage as read."""
        for storage in self.storages:
            storage.check()

    # -- opcodes that act on an object already on the stack --------------------------------

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _STATEFUL):
            # The official format gives state only to modules, EasyDicts and numpy dtypes. A
            # tensor's __setstate__ calls set_ (which can grow its storage over uninitialised
            # memory) and attaches backward hooks; anything else would get attributes.
            raise _Malformed(f"sets state (BUILD) on a {_type_name(inst)}")
        inst.__setstate__(state)

    def _load_setitem(self):
        if type(self.stack[-3]) not in _DICT_TYPES:
            raise _Malformed(f"sets an item (SETITEM) of a {_type_name(self.stack[-3])}")
        value, key = self.stack.pop(), self.stack.pop()
        _keys((key,))
        self.stack[-1][key] = value

    def _load_setitems(self):
        target = self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        if type(target) not in _DICT_TYPES:
            raise _Malformed(f"sets items (SETITEMS) of a {_type_name(target)}")
        items = self.pop_mark()
        if len(items) % 2:
            raise _Malformed("SETITEMS with an odd number of items")
        _keys(items[0::2])
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_append(self):
        if type(self.stack[-2]) is not list:
            raise _Malformed(f"appends (APPEND) to a {_type_name(self.stack[-2])}")
        value = self.stack.pop()
        self.stack[-1].append(value)

    def _load_appends(self):
        target = self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        if type(target) is not list:
            raise _Malformed(f"appends (APPENDS) to a {_type_name(target)}")
        target.extend(self.pop_mark())

    def _load_additems(self):
        target = self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None
        if type(target) is not set:
            raise _Malformed(f"adds items (ADDITEMS) to a {_type_name(target)}")
        target.update(_keys(self.pop_mark()))

    def _load_dict(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise _Malformed("DICT with an odd number of items")
        self.append(dict(zip(_keys(items[0::2]), items[1::2], strict=True)))

    def _load_frozenset(self):
        self.append(frozenset(_keys(self.pop_mark())))

    def _load_reduce(self):
        func = self.stack[-2]
        if not (id(func) in _CALLABLE_IDS or func is self._storage_loader or _is_stub_class(func)):
            raise _Malformed(f"calls (REDUCE) a {_type_name(func)}")
        args = self.stack.pop()
        if type(args) is not tuple:
            raise _Malformed("REDUCE arguments are not a tuple")
        self.stack[-1] = func(*args)

    def _load_newobj(self):
        cls = self.stack[-2]
        if not (_is_stub_class(cls) or cls is _PlainDict):
            raise _Malformed(f"creates (NEWOBJ) a {_type_name(cls)}")
        args = self.stack.pop()
        if type(args) is not tuple:
            raise _Malformed("NEWOBJ arguments are not a tuple")
        self.stack[-1] = cls.__new__(cls, *args)

    def _load_newobj_ex(self):
        raise _Malformed("NEWOBJ_EX (keyword-only constructors) is not in the format")

    # -- tuples: bounded as built, since hashing and printing walk shared references ---------

    def _push_tuple(self, items) -> None:
        nodes, depth = 1, 1
        for item in items:
            if type(item) is tuple and item:
                _, n, d = self._tuples.get(id(item), (None, 1, 1))
                nodes += n
                depth = max(depth, d + 1)
        if nodes > MAX_TUPLE_NODES or depth > MAX_TUPLE_DEPTH:
            raise _Malformed(
                f"tuples nested {depth} deep, {nodes} in all counting shared references "
                f"(limits: {MAX_TUPLE_DEPTH} deep, {MAX_TUPLE_NODES} in all)"
            )
        t = tuple(items)
        if nodes > 1:
            self._tuples[id(t)] = (t, nodes, depth)
        self.append(t)

    def _load_tuple(self):
        self._push_tuple(self.pop_mark())

    def _load_tuple1(self):
        self._push_tuple([self.stack.pop()])

    def _load_tuple2(self):
        items = self.stack[-2:]
        del self.stack[-2:]
        self._push_tuple(items)

    def _load_tuple3(self):
        items = self.stack[-3:]
        del self.stack[-3:]
        self._push_tuple(items)

    for _name, _method in (
        ("BUILD", _load_build),
        ("SETITEM", _load_setitem),
        ("SETITEMS", _load_setitems),
        ("APPEND", _load_append),
        ("APPENDS", _load_appends),
        ("ADDITEMS", _load_additems),
        ("REDUCE", _load_reduce),
        ("NEWOBJ", _load_newobj),
        ("NEWOBJ_EX", _load_newobj_ex),
        ("TUPLE", _load_tuple),
        ("TUPLE1", _load_tuple1),
        ("TUPLE2", _load_tuple2),
        ("TUPLE3", _load_tuple3),
        ("DICT", _load_dict),
        ("FROZENSET", _load_frozenset),
    ):
        dispatch[_op(_name)] = _method
    del _name, _method


def _type_name(obj) -> str:
    return clip(type(obj).__name__, 40)


def _is_stub_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, _TorchModuleStub)


# Opcodes the official pickles (protocol 2 to 5) never contain, refused by the scan: the
# protocol-0/1 ways of calling a class, the copyreg extension registry, out-of-band buffers.
_REFUSED_OPCODES = frozenset(
    "INST OBJ EXT1 EXT2 EXT4 NEXT_BUFFER READONLY_BUFFER NEWOBJ_EX".split()
)
_PUT_OPS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))
_GET_OPS = frozenset(("GET", "BINGET", "LONG_BINGET"))


class _Truncated(EOFError):
    """A length in the file reaches past its end."""


class _BoundedReader:
    """The file as pickle reads it, refusing any read past its end before allocating for it:
    a 9-byte file can claim a 2**60-byte string, and ``file.read(n)`` allocates ``n`` first."""

    def __init__(self, file, end: int):
        self._file, self._end = file, end

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._file.tell()
        if n is None or n < 0:
            n = left
        if n > left:
            raise _Truncated
        return self._file.read(n)

    def readinto(self, buffer) -> int:
        if len(buffer) > self._end - self._file.tell():
            raise _Truncated
        return self._file.readinto(buffer)

    def readline(self, limit: int = -1) -> bytes:
        line = self._file.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES:
            raise _Malformed(f"a text line of more than {MAX_LINE_BYTES} bytes")
        return line

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)


def _scan(file: _BoundedReader) -> None:
    """Refuse a pickle whose opcodes ask for more than a snapshot can (module docstring)."""
    count = depth = memo_size = 0
    for count, (op, arg, _pos) in enumerate(pickletools.genops(file), 1):
        if count > MAX_OPCODES:
            raise _Malformed(f"more than {MAX_OPCODES} opcodes")
        name = op.name
        if name == "MARK":
            depth += 1
            if depth > MAX_MARK_DEPTH:
                raise _Malformed(f"marks nested more than {MAX_MARK_DEPTH} deep")
        elif pickletools.markobject in op.stack_before:
            depth -= 1
        if name in _PUT_OPS:
            # A pickler numbers memo entries 0, 1, 2...: an index may at most be the next one.
            if not 0 <= arg <= memo_size:
                raise _Malformed(f"memo index {arg} out of order (next is {memo_size})")
            memo_size = max(memo_size, arg + 1)
        elif name == "MEMOIZE":
            memo_size += 1
        elif name in _GET_OPS and not 0 <= arg < memo_size:
            raise _Malformed(f"memo index {arg} read before it is written")
        elif name in ("LONG1", "LONG4") and arg.bit_length() > 8 * MAX_INT_BYTES:
            raise _Malformed(f"an integer of {arg.bit_length()} bits")
        elif name in _REFUSED_OPCODES:
            raise _Malformed(f"opcode {name}, which StyleGAN2-ADA pickles do not use")
    if not count:
        raise _Truncated


def _check_header(source: str, head: bytes) -> None:
    if head[:4] == b"PK\x03\x04":
        raise ArtgenError(
            f"{source}: is a zip archive (a torch.save checkpoint?), not a StyleGAN2-ADA "
            "network pickle (network-snapshot-*.pkl)"
        )
    # Python 3 writes protocol >= 2, which starts with the PROTO opcode; the official snapshots
    # use the default protocol (3 or 4).
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        raise ArtgenError(
            f"{source}: not a pickle file (expected a StyleGAN2-ADA network-snapshot-*.pkl)"
        )


@contextlib.contextmanager
def _torch_builtin_allow_list_only():
    """Storages are read with torch's built-in weights_only allow-list alone: globals that
    other code in the process registered with torch.serialization.add_safe_globals (for its
    own checkpoints) are set aside meanwhile, then restored."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def _error_detail(error: BaseException) -> str:
    """The first line of an exception's message, at most MESSAGE_CHARS characters. Messages that
    quote file data (a KeyError's key) are written with short_repr, not str()."""
    if isinstance(error, UnicodeError):  # its message quotes one byte and a position
        return clip(str(error))
    args = getattr(error, "args", ())
    if args and isinstance(args[0], str) and not isinstance(error, KeyError):
        lines = args[0][: MESSAGE_CHARS * 4].strip().splitlines()
        return clip(lines[0], MESSAGE_CHARS) if lines else type(error).__name__
    return f"{type(error).__name__} {short_repr(args)}" if args else type(error).__name__


def safe_load(file, *, source: str = "<pickle>") -> Any:
    """Unpickle ``file`` (a binary, seekable file object) with :class:`SafeUnpickler`, after
    scanning its opcodes against the resource limits; ArtgenError if bad."""
    start = file.tell()
    head = file.read(4)
    _check_header(source, head)
    end = file.seek(0, os.SEEK_END)
    file.seek(start)
    reader = _BoundedReader(file, end)
    try:
        _scan(reader)
        file.seek(start)
        with warnings.catch_warnings(), _torch_builtin_allow_list_only():
            # torch warns that TypedStorage is deprecated while reading the legacy storages.
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            # ... and about the protocol of a storage's pickle, which a corrupt one can be.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            unpickler = SafeUnpickler(reader, source=source)
            data = unpickler.load()
        unpickler.check_tensors()
        return data
    except ArtgenError:
        raise
    except EOFError:
        raise ArtgenError(f"{source}: truncated pickle (the file ends too early)") from None
    except _Malformed as e:
        raise ArtgenError(f"{source}: not a valid StyleGAN2-ADA pickle: {e}") from None
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        RuntimeError,
        OverflowError,
        MemoryError,
        RecursionError,
        struct.error,
    ) as e:
        raise ArtgenError(f"{source}: corrupt or truncated pickle ({_error_detail(e)})") from None


NETWORK_KEYS = ("G", "D", "G_ema")


def load_stylegan2_pickle(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Read a stylegan2-ada-pytorch ``network-snapshot-*.pkl`` without running code from it.

    Returns the top-level dict (keys G, D, G_ema, augment_pipe, training_set_kwargs as present)
    with each network as a :class:`PersistentStub`. Raises ArtgenError, naming the file, for a
    missing, oversized, non-pickle, truncated or code-carrying file.
    """
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ArtgenError(f"{source}: no such file")
    size = p.stat().st_size
    if size > max_bytes:
        raise ArtgenError(
            f"{source}: {size / 2**20:.0f} MiB is larger than the {max_bytes / 2**20:.0f} MiB "
            "a StyleGAN2-ADA network pickle can plausibly be"
        )
    with open(p, "rb") as f:
        data = safe_load(f, source=source)
    if not isinstance(data, dict):
        raise ArtgenError(
            f"{source}: holds a {type(data).__name__}, not the dict of networks a StyleGAN2-ADA "
            "snapshot holds"
        )
    data = dict(data)
    if not any(isinstance(data.get(k), PersistentStub) for k in NETWORK_KEYS):
        # Keys are file data (any hashable: a nested tuple, say): a few, each cut short.
        keys = sorted(k[:40] if isinstance(k, str) else short_repr(k, 40) for k in list(data)[:8])
        shown = ", ".join(keys) + (", ..." if len(data) > 8 else "")
        shown = clip(shown) or "none"
        raise ArtgenError(f"{source}: holds no StyleGAN2-ADA network (G, D, G_ema); keys: {shown}")
    return data
