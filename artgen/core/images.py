"""Image input and output: the only place artgen opens or writes image files.

Every image a user hands in is untrusted: formats are restricted, sizes are
checked before decoding, EXIF orientation is applied, and every odd mode
(CMYK, palette, LA, 16-bit, alpha) becomes 8-bit RGB plus an optional alpha
plane. Outputs are written atomically and never replace an existing file
unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from artgen.core.errors import ArtgenError

if TYPE_CHECKING:
    import torch

# Decoders we accept; everything else is refused before any parsing happens.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 50_000_000  # about 7000 x 7000; larger inputs are refused, not decoded
MIN_SIDE = 16
PARAMS_KEY = "artgen"  # PNG text chunk holding a run's parameters
MAX_PARAMS_CHARS = 200_000  # what artgen writes is a few hundred characters


@dataclass(frozen=True)
class LoadedImage:
    """An input image as 8-bit RGB, with its alpha plane kept apart (or None)."""

    rgb: Image.Image
    alpha: Image.Image | None
    name: str

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def load_image(
    source: str | os.PathLike | Image.Image, *, max_pixels: int = MAX_PIXELS
) -> LoadedImage:
    """Open a user's image safely. Raises ArtgenError with a one-line message naming the file."""
    if isinstance(source, Image.Image):
        return _normalise(source, name="<image>", max_pixels=max_pixels)
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise ArtgenError(f"{name}: no such file")
    if path.is_dir():
        raise ArtgenError(f"{name}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ArtgenError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own limit; we refuse on our own limit below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                _check_dimensions(im.size, name, max_pixels)
                im.load()
                return _normalise(im, name=name, max_pixels=max_pixels)
    except ArtgenError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ArtgenError(f"{name}: refused, too many pixels (limit {max_pixels:,})") from None
    except UnidentifiedImageError:
        raise ArtgenError(
            f"{name}: not a readable image (accepted formats: {', '.join(FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        # Truncated and corrupt files surface here at load() time.
        raise ArtgenError(f"{name}: corrupt or truncated image ({e})") from None


def _check_dimensions(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ArtgenError(
            f"{name}: refused, {w}x{h} is {w * h:,} pixels (limit {max_pixels:,}); "
            "downscale it first"
        )
    if min(w, h) < MIN_SIDE:
        raise ArtgenError(f"{name}: too small ({w}x{h}); each side must be at least {MIN_SIDE} px")


def _normalise(im: Image.Image, *, name: str, max_pixels: int) -> LoadedImage:
    _check_dimensions(im.size, name, max_pixels)
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit grey: scale through numpy; .convert("RGB") would saturate.
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if (mode.startswith("I;16") or a.max() > 255) else 255.0
        if mode == "F":
            peak = max(1.0, float(a.max()))
        g = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgb = Image.fromarray(np.stack([g] * 3, axis=-1), "RGB")
        return LoadedImage(rgb, None, name)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        alpha = im.getchannel("A")
        if alpha.getextrema() == (255, 255):
            alpha = None
        # Transparent pixels keep whatever colour was hidden under them: put them on
        # mid grey so that colour does not leak into the statistics.
        grey = Image.new("RGB", im.size, (128, 128, 128))
        rgb = Image.composite(im.convert("RGB"), grey, im.getchannel("A"))
        return LoadedImage(rgb, alpha, name)
    return LoadedImage(im.convert("RGB"), None, name)


@dataclass(frozen=True)
class LoadedMask:
    """A region mask: one grey plane in [0, 1] (white 1: the region; grey: partly) as a
    float ("F") image, and the name of where it came from (a file path, or ``<mask>``)."""

    image: Image.Image
    name: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def tensor(self, size: tuple[int, int]) -> torch.Tensor:
        """The mask at ``size`` (W, H) as a (1, 1, H, W) float tensor in [0, 1] (bilinear,
        antialiased when it shrinks, so soft edges stay soft)."""
        im = (
            self.image
            if self.image.size == tuple(size)
            else self.image.resize(tuple(size), Image.Resampling.BILINEAR)
        )
        import torch  # not at the top: a command that needs no PyTorch never imports it

        a = np.asarray(im, dtype=np.float32).clip(0.0, 1.0)
        return torch.from_numpy(a.copy())[None, None]

    def check_shape(self, size: tuple[int, int], tolerance: float = 0.05) -> None:
        """Refuse a mask whose aspect ratio is not the picture's (``size``, W x H): it is
        stretched to the picture, so a rotated or cropped mask would mark the wrong place.
        Sides rounded to whole (or, for video, even) pixels move a small picture's aspect
        ratio by up to 2 px per side: that much more is allowed (a 96x64 clip's mask fits
        its 32x20 frames)."""
        (mw, mh), (w, h) = self.size, size
        slack = 2.0 / max(1, min(w, h)) + 1.0 / max(1, min(mw, mh))
        if abs((mw / mh) / (w / h) - 1) > tolerance + slack:
            raise ArtgenError(
                f"{self.name}: the mask is {mw}x{mh} but the picture is {w}x{h}; a mask must "
                "have the photo's shape (it is resized to the output)"
            )


def load_mask(
    source: str | os.PathLike | Image.Image | np.ndarray | LoadedMask,
    *,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> LoadedMask:
    """Open a region mask safely (as :func:`load_image`: formats, sizes, EXIF orientation).

    The mask is the image's grey level (white 1, black 0); where the image has an alpha
    plane, a transparent pixel counts as black (the grey level times the alpha), so a
    painted layer on a transparent canvas is its strokes. A 2-D numpy array is taken as
    the values themselves (floats in [0, 1], or uint8 0-255). A mask with nothing white
    or grey in it (all black) is refused: it marks no region. One-line ArtgenErrors name
    the file.
    """
    if isinstance(source, LoadedMask):
        return source
    if isinstance(source, np.ndarray):
        label = name or "<mask>"
        if source.ndim != 2:
            raise ArtgenError(f"{label}: a mask array must be 2-D (H, W), not {source.shape}")
        a = source.astype(np.float32) / (255.0 if source.dtype == np.uint8 else 1.0)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ArtgenError(f"{label}: mask values must lie in [0, 1]")
        _check_dimensions((a.shape[1], a.shape[0]), label, max_pixels)
        values = Image.fromarray(a, "F")
    else:
        loaded = load_image(source, max_pixels=max_pixels)
        label = name or (loaded.name if not isinstance(source, Image.Image) else "<mask>")
        grey = np.asarray(loaded.rgb.convert("L"), dtype=np.float32) / 255.0
        if loaded.alpha is not None:
            grey = grey * (np.asarray(loaded.alpha, dtype=np.float32) / 255.0)
        values = Image.fromarray(grey, "F")
    if values.getextrema()[1] <= 0:
        raise ArtgenError(
            f"{label}: the mask is all black, so it marks no region (white marks where its "
            "style goes, grey partly)"
        )
    return LoadedMask(values, label)


def resize_long_side(im: Image.Image, long_side: int) -> Image.Image:
    """Resize so that the longer side is ``long_side`` (Lanczos), keeping the aspect ratio."""
    w, h = im.size
    scale = long_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im if size == im.size else im.resize(size, Image.Resampling.LANCZOS)


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (1, 3, H, W) in [0, 1]."""
    import torch

    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (1, 3, H, W) or (3, H, W) in [0, 1] -> PIL RGB."""
    if x.dim() == 4:
        x = x[0]
    a = x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, "RGB")


def grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images (all the same size) into one picture, ``cols`` wide (default: square-ish)."""
    if not images:
        raise ValueError("no images to tile")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), "white")
    for i, im in enumerate(images):
        sheet.paste(im.convert("RGB"), ((i % cols) * (w + pad), (i // cols) * (h + pad)))
    return sheet


# Places that are not files on disk: writing there fails (or worse) after all the work.
_PSEUDO_FS = ("/proc", "/sys", "/dev")
MAX_NAME_BYTES = 255  # one path component, on every common file system


def _message(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check, before any compute, that ``path`` can be written as an output file.

    The parent is made if missing, and a probe file is created and removed in it, so a
    read-only, full or pseudo file system fails here in one line rather than after a run.
    """
    path = Path(path)
    name = str(path)
    if "\x00" in name:
        raise ArtgenError(f"{name[:200]!r}: a file name cannot contain a NUL byte")
    if not path.name:
        raise ArtgenError(f"{name}: not a file name")
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise ArtgenError(
            f"{name[:80]}...: the file name is {len(os.fsencode(path.name))} bytes long; "
            f"the limit is {MAX_NAME_BYTES}"
        )
    real = os.path.realpath(path)
    for top in _PSEUDO_FS:
        if real == top or real.startswith(top + os.sep):
            raise ArtgenError(f"{name}: is inside {top}, not a place for output files")
    if path.is_dir():
        raise ArtgenError(f"{name}: is a folder; give a file name for the output")
    if os.path.lexists(path) and not overwrite:  # also a dangling link
        raise ArtgenError(f"{name}: already exists (pass --overwrite to replace it)")
    check_output_dir(path.parent, what=name)
    return path


def check_output_dir(folder: str | os.PathLike, *, what: str | None = None) -> Path:
    """Make ``folder`` if missing and check that files can be created in it (one line if not)."""
    folder = Path(folder)
    what = what or str(folder)
    for up in (folder, *folder.parents):
        if up.exists() or up.is_symlink():
            if not up.is_dir():
                raise ArtgenError(f"{what}: {up} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".artgen-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArtgenError(f"{what}: cannot write in {folder} ({_message(e)})") from None
    return folder


def save_png(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    params: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` as PNG atomically, with ``params`` as JSON in a text chunk.

    The file is written under a temporary name in the same folder and then moved
    into place, so a killed process never leaves half an image. Without
    ``overwrite`` an existing file is never replaced (checked at the final link).
    Every OSError becomes an ArtgenError naming the file.
    """
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if params is not None:
        info.add_text(PARAMS_KEY, json.dumps(params, sort_keys=True))
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            image.save(tmp, format="PNG", pnginfo=info)
        except OSError as e:
            raise ArtgenError(f"{path}: cannot write ({_message(e)})") from None
    return path


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` (``.NAME.XXXX.tmp``), with the usual permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    return fd, tmp


def _publish(tmp: str, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``path``; without ``overwrite`` never replace a file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name appeared meanwhile: never clobber
    except FileExistsError:
        raise ArtgenError(f"{path}: already exists (pass --overwrite to replace it)") from None
    except OSError:
        if path.exists():
            raise ArtgenError(f"{path}: already exists") from None
        os.replace(tmp, path)  # file systems without hard links


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file of any kind atomically, as :func:`save_png` writes PNGs.

    Yields a temporary path in the same folder; when the block ends without an error, the
    file there is synced and moved to ``path`` (an existing file is replaced only with
    ``overwrite``); otherwise it is removed. OSErrors become an ArtgenError naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtgenError(f"{path}: is a folder; give a file name for the output")
    if os.path.lexists(path) and not overwrite:
        raise ArtgenError(f"{path}: already exists (pass --overwrite to replace it)")
    tmp = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _temporary(path)
            os.close(fd)
        except OSError as e:
            raise ArtgenError(f"{path}: cannot write ({_message(e)})") from None
        yield Path(tmp)
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _publish(tmp, path, overwrite)
        except OSError as e:
            raise ArtgenError(f"{path}: cannot write ({_message(e)})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------- claiming outputs (concurrent runs)

TMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def open_lock_file(path: Path) -> int:
    """Open (or create) a lock file for ``flock``. O_NOFOLLOW and a regular-file check: a
    lock name planted as a link (or a FIFO) must not make artgen truncate and write into
    whatever it points at."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        raise ArtgenError(
            f"{path}: cannot use it as a lock file ({_message(e)}); remove it"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtgenError(f"{path}: not a regular file; remove it")
    return fd


class OutputClaim:
    """An exclusive claim on an output file, held while it is being made.

    The claim is a lock file ``.NAME.png.lock`` beside the output, holding the owner's PID.
    Departure from a plain ``O_EXCL`` lock file: exclusivity comes from ``flock`` on it,
    which the kernel drops when its owner dies, so a killed run's claim is stale at once
    and no PID has to be guessed alive or dead (PIDs get reused). Where ``fcntl`` is
    missing (Windows) the file is created with ``O_EXCL`` and a claim whose PID is gone is
    taken over.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock = _lock_path(self.path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if this process now holds the claim; False if another live run does."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_excl()
        while True:
            fd = open_lock_file(self.lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a name that no longer exists. Start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return True
            os.close(fd)

    def _acquire_excl(self) -> bool:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if _pid_alive(_read_pid(self.lock)):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock)  # unlink while still holding it (see acquire)
        os.close(self._fd)
        self._fd = None

    def owner(self) -> int | None:
        return _read_pid(self.lock)

    def __enter__(self) -> OutputClaim:
        if not self.acquire():
            pid = self.owner()
            raise ArtgenError(
                f"{self.path}: another artgen run{f' (pid {pid})' if pid else ''} is writing it"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(lock: Path) -> int | None:
    try:
        text = lock.read_text()[:20].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _pid_alive(pid: int | None) -> bool:  # pragma: no cover - Windows
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_files(folder: str | os.PathLike, suffixes: Sequence[str] = (".png",)) -> list[Path]:
    """Remove the temporary files and lock files that killed runs left in ``folder``.

    A ``.NAME.png.XXXXXXXX.tmp`` is removed only when nobody holds the claim on NAME.png,
    so a run that is writing it right now keeps it. Only outputs whose names end in one of
    ``suffixes`` count. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        name = p.name
        if not name.startswith(".") or not p.is_file() or p.is_symlink():
            continue
        if name.endswith(LOCK_SUFFIX):
            target = folder / name[1 : -len(LOCK_SUFFIX)]
        elif name.endswith(TMP_SUFFIX) and name.count(".") >= 3:
            target = folder / name[1:].rsplit(".", 2)[0]  # ".x.png.abc123.tmp" -> "x.png"
        else:
            continue
        if not target.name.lower().endswith(tuple(suffixes)):
            continue
        claim = OutputClaim(target)
        if not claim.acquire():
            continue  # a live run is making it
        try:
            if name.endswith(TMP_SUFFIX):
                p.unlink(missing_ok=True)
                removed.append(p)
        finally:
            claim.release()  # also removes the (stale) lock file itself
        if name.endswith(LOCK_SUFFIX):
            removed.append(p)
    return removed


def read_params(path: str | os.PathLike) -> dict:
    """The parameters artgen stored in a PNG it wrote."""
    path = Path(path)
    try:
        with Image.open(path, formats=["PNG"]) as im:
            text = getattr(im, "text", {}) or {}
    except FileNotFoundError:
        raise ArtgenError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ArtgenError(f"{path}: is a folder, not a PNG image") from None
    except ValueError:  # Pillow's own limit on decompressed text chunks (1 MB)
        raise ArtgenError(f"{path}: holds a text chunk too large to read safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ArtgenError(f"{path}: not a readable PNG image") from None
    if PARAMS_KEY not in text:
        raise ArtgenError(f"{path}: holds no artgen parameters (not written by artgen?)")
    raw = text[PARAMS_KEY]
    if len(raw) > MAX_PARAMS_CHARS:
        raise ArtgenError(
            f"{path}: its artgen parameters are {len(raw):,} characters long; artgen writes "
            f"well under {MAX_PARAMS_CHARS:,}"
        )
    try:
        return json.loads(raw)
    except ValueError:  # bad JSON, or an integer of thousands of digits
        raise ArtgenError(f"{path}: its artgen parameters are not valid JSON") from None
    except RecursionError:  # [[[[...]]]] nested past the interpreter's limit
        raise ArtgenError(f"{path}: its artgen parameters are nested too deeply") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
