"""Stylising a whole folder: planning (shards, resume) and the loop.

Each output is written atomically, so a run that is killed leaves only whole
pictures behind; running the same command again skips them and finishes the rest.
Each output is claimed (:class:`artgen.images.OutputClaim`) before it is made, so two
runs on the same folder share the work instead of both doing all of it, and what a
killed run left behind (temporary and lock files) is removed when the next one starts.

Masks (regional styles) apply to every picture of the folder alike, each resized to the
picture's output size: a folder of shots with the same framing (a fixed camera, a series)
gets the same regions. A picture whose shape (aspect ratio) differs from the masks' is
reported as failed, by name, and the rest go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artgen.errors import ArtgenError
from artgen.images import (
    IMAGE_SUFFIXES,
    LoadedImage,
    OutputClaim,
    check_output_dir,
    clean_stale_files,
    load_image,
    load_mask,
    save_png,
)
from artgen.style import check_masks, load_masks, mask_arguments, method_of, run_params


@dataclass(frozen=True)
class BatchOptions:
    """How a folder is split and what happens to outputs that already exist."""

    shard: str = field(
        default="1/1",
        metadata={"help": "I/N: process only the I-th of N shares of the folder (1-based)"},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "redo images whose output already exists"}
    )
    batch_size: int = field(
        default=8,
        metadata={"help": "pictures per network pass, for methods that batch (adain)"},
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

    ``masks`` (loaded, artgen.images.LoadedMask, one per style or None) and ``content_mask``
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
    results: list[BatchResult] = []

    def finish(result: BatchResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    todo: list[tuple[int, BatchJob]] = []
    for k, job in enumerate(jobs):
        if job.exists and not batch.overwrite:
            if on_image:
                on_image(k, job)
            finish(BatchResult(job, "skipped"))
        else:
            todo.append((k, job))
    claims: dict[Path, OutputClaim] = {}

    def claim(job: BatchJob) -> str | None:
        """Claim the output: None if it is now ours, else why it is skipped."""
        c = OutputClaim(job.output)
        if not c.acquire():
            return "another artgen run is making it"
        if job.output.exists() and not batch.overwrite:
            c.release()
            return "another artgen run made it"
        claims[job.output] = c
        return None

    def done(result: BatchResult) -> None:
        c = claims.pop(result.job.output, None)
        if c is not None:
            c.release()
        finish(result)

    try:
        pending = list(todo)
        while pending:
            t0 = time.perf_counter()
            loaded: list[tuple[BatchJob, LoadedImage]] = []
            while pending and len(loaded) < step:
                k, job = pending.pop(0)
                if on_image:
                    on_image(k, job)
                why = claim(job)
                if why is not None:
                    finish(BatchResult(job, "skipped", why))
                    continue
                try:
                    content = load_image(job.source)
                    if extra:
                        try:
                            check_masks(content.size, masks, content_mask)
                        except ArtgenError as e:
                            raise ArtgenError(f"{job.source}: {e}") from None
                    loaded.append((job, content))
                except ArtgenError as e:
                    done(BatchResult(job, "failed", str(e), time.perf_counter() - t0))
            if not loaded:
                continue
            try:
                if step > 1:
                    images = method.stylize_many(
                        [c for _, c in loaded],
                        styles,
                        options,
                        model=model,
                        device=device,
                        callback=callback,
                        **extra,
                    )
                else:
                    images = [
                        method.stylize(
                            loaded[0][1],
                            styles,
                            options,
                            model=model,
                            device=device,
                            callback=callback,
                            **extra,
                        )
                    ]
            except ArtgenError as e:
                for job, _ in loaded:
                    done(BatchResult(job, "failed", str(e), time.perf_counter() - t0))
                continue
            each = (time.perf_counter() - t0) / len(loaded)
            for (job, content), image in zip(loaded, images, strict=True):
                try:
                    params = run_params(
                        content, styles, options, image, device, masks, content_mask
                    )
                    save_png(image, job.output, params=params, overwrite=batch.overwrite)
                    done(BatchResult(job, "done", seconds=each))
                except ArtgenError as e:
                    done(BatchResult(job, "failed", str(e), each))
    finally:
        for c in claims.values():
            c.release()
    return results
