"""The one exception type that carries a message meant for a person.

Interfaces (the CLI, the app) print ``str(error)`` as one line and exit;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class ArtgenError(Exception):
    """A problem with the user's input or environment, described in one line."""


class Cancelled(Exception):
    """Raised from a progress callback to stop a running job cleanly."""


def clip(text: object, limit: int = 200) -> str:
    """``text`` on one line, printable, at most ``limit`` characters, cut at a word if possible.

    Anything that came from a file goes through this before it reaches a message.
    """
    s = " ".join(str(text)[: limit * 4].split())
    # No control characters (an escape sequence could redraw the terminal) reach a message.
    s = "".join(c if c.isprintable() else "?" for c in s)
    if len(s) <= limit:
        return s
    cut = s[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type's name), clipped."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return clip(first, limit)


MESSAGE_CHARS = 200  # the most of any value from a file that goes into a message


def short_repr(
    value: Any, limit: int = MESSAGE_CHARS, special: Callable[[Any], str | None] | None = None
) -> str:
    """``repr(value)`` cut to ``limit`` characters (then "..."), for messages about file data.

    Built piece by piece and stopped once ``limit`` is reached, so it costs O(limit) whatever
    the value: a tuple nested 40 deep with shared references has a repr of 2**40 characters,
    a huge int one that CPython refuses to write. Objects other than plain data show as their
    type name (a tensor as its shape and dtype), or as ``special`` shows them.
    """
    parts: list[str] = []
    room = limit + 1  # one more than fits, to know whether anything was cut

    def put(text: str) -> None:
        nonlocal room
        parts.append(text[:room])
        room -= len(text)

    def walk(v: Any, depth: int) -> None:
        if room <= 0:
            return
        if v is None or isinstance(v, (bool, float, complex, np.generic)):
            put(repr(v))
        elif isinstance(v, int):
            put(repr(v) if v.bit_length() <= 256 else f"<int of {v.bit_length()} bits>")
        elif isinstance(v, str):
            put(repr(v[:room]))
        elif isinstance(v, (bytes, bytearray)):
            put(repr(bytes(v[:room])))
        elif isinstance(v, (tuple, list, set, frozenset, dict)):
            if depth >= 8:
                put("...")
                return
            is_dict, is_set = isinstance(v, dict), isinstance(v, (set, frozenset))
            empty_set = is_set and not v
            brackets = "{}" if is_dict or is_set else "()" if isinstance(v, tuple) else "[]"
            put("set()" if empty_set else brackets[0])
            items = dict.items(v) if is_dict else v
            for i, item in enumerate(items):
                if room <= 0:
                    return
                if i:
                    put(", ")
                if is_dict:
                    walk(item[0], depth + 1)
                    put(": ")
                    walk(item[1], depth + 1)
                else:
                    walk(item, depth + 1)
            if isinstance(v, tuple) and len(v) == 1:
                put(",")
            if not empty_set:
                put(brackets[1])
        elif special is not None and (text := special(v)) is not None:
            put(text)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):  # a tensor or an array
            put(f"<tensor {list(v.shape)[:8]} {v.dtype}>")
        else:
            put(f"<{type(v).__name__}>")

    walk(value, 0)
    text = "".join(parts)
    return text if room > 0 else text[:limit] + "..."
