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
  :class:`~artgen.errors.ArtgenError` naming the file and the global, before
  it is called. Persistent ids are refused too. The file size is capped.

What comes back is inert data: dicts, lists, tuples, strings, numbers,
tensors and :class:`PersistentStub` objects; ``artgen.convert`` turns the
stubs into artgen models.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artgen.errors import ArtgenError

PERSISTENCE_VERSION = 6  # torch_utils/persistence.py: _version = 6
DEFAULT_MAX_BYTES = 4 << 30  # the largest official snapshots (1024 px, G + D + G_ema) are ~400 MB
MIN_TORCH_FOR_STORAGES = (2, 10)  # first torch without known weights_only bypasses (see above)

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


# ---------------------------------------------------------------------------------------------
# Replacements for the allowed globals. Each one validates its arguments; a mismatch raises
# _Malformed, which load_stylegan2_pickle reports as a corrupt file.


def _reconstruct_persistent_obj(meta):
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj; never runs module_src."""
    if not isinstance(meta, dict):
        raise _Malformed("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise _Malformed(f"persistent object of type {meta.get('type')!r} (only 'class' exists)")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise _Malformed(
            f"torch_utils.persistence version {meta.get('version')!r} "
            f"(this reader knows version {PERSISTENCE_VERSION})"
        )
    class_name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise _Malformed(f"persistent class name {class_name!r}")
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

    def __setstate__(self, state):
        # EasyDict keeps everything in its items; an instance __dict__, if pickled, is empty.
        if state:
            raise _Malformed("EasyDict with instance attributes")


class _Storage:
    """A storage read from legacy torch.save bytes, as a flat tensor of its dtype."""

    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


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
    return _Storage(flat)


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
        raise _Malformed(f"tensor storage offset {storage_offset!r}")
    if not isinstance(size, tuple) or not all(_is_int(s) and s >= 0 for s in size):
        raise _Malformed(f"tensor size {size!r}")
    if not isinstance(stride, tuple) or len(stride) != len(size):
        raise _Malformed(f"tensor stride {stride!r}")
    if not all(_is_int(s) and s >= 0 for s in stride):
        raise _Malformed(f"tensor stride {stride!r}")
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
    return flat.as_strided(size, stride, storage_offset)


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
    if func not in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state):
        raise _Malformed(f"tensor rebuilt by {func!r}")
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise _Malformed(f"tensor subclass {new_type!r}")
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
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise _Malformed("numpy dtype state")
        if any(x is not None for x in state[2:5]):
            raise _Malformed("structured numpy dtype")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype if self.byteorder in ("|", "=") else dtype.newbyteorder(self.byteorder)


def _numpy_dtype(code, align=False, copy=False):
    if not (isinstance(code, str) and code in _NUMPY_CODES):
        raise _Malformed(f"numpy dtype {code!r}")
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
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Malformed("_codecs.encode used for anything but bytes")
    return text.encode("latin1")


def _torch_device(spec):
    if not isinstance(spec, str):
        raise _Malformed(f"torch.device({spec!r})")
    return torch.device(spec)


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
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
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


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose globals come from an explicit allow-list (see the module docstring)."""

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        found = _ALLOWED.get((module, name))
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
            f"{self.source}: refuses to load '{module}.{name}': a StyleGAN2-ADA pickle holds "
            "only network state; this file would run code"
        )

    def persistent_load(self, pid):
        raise ArtgenError(
            f"{self.source}: refuses a pickle persistent id: StyleGAN2-ADA pickles have none"
        )


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


def safe_load(file, *, source: str = "<pickle>") -> Any:
    """Unpickle ``file`` (a binary file object) with :class:`SafeUnpickler`; ArtgenError if bad."""
    head = file.read(4)
    _check_header(source, head)
    file.seek(-len(head), os.SEEK_CUR)
    try:
        with warnings.catch_warnings(), _torch_builtin_allow_list_only():
            # torch warns that TypedStorage is deprecated while reading the legacy storages.
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return SafeUnpickler(file, source=source).load()
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
    ) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ArtgenError(f"{source}: corrupt or truncated pickle ({detail})") from None


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
        keys = ", ".join(sorted(map(str, data))) or "none"
        raise ArtgenError(f"{source}: holds no StyleGAN2-ADA network (G, D, G_ema); keys: {keys}")
    return data
