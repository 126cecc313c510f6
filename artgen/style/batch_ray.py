"""Data-set batches on Ray Data: ``artgen batch IN -o OUT ... --engine ray [--address auto]``.

The plan (the listing, the styles drawn, the outputs) is made here, on the driver, exactly
as for the local engine (artgen.style.batch.plan_dataset); what the manifest already holds
is left out. The rest becomes a Ray dataset of rows, and ``map_batches`` hands them to a
pool of :class:`DatasetActor` workers, each of which loads the network once and makes its
rows with the same :class:`artgen.style.batch.DatasetStylizer` as the local engine: the
output written atomically, then its manifest line. Outputs and the manifest therefore go
to a file system every worker sees (one machine, or a shared mount on a cluster).

A worker that dies mid-run is restarted by Ray and its task retried: the rows it had
finished are found in the manifest under this run's id and reported as made, the row it
died on (no file, or a whole file without a line) is made or recorded then, so nothing is
lost and nothing is written twice. Each worker uses ``threads`` threads (default 1, with
as many CPUs reserved), set before its network loads: PyTorch's pictures depend on the
thread count, onnxruntime's (the fast method's default path) do not.

Ray is imported only here, and only when this engine runs: ``pip install 'artgen[cluster]'``.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from artgen.core.errors import ArtgenError
from artgen.style.batch import (
    DatasetConfig,
    DatasetItem,
    DatasetPlan,
    DatasetResult,
    DatasetStylizer,
    pending_items,
)

# Settings the workers must share with the driver (a cluster's workers do not inherit the
# driver's environment).
PASSED_ENV = (
    "ARTGEN_RUNTIME",
    "ARTGEN_HOME",
    "ARTGEN_STYLES_DIR",
    "ARTGEN_VGG19_WEIGHTS",
    "TORCH_HOME",
    "HF_HOME",
    "HF_HUB_OFFLINE",
)


class DatasetActor:
    """A Ray Data worker: the network is loaded once, in the constructor; each call makes
    the rows of one batch and returns, per row, its index, status, note and seconds."""

    def __init__(self, config: DatasetConfig) -> None:
        # A network that cannot load fails every row with the reason, once per worker:
        # raised here, Ray would restart the worker again and again.
        self.error: str | None = None
        try:
            self.stylizer = DatasetStylizer(config)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, ArtgenError) else str(e)

    def make(self, item: DatasetItem) -> DatasetResult:
        """One row (a subclass may wrap it)."""
        if self.error is not None:
            return DatasetResult(item, "failed", f"the worker could not start: {self.error}")
        return self.stylizer.process(item)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"index": [], "status": [], "note": [], "seconds": []}
        for k in range(len(batch["index"])):
            item = DatasetItem.from_row({key: values[k] for key, values in batch.items()})
            try:
                r = self.make(item)
            except Exception as e:  # one bad row fails alone, as in the local engine
                r = DatasetResult(item, "failed", f"{item.source}: {type(e).__name__}: {e}")
            out["index"].append(int(batch["index"][k]))
            out["status"].append(r.status)
            out["note"].append(r.note or "")
            out["seconds"].append(float(r.seconds))
        return {
            "index": np.asarray(out["index"], dtype=np.int64),
            "status": np.asarray(out["status"], dtype=object),
            "note": np.asarray(out["note"], dtype=object),
            "seconds": np.asarray(out["seconds"], dtype=np.float64),
        }


@contextlib.contextmanager
def _console_quiet() -> Iterator[None]:
    """Ray Data's console messages (execution plans, timings) held to errors for the run;
    its log files under the Ray session keep everything."""
    handlers = [
        h
        for h in logging.getLogger("ray.data").handlers
        if not isinstance(h, logging.FileHandler) and "File" not in type(h).__name__
    ]
    before = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h, level in zip(handlers, before, strict=True):
            h.setLevel(level)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ArtgenError(
            "--engine ray needs Ray Data: pip install 'artgen[cluster]' (or 'ray[data]')"
        ) from None
    return ray


def worker_count(resources: dict[str, float], threads: int, num_gpus: float) -> int:
    """How many workers the cluster's ``resources`` hold: one per ``num_gpus`` GPUs, or
    one per ``threads`` CPUs for CPU workers."""
    if num_gpus > 0:
        n = int(resources.get("GPU", 0) // num_gpus)
        if n < 1:
            raise ArtgenError(
                f"--num-gpus-per-worker {num_gpus:g}: the Ray cluster has "
                f"{resources.get('GPU', 0):g} GPUs"
            )
        return n
    return max(1, int(resources.get("CPU", 1) // threads))


def run_dataset_ray(
    plan: DatasetPlan,
    config: DatasetConfig,
    *,
    address: str | None = None,
    workers: int = 0,
    num_gpus_per_worker: float = 0.0,
    batch_size: int = 8,
    on_result: Callable[[DatasetResult], None] | None = None,
    actor_class: type[DatasetActor] = DatasetActor,
) -> list[DatasetResult]:
    """Make the plan's items on Ray Data workers, recording each in the manifest as it
    lands; the results come back in the order they finish.

    ``address``: a running cluster (``"auto"``: the one this machine belongs to); None
    joins the instance this process already started (``ray.init``), or starts a local one
    for the run and stops it after. ``workers``: the actor pool's size (0: as many as the
    cluster holds); ``batch_size``: rows per call (and per retried task)."""
    ray = _import_ray()
    if batch_size < 1:
        raise ArtgenError(f"--batch-size {batch_size}: must be >= 1")
    todo, results = pending_items(plan, config, on_result)
    if not todo:
        return results
    threads = config.threads or 1
    device = config.device
    if num_gpus_per_worker <= 0 and device == "auto":
        device = "cpu"  # a CPU worker on a machine with GPUs stays off them
    config = dataclasses.replace(config, threads=threads, device=device)
    started = False
    # Ray Data swaps builtins.print for tqdm_ray.safe_print while it runs and leaves it
    # there; other code in this process (torch's unpickler messages, the CLI) expects print.
    saved_print = builtins.print
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
        started = True
    try:
        n = workers or worker_count(ray.cluster_resources(), threads, num_gpus_per_worker)
        n = min(n, len(todo))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows progress (on_result)
        ctx.print_on_execution_start = False
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update({"OMP_NUM_THREADS": str(threads), "ARTGEN_ONNX_THREADS": str(threads)})
        rows = [{"index": k, **item.row()} for k, item in enumerate(todo)]
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
        ds = ds.map_batches(
            actor_class,
            fn_constructor_kwargs={"config": config},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n),
            num_cpus=threads,
            num_gpus=num_gpus_per_worker or None,
            runtime_env={"env_vars": env},
        )
        with _console_quiet():
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for k, status, note, seconds in zip(
                    out["index"], out["status"], out["note"], out["seconds"], strict=True
                ):
                    r = DatasetResult(todo[int(k)], str(status), str(note) or None, float(seconds))
                    results.append(r)
                    if on_result:
                        on_result(r)
    finally:
        if started:
            ray.shutdown()
        builtins.print = saved_print
    return results


__all__ = ["DatasetActor", "run_dataset_ray", "worker_count"]
