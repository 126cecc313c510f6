"""Files read and written atomically: JSON with a size limit, safetensors with a finiteness
check."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from artgen.core.errors import ArtgenError, first_line

# A run's config.json is a few kilobytes and a checkpoint's state.json well under a
# megabyte (the RNG states are the bulk); anything far larger is not one of ours, and
# reading it whole would only spend memory.
MAX_CONFIG_BYTES = 1 << 20


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike, what: str, *, limit: int = MAX_CONFIG_BYTES) -> Any:
    """The JSON in ``path``; ArtgenError naming the file if it cannot be read or parsed.

    FileNotFoundError is left to the caller, which knows what a missing file means."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ArtgenError(f"{path}: cannot read the {what} ({first_line(e)})") from None
    if len(data) > limit:
        raise ArtgenError(f"{path}: too large for a {what} (over {limit // 1024} KiB)")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ArtgenError(f"{path}: unreadable {what} (not valid JSON: {first_line(e)})") from None


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a one-line ArtgenError naming the file when it
    is missing, truncated or not a safetensors file (safetensors raises its own
    SafetensorError, which is neither an OSError nor a ValueError)."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ArtgenError(f"{path}: missing") from None
    except (OSError, ValueError, SafetensorError) as e:
        raise ArtgenError(
            f"{path}: unreadable, truncated or not safetensors ({first_line(e)})"
        ) from None


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """ArtgenError naming ``where`` and the first tensor holding NaN or infinity: such
    weights only ever draw blank or noise images, so they are refused at loading."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtgenError(
                f"{where}: {name} holds non-finite values (NaN or infinity); "
                "the weights are damaged"
            )
