"""Downloads with a hash check, written atomically (for people who are online)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from artgen.core.errors import ArtgenError


@dataclass(frozen=True)
class DownloadProgress:
    name: str
    done: int
    total: int | None  # bytes, None when the server does not say


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str,
    callback: Callable[[DownloadProgress], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch ``url`` to ``dest``; ``sha256`` may be the whole digest or a prefix of it.

    The file appears at ``dest`` only once complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, os.fdopen(fd, "wb") as f:
                total = r.headers.get("Content-Length")
                total = int(total) if total else None
                done = 0
                while block := r.read(1 << 20):
                    f.write(block)
                    h.update(block)
                    done += len(block)
                    if callback:
                        callback(DownloadProgress(dest.name, done, total))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ArtgenError(f"could not download {url}: {reason} (are you online?)") from None
        digest = h.hexdigest()
        if not digest.startswith(sha256.lower()):
            raise ArtgenError(
                f"download of {url} is corrupt: sha256 {digest[:16]}... does not match {sha256[:16]}..."
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
