"""Random faults in checkpoint files, shared by the checkpoint tests of every trainer:
every damaged checkpoint must restore or give one ArtgenError line, never a traceback."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from artgen.core.errors import ArtgenError


def _json_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace or delete one value somewhere in a JSON document."""
    doc = json.loads(data)
    node, key = doc, None
    for _ in range(int(rng.integers(1, 6))):
        if isinstance(node, dict) and node:
            k = list(node)[int(rng.integers(len(node)))]
        elif isinstance(node, list) and node:
            k = int(rng.integers(len(node)))
        else:
            break
        if not isinstance(node[k], (dict, list)) or rng.random() < 0.3:
            key = k
            break
        node = node[k]
        key = None
    if key is None:
        return data
    odd = ["abc", -1, None, [], {}, 1e308, 2**70, True, 0.5, [1, 2], float("nan")]
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
    else:
        node[key] = odd[int(rng.integers(len(odd)))]
    return json.dumps(doc).encode()


def mutate(data: bytes, rng: np.random.Generator, is_json: bool) -> bytes:
    """A random fault: a truncation, a few flipped bytes (often in a safetensors header),
    or, for JSON, a value of the wrong kind."""
    kind = int(rng.integers(4 if is_json else 3))
    if kind == 0:
        return data[: int(rng.integers(len(data)))]
    if kind == 3:
        return _json_mutation(data, rng)
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        end = len(out) if kind == 1 else min(len(out), 200)  # the header holds the layout
        out[int(rng.integers(end))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def fuzz_checkpoint(path: Path, restore, cases: int, seed: int = 0) -> Counter:
    """Mutate one file of the checkpoint in ``path`` at a time, ``cases`` times, and call
    ``restore(path)``: every outcome must be success or an ArtgenError (one line)."""
    rng = np.random.default_rng(seed)
    files = sorted(path.iterdir())
    originals = {f: f.read_bytes() for f in files}
    outcomes: Counter = Counter()
    for _ in range(cases):
        f = files[int(rng.integers(len(files)))]
        f.write_bytes(mutate(originals[f], rng, f.suffix == ".json"))
        try:
            restore(path)
            outcomes["ok"] += 1
        except ArtgenError as e:
            assert "\n" not in str(e) and len(str(e)) < 500, str(e)
            outcomes["refused"] += 1
        finally:
            f.write_bytes(originals[f])
    return outcomes
