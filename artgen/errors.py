"""The one exception type that carries a message meant for a person.

Interfaces (the CLI, the app) print ``str(error)`` as one line and exit;
anything else that escapes is a bug and keeps its traceback.
"""


class ArtgenError(Exception):
    """A problem with the user's input or environment, described in one line."""


class Cancelled(Exception):
    """Raised from a progress callback to stop a running job cleanly."""
