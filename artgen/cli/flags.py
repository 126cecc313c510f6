"""The flag generator: one argparse flag per field of a frozen options dataclass, so each
default is written once (in the dataclass). Used by every command and by the studio."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence


def float_list(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected comma-separated numbers") from None


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = (), title: str = ""
) -> None:
    """One flag per field; absent flags are left out of the namespace, so the field default
    holds (``cls(**vars(namespace))`` is the options the user asked for)."""
    group = parser.add_argument_group(title or f"{cls.__name__} (defaults are the method's)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = ("-" if len(f.name) == 1 else "--") + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.default not in (None, False) and "(default:" not in help_:
            help_ += f" (default: {f.default})"
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        # The annotation as written (a string under `from __future__ import annotations`).
        t = f.type.__name__ if isinstance(f.type, type) else str(f.type)
        if t == "bool":
            group.add_argument(flag, action="store_true", **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if t.startswith("tuple"):
            kw["type"] = float_list
            kw["metavar"] = "W1,W2,..."
        elif t.startswith("int"):
            kw["type"] = int
        elif t.startswith("float"):
            kw["type"] = float
        group.add_argument(flag, **kw)
