"""The style catalogue: bundled style images, example content, and public-domain paintings to fetch.

Everything is described in ``styles/manifest.json``. Bundled images are
redistributable (made by this project's code, or from packages whose licence
allows it); paintings are downloaded on request and checked against their sha256.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from artgen.core.errors import ArtgenError

if TYPE_CHECKING:  # urllib is imported only when something is fetched
    from artgen.interop.download import DownloadProgress


def styles_dir() -> Path:
    """$ARTGEN_STYLES_DIR, else the checkout's styles/, else the copy an installed wheel
    put under sys.prefix/share/artgen/styles (pyproject's data-files)."""
    env = os.environ.get("ARTGEN_STYLES_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "styles"
    installed = Path(sys.prefix) / "share" / "artgen" / "styles"
    if not (checkout / "manifest.json").is_file() and (installed / "manifest.json").is_file():
        return installed
    return checkout


def artgen_home() -> Path:
    """artgen's own cache: $ARTGEN_HOME (default ~/.cache/artgen)."""
    home = os.environ.get("ARTGEN_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "artgen"
    )
    return Path(home)


def cache_dir() -> Path:
    """Where fetched paintings go: $ARTGEN_HOME/styles (default ~/.cache/artgen/styles)."""
    return artgen_home() / "styles"


@dataclass(frozen=True)
class StyleEntry:
    name: str
    title: str
    author: str
    licence: str
    source: str
    path: Path  # where the file is (bundled) or will be (fetchable)
    kind: str  # "bundled", "example" or "fetchable"
    year: int | None = None
    url: str | None = None
    sha256: str | None = None

    @property
    def available(self) -> bool:
        return self.path.is_file()


def load_manifest(path: Path | None = None) -> list[StyleEntry]:
    path = path or styles_dir() / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtgenError(f"{path}: style manifest not found (set ARTGEN_STYLES_DIR?)") from None
    except json.JSONDecodeError as e:
        raise ArtgenError(f"{path}: not valid JSON ({e})") from None
    base = path.parent
    out = []
    for kind, key in (("bundled", "bundled"), ("example", "examples")):
        for e in data.get(key, []):
            out.append(
                StyleEntry(
                    e["name"],
                    e["title"],
                    e["author"],
                    e["licence"],
                    e["source"],
                    base / e["file"],
                    kind,
                )
            )
    for e in data.get("fetchable", []):
        out.append(
            StyleEntry(
                e["name"],
                e["title"],
                e["artist"],
                e["licence"],
                e["url"],
                cache_dir() / e["file"],
                "fetchable",
                e.get("year"),
                e["url"],
                e["sha256"],
            )
        )
    return out


def resolve(spec: str) -> Path:
    """A style given as a file path or as a catalogue name -> the image's path."""
    p = Path(spec)
    if p.exists():
        return p
    entries = {e.name: e for e in load_manifest()}
    if spec in entries:
        e = entries[spec]
        if e.available:
            return e.path
        if e.kind == "fetchable":
            raise ArtgenError(
                f"style {spec!r} is not downloaded yet: run `artgen styles fetch {spec}`"
            )
        raise ArtgenError(f"style {spec!r}: its file {e.path} is missing from the catalogue folder")
    names = ", ".join(sorted(e.name for e in entries.values() if e.kind != "example"))
    raise ArtgenError(f"{spec}: no such file, and not a style name (known styles: {names})")


def name_of(path: str | os.PathLike) -> str | None:
    """The catalogue name of a bundled or fetched style image at ``path``, else None.

    A PNG records this name, so its reproduce line says ``--style swirls`` and works
    wherever the catalogue does, not only next to the catalogue's files.
    """
    try:
        entries = load_manifest()
    except ArtgenError:
        return None
    for e in entries:
        if e.kind == "example" or not e.available:
            continue
        try:
            if os.path.samefile(e.path, path):
                return e.name
        except OSError:
            continue
    return None


def fetch(name: str, callback: Callable[[DownloadProgress], None] | None = None) -> Path:
    entries = {e.name: e for e in load_manifest() if e.kind == "fetchable"}
    if name not in entries:
        raise ArtgenError(
            f"{name!r} is not a fetchable painting; choose from {', '.join(sorted(entries))}"
        )
    e = entries[name]
    if e.available:
        return e.path
    assert e.url and e.sha256
    from artgen.interop.download import download

    return download(e.url, e.path, sha256=e.sha256, callback=callback)
