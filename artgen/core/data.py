"""The training data layer shared by the generator fine-tuners (diffusion now, GAN later).

An artist's set is small (10 to 100 images), so every image is decoded once, up front, through
``artgen.core.images.load_image``; each draw then only crops, flips and scales a cached tensor.

Optional fairness rebalancing follows the importance-weighting idea of Choi, Grover, Singh, Shu
and Ermon, "Fair Generative Modeling via Weak Supervision" (ICML 2020, arXiv:1910.12008): draw
training examples with weights ``p_ref(x) / p_bias(x)`` so the model is fitted to a reference
distribution in which every value of a sensitive attribute is equally common. Choi et al.
estimate that density ratio with a classifier trained against a small unbiased reference set;
here the artist labels every image in a CSV, so the ratio is known exactly:
``w_i = 1 / (K * count(value_i))`` for K distinct values.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from artgen.core.errors import ArtgenError, clip
from artgen.core.images import IMAGE_SUFFIXES, MAX_PIXELS, load_image

FILE_COLUMNS = ("file", "filename", "image")
_SHOW = 3  # how many offending names an error message lists
_CUT = 60  # characters of one name or cell from a file that an error message quotes
# load_image puts transparent pixels on this grey; ImageSet moves them onto white instead.
_LOADER_GREY = 128


# ---------------------------------------------------------------------------------------------
# Folders and labels


def _folder_name(folder: Path) -> str:
    return str(folder).rstrip("/\\") + "/"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Files are picked by suffix (``IMAGE_SUFFIXES``, any case); hidden files and sub-folders are
    skipped. ArtgenError if the folder is missing, is not a folder, or holds no images.
    """
    folder = Path(folder)
    name = _folder_name(folder)
    if not folder.exists():
        raise ArtgenError(f"{name}: no such folder")
    if not folder.is_dir():
        raise ArtgenError(f"{str(folder)}: not a folder")
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        ),
        key=lambda p: p.name,
    )
    if not files:
        raise ArtgenError(f"{name}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


@dataclass(frozen=True)
class Labels:
    """Attribute labels for a list of image files, in that list's order.

    ``attributes`` are the CSV's attribute column names (in column order); ``rows[i]`` maps
    each attribute to the value for ``files[i]``.
    """

    source: Path
    attributes: tuple[str, ...]
    files: tuple[Path, ...]
    rows: tuple[dict[str, str], ...]
    echo: bool = True  # whether error messages may quote the CSV's cells (see read_labels)

    def values(self, attr: str) -> list[str]:
        """The value of ``attr`` for each file, in file order (see ``check_attribute``)."""
        check_attribute(self, attr, require_two=False)
        return [row[attr] for row in self.rows]


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(clip(n, _CUT) for n in names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _read_csv(path: Path) -> list[list[str]]:
    """A CSV file's non-blank rows; ArtgenError naming the file if it is not UTF-8 CSV."""
    try:
        # utf-8-sig: spreadsheets often write a byte-order mark before the header.
        with open(path, encoding="utf-8-sig", newline="") as f:
            return [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise ArtgenError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
    except csv.Error as e:
        raise ArtgenError(f"{path}: not a readable CSV ({e})") from None


def read_labels(
    csv_path: str | os.PathLike, files: Sequence[str | os.PathLike], *, echo: bool = True
) -> Labels:
    """Read a labels CSV and line it up with ``files`` (usually ``list_images(folder)``).

    The CSV has a header row: one column naming the image (``file``, ``filename`` or ``image``,
    any case; matched on the file name, so ``photos/a.png`` and ``a.png`` both name ``a.png``)
    and one or more attribute columns. Values are strings with surrounding spaces stripped.
    Every image needs exactly one row, every row an image, and every cell a value.

    With ``echo`` False, error messages name rows and columns by number only and never
    quote the file's text: for a path read from a run's config.json, which may point at any
    file on the machine (say /etc/passwd), whose first line must not end up on screen.
    Either way a quoted cell is cut to a few dozen characters.
    """
    path = Path(csv_path)
    files = [Path(f) for f in files]
    if not path.exists():
        raise ArtgenError(f"{path}: no such file")
    if path.is_dir():
        raise ArtgenError(f"{path}: is a folder, not a CSV file")
    table = _read_csv(path)
    if not table:
        raise ArtgenError(f"{path}: empty (expected a header row with a 'file' column)")

    header = [cell.strip() for cell in table[0]]
    file_cols = [i for i, h in enumerate(header) if h.lower() in FILE_COLUMNS]
    if not file_cols:
        shown = f" (header is: {_some(header)})" if echo else " in its header row"
        raise ArtgenError(
            f"{path}: no file column{shown}; "
            f"name the image column one of: {', '.join(FILE_COLUMNS)}"
        )
    if len(file_cols) > 1:
        shown = f" ({', '.join(header[i] for i in file_cols)})" if echo else ""
        raise ArtgenError(f"{path}: more than one file column{shown}")
    file_col = file_cols[0]
    attr_cols = [i for i in range(len(header)) if i != file_col]
    attributes = tuple(header[i] for i in attr_cols)
    if not attributes:
        raise ArtgenError(f"{path}: no attribute columns besides '{header[file_col]}'")
    if "" in attributes:
        raise ArtgenError(f"{path}: column {attr_cols[attributes.index('')] + 1} has no name")
    repeated = [a for a, c in Counter(attributes).items() if c > 1]
    if repeated:
        shown = f"column {clip(repeated[0], _CUT)!r}" if echo else "a column name"
        raise ArtgenError(f"{path}: {shown} appears more than once in the header")

    by_name: dict[str, dict[str, str]] = {}
    line_of: dict[str, int] = {}
    for line, row in enumerate(table[1:], start=2):
        if len(row) > len(header):
            raise ArtgenError(
                f"{path}: row {line} has {len(row)} fields but the header has {len(header)}"
            )
        row = [cell.strip() for cell in row] + [""] * (len(header) - len(row))
        name = Path(row[file_col]).name
        if not name:
            raise ArtgenError(f"{path}: row {line} has no file name")
        if name in by_name:
            shown = clip(name, _CUT) if echo else "a file"
            raise ArtgenError(f"{path}: {shown} is listed twice (rows {line_of[name]} and {line})")
        values = {a: row[i] for a, i in zip(attributes, attr_cols, strict=True)}
        empty = [a for a, v in values.items() if not v]
        if empty:
            shown = (
                f" ({clip(name, _CUT)}) has no value for {clip(empty[0], _CUT)!r}"
                if echo
                else (f" has an empty cell in column {header.index(empty[0]) + 1}")
            )
            raise ArtgenError(f"{path}: row {line}{shown}")
        by_name[name] = values
        line_of[name] = line

    names = [f.name for f in files]
    unknown = [n for n in by_name if n not in set(names)]
    if unknown:
        shown = f": {_some(unknown)}" if echo else ""
        raise ArtgenError(f"{path}: {len(unknown)} listed file(s) are not among the images{shown}")
    unlabelled = [n for n in names if n not in by_name]
    if unlabelled:
        raise ArtgenError(f"{path}: {len(unlabelled)} image(s) have no row: {_some(unlabelled)}")
    return Labels(path, attributes, tuple(files), tuple(by_name[n] for n in names), echo)


CAPTION_COLUMNS = ("caption", "text", "prompt")
CAPTION_FILE_COLUMNS = (*FILE_COLUMNS, "file_name")  # file_name: diffusers' metadata files
CAPTIONS_CSV = "captions.csv"
MAX_CAPTION = 2000  # characters; CLIP reads 77 tokens, so a longer one is a wrong file


def read_captions(
    files: Sequence[str | os.PathLike], csv_path: str | os.PathLike = "", *, echo: bool = True
) -> list[str | None]:
    """Each image's own caption, or None where it has none (the instance prompt is used).

    Two sources, the two conventions of the field: a ``NAME.txt`` beside ``NAME.png``
    (kohya's sd-scripts), and a CSV with a file column (``file``, ``filename``, ``image``
    or ``file_name``) and a caption column (``caption``, ``text`` or ``prompt``; diffusers'
    ``metadata.csv`` convention): ``csv_path``, else ``captions.csv`` beside the images if
    there is one. An image captioned by both must have the same text in both; a CSV row
    naming no image, an empty caption or one over MAX_CAPTION characters is an error.
    ``echo``: as in read_labels (False for paths read back from a run's config.json)."""
    files = [Path(f) for f in files]
    out: list[str | None] = [None] * len(files)
    for i, f in enumerate(files):
        txt = f.with_suffix(".txt")
        if txt.is_file():
            out[i] = _caption_text(txt, txt.read_bytes())
    path = Path(csv_path) if csv_path else (files[0].parent / CAPTIONS_CSV if files else None)
    if path is None or (not csv_path and not path.is_file()):
        return out
    if not path.is_file():
        raise ArtgenError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    table = _read_csv(path)
    header = [c.strip().lower() for c in table[0]] if table else []
    file_col = [i for i, h in enumerate(header) if h in CAPTION_FILE_COLUMNS]
    text_col = [i for i, h in enumerate(header) if h in CAPTION_COLUMNS]
    if len(file_col) != 1 or len(text_col) != 1:
        raise ArtgenError(
            f"{path}: needs a header row with one file column "
            f"({', '.join(CAPTION_FILE_COLUMNS)}) "
            f"and one caption column ({', '.join(CAPTION_COLUMNS)})"
        )
    index = {f.name: i for i, f in enumerate(files)}
    seen: set[str] = set()
    for line, row in enumerate(table[1:], start=2):
        row = row + [""] * (len(header) - len(row))
        name = Path(row[file_col[0]].strip()).name
        if name not in index:
            shown = f" ({clip(name, _CUT)})" if echo else ""
            raise ArtgenError(f"{path}: row {line}{shown} names no image in the folder")
        if name in seen:
            raise ArtgenError(f"{path}: row {line}: {clip(name, _CUT)} is listed twice")
        seen.add(name)
        text = _caption_text(path, row[text_col[0]].encode(), f"row {line}")
        i = index[name]
        if out[i] is not None and out[i] != text:
            raise ArtgenError(
                f"{files[i].with_suffix('.txt')}: differs from row {line} of {path}; "
                "keep one caption per image"
            )
        out[i] = text
    return out


def _caption_text(path: Path, raw: bytes, where: str = "") -> str:
    at = f"{path}" + (f": {where}" if where else "")
    try:
        text = " ".join(raw.decode("utf-8-sig").split())
    except UnicodeDecodeError:
        raise ArtgenError(f"{at}: not UTF-8 text") from None
    if not text:
        raise ArtgenError(f"{at}: empty caption (delete it to use the instance prompt)")
    if len(text) > MAX_CAPTION:
        raise ArtgenError(f"{at}: caption of {len(text)} characters (at most {MAX_CAPTION})")
    return text


def check_attribute(labels: Labels, attr: str, *, require_two: bool = True) -> None:
    """ArtgenError unless ``attr`` is one of the labels' attributes with at least two values."""
    if attr not in labels.attributes:
        shown = f" (it has: {_some(labels.attributes)})" if labels.echo else ""
        raise ArtgenError(f"{labels.source}: no attribute {clip(attr, _CUT)!r}{shown}")
    if require_two:
        distinct = sorted({row[attr] for row in labels.rows})
        if len(distinct) < 2:
            shown = f" ({clip(distinct[0], _CUT)!r})" if labels.echo else ""
            raise ArtgenError(
                f"{labels.source}: attribute {clip(attr, _CUT)!r} has only one value{shown}; "
                "there is nothing to balance"
            )


def training_set(
    images: str | os.PathLike, labels_csv: str, balance: str, *, resume: bool
) -> tuple[list[Path], Labels | None]:
    """A trainer's images and their labels (None without ``labels_csv``), ``balance`` checked
    to be one of the labels' attributes. On resume the labels path comes from the run's
    config.json, which may have been edited to point anywhere: errors then name rows and
    columns, never the file's text."""
    if not str(images):
        raise ArtgenError("--images: give the folder of training images")
    files = list_images(images)
    labels = read_labels(labels_csv, files, echo=not resume) if labels_csv else None
    if balance:
        check_attribute(labels, balance)
    return files, labels


def balance_weights(values: Sequence[str]) -> list[float]:
    """Importance weights that draw every distinct value equally often.

    ``w_i = 1 / (K * count(values[i]))`` with K distinct values: the weights sum to 1 and each
    value's total weight is 1/K. This is the importance weighting of Choi et al. 2020 with the
    density ratio known exactly from labels rather than estimated by a classifier.
    """
    counts = Counter(values)
    k = len(counts)
    return [1.0 / (k * counts[v]) for v in values]


def proportions(values: Sequence[str] | Mapping[str, int]) -> dict[str, float]:
    """The share of each distinct value (of a list of values, or of counts per value), keys
    sorted by value."""
    counts = values if isinstance(values, Mapping) else Counter(values)
    n = sum(counts.values())
    return {v: counts[v] / n for v in sorted(counts)}


# ---------------------------------------------------------------------------------------------
# Dataset and sampler


def _prepare(path: Path, resolution: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Load, put transparency on white, resize the shorter side: uint8 tensor (3, H, W),
    and the image's own (height, width) before resizing."""
    loaded = load_image(path)
    rgb = loaded.rgb
    if loaded.alpha is not None:
        # load_image stored a*colour + (1-a)*grey; move the (1-a) part from grey to white.
        a = np.asarray(loaded.alpha, dtype=np.float32)[..., None] / 255.0
        c = np.asarray(rgb, dtype=np.float32) + (1.0 - a) * (255.0 - _LOADER_GREY)
        rgb = Image.fromarray(np.clip(c + 0.5, 0, 255).astype(np.uint8), "RGB")
    w, h = rgb.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size[0] * size[1] > MAX_PIXELS:
        raise ArtgenError(
            f"{path}: {w}x{h} is too elongated to resize to {resolution} px on its shorter side"
        )
    if size != (w, h):
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    a = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous(), (h, w)


class ImageSet(Dataset):
    """A small image set held in memory, served as square crops in [-1, 1].

    Every image is loaded once at construction (ArtgenError names any unreadable file),
    composited onto white where transparent, and resized with Lanczos so its shorter side is
    ``resolution`` (small images are upscaled). Each item is a ``resolution`` square crop
    (centred, or at a random offset) that is mirrored left-right with probability 1/2 when
    ``random_flip``, returned as ``{"pixels": float (3, R, R) in [-1, 1], "index": int,
    "crop_top_left": (top, left)}``. ``original_sizes[i]`` is image i's (height, width) as
    loaded; with the crop's corner it is SDXL's size and crop micro-conditioning (Podell et
    al. 2023, section 2.2). A flipped item's corner is the one of the same crop in the
    mirrored image, as in diffusers' SDXL training scripts (flip first, then crop).

    Randomness comes from ``generator`` if given, else torch's global RNG, so saving and
    restoring that state resumes the same sequence. With DataLoader workers, leave
    ``generator`` as None: each worker then has its own, differently seeded global RNG (a
    passed generator would be copied into every worker and repeat the same crops).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.paths = [Path(p) for p in paths]
        self.resolution = int(resolution)
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.generator = generator
        prepared = [_prepare(p, self.resolution) for p in self.paths]
        self._images = [t for t, _ in prepared]
        self.original_sizes = [size for _, size in prepared]

    def __len__(self) -> int:
        return len(self._images)

    def _randint(self, high: int) -> int:
        """An integer in [0, high)."""
        return int(torch.randint(0, high, (1,), generator=self.generator).item())

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.resolution
        _, h, w = self._images[index].shape
        if self.center_crop:
            top, left = self.center(index)
        else:
            top, left = self._randint(h - r + 1), self._randint(w - r + 1)
        return self.crop(index, top, left, self.random_flip and self._randint(2) == 1)

    def crop(self, index: int, top: int, left: int, flip: bool) -> dict[str, Any]:
        """Image ``index``'s square at (top, left) of the resized image, mirrored if ``flip``."""
        image = self._images[index]
        r, w = self.resolution, image.shape[2]
        crop = image[:, top : top + r, left : left + r]
        if flip:
            crop = crop.flip(2)
            left = w - r - left
        pixels = crop.float().div(127.5).sub(1.0)
        return {"pixels": pixels, "index": int(index), "crop_top_left": (top, left)}

    def center(self, index: int) -> tuple[int, int]:
        """The corner of image ``index``'s centre crop."""
        _, h, w = self._images[index].shape
        return (h - self.resolution) // 2, (w - self.resolution) // 2
