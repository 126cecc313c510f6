"""The fast method on onnxruntime, for commands that should not pay for importing PyTorch.

Importing PyTorch takes about 2.7 s and 0.9 GB on a 2-core CPU, 5 to 20 times the work of
stylising one 512 px picture. When onnxruntime is installed, the shipped network has its
ONNX graphs beside it (artgen/weights_data/adain-lite0: fast.onnx, the whole network, and
its two halves for folders, fast_stats.onnx for the style's statistics and fast_paint.onnx
for the picture from the photo and those statistics, sharing their weights in
fast.weights; written by docs/adain_ship.py from the same weights through
artgen.interop.onnx_export, and named in fast.json) and the run needs nothing the graphs
lack, ``artgen stylize`` and ``artgen batch`` with ``--method adain`` run them there: the
same network, the same resizing and rounding, so the same picture as the PyTorch path to
float rounding (tested within 1/255; in practice equal). A folder encodes its painting
once.

What the graph lacks, and so keeps the PyTorch path: a GPU, several styles or masks,
colour preservation, tiles (pictures beyond ONNX_MAX_PIXELS), bf16, and other networks
than the shipped one. ``ARTGEN_RUNTIME=torch`` in the environment turns this path off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from artgen.core import palette
from artgen.core.images import LoadedImage, resize_long_side

META_FILE = "fast.json"  # the graphs' files, the decoder they came from, border, levels
ONNX_MAX_PIXELS = 4096 * 4096  # beyond this the PyTorch path (which tiles) is used
THREADS = int(os.environ.get("ARTGEN_ONNX_THREADS", "0")) or None


def shipped_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "weights_data" / "adain-lite0"


def _gpu_present() -> bool:
    """Whether device 'auto' could pick a GPU (checked without importing PyTorch)."""
    if sys.platform == "darwin":  # Apple's Metal backend
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")


def usable(options: Any, device: str, styles: list, masks: Any = None, content_mask: Any = None):
    """The ONNX file to run, or None when this run needs the PyTorch path."""
    if os.environ.get("ARTGEN_RUNTIME", "auto") == "torch":
        return None
    if device not in ("auto", "cpu") or (device == "auto" and _gpu_present()):
        return None
    if options.model != "shipped" or options.precision == "bf16" or options.tile > 0:
        return None
    if options.preserve_color != "none" or masks or content_mask is not None:
        return None
    if len(styles) != 1 or importlib.util.find_spec("onnxruntime") is None:
        return None
    folder = shipped_dir()
    return folder if _matches(folder, options) else None


def graph_files(folder: Path, made: Any = None) -> dict[str, Path] | None:
    """The graphs that ``folder``'s META_FILE names (``one``: the whole network; ``stats``
    and ``paint``: its two halves; ``weights``: what they share), if all are there.
    ``made``: that file's contents, where the caller has read it already."""
    try:
        if made is None:
            made = json.loads((folder / META_FILE).read_text())
        named = made["files"]
        files = {k: folder / Path(str(named[k])).name for k in ("one", "stats", "paint", "weights")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if all(f.is_file() for f in files.values()) else None


def _matches(folder: Path, options: Any) -> bool:
    """The graphs were exported from the decoder that ships beside them (recorded sha256),
    with the border and feature transform this run asks for."""
    from artgen.core.transforms import wct_levels
    from artgen.style.adain import BORDER

    try:
        made = json.loads((folder / META_FILE).read_text())
        want, border, wct = made["decoder_sha256"], made["border"], made["wct_levels"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if graph_files(folder, made) is None:
        return False
    if border != BORDER or wct != list(wct_levels(options.transform)):
        return False
    got = hashlib.sha256((folder / "decoder.safetensors").read_bytes()).hexdigest()
    return want == got


def _cpu() -> str:
    """What decides the kernels onnxruntime's optimiser picks: the processor's features."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _cached_graph(ort: Any, path: Path) -> Path | None:
    """Where this machine keeps its optimised copy of the graph at ``path``:
    $ARTGEN_HOME/onnx/fast-KEY.onnx, KEY naming the file and the weights files beside it
    (path, size, time), onnxruntime's version and the processor (the optimised graph
    holds kernels chosen for it)."""
    from artgen.interop.catalog import artgen_home

    try:
        files = [path, *sorted(path.parent.glob("*.weights"))]  # and the weights it reads
        stamp = "|".join(f"{f.resolve()}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files)
    except OSError:
        return None
    what = f"{stamp}|{ort.__version__}|{_cpu()}"
    key = hashlib.sha256(what.encode()).hexdigest()[:20]
    return artgen_home() / "onnx" / f"fast-{key}.onnx"


CACHE_KEPT = 12  # optimised graphs kept (three per installed artgen), the most recently used


def _prune(folder: Path) -> None:
    """Remove all but the CACHE_KEPT most recently used optimised graphs in ``folder``
    (other clones and versions leave theirs behind), and temporaries over an hour old (a
    killed process's)."""
    import time

    with contextlib.suppress(OSError):
        kept = sorted(folder.glob("fast-*.onnx"), key=lambda f: f.stat().st_mtime, reverse=True)
        stale = [f for f in folder.glob(".fast-*") if f.stat().st_mtime < time.time() - 3600]
        for old in kept[CACHE_KEPT:] + stale:
            old.unlink(missing_ok=True)


def _session(ort: Any, path: Path, so: Any) -> Any:
    """The graph's session. onnxruntime optimises a graph for this processor each time it
    opens it (40-80 ms of a 0.6 s one-picture command on 2 cores, 2026-12-07); the first run
    on a machine keeps the optimised graph (:func:`_cached_graph`) and later runs open that
    without optimising again: the same kernels, the same pictures (tested bit for bit). A
    cache that cannot be read or written only costs that time."""
    providers = ["CPUExecutionProvider"]
    cached = _cached_graph(ort, path)
    if cached is not None and cached.is_file():
        level = so.graph_optimization_level
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(cached), so, providers=providers)
            with contextlib.suppress(OSError):
                os.utime(cached)  # used now: kept by _prune
            return session
        except Exception:  # noqa: BLE001 - a damaged copy: made again below
            so.graph_optimization_level = level
    if cached is not None:
        tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        session = None
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            so.optimized_model_filepath = str(tmp)
            # Every weight inside the copy: left alone, onnxruntime would keep the graph's
            # references to the weights file beside it, which the cache folder lacks.
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", tmp.stem + ".weights"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(2**62)
            )
            session = ort.InferenceSession(str(path), so, providers=providers)
            os.replace(tmp, cached)
            _prune(cached.parent)
        except Exception:  # noqa: BLE001 - an unwritable cache: the graph as it is
            so.optimized_model_filepath = ""
        finally:  # also on Ctrl-C: no temporary is left behind
            for left in (tmp, tmp.with_suffix(".weights")):
                with contextlib.suppress(OSError):
                    left.unlink(missing_ok=True)
        if session is not None:
            return session
    return ort.InferenceSession(str(path), so, providers=providers)


class OnnxFast:
    """onnxruntime sessions of the fast network (what :func:`load` returns): the whole
    network, or for several pictures the style's statistics (run once per style and size,
    and remembered) and the painting; the fast method's stylize/stylize_many run it when
    they are handed one as ``model``."""

    runtime = "onnxruntime"
    encoder_name = "efficientnet-lite0"  # what describe() names
    REMEMBERED = 8  # styles' statistics kept

    def __init__(self, folder: Path, workers: int = 1):
        import onnxruntime as ort

        files = graph_files(folder)
        if files is None:
            raise ValueError(f"{folder}: no fast-method graphs named in {META_FILE}")

        def options(threads: int = 0):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            if threads:
                so.intra_op_num_threads = threads
            return so

        # One picture runs the whole network in one graph (two graphs, each paying its
        # first run, took 0.05 s longer at 512 px). A folder encodes its painting once with
        # the statistics graph, then ``workers`` threads each paint whole pictures through
        # one session (onnxruntime's run is thread-safe) with the cores shared out between
        # them. On 2 cores, 2 workers of 1 thread each took 0.109 s a picture at 512 px
        # against 0.129 s for one picture at a time on 2 threads, and the decoding, palette
        # and PNG steps overlap too; the pictures are bit-identical (2026-12-07).
        self.workers = max(1, workers)
        self.path = folder
        self.session = self.stats_session = None
        if self.workers == 1:
            self.one = _session(ort, files["one"], options(THREADS or 0))
        else:
            threads = THREADS or max(1, (os.cpu_count() or 1) // self.workers)
            self.one = None
            self.stats_session = _session(ort, files["stats"], options(THREADS or 0))
            self.session = _session(ort, files["paint"], options(threads))
            self.stats_names = [o.name for o in self.stats_session.get_outputs()]
        self._remembered: dict[tuple, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def stats_of(self, style: Image.Image) -> dict[str, np.ndarray]:
        """The style's statistics at each level, remembered per picture (size and pixels):
        a folder encodes its painting once."""
        key = (style.size, hashlib.blake2b(style.tobytes(), digest_size=16).digest())
        with self._lock:  # a second worker waits for the first one's statistics
            found = self._remembered.get(key)
            if found is None:
                out = self.stats_session.run(None, {"style": _array(style)})
                found = self._remembered[key] = dict(zip(self.stats_names, out, strict=True))
                while len(self._remembered) > self.REMEMBERED:
                    self._remembered.pop(next(iter(self._remembered)))
            return found

    def paint(self, content: np.ndarray, style: Image.Image, alpha: float) -> np.ndarray:
        """The network's picture ((1, 3, H, W) in [0, 1]) of ``content`` ((1, 3, H, W))
        in the manner of ``style`` (resized as the run wants it)."""
        a = np.array(alpha, np.float32)
        if self.one is not None:
            return self.one.run(None, {"content": content, "style": _array(style), "alpha": a})[0]
        feeds = {"content": content, "alpha": a, **self.stats_of(style)}
        return self.session.run(None, feeds)[0]


def _array(im: Image.Image) -> np.ndarray:
    """As artgen.core.images.to_tensor: (1, 3, H, W) float32 in [0, 1]."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None])


def stylize_one(
    content: LoadedImage, style: LoadedImage, options: Any, model: OnnxFast, style_palette=None
) -> Image.Image | None:
    """One picture, as artgen.style.adain.stylize makes it; None when it is too large for
    the graph (the PyTorch path, which tiles, then makes it)."""
    from artgen.style.adain import BORDER, _choose_tile, palette_share

    c = resize_long_side(content.rgb, options.size)
    if c.width * c.height > ONNX_MAX_PIXELS or min(c.size) <= BORDER:
        return None  # the graph reflects the border, which needs a side above BORDER px
    style_long = max(16, round(max(c.size) * options.style_scale))
    # Where the PyTorch path would tile (its own memory estimate), it makes the picture.
    if _choose_tile(
        options.tile, c.height + 2 * BORDER, c.width + 2 * BORDER, 1, "cpu", 4, style_long
    ):
        return None
    photo = _array(c)
    s = resize_long_side(style.rgb, style_long)
    out = np.clip(model.paint(photo, s, float(options.strength))[0], 0.0, 1.0)
    out = out.transpose(1, 2, 0)
    if style_palette is not None:  # as artgen.style.adain.stylize_many does
        photo_stats = palette.colour_stats(photo[0].transpose(1, 2, 0))
        out = palette.move_palette(out, style_palette, photo_stats, palette_share(options.strength))
    im = palette.to_picture(out)  # rounded as artgen.core.images.to_pil rounds
    if content.alpha is not None:
        im.putalpha(content.alpha.resize(im.size, Image.Resampling.LANCZOS))
    im.info["model"] = options.model
    im.info["tile"] = options.tile
    return im


def stylize_many(contents: list, styles: Any, options: Any, model: OnnxFast) -> list[Image.Image]:
    """artgen.style.adain.stylize_many for an :class:`OnnxFast` model (one style, no masks:
    what :func:`usable` admitted). A picture too large for the graph goes through PyTorch."""
    from artgen.core.images import load_image
    from artgen.style import load_styles
    from artgen.style.adain import palette_of

    items = load_styles(styles)
    if len(items) != 1:
        raise ValueError("the onnxruntime path takes one style")
    style = items[0][0]
    style_palette = palette_of(items, options)

    def one(c: Any) -> Image.Image:
        c = c if isinstance(c, LoadedImage) else load_image(c)
        im = stylize_one(c, style, options, model, style_palette)
        if im is None:
            from artgen.style import adain

            im = adain.stylize(c, styles, options, device="cpu")
        return im

    workers = min(getattr(model, "workers", 1), len(contents))
    if workers <= 1:
        return [one(c) for c in contents]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="artgen-onnx") as pool:
        return list(pool.map(one, contents))  # in order; the first error is raised


def load(folder: Path, workers: int = 1) -> OnnxFast:
    """The graphs in ``folder`` (what :func:`usable` gives) as onnxruntime sessions;
    ``workers`` > 1 for many pictures."""
    return OnnxFast(folder, workers)


def batch_workers() -> int:
    """How many pictures at once a folder runs on this machine's cores (2 from 2 cores)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


__all__ = [
    "OnnxFast",
    "META_FILE",
    "graph_files",
    "batch_workers",
    "load",
    "shipped_dir",
    "stylize_many",
    "stylize_one",
    "usable",
]
