"""Stylising a whole folder: planning (shards, resume) and the loop.

Each output is written atomically, so a run that is killed leaves only whole
pictures behind; running the same command again skips them and finishes the rest.
Each output is claimed (:class:`artgen.core.images.OutputClaim`) before it is made, so two
runs on the same folder share the work instead of both doing all of it, and what a
killed run left behind (temporary and lock files) is removed when the next one starts.

Masks (regional styles) apply to every picture of the folder alike, each resized to the
picture's output size: a folder of shots with the same framing (a fixed camera, a series)
gets the same regions. A picture whose shape (aspect ratio) differs from the masks' is
reported as failed, by name, and the rest go on.

Data-set mode (:func:`plan_dataset`, :func:`run_dataset`, :func:`verify_dataset`): a folder
tree kept as it is (class sub-folders), a style drawn per picture from a pool, K variants,
PNG or JPEG, and a manifest (``OUT/manifest.jsonl``) that records every output as it lands
and that ``artgen batch --verify`` checks. Each picture goes through the network on its
own, so its bytes never depend on which pictures share its pass; the Ray engine
(artgen.style.batch_ray) runs the same :class:`DatasetStylizer` in its workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artgen.core.errors import ArtgenError
from artgen.core.images import (
    IMAGE_SUFFIXES,
    LoadedImage,
    OutputClaim,
    atomic_output,
    check_output_dir,
    clean_stale_files,
    load_image,
    load_mask,
    save_png,
    sha256_file,
)
from artgen.core.options import option
from artgen.style import (
    check_masks,
    get_method,
    load_masks,
    mask_arguments,
    method_of,
    run_params,
)


@dataclass(frozen=True)
class BatchOptions:
    """How a folder is split and what happens to outputs that already exist."""

    shard: str = option("1/1", "I/N: process only the I-th of N shares of the folder (1-based)")
    overwrite: bool = option(False, "redo images whose output already exists")
    batch_size: int = option(
        8,
        "pictures per network pass, for methods that batch (adain); in data-set "
        "mode (each picture on its own) the rows per Ray task",
    )
    # ---- data-set mode: any of these turns it on (a manifest, OUT/manifest.jsonl)
    recursive: bool = option(
        False,
        "data set: stylise the sub-folders too, keeping the tree (class folders) "
        "and the file names; other files are skipped and counted",
    )
    style_pool: str | None = option(
        None,
        "data set: a folder of style pictures; each image gets one drawn from it, "
        "fixed by --seed and the image's path (the same on any machine, shard or order). "
        "Instead of --style; the method is then adain unless --method says otherwise",
    )
    styles_per_image: int = option(
        1,
        "data set, with --style-pool: K variants per image, each with another "
        "style, written NAME__0 ... NAME__K-1",
    )
    format: str = option(
        "png",
        "data set: output format; jpg records the parameters in the manifest "
        "only (a PNG also carries them inside)",
        choices=("png", "jpg"),
    )
    quality: int = option(95, "JPEG quality for --format jpg, 1-100")
    engine: str = option(
        "local",
        "data set: local (this process) or ray (Ray Data: workers on this machine "
        "or a cluster; pip install 'artgen[cluster]')",
        choices=("local", "ray"),
    )
    address: str | None = option(
        None,
        "--engine ray: the cluster to join (auto: the one this machine is part "
        "of); without it a local Ray instance is started",
    )
    workers: int = option(
        0,
        "--engine ray: worker actors, each loading the network once; 0: as many "
        "as the cluster's CPUs (or GPUs) hold",
    )
    num_gpus_per_worker: float = option(
        0.0, "--engine ray: GPUs per worker (0: CPU workers; 0.5: two per GPU)"
    )
    threads: int = option(
        0,
        "data set: network threads per worker (0: all cores with --engine local, "
        "one per Ray worker). The PyTorch path's pictures depend on it (onnxruntime's "
        "do not): give the same value to compare runs bit for bit",
    )

    def __post_init__(self) -> None:
        if self.styles_per_image < 1 or self.styles_per_image > 1000:
            raise ArtgenError(f"--styles-per-image {self.styles_per_image}: must be 1 to 1000")
        if self.styles_per_image > 1 and not self.style_pool:
            raise ArtgenError(
                f"--styles-per-image {self.styles_per_image}: needs --style-pool (the "
                "variants differ by their style)"
            )
        if self.format not in ("png", "jpg"):
            raise ArtgenError(f"--format {self.format!r}: choose png or jpg")
        if not 1 <= self.quality <= 100:
            raise ArtgenError(f"--quality {self.quality}: must be 1 to 100")
        if self.engine not in ("local", "ray"):
            raise ArtgenError(f"--engine {self.engine!r}: choose local or ray")
        if self.workers < 0 or self.threads < 0:
            raise ArtgenError("--workers and --threads must be >= 0")
        if not (self.num_gpus_per_worker >= 0 and self.num_gpus_per_worker < 1e6):
            raise ArtgenError(f"--num-gpus-per-worker {self.num_gpus_per_worker}: must be >= 0")
        if self.engine != "ray" and (
            self.address is not None or self.workers or self.num_gpus_per_worker
        ):
            raise ArtgenError("--address, --workers and --num-gpus-per-worker need --engine ray")
        if self.threads and not self.dataset:
            raise ArtgenError(
                "--threads: for data-set mode (--recursive, --style-pool, --format jpg or "
                "--engine ray)"
            )

    @property
    def dataset(self) -> bool:
        """Data-set mode: a manifest, the tree kept, style pools, other formats, engines."""
        return bool(
            self.recursive
            or self.style_pool
            or self.styles_per_image != 1
            or self.format != "png"
            or self.engine != "local"
        )

    def shard_numbers(self) -> tuple[int, int]:
        try:
            i, n = (int(v) for v in self.shard.split("/"))
        except ValueError:
            raise ArtgenError(f"--shard {self.shard!r}: expected I/N, for example 1/4") from None
        if not (n >= 1 and 1 <= i <= n):
            raise ArtgenError(f"--shard {self.shard!r}: need 1 <= I <= N")
        return i, n


@dataclass(frozen=True)
class BatchJob:
    source: Path
    output: Path
    exists: bool


@dataclass(frozen=True)
class BatchResult:
    job: BatchJob
    status: str  # "done", "skipped" or "failed"
    error: str | None = None  # why it failed, or why it was skipped
    seconds: float = 0.0


def plan_batch(
    in_dir: str | os.PathLike, out_dir: str | os.PathLike, batch: BatchOptions
) -> list[BatchJob]:
    """The images of ``in_dir`` (sorted, this shard only) and their outputs in ``out_dir``."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise ArtgenError(f"{in_dir}: not a folder")
    i, n = batch.shard_numbers()
    files = sorted(
        p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if out_dir.resolve() == in_dir.resolve():
        raise ArtgenError(f"{out_dir}: the output folder must not be the input folder")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise ArtgenError(
                f"{p} and {stems[p.stem]} would both be written to {p.stem}.png; rename one"
            )
        stems[p.stem] = p
    # Never overwrite an input, also through a symlink: compare resolved paths of every
    # input file (not only this shard's) with every output.
    inputs = {os.path.realpath(p): p for p in files}
    for p in files:
        out = out_dir / f"{p.stem}.png"
        hit = inputs.get(os.path.realpath(out))
        if hit is not None:
            raise ArtgenError(
                f"{out}: is the input {hit} (through a link); artgen never overwrites an input"
            )
    # Round-robin over the sorted list, so shards get similar amounts of work.
    mine = [p for k, p in enumerate(files) if k % n == i - 1]
    return [
        BatchJob(p, out_dir / f"{p.stem}.png", (out_dir / f"{p.stem}.png").exists()) for p in mine
    ]


class _Claims:
    """The outputs this run is writing (artgen.core.images.OutputClaim each), released as each
    is finished and all of them at the end."""

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.held: dict[Path, OutputClaim] = {}

    def claim(self, job: BatchJob) -> str | None:
        """Claim the output: None if it is now ours, else why it is skipped."""
        c = OutputClaim(job.output)
        if not c.acquire():
            return "another artgen run is making it"
        if job.output.exists() and not self.overwrite:
            c.release()
            return "another artgen run made it"
        self.held[job.output] = c
        return None

    def release(self, output: Path) -> None:
        c = self.held.pop(output, None)
        if c is not None:
            c.release()

    def release_all(self) -> None:
        for c in self.held.values():
            c.release()
        self.held.clear()


def _load_content(job: BatchJob, masks: Any, content_mask: Any, masked: bool) -> LoadedImage:
    """The job's picture, checked against the masks (naming the picture) when there are any."""
    content = load_image(job.source)
    if masked:
        try:
            check_masks(content.size, masks, content_mask)
        except ArtgenError as e:
            raise ArtgenError(f"{job.source}: {e}") from None
    return content


def _save_group(loaded, images, each, params, overwrite, stop) -> list[BatchResult]:
    """Write a group's pictures (PNG with ``params(content, image)``); stops between
    pictures once ``stop`` is set (what is not written keeps no claim: a run again makes
    it)."""
    out = []
    for (job, content), image in zip(loaded, images, strict=True):
        if stop.is_set():
            break
        try:
            save_png(image, job.output, params=params(content, image), overwrite=overwrite)
            out.append(BatchResult(job, "done", seconds=each))
        except ArtgenError as e:
            out.append(BatchResult(job, "failed", str(e), each))
    return out


def _load_group(pending, step, claims, on_image, masks, content_mask, extra):
    """Up to ``step`` pending jobs claimed and loaded: (loaded (job, picture) pairs, the
    refused ones as results: skipped when another run has the output, failed when the
    picture cannot be read)."""
    t0 = time.perf_counter()
    loaded: list[tuple[BatchJob, LoadedImage]] = []
    held: list[BatchResult] = []
    while pending and len(loaded) < step:
        k, job = pending.pop(0)
        if on_image:
            on_image(k, job)
        why = claims.claim(job)
        if why is not None:
            held.append(BatchResult(job, "skipped", why))
            continue
        try:
            loaded.append((job, _load_content(job, masks, content_mask, bool(extra))))
        except ArtgenError as e:
            held.append(BatchResult(job, "failed", str(e), time.perf_counter() - t0))
    return loaded, held


def run_batch(
    jobs: list[BatchJob],
    styles: list[tuple[LoadedImage, float]],
    options: Any,
    batch: BatchOptions,
    *,
    model: Any = None,
    extractor: Any = None,
    device: Any = None,
    on_image: Callable[[int, BatchJob], None] | None = None,
    on_result: Callable[[BatchResult], None] | None = None,
    callback: Callable[[Any], None] | None = None,
    masks: list[Any] | None = None,
    content_mask: Any = None,
) -> list[BatchResult]:
    """Stylise each job with the method of ``options``; a bad image is recorded as failed and
    the rest go on. Methods that batch get up to ``batch.batch_size`` pictures per pass.

    ``masks`` (loaded, artgen.core.images.LoadedMask, one per style or None) and ``content_mask``
    apply to every picture, resized to it; a picture of another shape fails on its own."""
    method = method_of(options)
    if masks is not None:
        masks = load_masks(masks, len(styles))
    if content_mask is not None:
        content_mask = load_mask(content_mask)
    extra = mask_arguments(method, masks, content_mask)
    if batch.batch_size < 1:
        raise ArtgenError(f"--batch-size {batch.batch_size}: must be >= 1")
    for folder in sorted({job.output.parent for job in jobs}):
        check_output_dir(folder)  # before any compute
        clean_stale_files(folder)
    model = model if model is not None else extractor
    if model is None:
        model = method.load(options, device)
    step = batch.batch_size if method.stylize_many is not None else 1
    kw = dict(model=model, device=device, callback=callback, **extra)
    results: list[BatchResult] = []
    claims = _Claims(batch.overwrite)

    def finish(result: BatchResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    def done(result: BatchResult) -> None:
        claims.release(result.job.output)
        finish(result)

    pending: list[tuple[int, BatchJob]] = []
    for k, job in enumerate(jobs):
        if job.exists and not batch.overwrite:
            if on_image:
                on_image(k, job)
            finish(BatchResult(job, "skipped"))
        else:
            pending.append((k, job))

    stop = threading.Event()  # Ctrl-C: the saving thread stops after its current PNG

    def save(loaded, images, each) -> list[BatchResult]:
        def params(content, image):
            return run_params(content, styles, options, image, device, masks, content_mask)

        return _save_group(loaded, images, each, params, batch.overwrite, stop)

    # A group's pictures are saved on a thread while the next group is stylised (a core
    # sat idle between groups). Results are reported here, in the jobs' order (refusals
    # after the previous group's saves); a saving error stops the run before more work.
    saver = ThreadPoolExecutor(1, thread_name_prefix="artgen-save") if step > 1 else None
    saving = None

    def collect() -> None:
        nonlocal saving
        if saving is not None:
            future, saving = saving, None
            for result in future.result():
                done(result)

    try:
        while pending:
            t0 = time.perf_counter()
            loaded, held = _load_group(pending, step, claims, on_image, masks, content_mask, extra)
            if saving is not None and saving.done():
                collect()  # its error, if any, before more work
            images = None
            if loaded:
                contents = [c for _, c in loaded]
                try:
                    if step > 1:
                        images = method.stylize_many(contents, styles, options, **kw)
                    else:
                        images = [method.stylize(contents[0], styles, options, **kw)]
                except ArtgenError as e:
                    spent = time.perf_counter() - t0
                    held += [BatchResult(job, "failed", str(e), spent) for job, _ in loaded]
            each = (time.perf_counter() - t0) / max(1, len(loaded))
            collect()
            for result in held:
                (finish if result.status == "skipped" else done)(result)
            if images is None:
                continue
            if saver is None:
                for result in save(loaded, images, each):
                    done(result)
            else:
                saving = saver.submit(save, loaded, images, each)
        collect()
    except BaseException as e:
        stop.set()
        if saving is not None:  # the saver's own error is not lost behind this one
            with contextlib.suppress(BaseException):
                saving.result()
            if saving.done() and saving.exception() is not None:
                e.add_note(f"while saving the previous pictures: {saving.exception()!r}")
        raise
    finally:
        if saver is not None:
            saver.shutdown(wait=True)
        claims.release_all()
    return results


# ================================================================= data-set mode

MANIFEST = "manifest.jsonl"
MANIFEST_HEADER = {"artgen_manifest": 1}
OUTPUT_SUFFIXES = {"png": ".png", "jpg": ".jpg"}
STYLE_CACHE = 32  # pool pictures kept loaded per worker


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _inside(a: Path, b: Path) -> bool:
    """Whether folder ``a`` is ``b`` or lies inside it (resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def list_images(folder: str | os.PathLike, recursive: bool) -> tuple[list[str], int, int]:
    """(the images' paths relative to ``folder``, sorted; how many other files were
    skipped; how many sub-folders were left out because ``recursive`` is off). Hidden files
    and folders (names starting with a dot: artgen's own temporary files among them) are
    left out without being counted; links to folders are not followed."""
    root = Path(folder)
    images: list[str] = []
    others = subfolders = 0
    for top, dirs, files in os.walk(root):
        here = Path(top)
        visible = sorted(d for d in dirs if not d.startswith("."))
        if recursive:
            dirs[:] = visible
        else:
            subfolders += len(visible)
            dirs[:] = []
        for name in files:
            if name.startswith("."):
                continue
            p = here / name
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                images.append(_rel(p, root))
            else:
                others += 1
    return sorted(images), others, subfolders


def draw_styles(seed: int, image: str, pool: Sequence[str], k: int = 1) -> list[str]:
    """The ``k`` styles (all different) of the image whose path relative to the input folder
    is ``image``, from ``pool`` (the pool's pictures, sorted).

    Variant v takes sha256(seed, image, v, attempt) modulo the pool's size, the attempt
    counting up past styles an earlier variant took: a pure function of the seed, the path
    and the pool, so a picture gets the same styles on any machine, in any shard layout or
    order, and raising ``k`` keeps the variants made before."""
    if not pool:
        raise ArtgenError("the style pool is empty")
    if k > len(pool):
        raise ArtgenError(f"{k} styles per image but the pool holds only {len(pool)} pictures")
    chosen: list[str] = []
    for variant in range(k):
        attempt = 0
        while True:
            key = f"artgen-style-pool\0{seed}\0{image}\0{variant}\0{attempt}".encode()
            pick = pool[int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % len(pool)]
            if pick not in chosen:
                break
            attempt += 1
        chosen.append(pick)
    return chosen


@dataclass(frozen=True)
class DatasetItem:
    """One output to make: an input picture (and its path relative to the input folder),
    its variant, its style from the pool (None: the run's --style images) and its output."""

    source: Path
    input: str
    variant: int
    style: str | None
    output: Path
    rel_output: str

    def row(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "input": self.input,
            "variant": self.variant,
            "style": self.style or "",
            "output": str(self.output),
            "rel_output": self.rel_output,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DatasetItem:
        return cls(
            Path(str(row["source"])),
            str(row["input"]),
            int(row["variant"]),
            str(row["style"]) or None,
            Path(str(row["output"])),
            str(row["rel_output"]),
        )


@dataclass(frozen=True)
class DatasetPlan:
    """What a data-set run makes (this shard's items), and what the listing skipped."""

    in_dir: Path
    out_dir: Path
    items: list[DatasetItem]
    images: int  # images in the whole listing (all shards)
    non_images: int  # other files skipped
    subfolders: int  # sub-folders left out (without --recursive)
    shard: tuple[int, int]
    pool: Path | None = None
    pool_size: int = 0

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


def plan_dataset(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch: BatchOptions,
    *,
    seed: int = 0,
    all_shards: bool = False,
) -> DatasetPlan:
    """The outputs of a data-set run: every image of ``in_dir`` (its tree with
    ``batch.recursive``), ``batch.styles_per_image`` variants each, round-robin over the
    sorted paths for ``batch.shard`` (the variants of one image stay together), each with
    its style drawn from ``batch.style_pool`` by ``seed`` (:func:`draw_styles`)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise ArtgenError(f"{in_dir}: not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtgenError(f"{out_dir}: is a file, not a folder")
    if _inside(out_dir, in_dir) and (batch.recursive or out_dir.resolve() == in_dir.resolve()):
        raise ArtgenError(
            f"{out_dir}: the output folder must not be inside the input folder {in_dir} "
            "(its pictures would be read as inputs)"
        )
    if _inside(in_dir, out_dir):
        raise ArtgenError(f"{in_dir}: the input folder must not be inside the output folder")
    pool_dir, pool = None, []
    if batch.style_pool:
        pool_dir = Path(batch.style_pool)
        if not pool_dir.is_dir():
            raise ArtgenError(f"--style-pool {pool_dir}: not a folder")
        if _inside(out_dir, pool_dir) or _inside(pool_dir, out_dir):
            raise ArtgenError(
                f"--style-pool {pool_dir}: the pool and the output folder {out_dir} must "
                "not lie one inside the other"
            )
        pool = list_images(pool_dir, recursive=True)[0]
        if not pool:
            raise ArtgenError(f"--style-pool {pool_dir}: holds no images")
        if batch.styles_per_image > len(pool):
            raise ArtgenError(
                f"--styles-per-image {batch.styles_per_image}: the pool {pool_dir} holds "
                f"only {len(pool)} pictures"
            )
    i, n = (1, 1) if all_shards else batch.shard_numbers()
    names, others, subfolders = list_images(in_dir, batch.recursive)
    k = batch.styles_per_image
    suffix = OUTPUT_SUFFIXES[batch.format]
    made_by: dict[str, str] = {}
    inputs = {os.path.realpath(in_dir / name): name for name in names}
    items: list[DatasetItem] = []
    for index, name in enumerate(names):
        rel = Path(name)
        styles = draw_styles(seed, name, pool, k) if pool else [None]
        for variant, style in enumerate(styles):
            stem = rel.stem + (f"__{variant}" if k > 1 else "")
            rel_output = (rel.parent / f"{stem}{suffix}").as_posix()
            if rel_output in made_by:
                raise ArtgenError(
                    f"{in_dir / name} and {in_dir / made_by[rel_output]} would both be "
                    f"written to {rel_output}; rename one"
                )
            made_by[rel_output] = name
            output = out_dir / rel_output
            hit = inputs.get(os.path.realpath(output))
            if hit is not None:
                raise ArtgenError(
                    f"{output}: is the input {in_dir / hit} (through a link); artgen never "
                    "overwrites an input"
                )
            if index % n == i - 1:
                items.append(DatasetItem(in_dir / name, name, variant, style, output, rel_output))
    return DatasetPlan(
        in_dir, out_dir, items, len(names), others, subfolders, (i, n), pool_dir, len(pool)
    )


# ----------------------------------------------------------------------- the manifest


class Manifest:
    """``OUT/manifest.jsonl``: a header line, then one JSON line per output made.

    Lines are appended whole (one ``write`` on an ``O_APPEND`` descriptor, under an
    ``flock`` shared with every run and worker writing the same tree, then ``fsync``), after
    the output itself was written atomically: a line means its file is complete. A run
    killed between the two leaves a whole output without a line, which the next run checks
    and adds (:meth:`DatasetStylizer.process`). A line cut short by a crash is ended with a
    newline before the next one and then read as unreadable; later lines for the same
    output replace earlier ones. A file at that name that does not start with artgen's
    header is never written to."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._offset = 0
        self._pending = b""
        self.entries: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.unreadable = 0

    # -- reading
    def refresh(self) -> dict[str, dict[str, Any]]:
        """Read the lines appended since the last call; the entries by output path."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.entries
        except OSError as e:
            raise ArtgenError(f"{self.path}: cannot read ({e.strerror})") from None
        if self._offset == 0 and data and not data.startswith(b'{"artgen_manifest"'):
            raise ArtgenError(
                f"{self.path}: not an artgen manifest; artgen does not write into another "
                "file: move it or choose another output folder"
            )
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        for raw in data[:end].split(b"\n")[:-1]:
            try:
                entry = json.loads(raw)
            except ValueError:
                self.unreadable += 1
                continue
            if not isinstance(entry, dict):
                self.unreadable += 1
            elif isinstance(entry.get("output"), str):
                self.entries[entry["output"]] = entry
                self.counts[entry["output"]] = self.counts.get(entry["output"], 0) + 1
            elif "artgen_manifest" not in entry:
                self.unreadable += 1
        self._offset += end
        return self.entries

    def get(self, output: str) -> dict[str, Any] | None:
        """The last line for ``output`` (relative to the output folder), reading new lines."""
        if output not in self.entries:
            self.refresh()
        return self.entries.get(output)

    def check(self) -> None:
        """ArtgenError if a file at the manifest's name is not an artgen manifest."""
        try:
            with open(self.path, "rb") as f:
                start = f.read(18)
        except FileNotFoundError:
            return
        except OSError as e:
            raise ArtgenError(f"{self.path}: cannot read ({e.strerror})") from None
        if start and start != b'{"artgen_manifest"':
            raise ArtgenError(
                f"{self.path}: not an artgen manifest; artgen does not write into another "
                "file: move it or choose another output folder"
            )

    # -- writing
    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = self._open()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: O_APPEND alone
            fcntl = None  # type: ignore[assignment]
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size == 0:
                line = (json.dumps(MANIFEST_HEADER) + "\n").encode() + line
            else:
                if os.pread(fd, 18, 0) != b'{"artgen_manifest"':
                    raise ArtgenError(f"{self.path}: not an artgen manifest; not writing to it")
                if os.pread(fd, 1, size - 1) != b"\n":  # a line cut short by a crash
                    line = b"\n" + line
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as e:
            raise ArtgenError(f"{self.path}: cannot write ({e.strerror})") from None
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(
                    self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
                )
            except OSError as e:
                raise ArtgenError(f"{self.path}: cannot write ({e.strerror})") from None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------ making the outputs


@dataclass(frozen=True)
class DatasetConfig:
    """Everything a worker needs to make any item of a plan (picklable: Ray ships it)."""

    out_dir: str
    method: str
    options: Any
    styles: tuple[tuple[str, float], ...] = ()  # the --style files; empty with a pool
    pool: str | None = None
    format: str = "png"
    quality: int = 95
    overwrite: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    device: str = "auto"
    weights: str | None = None
    threads: int = 0
    masks: tuple[Any, ...] | None = None  # loaded (artgen.core.images.LoadedMask) or None each
    content_mask: Any = None


def dataset_config(
    plan: DatasetPlan,
    batch: BatchOptions,
    options: Any,
    styles: Sequence[tuple[str | os.PathLike, float]] = (),
    *,
    device: str = "auto",
    weights: str | None = None,
    masks: Sequence[Any] | None = None,
    content_mask: Any = None,
) -> DatasetConfig:
    """The :class:`DatasetConfig` of ``plan`` with the method of ``options`` (a method's
    options dataclass), the ``styles`` files (none with a style pool) and masks."""
    method = method_of(options)
    if plan.pool is not None and styles:
        raise ArtgenError("give --style or --style-pool, not both")
    if plan.pool is not None and not method.needs_styles:
        raise ArtgenError(f"--style-pool: method {method.name} takes no style images")
    if plan.pool is None and method.needs_styles and not styles:
        raise ArtgenError(f"method {method.name} needs a style image (--style or --style-pool)")
    if masks is not None:
        masks = load_masks(list(masks), 1 if plan.pool is not None else len(styles))
    if content_mask is not None:
        content_mask = load_mask(content_mask)
    mask_arguments(method, masks, content_mask)  # refused before any work
    Manifest(plan.manifest).check()
    return DatasetConfig(
        out_dir=str(plan.out_dir),
        method=method.name,
        options=options,
        styles=tuple((str(Path(p)), float(w)) for p, w in styles),
        pool=str(plan.pool) if plan.pool is not None else None,
        format=batch.format,
        quality=batch.quality,
        overwrite=batch.overwrite,
        device=device,
        weights=weights,
        threads=batch.threads,
        masks=tuple(masks) if masks is not None else None,
        content_mask=content_mask,
    )


def set_threads(n: int) -> None:
    """Use ``n`` threads for the network in this process (0: leave the libraries' own
    choice): PyTorch's intra-op threads and the onnxruntime path's session threads."""
    if n <= 0:
        return
    import sys

    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["ARTGEN_ONNX_THREADS"] = str(n)
    if "artgen.style.adain_onnx" in sys.modules:  # read when a session is made
        sys.modules["artgen.style.adain_onnx"].THREADS = n
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def load_network(
    method: str,
    options: Any,
    device: str = "auto",
    weights: str | None = None,
    *,
    n_styles: int = 1,
    masks: Any = None,
    content_mask: Any = None,
    threads: int = 0,
) -> tuple[Any, Any]:
    """(model, device) for a data-set run, as ``artgen stylize`` chooses them: the fast
    method's shipped network on onnxruntime where the run allows it (no PyTorch import),
    else the method's own ``load`` on the resolved device."""
    set_threads(threads)
    m = get_method(method)
    if m.name == "adain" and not weights:
        from artgen.style import adain_onnx

        path = adain_onnx.usable(options, device, [None] * n_styles, masks, content_mask)
        if path is not None:
            return adain_onnx.load(path), "cpu"
    from artgen.core.devices import resolve_device

    dev = resolve_device(device)
    set_threads(threads)  # PyTorch is imported now
    return m.load(options, dev, weights), dev


@dataclass(frozen=True)
class DatasetResult:
    item: DatasetItem
    status: str  # "done", "skipped" or "failed"
    note: str | None = None  # why it failed or was skipped
    seconds: float = 0.0


def _json_round(value: Any) -> Any:
    return json.loads(json.dumps(value))


class ItemMatcher:
    """Whether a manifest line records an item made with a config (no network loaded)."""

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        self.method = get_method(config.method)
        self.options_record = _json_round(config.options.to_dict())
        self.fixed_sha = [[sha256_file(p), w] for p, w in config.styles]

    @property
    def quality(self) -> int | None:
        return self.config.quality if self.config.format == "jpg" else None

    def matches(self, entry: dict[str, Any], item: DatasetItem) -> bool:
        """The line names this item's input, variant and style (the pool picture's path,
        or the --style files' sha256), and the run's method, options and format."""
        if item.style is not None:
            style_ok = entry.get("style") == item.style
        else:
            style_ok = entry.get("style_sha256") == self.fixed_sha
        return (
            style_ok
            and entry.get("input") == item.input
            and entry.get("variant") == item.variant
            and entry.get("method") == self.method.name
            and entry.get("options") == self.options_record
            and entry.get("format") == self.config.format
            and entry.get("quality") == self.quality
        )


class DatasetStylizer(ItemMatcher):
    """Makes items of a plan: stylises, encodes, writes atomically, appends the manifest
    line. Loads the network once (or takes one); both engines run it, so an item's bytes
    depend only on the item, the config and the thread count, never on the engine."""

    def __init__(self, config: DatasetConfig, *, model: Any = None, device: Any = None) -> None:
        from artgen._version import __version__

        super().__init__(config)
        self.out_dir = Path(config.out_dir)
        self.manifest = Manifest(self.out_dir / MANIFEST)
        self.version = __version__
        self.fixed = [(load_image(p), w) for p, w in config.styles]
        masks = list(config.masks) if config.masks is not None else None
        self.masks = masks
        self.extra = mask_arguments(self.method, masks, config.content_mask)
        if model is None:
            model, device = load_network(
                config.method,
                config.options,
                config.device,
                config.weights,
                n_styles=max(1, len(self.fixed)),
                masks=masks,
                content_mask=config.content_mask,
                threads=config.threads,
            )
        self.model, self.device = model, device
        self._pool: OrderedDict[str, tuple[LoadedImage, str]] = OrderedDict()
        self._content: tuple[Path, LoadedImage, str] | None = None

    # -- inputs
    def _content_of(self, item: DatasetItem) -> tuple[LoadedImage, str]:
        if self._content is None or self._content[0] != item.source:
            self._content = None
            loaded = load_image(item.source)
            self._content = (item.source, loaded, sha256_file(item.source))
        return self._content[1], self._content[2]

    def _styles_of(self, item: DatasetItem) -> tuple[list[tuple[LoadedImage, float]], Any]:
        if item.style is None:
            return self.fixed, self.fixed_sha
        hit = self._pool.get(item.style)
        if hit is None:
            path = Path(self.config.pool or ".") / item.style
            hit = (load_image(path), sha256_file(path))
            self._pool[item.style] = hit
            while len(self._pool) > STYLE_CACHE:
                self._pool.popitem(last=False)
        else:
            self._pool.move_to_end(item.style)
        return [(hit[0], 1.0)], hit[1]

    def render(
        self, item: DatasetItem, callback: Callable[[Any], None] | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """The output file's bytes and its manifest line (without the output's hash)."""
        t0 = time.perf_counter()
        content, content_sha = self._content_of(item)
        styles, style_sha = self._styles_of(item)
        if self.extra:
            try:
                check_masks(content.size, self.masks, self.config.content_mask)
            except ArtgenError as e:
                raise ArtgenError(f"{item.source}: {e}") from None
        image = self.method.stylize(
            content,
            styles,
            self.config.options,
            model=self.model,
            device=self.device,
            callback=callback,
            **self.extra,
        )
        buf = io.BytesIO()
        if self.config.format == "png":
            from PIL import PngImagePlugin

            from artgen.core.images import PARAMS_KEY

            params = run_params(
                content,
                styles,
                self.config.options,
                image,
                self.device,
                self.masks,
                self.config.content_mask,
            )
            info = PngImagePlugin.PngInfo()
            info.add_text(PARAMS_KEY, json.dumps(params, sort_keys=True))
            image.save(buf, format="PNG", pnginfo=info)
        else:
            image.convert("RGB").save(buf, format="JPEG", quality=self.config.quality)
        data = buf.getvalue()
        style_name = (
            item.style
            if item.style is not None
            else (self.config.styles[0][0] if len(self.config.styles) == 1 else None)
        )
        entry = {
            "input": item.input,
            "input_sha256": content_sha,
            "output": item.rel_output,
            "output_sha256": hashlib.sha256(data).hexdigest(),
            "output_bytes": len(data),
            "variant": item.variant,
            "style": style_name,
            "style_sha256": style_sha,
            "seed": getattr(self.config.options, "seed", None),
            "method": self.method.name,
            "options": self.options_record,
            "format": self.config.format,
            "quality": self.quality,
            "size": list(image.size),
            "run": self.config.run_id,
            "artgen": self.version,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        if len(self.config.styles) > 1:
            entry["styles"] = [[p, w] for p, w in self.config.styles]
        return data, entry

    def process(
        self, item: DatasetItem, callback: Callable[[Any], None] | None = None
    ) -> DatasetResult:
        """Make ``item`` unless it is done: claimed first (other runs and workers share the
        tree), then checked against the manifest, then made, written, recorded."""
        t0 = time.perf_counter()
        claim = OutputClaim(item.output)
        try:
            if not claim.acquire():
                return DatasetResult(item, "skipped", "another artgen run is making it")
        except ArtgenError as e:
            return DatasetResult(item, "failed", str(e))
        try:
            return self._process_claimed(item, callback, t0)
        except ArtgenError as e:
            return DatasetResult(item, "failed", str(e), time.perf_counter() - t0)
        finally:
            claim.release()

    def _process_claimed(
        self, item: DatasetItem, callback: Callable[[Any], None] | None, t0: float
    ) -> DatasetResult:
        overwrite = self.config.overwrite
        if os.path.lexists(item.output):
            entry = self.manifest.get(item.rel_output)
            if entry is not None and entry.get("run") == self.config.run_id:
                # made by this run: a worker that died after it, and its task retried
                return DatasetResult(item, "done", "made before a retry")
            if not overwrite:
                if entry is not None and self.matches(entry, item):
                    return DatasetResult(item, "skipped")
                if entry is not None:
                    raise ArtgenError(
                        f"{item.output}: made with other settings (style, --seed, options or "
                        "format differ from its manifest line); pass --overwrite or choose "
                        "another output folder"
                    )
                # A whole output without its line: its run died between the two. Make it
                # again in memory: the same bytes mean it is this item's; record it.
                data, entry = self.render(item, callback)
                if _sha256_of(item.output) != entry["output_sha256"]:
                    raise ArtgenError(
                        f"{item.output}: exists, is not in the manifest and differs from what "
                        "this run makes; remove it or pass --overwrite"
                    )
                self.manifest.append(entry)
                return DatasetResult(
                    item, "skipped", "found whole, added to the manifest", time.perf_counter() - t0
                )
        data, entry = self.render(item, callback)
        with atomic_output(item.output, overwrite=overwrite) as tmp:
            try:
                tmp.write_bytes(data)
            except OSError as e:
                raise ArtgenError(f"{item.output}: cannot write ({e.strerror})") from None
        self.manifest.append(entry)
        return DatasetResult(item, "done", seconds=time.perf_counter() - t0)

    def close(self) -> None:
        self.manifest.close()


def _sha256_of(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def prepare_outputs(plan: DatasetPlan, config: DatasetConfig) -> None:
    """Before any compute: every output folder made and writable, what killed runs left
    there removed (not what a live run is writing), and the manifest's name checked."""
    suffixes = (OUTPUT_SUFFIXES[config.format],)
    check_output_dir(plan.out_dir)
    for folder in sorted({item.output.parent for item in plan.items}):
        check_output_dir(folder)
        clean_stale_files(folder, suffixes)
    Manifest(plan.manifest).check()


def pending_items(
    plan: DatasetPlan,
    config: DatasetConfig,
    on_result: Callable[[DatasetResult], None] | None = None,
) -> tuple[list[DatasetItem], list[DatasetResult]]:
    """(items still to make, results of those already done, each also given to
    ``on_result``), after prepare_outputs: an item is done when the manifest's line for its
    output records it with this config and the file is there with the recorded size.
    Everything else goes to the workers, which sort out the rest (a file without a line,
    another run's settings) under the output's claim."""
    prepare_outputs(plan, config)
    if config.overwrite:
        return list(plan.items), []
    matcher = ItemMatcher(config)
    entries = Manifest(plan.manifest).refresh()
    todo: list[DatasetItem] = []
    done: list[DatasetResult] = []
    for item in plan.items:
        entry = entries.get(item.rel_output)
        if entry is not None and matcher.matches(entry, item):
            try:
                same = os.stat(item.output).st_size == entry.get("output_bytes")
            except OSError:
                same = False
            if same:
                done.append(DatasetResult(item, "skipped"))
                continue
        todo.append(item)
    if on_result:
        for r in done:
            on_result(r)
    return todo, done


def run_dataset(
    plan: DatasetPlan,
    config: DatasetConfig,
    *,
    model: Any = None,
    device: Any = None,
    on_result: Callable[[DatasetResult], None] | None = None,
    callback: Callable[[Any], None] | None = None,
) -> list[DatasetResult]:
    """Make the plan's items here, one picture per network pass, recording each in the
    manifest as it lands. Items already done are skipped (reported as such); a bad picture
    fails on its own and the rest go on. ``model``/``device``: a network loaded earlier
    (:func:`load_network`), else it is loaded here."""
    todo, results = pending_items(plan, config, on_result)
    if not todo:
        return results
    stylizer = DatasetStylizer(config, model=model, device=device)
    try:
        for item in todo:
            r = stylizer.process(item, callback)
            results.append(r)
            if on_result:
                on_result(r)
    finally:
        stylizer.close()
    return results


# ------------------------------------------------------------------------- --verify


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found; ``ok`` when nothing is wrong."""

    out_dir: Path
    listed: int = 0  # outputs the manifest lists
    matching: int = 0  # of them, present with the recorded sha256
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # image files the manifest lacks
    not_made: list[str] = field(default_factory=list)  # planned outputs without a line
    other_settings: list[str] = field(default_factory=list)  # lines of another config
    inputs_changed: list[str] = field(default_factory=list)
    unreadable_lines: int = 0
    twice: int = 0  # outputs listed more than once (redone with --overwrite, or retried)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.changed
            or self.unlisted
            or self.not_made
            or self.other_settings
            or self.inputs_changed
        )

    def problems(self) -> list[str]:
        """One line per problem found, at most a few of each kind."""
        lines = []
        for what, names in (
            ("missing", self.missing),
            ("changed (sha256 differs from the manifest)", self.changed),
            ("not in the manifest", self.unlisted),
            ("not made yet", self.not_made),
            ("made with other settings", self.other_settings),
            ("input changed since", self.inputs_changed),
        ):
            lines += [f"{what}: {name}" for name in names[:10]]
            if len(names) > 10:
                lines.append(f"{what}: ... and {len(names) - 10} more")
        return lines

    def verdict(self) -> str:
        where = self.out_dir / MANIFEST
        if self.ok:
            extra = (
                f" ({self.unreadable_lines} unreadable manifest lines ignored)"
                if self.unreadable_lines
                else ""
            )
            return f"verified: {self.matching} outputs match {where}{extra}"
        counts = [
            (len(self.changed), "changed"),
            (len(self.missing), "missing"),
            (len(self.unlisted), "not in the manifest"),
            (len(self.not_made), "not made yet"),
            (len(self.other_settings), "made with other settings"),
            (len(self.inputs_changed), "inputs changed"),
        ]
        found = ", ".join(f"{n} {what}" for n, what in counts if n)
        return f"FAILED: {found} ({self.matching} of {self.listed} listed outputs match {where})"


def verify_dataset(
    out_dir: str | os.PathLike,
    plan: DatasetPlan | None = None,
    config: DatasetConfig | None = None,
) -> VerifyReport:
    """Check a finished output tree against its manifest: every listed output present with
    its recorded sha256, no image file the manifest lacks. With the run's ``plan`` (all
    shards) and ``config`` too: every planned output listed with these settings, and the
    inputs unchanged (their sha256 against the manifest's)."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.is_file():
        raise ArtgenError(f"{path}: no manifest (not an output folder of a data-set run?)")
    manifest = Manifest(path)
    entries = manifest.refresh()
    report = VerifyReport(out_dir, listed=len(entries), unreadable_lines=manifest.unreadable)
    report.twice = sum(1 for n in manifest.counts.values() if n > 1)
    root = out_dir.resolve()
    for rel, entry in sorted(entries.items()):
        target = (out_dir / rel).resolve()
        if root not in target.parents:  # a line naming ../something: not ours to read
            report.changed.append(rel)
            continue
        got = _sha256_of(target)
        if got is None:
            report.missing.append(rel)
        elif got != entry.get("output_sha256"):
            report.changed.append(rel)
        else:
            report.matching += 1
    suffixes = tuple(OUTPUT_SUFFIXES.values()) + tuple(IMAGE_SUFFIXES)
    for rel in list_images(out_dir, recursive=True)[0]:
        if rel not in entries and rel.lower().endswith(suffixes):
            report.unlisted.append(rel)
    if plan is not None:
        matcher = ItemMatcher(config) if config is not None else None
        hashes: dict[str, str | None] = {}
        for item in plan.items:
            entry = entries.get(item.rel_output)
            if entry is None:
                report.not_made.append(item.rel_output)
                continue
            if matcher is not None and not matcher.matches(entry, item):
                report.other_settings.append(item.rel_output)
            if item.input not in hashes:
                hashes[item.input] = _sha256_of(item.source)
            if hashes[item.input] != entry.get("input_sha256"):
                report.inputs_changed.append(item.input)
        report.inputs_changed = sorted(set(report.inputs_changed))
    return report
