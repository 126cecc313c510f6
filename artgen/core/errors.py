"""The one exception type that carries a message meant for a person.

Interfaces (the CLI, the app) print ``str(error)`` as one line and exit;
anything else that escapes is a bug and keeps its traceback.
"""


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
