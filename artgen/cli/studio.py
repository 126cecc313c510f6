"""artgen studio: a Gradio page for combining a content picture with styles.

    artgen app [--port 7860] [--share] [--runs DIR]        or        python apps/app.py

It lives in the package (artgen/cli, the interface layer) so that an installed artgen
has it; apps/app.py is the file to run from a checkout.

Built on artgen's public Python API only (the library itself never imports
gradio). Listens on 127.0.0.1 unless told otherwise; nothing is served beyond
this server's own cache (uploads, results) and the bundled styles; no user text is
ever evaluated or used as a path.

Regional styles: under "Regions" the user paints over the content photo (a brush layer
of a gr.ImageEditor); the painted layer's alpha is the mask of the style chosen for the
painted area, and the rest gets another style, the styles picked above, or none (the
photo stays there). artgen.stylize's ``masks`` do the rest (artgen.style.Regions). Each server keeps its uploads and results in a
private temporary folder (Gradio's cache included, through GRADIO_TEMP_DIR), removed
when it stops; folders of servers that were killed are removed by the next one.

Video: under "Video" a short clip (at most ``max_video_seconds`` and
``max_video_frames``, and the server's upload size) goes through the fast method with
temporal consistency (artgen.video.pipeline: each frame blended with the flow-warped previous
one), with the styles picked above, into an mp4 that keeps the clip's frame rate and
sound. Longer clips are for `artgen video`, which resumes.

Your own generator: with ``--runs DIR`` (a folder of `artgen finetune` runs, or one run)
the studio lists the diffusion runs found there, and "Your fine-tuned generator" repaints
the content photo with the chosen one (the sdedit method: SDEdit, Meng et al. 2022), with
its own noise, seed and prompt.
"""

from __future__ import annotations

import argparse
import atexit
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from artgen.core.options import option

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

import artgen  # noqa: E402
from artgen import ArtgenError, Cancelled  # noqa: E402
from artgen.core.devices import resolve_device  # noqa: E402
from artgen.core.images import load_image, load_mask, save_png  # noqa: E402
from artgen.interop import catalog  # noqa: E402
from artgen.style import get_method, mask_arguments, method_of, run_params  # noqa: E402

UPLOAD_SLOTS = 2
PREVIEW_EVERY = 10  # steps between streamed previews
# Quality presets: a style method and settings of its options. "Instant" is the fast
# (feed-forward) method and re-renders live as the controls move; the others optimise.
PRESETS = {
    "Instant": ("adain", {}),
    "Fast preview": ("gatys", dict(iterations=60, min_size=128)),
    "Final": ("gatys", dict(iterations=200, min_size=128)),
}
DEFAULT_QUALITY = "Fast preview"
DEFAULTS = get_method("gatys").options()
# The strength slider's top: each method's own limit, at most this.
STRENGTH_SLIDER_MAX = 5.0
MAX_SEED = 2**63 - 1  # torch.manual_seed's range for non-negative seeds
ROOT_PREFIX = "artgen-studio-"
CACHE_AGE_S = 86400  # a long-running server forgets uploads and results after a day
# "Style for the rest" of a painted region: the styles picked above, or none (the photo).
REST_PICKED, REST_NONE = "picked", "none"
PAINTED_MASK = "painted-mask"  # how the PNG records a mask painted in the studio


def _remove_abandoned_roots() -> None:
    """Remove the temporary folders of studio servers that died without cleaning up."""
    for root in Path(tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            pid = int((root / "pid").read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being made: leave it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
        except PermissionError:
            pass  # another user's live server


@dataclass(frozen=True)
class AppConfig:
    """How the studio is served. CLI flags of `artgen app` come from these fields."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int | None = option(None, "port (default: 7860 or the next free one)")
    share: bool = option(False, "also open a public gradio.live link")
    device: str = option("auto", "auto, cpu, cuda or mps")
    concurrency: int = option(1, "jobs running at once on the device")
    max_queue: int = option(8, "jobs that may wait; more get a 'queue is full' message")
    max_file_size: str = option("20mb", "largest upload")
    max_pixels: int = option(24_000_000, "largest upload in pixels")
    max_size: int = option(1024, "largest output size offered")
    max_video_seconds: float = option(10.0, "longest video clip accepted, in seconds")
    max_video_frames: int = option(300, "most frames in a video clip accepted")
    max_video_size: int = option(512, "largest long side of a stylised video, in px")
    runs: str = option(
        "",
        "a folder of your fine-tuned diffusion runs (or one run): the studio offers "
        "them as a third method, repainting the photo with your own generator (SDEdit) "
        "(default: none)",
    )


def find_runs(folder: str) -> dict[str, Path]:
    """The diffusion runs in ``folder`` (itself, or its subfolders), by folder name: what
    the studio offers under "Your fine-tuned generator". GAN runs and other folders are
    left out; a missing folder is an ArtgenError."""
    from artgen.style.sdedit import check_generator

    if not folder:
        return {}
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ArtgenError(f"--runs {folder}: no such folder")
    found: dict[str, Path] = {}
    for path in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        try:
            found[path.name] = check_generator(str(path))
        except ArtgenError:
            continue  # not a run, or not a diffusion run
    if not found:
        raise ArtgenError(f"--runs {folder}: holds no diffusion run (from `artgen finetune`)")
    return found


def guard_upload(component: gr.Image) -> gr.Image:
    """Make a bad upload fail with a clear one-line message instead of Gradio's generic error.

    Gradio opens uploads with Pillow before the handler runs; a text file renamed .png
    or a decompression bomb fails there. gr.Error raised here reaches the user as is.
    """
    from PIL import Image

    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError:
            why = "has too many pixels to open safely"
        except Image.UnidentifiedImageError:
            why = "is not an image Pillow can read (PNG, JPEG, WebP, BMP, TIFF, GIF)"
        except Exception as e:  # noqa: BLE001 - any failure to read the upload
            why = f"could not be read ({type(e).__name__})"
        name = Path(getattr(payload, "orig_name", None) or "the upload").name
        raise gr.Error(f"{component.label}: {name} {why}.")

    component.preprocess = preprocess
    return component


MAX_EDITOR_LAYERS = 4  # the region editor shows one brush layer; a page sends at most that


def guard_editor(component: gr.ImageEditor, max_pixels: int) -> gr.ImageEditor:
    """Check what an ImageEditor payload claims before Gradio decodes any of it: at most
    MAX_EDITOR_LAYERS layers, and each picture (background, layer, composite) within the
    upload pixel limit, read from its header (a 600 KB PNG layer can claim 16000x10000,
    2 GB once decoded). One line, as an error toast, otherwise."""
    from io import BytesIO

    from PIL import Image

    original = component.preprocess

    def pixels(item) -> int:
        src = BytesIO(item) if isinstance(item, (bytes, bytearray)) else getattr(item, "path", None)
        if src is None:
            return 0
        try:
            with Image.open(src) as im:  # the header only: nothing is decoded
                return im.width * im.height
        except Image.DecompressionBombError:
            raise gr.Error(f"{component.label}: a layer has too many pixels.") from None
        except (OSError, ValueError):
            raise gr.Error(f"{component.label}: a layer is not an image.") from None

    def preprocess(payload):
        if payload is not None:
            layers = list(getattr(payload, "layers", None) or [])
            if len(layers) > MAX_EDITOR_LAYERS:
                raise gr.Error(
                    f"{component.label}: {len(layers)} layers; the limit is {MAX_EDITOR_LAYERS}."
                )
            items = [getattr(payload, "background", None), *layers]
            items.append(getattr(payload, "composite", None))
            for item in items:
                n = pixels(item) if item is not None else 0
                if n > max_pixels:
                    raise gr.Error(
                        f"{component.label}: a layer of {n:,} pixels; the limit is {max_pixels:,}."
                    )
        return original(payload)

    component.preprocess = preprocess
    return component


@dataclass(frozen=True)
class Controls:
    """The style controls of one event, by name. Gradio passes an event's inputs by
    position; they are named once here, in the order :func:`api_names` gives the API: one
    weight per bundled style, then (upload, weight) per upload slot, then ``tail``'s names
    (STYLIZE_TAIL or VIDEO_TAIL; a name the event does not send is None)."""

    weights: tuple[float, ...]
    uploads: tuple[tuple[Any, float], ...]
    by_name: dict[str, Any]

    @classmethod
    def of(cls, n_styles: int, values: Sequence, tail: Sequence[str]) -> Controls:
        flat = list(values[n_styles : n_styles + 2 * UPLOAD_SLOTS])
        rest = list(values[n_styles + 2 * UPLOAD_SLOTS :])
        return cls(
            weights=tuple(values[:n_styles]),
            uploads=tuple(zip(flat[0::2], flat[1::2], strict=True)),
            by_name={k: rest[i] if i < len(rest) else None for i, k in enumerate(tail)},
        )

    def __getitem__(self, name: str) -> Any:
        return self.by_name[name]


class Studio:
    """The app's state shared by all sessions: loaded backbones and the results folder."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self._models: dict[tuple[str, str], object] = {}
        self._load_lock = threading.Lock()
        _remove_abandoned_roots()
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        (self.root / "pid").write_text(f"{os.getpid()}\n")
        self.out_dir = self.root / "results"
        self.out_dir.mkdir()
        # Gradio's cache (uploads, and the copies of results it serves) goes in here too,
        # not in the shared /tmp/gradio where anyone's planted file would be served.
        # Gradio reads the variable whenever it needs the folder, so it stays set.
        self.cache_dir = self.root / "gradio"
        self.cache_dir.mkdir()
        os.environ["GRADIO_TEMP_DIR"] = str(self.cache_dir)
        entries = catalog.load_manifest()
        self.styles = [e for e in entries if e.kind == "bundled" and e.available]
        self.examples = {e.name: e for e in entries if e.kind == "example" and e.available}
        self.runs = find_runs(config.runs)

    def close(self) -> None:
        """Remove this server's temporary folder (uploads, results, Gradio's cache)."""
        shutil.rmtree(self.root, ignore_errors=True)
        if os.environ.get("GRADIO_TEMP_DIR") == str(self.cache_dir):
            del os.environ["GRADIO_TEMP_DIR"]

    def model(self, method: str, options) -> object:
        """The loaded network of ``method`` for ``options`` (loaded once, shared by sessions)."""
        kind = getattr(options, "backbone", getattr(options, "model", None))
        key = (method, str(kind if kind is not None else getattr(options, "generator", "")))
        with self._load_lock:
            if key not in self._models:
                self._models[key] = get_method(method).load(options, self.device)
            return self._models[key]

    def options(self, quality, size, strength, preserve, backbone, seed):
        if quality not in PRESETS:
            raise gr.Error(f"Unknown quality {quality!r}.")
        method, preset = PRESETS[quality]
        seed = self.seed(seed)
        try:
            if method == "adain":
                return get_method(method).options(
                    size=int(size),
                    strength=float(strength),
                    preserve_color=str(preserve),
                    seed=seed,
                )
            return get_method(method).options(
                size=int(size),
                strength=float(strength),
                preserve_color=str(preserve),
                backbone=str(backbone),
                seed=seed,
                **preset,
            )
        except ArtgenError as e:
            raise gr.Error(public(str(e))) from None

    @staticmethod
    def seed(value) -> int:
        """The seed box's value as an int in torch's range; a clear message otherwise."""
        seed = None
        if isinstance(value, int) and not isinstance(value, bool):
            seed = value
        elif isinstance(value, float) and value.is_integer():
            seed = int(value)
        if seed is None or not 0 <= seed <= MAX_SEED:
            raise gr.Error(f"Seed {str(value)[:30]}: use a whole number from 0 to {MAX_SEED}.")
        return seed

    def controls(self, values: Sequence, tail: Sequence[str]) -> Controls:
        """The values Gradio passed after the content (or clip), by name."""
        return Controls.of(len(self.styles), values, tail)

    def inputs(self, content, c: Controls):
        """(content, styles, options, history, masks) from the page's inputs; ``masks`` is
        None, or one mask (or None) per style when a region is painted."""
        content_img = self.load_upload(content, "content")
        if content_img is None:
            raise gr.Error("Add a content picture first (upload, webcam or paste).")
        styles, upload_imgs = self.picked_styles(c.weights, c.uploads)
        masks = None
        editor, rest_style = c["region_mask"], c["rest_style"]
        mask = painted_mask(editor, content_img.size)
        if mask is not None:
            painted = self.named_style(c["region_style"], upload_imgs)
            if rest_style in (None, "", REST_PICKED):
                others = styles
            elif rest_style == REST_NONE:
                others = []
            else:
                others = [self.named_style(rest_style, upload_imgs)]
            styles = [painted, *others]
            masks = [mask, *[None] * len(others)]
        if not styles:
            raise gr.Error(
                NOTHING_PAINTED
                if has_layers(editor)
                else "Pick at least one style: click one in the gallery, or upload your own."
            )
        options = self.options(
            c["quality"], c["size"], c["strength"], c["preserve_color"], c["backbone"], c["seed"]
        )
        return content_img, styles, options, list(c["history"] or []), masks

    def picked_styles(self, bundled_w, uploads) -> tuple[list, list]:
        """(the styles picked with their weights, the uploaded style images or None)."""
        styles = [
            (load_image(e.path), float(w))
            for e, w in zip(self.styles, bundled_w, strict=True)
            if w > 0
        ]
        upload_imgs = []
        for k, (path, w) in enumerate(uploads):
            img = self.load_upload(path, f"style upload {k + 1}")
            upload_imgs.append(img)
            if img is not None and w > 0:
                styles.append((img, float(w)))
        return styles, upload_imgs

    def check_clip(self, clip):
        """The uploaded clip's VideoInfo, within the server's limits; gr.Error otherwise."""
        from artgen.video.pipeline import TooManyFrames, probe_video

        if not clip:
            raise gr.Error("Add a video clip first.")
        name = Path(str(clip)).name
        cfg = self.config
        limits = (
            f"this studio takes clips of at most {cfg.max_video_seconds:g} s and "
            f"{cfg.max_video_frames} frames. Cut it, or use `artgen video` (no limit, resumable)."
        )
        try:
            # Decoding stops at the first frame past the limit (a long clip is not decoded
            # whole first), and no frame may be larger than the studio's pixel limit.
            info = probe_video(
                clip, max_frames=self.config.max_video_frames, max_pixels=self.config.max_pixels
            )
        except TooManyFrames:
            raise gr.Error(
                f"video: {name} has more than {cfg.max_video_frames} frames; {limits}"
            ) from None
        except ArtgenError as e:
            raise gr.Error(f"video: {str(e).replace(str(clip), name)}") from None
        seconds = info.frames / float(info.fps)
        if seconds > cfg.max_video_seconds or info.frames > cfg.max_video_frames:
            raise gr.Error(f"video: {name} is {seconds:.1f} s ({info.frames} frames); {limits}")
        if info.width * info.height > cfg.max_pixels:
            raise gr.Error(f"video: {name} is {info.width}x{info.height}, too many pixels.")
        return info

    def video(self, clip, *rest, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        """Generator: stylise a short clip with the fast method and temporal consistency;
        streams (video, status) updates. Problems are said in the status line."""
        from artgen.video.pipeline import VideoOptions, stylize_video

        c = self.controls(rest, VIDEO_TAIL)
        strength, preserve, size, seed = (c[k] for k in VIDEO_TAIL)
        try:
            self.check_clip(clip)
            styles, _ = self.picked_styles(c.weights, c.uploads)
            if not styles:
                raise gr.Error("Pick at least one style: click one in the gallery, or upload one.")
            size = min(int(size), self.config.max_video_size)
            try:
                options = get_method("adain").options(
                    size=size,
                    strength=float(strength),
                    preserve_color=str(preserve),
                    seed=self.seed(seed),
                )
            except ArtgenError as e:
                raise gr.Error(public(str(e))) from None
            model = self.model("adain", options)
        except ArtgenError as e:
            yield gr.skip(), problem(str(e))
            return
        except gr.Error as e:
            yield gr.skip(), problem(e.message)
            return
        out = self.result_path("artgen-video", options.seed, ".mp4")
        updates: queue.Queue = queue.Queue()
        stop = threading.Event()
        outcome: dict = {}

        def on_frame(p) -> None:
            if stop.is_set():
                raise Cancelled
            updates.put((p.status, p.done, p.total, p.elapsed))

        def job():
            return stylize_video(
                clip,
                styles,
                out,
                options,
                VideoOptions(cache=str(self.out_dir / (out.stem + ".frames"))),
                model=model,
                device=self.device,
                on_frame=on_frame,
                upscale=True,  # the size slider is always a choice made on the page
            )

        worker = start_worker(
            job, updates, outcome, "artgen-video", lambda m: m.replace(str(clip), Path(clip).name)
        )
        progress(0, desc="starting")
        try:
            for status, done, total, elapsed in iter(updates.get, None):
                what = "Encoding" if status == "encoded" else "Frame"
                progress(done / max(total, 1), desc=what.lower())
                eta = elapsed / max(done, 1) * (total - done)
                yield gr.skip(), f"{what} {done}/{total}, about {eta:.0f} s left"
        finally:
            stop.set()
            worker.join(timeout=60)
        if "error" in outcome:
            yield gr.skip(), problem(outcome["error"])
            return
        if "result" not in outcome:
            yield gr.skip(), "Stopped."
            return
        r = outcome["result"]
        yield (
            str(r.output),
            f"Done: {r.frames} frames, {r.size[0]}x{r.size[1]} at {float(r.fps):g} fps "
            f"(sound: {r.audio}) in {r.seconds:.1f} s, fast method with temporal consistency.",
        )

    def named_style(self, name, upload_imgs) -> tuple:
        """A style chosen in a region's dropdown: a bundled style's name or an upload slot."""
        for e in self.styles:
            if name == e.name:
                return load_image(e.path), 1.0
        for k, img in enumerate(upload_imgs):
            if name == upload_choice(k):
                if img is None:
                    raise gr.Error(
                        f"{upload_choice(k)} is chosen for a region but empty: "
                        "upload a style there."
                    )
                return img, 1.0
        raise gr.Error(f"Unknown style {str(name)[:40]!r} for a region.")

    def save(self, image, content_img, styles, options, masks=None) -> Path:
        params = run_params(content_img, styles, options, image, self.device, masks)
        return save_png(image, self.result_path("artgen", options.seed, ".png"), params=params)

    def result_path(self, prefix: str, seed: int, suffix: str) -> Path:
        """A new file name in the results folder, unique to one request: with several jobs
        at once (``--concurrency``) names made of the time and the seed collided, and one
        user was served another's picture. Never overwritten (save_png refuses)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self.out_dir / f"{prefix}-{stamp}-{seed}-{uuid.uuid4().hex[:12]}{suffix}"

    def live(self, content, *rest):
        """The Instant preview: re-rendered whenever a control changes (fast method only)."""
        c = self.controls(rest, STYLIZE_TAIL)
        if c["quality"] != "Instant" or not content:
            return gr.skip(), gr.skip(), gr.skip()
        editor = c["region_mask"]
        has_style = (
            any(w > 0 for w in c.weights)
            or any(path and w > 0 for path, w in c.uploads)
            or is_painted(editor)
        )
        if not has_style:
            return (
                gr.skip(),
                NOTHING_PAINTED if has_layers(editor) else "Pick a style to see it live.",
                gr.skip(),
            )
        t0 = time.perf_counter()
        try:
            content_img, styles, options, _, masks = self.inputs(content, c)
            fast = get_method("adain")
            image = fast.stylize(
                content_img,
                styles,
                options,
                model=self.model("adain", options),
                device=self.device,
                **mask_arguments(fast, masks, None),
            )
        except ArtgenError as e:
            return gr.skip(), problem(str(e)), gr.skip()
        except gr.Error as e:
            return gr.skip(), problem(e.message), gr.skip()
        path = self.save(image, content_img, styles, options, masks)
        status = (
            f"Instant: {image.width}x{image.height} in {time.perf_counter() - t0:.2f} s "
            "(fast method). Press Stylize to keep it, or choose Final for Gatys."
        )
        return str(path), status, gr.update(value=str(path), visible=True)

    def load_upload(self, path: str | None, what: str):
        if not path:
            return None
        try:
            return load_image(path, max_pixels=self.config.max_pixels)
        except ArtgenError as e:
            # The message names Gradio's cache path; show the user's view of it.
            raise gr.Error(f"{what}: {str(e).replace(str(path), Path(path).name)}") from None

    def stylize(self, content, *rest, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        """Generator: streams (image, status, download, gallery, history) updates.

        A problem with the inputs is said in the status line; the result, the download and
        the gallery stay as they were (an error would mark each of them red).
        """
        try:
            content_img, styles, options, history, masks = self.inputs(
                content, self.controls(rest, STYLIZE_TAIL)
            )
            method = method_of(options)
            model = self.model(method.name, options)
            extra = mask_arguments(method, masks, None)
        except ArtgenError as e:
            yield gr.skip(), problem(str(e)), gr.skip(), gr.skip(), gr.skip()
            return
        except gr.Error as e:
            yield gr.skip(), problem(e.message), gr.skip(), gr.skip(), gr.skip()
            return

        updates: queue.Queue = queue.Queue()
        stop = threading.Event()
        outcome: dict = {}

        def on_step(p: artgen.StylizeProgress) -> None:
            if stop.is_set():
                raise Cancelled
            if p.step % PREVIEW_EVERY == 0 or p.step == p.total_steps:
                updates.put((p.step, p.total_steps, p.scale, p.num_scales, p.elapsed, p.image()))

        def job():
            return method.stylize(
                content_img,
                styles,
                options,
                model=model,
                device=self.device,
                callback=on_step,
                **extra,
            )

        worker = start_worker(job, updates, outcome, "artgen-stylize")
        progress(0, desc="starting")
        try:
            for step, total, scale, scales, elapsed, preview in iter(updates.get, None):
                eta = elapsed / step * (total - step)
                progress(step / total, desc=f"scale {scale}/{scales}")
                status = f"Step {step}/{total} (scale {scale}/{scales}), about {eta:.0f} s left"
                yield preview, status, gr.skip(), gr.skip(), gr.skip()
        finally:
            # Reached on completion and when Stop cancels this generator: the engine's
            # callback sees the flag at its next step and returns, freeing the device.
            stop.set()
            worker.join(timeout=30)
            if self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
        if "error" in outcome:
            raise gr.Error(outcome["error"])
        if "result" not in outcome:
            raise gr.Error("Stopped.")
        image = outcome["result"]
        path = self.save(image, content_img, styles, options, masks)
        history = [str(path), *history][:24]
        used = image.info.get("backbone") or f"the fast method ({image.info.get('model')})"
        status = f"Done: {image.width}x{image.height} with {used}. The PNG remembers its settings."
        yield str(path), status, gr.update(value=str(path), visible=True), history, history

    def sdedit(self, content, run, noise, seed, prompt, history):
        """Repaint the content with a fine-tuned run (the sdedit method): (image, status,
        download, gallery, history), as ``stylize`` ends. A problem is said in the status."""
        try:
            content_img = self.load_upload(content, "content")
            if content_img is None:
                raise gr.Error("Add a content picture first (upload, webcam or paste).")
            if run not in self.runs:
                raise gr.Error(f"Unknown run {str(run)[:40]!r}: choose one of the list.")
            method = get_method("sdedit")
            try:
                options = method.options(
                    generator=str(self.runs[run]),
                    noise=float(noise),
                    seed=self.seed(seed),
                    prompt=str(prompt or ""),
                )
            except ArtgenError as e:
                raise gr.Error(public(str(e))) from None
            t0 = time.perf_counter()
            image = method.stylize(
                content_img, [], options, model=self.model("sdedit", options), device=self.device
            )
        except ArtgenError as e:
            return gr.skip(), problem(str(e)), gr.skip(), gr.skip(), gr.skip()
        except gr.Error as e:
            return gr.skip(), problem(e.message), gr.skip(), gr.skip(), gr.skip()
        history = list(history or [])
        path = self.save(image, content_img, [], options)
        history = [str(path), *history][:24]
        status = (
            f"Done: {image.width}x{image.height} in {time.perf_counter() - t0:.1f} s with your "
            f"generator {run} (noise {options.noise:g}). The PNG remembers its settings."
        )
        return str(path), status, gr.update(value=str(path), visible=True), history, history


def start_worker(
    job, updates: queue.Queue, outcome: dict, name: str, clean=str
) -> threading.Thread:
    """Run ``job()`` in a daemon thread: its value goes to outcome["result"], Cancelled to
    outcome["cancelled"], an error's message (``clean``ed of server paths) to
    outcome["error"]; None goes on ``updates`` when it ends."""

    def work() -> None:
        try:
            outcome["result"] = job()
        except Cancelled:
            outcome["cancelled"] = True
        except ArtgenError as e:
            outcome["error"] = public(clean(str(e)))
        except Exception as e:  # noqa: BLE001 - reported to the user, the server goes on
            outcome["error"] = public(f"{type(e).__name__}: {e}")
        finally:
            updates.put(None)

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    return worker


def strength_limit(quality: str) -> float:
    """The strength slider's top for a quality preset: its method's limit (the fast method
    extrapolates only up to 2), at most STRENGTH_SLIDER_MAX."""
    method, _ = PRESETS.get(quality, PRESETS[DEFAULT_QUALITY])
    return min(STRENGTH_SLIDER_MAX, get_method(method).options.MAX_STRENGTH)


def upload_choice(k: int) -> str:
    return f"Style {k + 1} (your upload)"


NOTHING_PAINTED = (
    "Nothing is painted on the photo yet: start each stroke on the photo itself (a stroke "
    "that starts on the grey margin around it paints nothing), or pick a style above."
)


def has_layers(editor) -> bool:
    """Whether the region editor holds a layer (the user has been painting), painted or not."""
    return isinstance(editor, dict) and any(x is not None for x in editor.get("layers") or [])


def is_painted(editor) -> bool:
    """Whether an ImageEditor value has any painted (non-transparent) pixel."""
    import numpy as np

    layers = (editor or {}).get("layers") if isinstance(editor, dict) else None
    for layer in layers or []:
        if layer is not None and layer.mode in ("RGBA", "LA", "PA"):
            if np.asarray(layer.getchannel("A")).max() > 0:
                return True
    return False


def painted_mask(editor, size: tuple[int, int]):
    """The region painted in the ImageEditor as an artgen mask: the union (max) of its
    layers' alpha, at the content's size ``size`` (W, H); None when nothing is painted."""
    import numpy as np
    from PIL import Image

    if not is_painted(editor):
        return None
    alphas = [
        np.asarray(layer.getchannel("A").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        / 255.0
        for layer in editor["layers"]
        if layer is not None and "A" in layer.getbands()
    ]
    try:
        return load_mask(np.maximum.reduce(alphas), name=PAINTED_MASK)
    except ArtgenError as e:
        raise gr.Error(public(str(e))) from None


def api_names(studio: Studio, first: str, tail: Sequence[str]) -> list[str]:
    """The named parameters of an endpoint that takes the style controls: ``first`` (the
    content or the clip), one ``weight_<style>`` per bundled style, the upload slots,
    then ``tail``."""
    names = [first]
    for e in studio.styles:
        names.append("weight_" + re.sub(r"[^0-9a-zA-Z]+", "_", e.name).strip("_").lower())
    for k in range(1, UPLOAD_SLOTS + 1):
        names += [f"style_{k}", f"style_{k}_weight"]
    return [*names, *tail]


def named(handler, names: Sequence[str], streams: bool = False):
    """``handler(*values)`` with a signature of ``names``, so that Gradio's API names the
    endpoint's parameters (``Client.view_api()``) and a script can call it by keyword;
    a handler taking ``*rest`` showed as param_1 ... param_18. Gradio still passes the
    values by position, in the order of the event's inputs."""
    import inspect

    # All but the first default to None: a script may leave out what it does not use
    # (Gradio then gives the component's own value, or None where it has none).
    params = [
        inspect.Parameter(
            n,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if i == 0 else None,
        )
        for i, n in enumerate(names)
    ]
    if streams:

        def wrapper(*values, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
            yield from handler(*values, progress=progress)

        progress = inspect.Parameter(
            "progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress()
        )
        params.append(progress)
    else:

        def wrapper(*values):
            return handler(*values)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


STYLIZE_TAIL = (
    "strength",
    "preserve_color",
    "size",
    "quality",
    "backbone",
    "seed",
    "history",
    "region_mask",
    "region_style",
    "rest_style",
)
VIDEO_TAIL = ("strength", "preserve_color", "size", "seed")


_SUFFIXES = r"(?i:png|jpe?g|webp|bmp|tiff?|gif|mp4|m4v|mov|mkv|webm|avi|json)"


def public(message: str) -> str:
    """``message`` without this server's private paths: a file in a studio's temporary
    folder (an upload in Gradio's cache, a result) is named by its file name only."""
    tmp = tempfile.gettempdir()
    roots = "|".join(re.escape(os.path.join(t, ROOT_PREFIX)) for t in {tmp, os.path.realpath(tmp)})
    name = lambda m: Path(m.group(0)).name  # noqa: E731
    # A path up to a file type the studio handles (file names may hold spaces), then any
    # other path up to a space or a quote.
    message = re.sub(rf"(?:{roots})[^\n]*?\.{_SUFFIXES}\b", name, message)
    return re.sub(rf"(?:{roots})[^\s'\",;:)]*", name, message)


def problem(message: str) -> str:
    """A status line that says what to fix."""
    return f"**Not started:** {public(message)}"


def _inputs_column(studio: Studio, ui: SimpleNamespace) -> None:
    """The content, the styles (bundled, uploaded, painted regions) and the settings."""
    cfg = studio.config
    style_names = [e.name for e in studio.styles]
    ui.content = guard_upload(
        gr.Image(
            label="Content",
            type="filepath",
            sources=["upload", "webcam", "clipboard"],
            elem_id="content",
            height=300,
            image_mode=None,
        )
    )
    ui.gallery = gr.Gallery(
        value=[(str(e.path), e.name) for e in studio.styles],
        label="Styles: click to add or remove",
        columns=4,
        height=180,
        allow_preview=False,
        elem_id="style-gallery",
    )
    with gr.Group():
        ui.weights = [
            gr.Slider(0, 1, value=0, step=0.05, label=f"{name} weight", elem_id=f"w-{name}")
            for name in style_names
        ]
    with gr.Accordion("Your own styles", open=False):
        ui.uploads = []
        for k in range(UPLOAD_SLOTS):
            with gr.Row():
                up = guard_upload(
                    gr.Image(
                        label=f"Style {k + 1}",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        height=140,
                        elem_id=f"style-upload-{k + 1}",
                        image_mode=None,
                    )
                )
                w = gr.Slider(0, 1, value=1, step=0.05, label="weight")
            ui.uploads += [up, w]
    with gr.Accordion("Regions: paint where a style goes", open=False, elem_id="regions"):
        _regions_panel(cfg, style_names, ui)
    _settings_panel(cfg, ui)


def _regions_panel(cfg: AppConfig, style_names: list[str], ui: SimpleNamespace) -> None:
    ui.region_editor = guard_editor(
        gr.ImageEditor(
            # An empty value, not None, so API clients may leave it out.
            value={"background": None, "layers": [], "composite": None},
            label="Paint the region over your photo",
            type="pil",
            image_mode="RGBA",
            sources=[],
            format="png",
            layers=False,
            transforms=[],
            brush=gr.Brush(colors=["#ff3366"], color_mode="fixed", default_size=40),
            elem_id="region-editor",
            height=320,
        ),
        cfg.max_pixels,
    )
    region_choices = [*style_names, *[upload_choice(k) for k in range(UPLOAD_SLOTS)]]
    with gr.Row():
        ui.region_style = gr.Dropdown(
            region_choices,
            value=style_names[0] if style_names else None,
            label="Style for the painted area",
            elem_id="region-style",
        )
        ui.rest_style = gr.Dropdown(
            [
                ("The styles picked above", REST_PICKED),
                ("None: keep the photo", REST_NONE),
                *region_choices,
            ],
            value=REST_PICKED,
            label="Style for the rest",
            elem_id="rest-style",
        )


def _settings_panel(cfg: AppConfig, ui: SimpleNamespace) -> None:
    with gr.Row():
        ui.strength = gr.Slider(
            0.1,
            strength_limit(DEFAULT_QUALITY),
            value=DEFAULTS.strength,
            step=0.1,
            label="Strength",
            info="0 the photo, 1 each method's default, above 1 more style",
        )
        ui.size = gr.Slider(
            128, cfg.max_size, value=384, step=32, label="Output size (long side, px)"
        )
    with gr.Row():
        ui.quality = gr.Radio(list(PRESETS), value=DEFAULT_QUALITY, label="Quality")
        ui.preserve = gr.Radio(
            [
                ("Use the style's colours", "none"),
                ("Keep my colours (luminance)", "luminance"),
                ("Recolour the style (histogram)", "histogram"),
            ],
            value=DEFAULTS.preserve_color,
            label="Colours",
        )
    with gr.Accordion("Advanced", open=False), gr.Row():
        ui.backbone = gr.Dropdown(
            ["auto", "efficientnet-lite0", "vgg19"], value=DEFAULTS.backbone, label="Backbone"
        )
        ui.seed = gr.Number(value=DEFAULTS.seed, precision=0, label="Seed")


def _video_panel(cfg: AppConfig, ui: SimpleNamespace) -> None:
    gr.Markdown(
        f"A clip of up to {cfg.max_video_seconds:g} s ({cfg.max_video_frames} "
        f"frames), stylised with the styles picked above by the fast method, "
        f"each frame kept steady against the last (up to "
        f"{cfg.max_video_size} px). Longer clips: `artgen video`."
    )
    ui.clip = gr.Video(label="Clip", sources=["upload"], elem_id="clip", height=200)
    ui.make_video = gr.Button("Stylize video", elem_id="stylize-video")
    ui.video_out = gr.Video(
        label="Stylised clip", interactive=False, elem_id="video-result", height=240
    )
    ui.video_status = gr.Markdown("", elem_id="video-status")


def _generator_panel(studio: Studio, ui: SimpleNamespace) -> None:
    sdedit_defaults = get_method("sdedit").options()
    gr.Markdown(
        "Repaint the content with a diffusion model you fine-tuned "
        "(`artgen finetune`): the photo is noised by *noise* and your "
        "model paints it back. 0 keeps the photo, 1 is a new picture."
    )
    ui.run_choice = gr.Dropdown(
        list(studio.runs), value=next(iter(studio.runs)), label="Run", elem_id="run"
    )
    with gr.Row():
        ui.run_noise = gr.Slider(0, 1, value=sdedit_defaults.noise, step=0.05, label="Noise")
        ui.run_seed = gr.Number(value=0, precision=0, label="Seed")
    ui.run_prompt = gr.Textbox(
        "", label="Prompt (text-to-image runs; empty: the run's own)", max_lines=1
    )
    ui.repaint = gr.Button("Repaint with my generator", elem_id="repaint")


def _result_column(ui: SimpleNamespace) -> None:
    ui.result = gr.Image(
        label="Result",
        type="filepath",
        format="png",
        interactive=False,
        elem_id="result",
        height=420,
        buttons=["download", "fullscreen"],
    )
    ui.status = gr.Markdown("", elem_id="status")
    with gr.Row():
        ui.download = gr.DownloadButton("Download PNG", visible=False, elem_id="download")
        ui.reuse = gr.Button("Use as content", elem_id="reuse")
    ui.session = gr.Gallery(
        label="This session",
        columns=4,
        height=200,
        format="png",
        elem_id="session",
        object_fit="contain",
        fit_columns=False,  # one result stays a thumbnail, not a full-width crop
        interactive=False,
    )


def _wire(studio: Studio, ui: SimpleNamespace) -> None:
    """The events: stylise, video, stop, SDEdit, Instant mode, the gallery and reuse."""
    cfg = studio.config
    device = dict(concurrency_limit=cfg.concurrency, concurrency_id="device")
    styles = [*ui.weights, *ui.uploads]
    inputs = [
        ui.content,
        *styles,
        ui.strength,
        ui.preserve,
        ui.size,
        ui.quality,
        ui.backbone,
        ui.seed,
        ui.history,
        ui.region_editor,
        ui.region_style,
        ui.rest_style,
    ]
    shown = [ui.result, ui.status, ui.download, ui.session, ui.history]
    run = ui.go.click(
        named(studio.stylize, api_names(studio, "content", STYLIZE_TAIL), streams=True),
        inputs,
        shown,
        api_name="stylize",
        **device,
    )
    video_run = ui.make_video.click(
        named(studio.video, api_names(studio, "clip", VIDEO_TAIL), streams=True),
        [ui.clip, *styles, ui.strength, ui.preserve, ui.size, ui.seed],
        [ui.video_out, ui.video_status],
        api_name="video",
        **device,
    )
    ui.stop.click(None, None, None, cancels=[run, video_run], api_name="stop")
    if studio.runs:
        ui.repaint.click(
            studio.sdedit,
            [ui.content, ui.run_choice, ui.run_noise, ui.run_seed, ui.run_prompt, ui.history],
            shown,
            api_name="sdedit",
            **device,
        )
    # Instant mode: every change of a control re-renders with the fast method.
    # A new photo is the painting's new background; the old strokes are dropped.
    ui.content.change(
        lambda path: {"background": path, "layers": [], "composite": path} if path else None,
        ui.content,
        ui.region_editor,
        api_name=False,
        queue=False,
    )
    # Each method's strength range: the slider follows the quality's method.
    ui.quality.change(
        lambda quality, value: gr.Slider(
            maximum=strength_limit(quality), value=min(float(value), strength_limit(quality))
        ),
        [ui.quality, ui.strength],
        ui.strength,
        api_name=False,
        queue=False,
    )
    live = [ui.content, *styles, ui.strength, ui.preserve, ui.size, ui.quality]
    for control in [*live, ui.region_editor, ui.region_style, ui.rest_style]:
        control.change(
            studio.live,
            inputs,
            [ui.result, ui.status, ui.download],
            api_name=False,
            trigger_mode="always_last",
            show_progress="hidden",
            **device,
        )

    def toggle(current: dict, evt: gr.SelectData):
        """Clicking a style turns its weight on (1) or off (0)."""
        vals = [current[w] for w in ui.weights]
        vals[evt.index] = 0 if vals[evt.index] > 0 else 1
        return vals

    # A set of inputs reaches the function as one {component: value} dict.
    ui.gallery.select(toggle, set(ui.weights), ui.weights, api_name="toggle_style", queue=False)

    def use_as_content(path):
        if not path:
            raise gr.Error("No result yet.")
        return path

    ui.reuse.click(use_as_content, ui.result, ui.content, api_name="use_as_content", queue=False)


def _examples(studio: Studio, ui: SimpleNamespace) -> None:
    if "chelsea" not in studio.examples or "coffee" not in studio.examples:
        return
    style_names = [e.name for e in studio.styles]
    rows = []
    for ex, style in (("chelsea", "swirls"), ("coffee", "waves"), ("chelsea", "mosaic")):
        if style in style_names:
            weights = [1 if n == style else 0 for n in style_names]
            rows.append([str(studio.examples[ex].path), *weights, 256, DEFAULT_QUALITY])
    gr.Examples(
        rows,
        [ui.content, *ui.weights, ui.size, ui.quality],
        label="Examples (about 10 s on a laptop CPU)",
    )


def build(studio: Studio) -> gr.Blocks:
    """The studio's page: inputs on the left, the result on the right, then the events."""
    cfg = studio.config
    ui = SimpleNamespace()
    # delete_cache: files older than a day go every hour, and all of them at shutdown.
    with gr.Blocks(title="artgen studio", delete_cache=(3600, CACHE_AGE_S)) as demo:
        gr.Markdown(
            "# artgen studio\n"
            "1. Add a **content** picture. 2. Click one or more **styles** (or upload your own). "
            "3. Press **Stylize**. Results stream in as they form; **Stop** cancels. "
            "**Instant** quality re-renders live (fast method) as you move the controls."
        )
        ui.history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                _inputs_column(studio, ui)
                with gr.Accordion("Video: a short clip", open=False, elem_id="video"):
                    _video_panel(cfg, ui)
                if studio.runs:
                    with gr.Accordion(
                        "Your fine-tuned generator (SDEdit)", open=False, elem_id="generator"
                    ):
                        _generator_panel(studio, ui)
                with gr.Row():
                    ui.go = gr.Button("Stylize", variant="primary", elem_id="stylize")
                    ui.stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=1):
                _result_column(ui)
        _wire(studio, ui)
        _examples(studio, ui)
    demo.queue(max_size=cfg.max_queue, default_concurrency_limit=cfg.concurrency)
    return demo


def launch(config: AppConfig, *, prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve the studio; returns (demo, studio). ``studio.close()`` removes its files
    (also done at exit). ``quiet``: Gradio prints nothing (its advice names its own
    ``launch(share=True)``; main() says what an artgen user types instead)."""
    studio = Studio(config)
    atexit.register(studio.close)
    demo = build(studio)
    demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=config.share,
        max_file_size=config.max_file_size,
        prevent_thread_lock=prevent_thread_lock,
        show_error=False,
        theme=gr.themes.Soft(),
        quiet=quiet,
    )
    return demo, studio


def parse_args(argv: Sequence[str] | None) -> AppConfig:
    from artgen.cli.flags import add_dataclass_flags

    ap = argparse.ArgumentParser(
        prog="artgen app", description="Serve the artgen studio in your browser."
    )
    add_dataclass_flags(ap, AppConfig, title="how the studio is served")
    return AppConfig(**vars(ap.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    import signal

    # `kill`, systemd and docker stop with SIGTERM: exit as on Ctrl-C, so the private
    # folder is removed (atexit does not run when a signal kills the process).
    def on_term(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        demo, studio = launch(config, prevent_thread_lock=True, quiet=True)
    except ArtgenError as e:
        print(f"artgen app: error: {e}", file=sys.stderr)
        return 2
    # flushed now: a server's output often goes to a pipe or a log, read while it runs
    print(f"artgen studio: open {demo.local_url} in your browser (Ctrl-C stops it).", flush=True)
    if demo.share_url:
        print(f"Public link, for 72 hours: {demo.share_url}", flush=True)
    else:
        print("For a public link that others can open, run `artgen app --share`.", flush=True)
    try:
        demo.block_thread()  # returns when the server stops (Ctrl-C)
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
