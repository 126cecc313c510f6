"""Declaring a field of an options dataclass: its default and its help in one call.

Every command's options are one frozen dataclass; artgen.cli.flags makes a flag of each
field (its help from ``help``, its choices from ``choices``), so a default is written
once, where the field is declared::

    steps: int = option(1000, "training steps")
    scheduler: str = option("ddim", "the sampler", choices=("ddim", "euler"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field, fields
from typing import Any


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with ``default`` whose metadata carries ``help`` (and ``choices``,
    which the flag and the options' checks accept)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


def choice_error(options: Any, skip: Sequence[str] = ()) -> tuple[str, str] | None:
    """The first field of the dataclass ``options`` (but those of ``skip``) whose value is
    not among the ``choices`` it was declared with, as (name, why); None if there is none."""
    for f in fields(options):
        allowed = f.metadata.get("choices")
        if f.name not in skip and allowed is not None and getattr(options, f.name) not in allowed:
            return f.name, f"choose one of {', '.join(map(str, allowed))}"
    return None
