"""Stylising a video: decode, stylise frame by frame with temporal consistency, cache, encode.

The maths (flow, warping, masks, the temporal loss, the flicker metric) is in
artgen.video.temporal; this module is the procedure around it, as artgen.style.batch is for a
folder of pictures:

- decoding and encoding with PyAV (FFmpeg inside its wheel); a GIF is written by Pillow;
  the frame rate and the frame count are kept, and the first audio track is copied packet
  by packet (re-encoded only where the output container cannot hold its codec);
- ``consistency="flow"``: methods that optimise the picture (gatys) follow Ruder,
  Dosovitskiy & Brox, "Artistic style transfer for videos", GCPR 2016: each frame starts
  from the previous result warped by the optical flow, with their temporal loss on the
  pixels the flow can be trusted on. Feed-forward methods (adain) blend each stylised
  frame with the warped previous output on those pixels (and restore its texture
  contrast, artgen.video.temporal.restore_detail); flow is DIS (Kroeger et al., ECCV 2016);
- every stylised frame is written atomically into a cache folder, so an interrupted run
  resumes where it stopped; the cache records the run's resolved settings (JSON) and is
  refused by a run with other settings; ``--start``/``--end`` pick a range and
  ``--shard I/N`` one of N consecutive parts of it; the run that completes the set
  writes the output, atomically.

Departures: a variable-frame-rate input comes out at its average rate (the frame count is
kept); the first frame of a shard whose previous frame is not cached yet is preceded by
``warmup`` stylised (not kept) frames, which approaches but does not equal the frames an
unsplit run makes; audio trimmed by ``--start`` is cut at the nearest packet.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from artgen.core.options import option

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
from PIL import Image

from artgen.core.errors import ArtgenError, clip
from artgen.core.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    MIN_SIDE,
    LoadedImage,
    OutputClaim,
    atomic_output,
    check_output,
    check_output_dir,
    clean_stale_files,
    load_image,
    load_mask,
    open_lock_file,
    save_png,
)
from artgen.style import (
    OptionsRecord,
    load_styles,
    method_of,
    reproduce_command,
    run_params,
    validate_params,
)

# Output suffix -> (FFmpeg muxer, video encoder); GIFs are written by Pillow.
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}
# Names that look like an output artgen does not write (not taken for a folder's name).
_NOT_OUTPUTS = (*IMAGE_SUFFIXES, ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".ts", ".ogv", ".3gp")
# FFmpeg demuxers artgen reads videos with; anything else is refused before decoding.
INPUT_DEMUXERS = frozenset({"mov", "mp4", "matroska", "webm", "gif", "avi"})
# The FFmpeg demuxer for each container artgen reads, chosen from the file's first bytes
# and forced when it is opened: FFmpeg's own probing would also pick text formats that
# open other files (an ffconcat list or an HLS playlist named .mp4, an image2 pattern).
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


class TooManyFrames(ArtgenError):
    """probe_video stopped decoding at its ``max_frames``."""


def _sniff_demuxer(head: bytes) -> str | None:
    if head[4:8] in _MP4_BOXES:
        return "mov"  # FFmpeg's "mov,mp4,m4a,3gp,3g2,mj2"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # also WebM
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


CONSISTENCY = ("flow", "none")
DEFAULT_FPS = 24
CONFIG_NAME = "artgen-video.json"
FRAME_NAME = "frame_{:06d}.png"
_FRAME_RE = re.compile(r"frame_(\d{6,})\.png")
MAX_FRAMES = 1_000_000
CLAIM_WAIT_S = 1800  # how long a run waits for another one writing the same output


@dataclass(frozen=True)
class VideoOptions(OptionsRecord):
    """How a video is split, kept consistent over time, cached and written."""

    record_name = "video option"

    start: int = option(0, "first frame to stylise (0-based)")
    end: int | None = option(None, "stop before this frame (default: after the last)")
    shard: str = option(
        "1/1",
        "I/N: stylise only the I-th of N consecutive parts of the frames; "
        "the run that completes them all writes the output",
    )
    overwrite: bool = option(
        False,
        "replace OUTPUT if it exists, and restart a frame cache that was made with other settings",
    )
    consistency: str = option(
        "flow",
        "flow: temporally consistent (gatys: Ruder et al.'s temporal loss; "
        "adain: blend with the flow-warped previous frame); none: frames on their "
        "own",
        choices=CONSISTENCY,
    )
    blend: float = option(
        0.4,
        "feed-forward methods (adain): weight of the warped previous frame, "
        "0 to 0.95; higher is steadier but fades the style",
    )
    temporal_weight: float = option(
        1000.0, "gatys: weight of the temporal loss (Ruder et al. 2016)"
    )
    flow: str = option("medium", "DIS optical flow preset", choices=("ultrafast", "fast", "medium"))
    warmup: int = option(
        4,
        "frames stylised (not kept) before a shard's first frame when the "
        "frame before it is not cached yet",
    )
    batch_size: int = option(8, "frames per network pass, for methods that batch (adain)")
    fps: float | None = option(
        None, "frame rate for a folder of frames (default: 24); a video keeps its own"
    )
    crf: int = option(18, "quality of mp4/mov/mkv/webm output: 0 (best) to 51 (worst)")
    cache: str | None = option(
        None,
        "folder for the stylised frames (default: OUTPUT.frames beside a "
        "video output; the output folder itself)",
    )
    keep_frames: bool = option(False, "keep the frame cache after the video is written")

    def __post_init__(self) -> None:
        def bad(flag: str, why: str) -> ArtgenError:
            v = getattr(self, flag)
            return ArtgenError(f"--{flag.replace('_', '-')} {clip(repr(v), 60)}: {why}")

        for name in ("start", "warmup", "batch_size", "crf"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad(name, "must be a whole number")
        if self.end is not None and (not isinstance(self.end, int) or isinstance(self.end, bool)):
            raise bad("end", "must be a whole number")
        if not 0 <= self.start < MAX_FRAMES:
            raise bad("start", "must be a frame number >= 0")
        if self.end is not None and not self.start < self.end <= MAX_FRAMES:
            raise bad("end", f"must be greater than --start ({self.start})")
        if not isinstance(self.shard, str):
            raise bad("shard", "expected I/N, for example 1/4")
        self.shard_numbers()
        if self.consistency not in CONSISTENCY:
            raise bad("consistency", f"choose one of {', '.join(CONSISTENCY)}")
        if self.flow not in ("ultrafast", "fast", "medium"):
            raise bad("flow", "choose one of ultrafast, fast, medium")
        for name, lo, hi in (("blend", 0.0, 0.95), ("temporal_weight", 0.0, 1e6)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise bad(name, f"must be a number from {lo:g} to {hi:g}")
        if self.fps is not None and (
            isinstance(self.fps, bool)
            or not isinstance(self.fps, (int, float))
            or not 0.1 <= self.fps <= 1000
        ):
            raise bad("fps", "must be a number from 0.1 to 1000")
        if not 0 <= self.warmup <= 1000:
            raise bad("warmup", "must be from 0 to 1000")
        if not 1 <= self.batch_size <= 1024:
            raise bad("batch_size", "must be from 1 to 1024")
        if not 0 <= self.crf <= 51:
            raise bad("crf", "must be from 0 to 51")
        if self.cache is not None and (not isinstance(self.cache, str) or not self.cache):
            raise bad("cache", "must be a folder")

    def shard_numbers(self) -> tuple[int, int]:
        m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", self.shard)
        if not m:
            raise ArtgenError(
                f"--shard {clip(repr(self.shard), 40)}: expected I/N, for example 1/4"
            )
        i, n = int(m.group(1)), int(m.group(2))
        if not (n >= 1 and 1 <= i <= n):
            raise ArtgenError(f"--shard {self.shard!r}: need 1 <= I <= N")
        return i, n


# Settings that change the pixels of a frame: a cache made with others is not reused.
_PIXEL_SETTINGS = ("consistency", "blend", "temporal_weight", "flow")


@dataclass(frozen=True)
class VideoProgress:
    """Sent to ``on_frame`` after each frame: stylised, found in the cache, a warm-up frame
    (stylised but not kept), or written to the output file."""

    frame: int  # index of the frame in the input (0-based)
    done: int  # frames of this run's share finished so far (or encoded so far)
    total: int  # frames in this run's share (or to encode)
    status: str  # "stylised", "cached", "warmup" or "encoded"
    elapsed: float  # seconds since the run started


@dataclass(frozen=True)
class VideoInfo:
    """What was found in the input: a video file or a folder of numbered frames."""

    path: Path
    kind: str  # "video" or "folder"
    frames: int
    fps: Fraction
    width: int
    height: int
    times: tuple[float, ...] = ()  # seconds of each frame (videos)
    audio: str | None = None  # codec of the first audio track, if any
    files: tuple[Path, ...] = ()  # the frames of a folder, in order
    skipped: str = ""  # entries of a folder named like frames but not read, and why


@dataclass(frozen=True)
class VideoPlan:
    """A checked job: the input, the frame range and share, the size, where things go."""

    info: VideoInfo
    output: Path
    kind: str  # "file" or "folder"
    cache: Path
    start: int
    end: int
    first: int  # this share: frames first .. last - 1
    last: int
    size: tuple[int, int]  # (width, height) of every output frame
    video: VideoOptions
    made_cache: bool = False  # the cache folder did not exist before this plan


@dataclass(frozen=True)
class VideoResult:
    output: Path | None  # the file or folder written; None while frames are still missing
    frames: int  # frames in the range start..end
    stylised: int  # made by this run
    cached: int  # of this share, found in the cache
    missing: int  # of the range, still to be made (by other shards)
    fps: Fraction
    size: tuple[int, int]
    audio: str  # what became of the sound
    cache: Path
    seconds: float
    note: str = ""  # what else happened (e.g. another run with these settings wrote it)


# ------------------------------------------------------------------------------ input


def _natural_key(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def _open_container(path: Path):
    """The input video opened from a file object (so no FFmpeg protocol or URL can be named),
    and its container format checked before any frame is decoded."""
    import av

    f = open(path, "rb")
    demuxer = _sniff_demuxer(f.read(16))
    if demuxer is None:
        f.close()
        raise ArtgenError(
            f"{path}: not a video artgen reads (mp4, mov, mkv, webm, gif or avi, judged by "
            "its first bytes; playlists and concat lists are refused)"
        )
    f.seek(0)
    try:
        container = av.open(f, "r", format=demuxer)
    except (av.FFmpegError, ValueError, OSError) as e:
        f.close()
        raise ArtgenError(f"{path}: not a readable video ({clip(e, 120)})") from None
    names = set(container.format.name.split(","))
    if not names & INPUT_DEMUXERS or not container.streams.video:
        container.close()
        f.close()
        what = (
            "has no video track"
            if names & INPUT_DEMUXERS
            else (f"is {clip(container.format.long_name, 60)}, not a video artgen reads")
        )
        raise ArtgenError(f"{path}: {what} (mp4, mov, mkv, webm, gif or avi)")
    return container, f


def probe_video(
    source: str | os.PathLike,
    fps: float | None = None,
    *,
    max_frames: int = MAX_FRAMES,
    max_pixels: int = MAX_PIXELS,
) -> VideoInfo:
    """Check the input and count its frames (every frame is decoded once: a damaged file is
    refused here, before any compute). ``fps`` is for a folder of frames only. Decoding
    stops at the first frame past ``max_frames``; every frame must have the size its
    header gives, and the decoder refuses (before allocating it) a frame larger than that."""
    path = Path(source)
    if not path.exists():
        raise ArtgenError(f"{path}: no such file or folder")
    if path.is_dir():
        named = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        files = sorted((p for p in named if p.is_file()), key=_natural_key)
        odd = len(named) - len(files)
        if not files:
            raise ArtgenError(
                f"{path}: no image frames in this folder ({', '.join(IMAGE_SUFFIXES)})"
            )
        if len(files) > max_frames:
            raise ArtgenError(f"{path}: {len(files)} frames; the limit is {max_frames}")
        first = load_image(files[0], max_pixels=max_pixels)
        rate = Fraction(fps if fps is not None else DEFAULT_FPS).limit_denominator(1001)
        skipped = (
            f"skipped {odd} entr{'y' if odd == 1 else 'ies'} of {path} named like frames that "
            "are not regular files (folders, FIFOs, devices or broken links)"
            if odd
            else ""
        )
        return VideoInfo(
            path, "folder", len(files), rate, *first.size, files=tuple(files), skipped=skipped
        )
    if fps is not None:
        raise ArtgenError(
            f"--fps {fps:g}: a video keeps its own frame rate; --fps is for a folder of frames"
        )
    if path.stat().st_size == 0:
        raise ArtgenError(f"{path}: empty file (0 bytes)")
    import av

    container, f = _open_container(path)
    try:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > max_pixels:
            raise ArtgenError(
                f"{path}: refused, {w}x{h} frames are {w * h:,} pixels (limit {max_pixels:,})"
            )
        if w and h and min(w, h) < MIN_SIDE:
            raise ArtgenError(
                f"{path}: frames too small ({w}x{h}); each side must be at least {MIN_SIDE} px"
            )
        _bound_decoder(stream, w, h)
        times: list[float] = []
        try:
            for frame in container.decode(stream):
                _check_frame_size(path, len(times), frame, w, h)
                t = frame.time
                times.append(float(t) if t is not None else float("nan"))
                if len(times) > max_frames:
                    raise TooManyFrames(f"{path}: more than {max_frames} frames")
        except av.FFmpegError as e:
            raise ArtgenError(_decode_error(path, len(times), w, h, e)) from None
        if not times:
            raise ArtgenError(f"{path}: no frames in its video track")
        rate = stream.average_rate or stream.guessed_rate
        if not rate or rate <= 0:
            span = times[-1] - times[0]
            rate = (
                Fraction((len(times) - 1) / span)
                if len(times) > 1 and span > 0
                else Fraction(DEFAULT_FPS)
            )
        rate = Fraction(rate).limit_denominator(1001)
        if any(math.isnan(t) for t in times):
            times = [k / float(rate) for k in range(len(times))]
        audio = None
        if container.streams.audio:
            ctx = container.streams.audio[0].codec_context
            if ctx is None:  # a codec id FFmpeg does not know
                raise ArtgenError(
                    f"{path}: its sound track's codec is unknown to FFmpeg; remove the sound "
                    "(ffmpeg -i IN -an -c copy OUT) or convert it"
                )
            audio = ctx.name
        return VideoInfo(path, "video", len(times), rate, w, h, tuple(times), audio)
    finally:
        container.close()
        f.close()


def _bound_decoder(stream: Any, w: int, h: int) -> None:
    """FFmpeg's decoder refuses, before allocating it, a frame of far more pixels than the
    header's (AVCodecContext.max_pixels): a stream whose header says 64x48 cannot make
    it decode a 16000x16000 frame. Decoders count their padded, aligned buffers against
    the limit, so it allows 4x the header's pixels, and at least 1 MP (3 MB a frame);
    _check_frame_size then wants the header's size exactly."""
    bound = min(max(4 * w * h, 1 << 20), MAX_PIXELS)
    stream.codec_context.options = {"max_pixels": str(bound)}
    stream.thread_type = "AUTO"


def _check_frame_size(path: Path, k: int, frame: Any, w: int, h: int) -> None:
    if (frame.width, frame.height) != (w, h):
        raise ArtgenError(
            f"{path}: frame {k} is {frame.width}x{frame.height}, its header says {w}x{h}; "
            "artgen reads videos whose frames keep one size"
        )


def _decode_error(path: Path, k: int, w: int, h: int, e: Exception) -> str:
    return (
        f"{path}: corrupt video at frame {k}, or a frame larger than the {w}x{h} its header "
        f"gives ({clip(e, 120)})"
    )


def read_frames(info: VideoInfo, first: int = 0) -> Iterator[tuple[int, Image.Image]]:
    """The input's frames from ``first`` on, as (index, RGB picture at the input's size)."""
    if info.kind == "folder":
        for k in range(first, info.frames):
            im = load_image(info.files[k]).rgb
            if im.size != (info.width, info.height):
                raise ArtgenError(
                    f"{info.files[k]}: is {im.width}x{im.height}, the first frame "
                    f"{info.width}x{info.height}; all frames must be one size"
                )
            yield k, im
        return
    import av

    container, f = _open_container(info.path)
    try:
        stream = container.streams.video[0]
        _bound_decoder(stream, info.width, info.height)
        k = 0
        try:
            for frame in container.decode(stream):
                _check_frame_size(info.path, k, frame, info.width, info.height)
                if k >= first:
                    yield k, frame.to_image()
                k += 1
        except av.FFmpegError as e:
            raise ArtgenError(_decode_error(info.path, k, info.width, info.height, e)) from None
    finally:
        container.close()
        f.close()


def frame_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The output frame size: ``long_side`` on the long side, both sides even (for yuv420p)."""
    s = long_side / max(width, height)
    return (max(MIN_SIDE, round(width * s) // 2 * 2), max(MIN_SIDE, round(height * s) // 2 * 2))


# ------------------------------------------------------------------------------ planning


def output_kind(output: str | os.PathLike) -> str:
    out = Path(output)
    if out.suffix.lower() in OUTPUT_FORMATS:
        return "file"
    if out.suffix.lower() in _NOT_OUTPUTS and not out.is_dir():
        raise ArtgenError(
            f"{out}: unknown output type; give a file ending in "
            f"{', '.join(OUTPUT_FORMATS)}, or a folder for PNG frames"
        )
    return "folder"


def plan_video(
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: Any,
    video: VideoOptions | None = None,
    masks: Any = None,
    content_mask: Any = None,
    *,
    upscale: bool = False,
) -> VideoPlan:
    """Check everything that can be checked before any compute, and say what this run does.

    ``options`` is the style method's options (its ``size`` sets the frames' long side, at
    most the input's own unless ``upscale``: a small clip keeps its size unless a larger
    one is asked for); ``masks`` and ``content_mask`` (as run_video takes them) must have
    the frames' shape.
    """
    from artgen.style import check_masks

    video = video or VideoOptions()
    kind = output_kind(output)
    out = Path(output)
    info = probe_video(source, video.fps)
    src = info.path
    if masks is not None or content_mask is not None:  # before any folder is made
        given = masks if isinstance(masks, (list, tuple)) else [masks]
        check_masks(
            (info.width, info.height),
            [None if m is None else load_mask(m) for m in given],
            None if content_mask is None else load_mask(content_mask),
        )
    end = info.frames if video.end is None else video.end
    if video.start >= info.frames:
        raise ArtgenError(
            f"--start {video.start}: {src} has {info.frames} frames (0 to {info.frames - 1})"
        )
    if end > info.frames:
        raise ArtgenError(f"--end {end}: {src} has {info.frames} frames")
    i, n = video.shard_numbers()
    span = end - video.start
    if n > span:
        raise ArtgenError(f"--shard {video.shard}: {span} frames cannot be split in {n} parts")
    first = video.start + (i - 1) * span // n
    last = video.start + i * span // n
    if _same(out, src) or (info.kind == "folder" and kind == "folder" and _same(out, src)):
        raise ArtgenError(f"{out}: is the input; artgen never overwrites an input")
    if info.kind == "folder" and any(_same(out, p) for p in info.files[:1]):
        raise ArtgenError(f"{out}: is an input frame; artgen never overwrites an input")
    if kind == "file":
        check_output(out, overwrite=video.overwrite)  # before any compute
        cache = Path(video.cache) if video.cache else out.with_name(out.name + ".frames")
    else:
        if out.exists() and not out.is_dir():
            raise ArtgenError(f"{out}: is a file; give a folder for PNG frames")
        cache = Path(video.cache) if video.cache else out
        if video.cache and not _same(cache, out):
            raise ArtgenError(
                f"--cache {video.cache}: a folder output is its own cache; leave --cache out"
            )
    if _same(cache, src) or (info.kind == "folder" and cache.resolve() == src.resolve()):
        raise ArtgenError(f"{cache}: is the input folder; choose another output or --cache")
    long_side = options.size if upscale else min(options.size, max(info.width, info.height))
    size = frame_size(info.width, info.height, long_side)
    made = not os.path.lexists(cache)
    plan = VideoPlan(info, out, kind, cache, video.start, end, first, last, size, video, made)
    check_audio_path(plan)
    check_output_dir(cache)
    return plan


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


# ------------------------------------------------------------------------------ the cache


def frame_path(cache: Path, k: int) -> Path:
    return cache / FRAME_NAME.format(k)


def cached_frames(cache: Path) -> set[int]:
    if not cache.is_dir():
        return set()
    return {int(m.group(1)) for p in cache.iterdir() if (m := _FRAME_RE.fullmatch(p.name))}


def _cache_key(record: dict) -> dict:
    """What must match for cached frames to be reused: the input, the styles, the method and
    its options, the masks, the frame size and the temporal settings (not the range, nor the
    version)."""
    keys = ("method", "content", "content_mask", "styles", "options", "device")
    return {k: record.get(k) for k in keys} | {
        "video": {k: record["video"].get(k) for k in ("size", "fps", *_PIXEL_SETTINGS)}
    }


USERS_LOCK = ".artgen-users.lock"
_SHARD_LOCK_RE = re.compile(r"\.shard-\d+-\d+\.lock")
PREPARE_LOCK = ".artgen-prepare.lock"


class CacheUsers:
    """Which live runs use a cache folder, so that none removes frames another is making.

    Every run that makes frames in the folder holds a shared ``flock`` on USERS_LOCK for as
    long as it runs. Changing what the folder holds (removing frames of other settings
    under --overwrite, removing the folder once the video is written) needs that lock
    exclusively, so it happens only when no other live run uses the folder. Taking,
    converting and dropping the users lock happens under PREPARE_LOCK (held briefly), so
    the check and the change are one step. The kernel drops a killed run's locks. Where
    ``fcntl`` is missing (Windows) there is no such guard."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._users: int | None = None
        self._prepare: int | None = None
        self.wrote_record = False  # this run wrote the folder's record (a new or replaced one)

    def _open(self, name: str) -> int:
        return open_lock_file(self.cache / name)

    def _current(self, fd: int, name: str) -> bool:
        """Whether ``fd`` is still the file at ``name`` (the last run to leave removes the
        lock files; a lock on a removed file guards nothing)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.cache / name))
        except FileNotFoundError:
            return False

    def __enter__(self) -> CacheUsers:
        """Hold PREPARE_LOCK (waits for another run's short preparation)."""
        if fcntl is None:  # pragma: no cover - Windows
            return self
        for attempt in range(100):
            self.cache.mkdir(parents=True, exist_ok=True)
            try:
                fd = self._open(PREPARE_LOCK)
            except ArtgenError:
                if self.cache.is_dir() or attempt > 5:
                    raise
                continue  # the folder was removed between mkdir and open: again
            self._prepare = fd  # before the wait, so that an interrupt closes it (__exit__)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self._current(fd, PREPARE_LOCK):
                    return self
            except BaseException:
                self.__exit__()
                raise
            self.__exit__()  # the run before us removed the lock files meanwhile: again
        raise ArtgenError(f"{self.cache}: cannot take its lock (removed again and again)")

    def __exit__(self, *exc: object) -> None:
        if self._prepare is not None:
            os.close(self._prepare)
            self._prepare = None

    def _users_fd(self) -> int:
        if self._users is not None and not self._current(self._users, USERS_LOCK):
            self.release()
        if self._users is None:
            self._users = self._open(USERS_LOCK)
        return self._users

    def alone(self) -> bool:
        """Under PREPARE_LOCK: True (holding USERS_LOCK exclusively) if no other live run
        uses the folder. Linux converts a held shared lock by dropping it first, so after
        a False this run may no longer count as a user: it is only asked before join(),
        or when the run is leaving."""
        if fcntl is None:  # pragma: no cover - Windows
            return True
        try:
            fcntl.flock(self._users_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def join(self) -> None:
        """Under PREPARE_LOCK: count this run as a user (a shared USERS_LOCK) until release."""
        if fcntl is None:  # pragma: no cover - Windows
            return
        fcntl.flock(self._users_fd(), fcntl.LOCK_SH)

    def leave(self) -> None:
        """Stop using the folder; the last live run to leave removes the lock files."""
        try:
            if fcntl is not None and self._users is not None and self.cache.is_dir():
                with self:
                    if self.alone():
                        self.remove_files()
        except (OSError, ArtgenError):
            pass  # a lock file left behind is harmless
        finally:
            self.release()

    def release(self) -> None:
        if self._users is not None:
            os.close(self._users)
            self._users = None

    def remove_files(self) -> None:
        """Under PREPARE_LOCK, when alone(): remove the lock files, and the shard claims of
        runs that were killed (no live run holds one now), and stop using the folder."""
        for p in self.cache.iterdir():
            if _SHARD_LOCK_RE.fullmatch(p.name):
                p.unlink(missing_ok=True)
        for name in (USERS_LOCK, PREPARE_LOCK):
            (self.cache / name).unlink(missing_ok=True)
        self.release()


def _prepare_cache(plan: VideoPlan, record: dict, users: CacheUsers) -> dict:
    """Make sure the cache folder holds frames of this run (or none); returns its record.
    Called under ``users``' PREPARE_LOCK; frames are removed only when no other live run
    uses the folder."""
    cache = plan.cache
    clean_stale_files(cache)
    config = cache / CONFIG_NAME
    have = cached_frames(cache)
    if config.exists():
        try:
            old = json.loads(config.read_text())
            if not isinstance(old, dict) or not isinstance(old.get("video"), dict):
                raise ValueError
        except (ValueError, OSError, RecursionError):
            raise ArtgenError(
                f"{config}: not a record artgen video wrote; remove it, or choose another output"
            ) from None
        if _cache_key(old) == _cache_key(record):
            record["resolved"] = (
                old.get("resolved", {}) if isinstance(old.get("resolved"), dict) else {}
            )
            _write_json(config, record)
            return record
        if not plan.video.overwrite:
            diff = sorted(
                k for k in _cache_key(record) if _cache_key(old).get(k) != _cache_key(record).get(k)
            )
            raise ArtgenError(
                f"{cache}: holds frames of another run ({', '.join(diff)} differ); pass "
                "--overwrite to start again, or give another output or --cache"
            )
        if not users.alone():
            raise ArtgenError(
                f"{cache}: another artgen run is making frames there with other settings "
                "(--overwrite never removes frames a live run is making); wait for it to "
                "end, or give another output or --cache"
            )
        for k in have:
            frame_path(cache, k).unlink(missing_ok=True)
        users.wrote_record = True
    elif have:
        raise ArtgenError(
            f"{cache}: holds frame files that no artgen video run recorded; "
            "choose an empty or new folder"
        )
    else:
        users.wrote_record = True
    _write_json(config, record)
    return record


def _write_json(path: Path, doc: dict) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))


def _remove_cache(cache: Path) -> None:
    """Remove what artgen put in the cache folder, and the folder if it is then empty."""
    for k in cached_frames(cache):
        frame_path(cache, k).unlink(missing_ok=True)
    (cache / CONFIG_NAME).unlink(missing_ok=True)
    _rmdir_if_empty(cache)


def _rmdir_if_empty(cache: Path) -> None:
    try:
        cache.rmdir()
    except OSError:
        pass  # the user's own files (or a live run's lock files) are there too: leave them


# ------------------------------------------------------------------------------ the run


def _as_array(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), np.float32) / 255.0


def _as_image(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def run_video(
    plan: VideoPlan,
    styles: Any,
    options: Any,
    *,
    model: Any = None,
    device: Any = None,
    on_frame: Callable[[VideoProgress], None] | None = None,
    callback: Callable[[Any], None] | None = None,
    masks: Any = None,
    content_mask: Any = None,
) -> VideoResult:
    """Stylise this run's share of the frames (skipping those in the cache), then, if every
    frame of the range is there, write the output. ``callback`` gets the method's own
    progress (each Gatys step); either callback may raise to stop, and what is cached stays.
    ``masks`` (one per style, or None) and ``content_mask``: regional styles as in
    artgen.stylize, the same masks on every frame (resized to it); the cache records them
    by sha256, so a run with other masks does not reuse its frames."""
    t0 = time.perf_counter()
    users = CacheUsers(plan.cache)
    try:
        method, options, model, style_items, masked, record = _setup(
            plan, styles, options, model, device, masks, content_mask
        )
        with users:
            record = _prepare_cache(plan, record, users)
            users.join()
        return _run_frames(
            plan,
            record,
            users,
            style_items,
            options,
            method,
            model,
            device,
            on_frame,
            callback,
            masked,
            t0,
        )
    except BaseException:
        _drop_if_frameless(plan, users)
        raise
    finally:
        users.leave()


def _setup(plan: VideoPlan, styles, options, model, device, masks, content_mask) -> tuple:
    """run_video's checks and loading before any frame: (method, options at the frame size,
    model, loaded styles, mask arguments, the run's record)."""
    from artgen.style import check_masks, load_masks, mask_arguments

    method = method_of(options)
    masked = mask_arguments(method, masks, content_mask)  # refused before any work
    style_items = load_styles(styles)
    if masked:
        masks = load_masks(masks, len(style_items))
        content_mask = None if content_mask is None else load_mask(content_mask)
        check_masks((plan.info.width, plan.info.height), masks, content_mask)
        masked = {"masks": masks, "content_mask": content_mask}
    video = plan.video
    w, h = plan.size
    if options.size != max(w, h):  # both sides even: the long side may lose a pixel
        options = method.options.from_dict({**options.to_dict(), "size": max(w, h)})
    if model is None:
        model = method.load(options, device)
    first_frame = next(read_frames(plan.info, 0))[1]
    content_id = LoadedImage(first_frame, None, str(plan.info.path))
    record = run_params(
        content_id, style_items, options, Image.new("RGB", (1, 1)), device, masks, content_mask
    )
    record["video"] = {
        **{k: getattr(video, k) for k in _PIXEL_SETTINGS},
        "size": [w, h],
        "fps": str(plan.info.fps),
        "frames": plan.info.frames,
        "input": plan.info.kind,
        "output": plan.output.suffix.lower() if plan.kind == "file" else "/",
    }
    return method, options, model, style_items, masked, record


def _drop_if_frameless(plan: VideoPlan, users: CacheUsers) -> None:
    """After a failed run that made no frame: remove what this run created, and only that
    (the record it wrote, its lock files, the folder if this plan made it), when no other
    live run uses the folder, so that a refusal leaves no empty NAME.frames behind and a
    user's own --cache folder and files stay."""
    if plan.kind != "file" or not plan.cache.is_dir() or cached_frames(plan.cache):
        return
    try:
        with users:
            if users.alone() and not cached_frames(plan.cache):
                if users.wrote_record:
                    (plan.cache / CONFIG_NAME).unlink(missing_ok=True)
                users.remove_files()
                if plan.made_cache:
                    _rmdir_if_empty(plan.cache)
    except (OSError, ArtgenError):
        pass  # the failure being reported matters more than a leftover folder


def _run_frames(
    plan, record, users, style_items, options, method, model, device, on_frame, callback, masked, t0
) -> VideoResult:
    """run_video once the cache is this run's: make the share's frames, then the output."""
    video = plan.video
    claim = OutputClaim(plan.cache / f"shard-{plan.first}-{plan.last}")
    if not claim.acquire():
        raise ArtgenError(
            f"{plan.cache}: another artgen run (pid {claim.owner()}) is making "
            f"frames {plan.first} to {plan.last - 1}"
        )
    total = plan.last - plan.first
    counts = {"stylised": 0, "cached": 0}
    try:
        have = cached_frames(plan.cache)
        todo = [k for k in range(plan.first, plan.last) if k not in have]
        counts["cached"] = total - len(todo)
        if on_frame and counts["cached"]:
            on_frame(
                VideoProgress(
                    plan.first, counts["cached"], total, "cached", time.perf_counter() - t0
                )
            )
        if todo:
            loop = _FrameLoop(
                plan,
                style_items,
                options,
                record,
                method,
                model,
                device,
                counts,
                total,
                t0,
                on_frame,
                callback,
                masked,
            )
            loop.run(todo[0], have)
    finally:
        claim.release()
    have = cached_frames(plan.cache)
    missing = sum(1 for k in range(plan.start, plan.end) if k not in have)
    if missing and video.shard_numbers()[1] == 1:
        # This run made the whole range, so something else removed frames meanwhile.
        raise ArtgenError(
            f"{plan.cache}: {missing} frames this run made are gone (removed by another "
            f"program?); nothing was written to {plan.output}. Run the same command again "
            "to make them"
        )
    audio = "none in the input" if plan.info.audio is None else "kept"
    written: Path | None = None
    note = plan.info.skipped
    if plan.kind == "folder":
        audio = "not written (a folder of frames has no sound)" if plan.info.audio else audio
        written = plan.output if not missing else None
    elif not missing:
        audio, encoded = _encode(plan, record, on_frame, t0)
        note = "; ".join(x for x in (note, encoded) if x)
        written = plan.output
        if not video.keep_frames:
            with users:  # not while another run (e.g. an overlapping shard) still uses it
                if users.alone():
                    _remove_cache(plan.cache)
                    users.remove_files()
                    _rmdir_if_empty(plan.cache)
                else:
                    note = (note + "; " if note else "") + (
                        f"the frames stay in {plan.cache} while another run uses them"
                    )
    return VideoResult(
        written,
        plan.end - plan.start,
        counts["stylised"],
        counts["cached"],
        missing,
        plan.info.fps,
        plan.size,
        audio,
        plan.cache,
        time.perf_counter() - t0,
        note,
    )


@dataclass
class _FrameLoop:
    """The frame loop of run_video: decode from where the chain starts, stylise what is not
    cached, and keep each frame steady against the previous one (Ruder et al. 2016 for the
    guided methods; warped blending for the one-pass ones). ``masked``: the mask keyword
    arguments for the method (empty without masks); ``counts``: "stylised" and "cached",
    updated as frames land."""

    plan: VideoPlan
    style_items: Any
    options: Any
    record: dict
    method: Any
    model: Any
    device: Any
    counts: dict
    total: int
    t0: float
    on_frame: Callable[[VideoProgress], None] | None
    callback: Callable[[Any], None] | None
    masked: dict
    prev_out: np.ndarray | None = None  # the previous output frame (8-bit, as saved)
    prev_in: np.ndarray | None = None  # the previous input frame at the output size
    pending: list = field(default_factory=list)  # (k, LoadedImage, input array)

    @property
    def consistent(self) -> bool:
        return self.plan.video.consistency == "flow"

    @property
    def guided(self) -> Any:
        return self.method.stylize_guided

    def run(self, first_todo: int, have: set[int]) -> None:
        plan, video = self.plan, self.plan.video
        # Where the chain of frames starts: right after a cached frame if there is one, at
        # the range's start, or `warmup` frames early (those are stylised but not kept).
        if not self.consistent or (first_todo - 1) in have or first_todo == plan.start:
            begin = first_todo
        else:
            begin = max(plan.start, first_todo - video.warmup)
        use_prev = self.consistent and (begin - 1) in have and begin > 0
        many = self.method.stylize_many is not None
        step = video.batch_size if many and (self.guided is None or not self.consistent) else 1
        w, h = plan.size
        for k, frame in read_frames(plan.info, begin - 1 if use_prev else begin):
            if k >= plan.last:
                break
            small = (
                frame.resize((w, h), Image.Resampling.LANCZOS) if frame.size != (w, h) else frame
            )
            inp = _as_array(small)
            if k in have:
                self.flush()
                self.prev_out = _as_array(load_image(frame_path(plan.cache, k)).rgb)
                self.prev_in = inp
                continue
            content = LoadedImage(small, None, f"{plan.info.path.name} frame {k}")
            self.pending.append((k, content, inp))
            if len(self.pending) >= step or (self.consistent and self.guided is not None):
                self.flush()
        self.flush()

    def flush(self) -> None:
        """Stylise the pending frames (one call of stylize_many for a batch) and keep them."""
        if not self.pending:
            return
        kw = dict(model=self.model, device=self.device, callback=self.callback, **self.masked)
        contents = [c for _, c, _ in self.pending]
        if len(contents) > 1:
            raws = self.method.stylize_many(contents, self.style_items, self.options, **kw)
        elif self.guided is not None and self.consistent and self.prev_out is not None:
            raws = [None]  # made by guided_frame below, from the previous frame
        else:
            raws = [self.method.stylize(contents[0], self.style_items, self.options, **kw)]
        for (k, content, inp), raw in zip(self.pending, raws, strict=True):
            if raw is None:
                image = self.guided_frame(content, inp, kw)
                self.keep(k, _as_array(image), image.info, inp)
                continue
            out = _as_array(raw)
            if self.consistent and self.prev_out is not None:
                out = self.blended(out, inp)
            self.keep(k, out, raw.info, inp)
        self.pending.clear()

    def guided_frame(self, content: LoadedImage, inp: np.ndarray, kw: dict) -> Any:
        """Ruder et al.: start from the previous output warped to this frame, with a
        temporal loss toward it where the flow is reliable."""
        import torch

        from artgen.video import temporal

        video = self.plan.video
        pair = temporal.frame_pair(inp, self.prev_in, video.flow)
        warped = temporal.warp(self.prev_out, pair.flow)
        target = torch.from_numpy(warped).permute(2, 0, 1)[None]
        mask = torch.from_numpy(pair.mask)[None, None]
        weight = float(video.temporal_weight)

        def extra(y):
            t, m = target.to(y.device), mask.to(y.device)
            if t.shape[-2:] != y.shape[-2:]:
                t = torch.nn.functional.interpolate(t, size=y.shape[-2:], mode="bilinear")
                m = torch.nn.functional.interpolate(m, size=y.shape[-2:], mode="nearest")
            return weight * temporal.temporal_loss(y, t, m)

        return self.guided(
            content, self.style_items, self.options, init=target, extra_loss=extra, **kw
        )

    def blended(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        """A one-pass method's frame blended with the previous output warped to it."""
        from artgen.video import temporal

        video = self.plan.video
        # Departure from Ruder et al.'s mask: only the forward-backward (occlusion) check,
        # as the issue asks; their motion-boundary test rejected about 8% of the pixels of
        # a real clip for DIS flow's noise, where blending is harmless.
        pair = temporal.frame_pair(inp, self.prev_in, video.flow, motion_boundaries=False)
        warped = temporal.warp(self.prev_out, pair.flow)
        blended = temporal.blend_warped(out, warped, pair.mask, video.blend)
        return temporal.restore_detail(blended, out)

    def keep(self, k: int, out: np.ndarray, info: dict, inp: np.ndarray) -> None:
        """Save frame k (unless it is a warm-up frame) and make it the previous one."""
        plan, counts = self.plan, self.counts
        im = _as_image(out)
        if k >= plan.first:
            resolved = {key: info[key] for key in self.method.resolved if key in info}
            _check_resolved(plan, self.record, resolved)
            params = {**_with_resolved(self.record), "video": {**self.record["video"], "frame": k}}
            if _save_frame(im, frame_path(plan.cache, k), params):
                counts["stylised"] += 1
                status = "stylised"
            else:  # go on from the frame the video will hold
                im = load_image(frame_path(plan.cache, k)).rgb
                counts["cached"] += 1
                status = "cached"
        else:
            status = "warmup"
        self.prev_out, self.prev_in = _as_array(im), inp  # 8-bit: a resumed run sees the same
        if self.on_frame:
            done = counts["stylised"] + counts["cached"]
            elapsed = time.perf_counter() - self.t0
            self.on_frame(VideoProgress(k, done, self.total, status, elapsed))


def _save_frame(im: Image.Image, path: Path, params: dict) -> bool:
    """Write a frame; False if an overlapping live run made it meanwhile (with the same
    settings: CacheUsers lets no run with others in), which is then kept."""
    if path.exists():
        return False
    try:
        save_png(im, path, params=params)
    except ArtgenError:
        if path.exists():  # made between the check and the link
            return False
        raise
    return True


def _check_resolved(plan: VideoPlan, record: dict, resolved: dict) -> None:
    """A choice the method resolved ('auto' backbone) must match the cache's frames."""
    if not resolved:
        return
    stored = record.setdefault("resolved", {})
    for key, value in resolved.items():
        if key in stored and stored[key] != value:
            raise ArtgenError(
                f"{plan.cache}: its frames were made with {key} {stored[key]}, this "
                f"run has {value}; pass --{key.replace('_', '-')} {stored[key]}"
            )
    if any(key not in stored for key in resolved):
        stored.update(resolved)
        _write_json(plan.cache / CONFIG_NAME, record)


def _with_resolved(record: dict) -> dict:
    """The record with the method's resolved choices ('auto' -> the backbone used) filled in,
    as a picture's parameters record them."""
    resolved = record.get("resolved") or {}
    return {
        **{k: v for k, v in record.items() if k != "resolved"},
        "options": {**record["options"], **resolved},
    }


# ------------------------------------------------------------------------------ encoding


def encoder_rate(codec: str, rate: int) -> int:
    """A sample rate ``codec``'s encoder accepts: ``rate`` itself, or the lowest rate it
    takes above it (else its highest). libopus takes only 48, 24, 16, 12 and 8 kHz, so
    44.1 kHz AAC going into WebM is resampled to 48 kHz."""
    import av

    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r > rate]
    return min(above) if above else max(rates)


def check_audio_path(plan: VideoPlan) -> None:
    """Before any frame is made: open the output's audio encoder as the run will (into a
    throwaway in-memory container), so a sound that cannot be written is said now, and
    not blamed on the input."""
    import io

    import av

    if plan.kind != "file" or plan.info.audio is None:
        return
    fmt, _ = OUTPUT_FORMATS[plan.output.suffix.lower()]
    if fmt == "gif":
        return
    container, f = _open_container(plan.info.path)
    out = av.open(io.BytesIO(), "w", format=fmt)
    name = "?"
    try:
        ia = container.streams.audio[0]
        oa, remux, _ = _audio_stream(ia, out, fmt)
        name = oa.codec_context.name
        if not remux:
            try:
                ia.codec_context.open()  # the run decodes it: a broken decoder setup shows now
            except av.FFmpegError as e:
                raise ArtgenError(
                    f"{plan.info.path}: its sound track cannot be decoded ({clip(e, 100)}); "
                    "remove it (ffmpeg -an) or convert it"
                ) from None
        # Both streams, as the run writes them: the muxer checks the pair (FLAC into .mov
        # is refused here, not after every frame is made).
        vcodec = OUTPUT_FORMATS[plan.output.suffix.lower()][1]
        ov = out.add_stream(vcodec, rate=plan.info.fps)
        ov.width, ov.height, ov.pix_fmt = *plan.size, "yuv420p"
        out.start_encoding()
    except av.FFmpegError as e:
        raise ArtgenError(
            f"{plan.output}: artgen cannot write the sound of {plan.info.path.name} as "
            f"{name} into {fmt} ({clip(e, 100)}); give another output type (.mp4 or .mkv "
            "keep most sound as it is)"
        ) from None
    finally:
        out.close()
        container.close()
        f.close()


def _audio_stream(ia: Any, out_container: Any, fmt: str) -> tuple[Any, bool, str]:
    """The output audio stream for input stream ``ia``: (stream, copied?, what is done)."""
    remux = ia.codec_context.name in out_container.supported_codecs
    if remux:
        oa = out_container.add_stream_from_template(ia)
        return oa, True, f"kept ({ia.codec_context.name}, copied)"
    codec = out_container.default_audio_codec
    rate = encoder_rate(codec, ia.codec_context.sample_rate or 48000)
    oa = out_container.add_stream(codec, rate=rate)
    how = f"kept ({ia.codec_context.name} re-encoded as {codec} for {fmt}"
    if rate != ia.codec_context.sample_rate:
        how += f", resampled to {rate / 1000:g} kHz"
    return oa, False, how + ")"


def _audio_packets(plan: VideoPlan, out_container, fmt: str):
    """The output audio stream, and an iterator of (seconds, packet) for it: the first audio
    track of the input, trimmed to the range, packets copied (or re-encoded if the
    container cannot hold the codec). (None, None, why) if there is no audio."""
    import av

    if plan.info.audio is None:
        return None, None, "none in the input"
    container, f = _open_container(plan.info.path)
    ia = container.streams.audio[0]
    times = plan.info.times
    shift = times[plan.start] if plan.start > 0 else 0.0
    stop = times[plan.end] if plan.end < plan.info.frames else math.inf
    oa, remux, how = _audio_stream(ia, out_container, fmt)

    def packets():
        try:
            if remux:
                offset = round(shift / ia.time_base) if shift else 0
                for pk in container.demux(ia):
                    if pk.dts is None or pk.pts is None:
                        continue
                    t = float(pk.pts * ia.time_base)
                    if (shift and t < shift) or t >= stop:
                        continue
                    pk.pts -= offset
                    pk.dts -= offset
                    pk.stream = oa
                    yield t - shift, pk
            else:
                rs = av.AudioResampler(
                    format=oa.codec_context.format,
                    layout=oa.codec_context.layout,
                    rate=oa.codec_context.sample_rate,
                )
                for fr in container.decode(ia):
                    t = float(fr.time) if fr.time is not None else 0.0
                    if (shift and t < shift) or t >= stop:
                        continue
                    fr.pts = None
                    for r in rs.resample(fr):
                        for pk in oa.encode(r):
                            yield t - shift, pk
                for r in rs.resample(None):
                    for pk in oa.encode(r):
                        yield math.inf, pk
                for pk in oa.encode(None):
                    yield math.inf, pk
        except av.FFmpegError as e:
            raise ArtgenError(f"{plan.info.path}: corrupt audio track ({clip(e, 120)})") from None
        finally:
            container.close()
            f.close()

    return oa, packets(), how


def _encode(plan: VideoPlan, record: dict, on_frame, t0: float) -> tuple[str, str]:
    """Write the cached frames start..end as the output video, atomically; returns what
    became of the audio, and a note (empty, or what another run did)."""
    out = plan.output
    frames = [frame_path(plan.cache, k) for k in range(plan.start, plan.end)]
    params = {
        **_with_resolved(record),
        "video": {**record["video"], "start": plan.start, "end": plan.end},
    }
    claim = OutputClaim(out)
    # Another run writing this output now (an overlapping shard of the same settings, most
    # often): wait for it, then see what it wrote.
    deadline = time.monotonic() + CLAIM_WAIT_S
    while not claim.acquire():
        if time.monotonic() > deadline:
            raise ArtgenError(
                f"{out}: another artgen run (pid {claim.owner()}) has been writing it for "
                f"{CLAIM_WAIT_S // 60} minutes; this run's frames are kept in {plan.cache}"
            )
        time.sleep(0.2)
    try:
        if os.path.lexists(out) and not plan.video.overwrite:
            # Written while this run made its frames (plan_video checked before): by an
            # overlapping run of the same settings and range (nothing to do), or not.
            if _same_video(out, params):
                return "as written by that run", (
                    f"another run with the same settings wrote {out} first"
                )
            what = (
                "artgen cannot tell a GIF's settings"
                if out.suffix.lower() == ".gif"
                else "with other settings or another range"
            )
            raise ArtgenError(
                f"{out}: another run wrote it while this one made its frames ({what}); "
                f"this run's frames are kept in {plan.cache}. Pass --overwrite to write this "
                "run's video over it from them (no frame is made again), or give another "
                "output with --cache"
            )
        clean_stale_files(out.parent, suffixes=(out.name.lower(),))
        fmt, codec = OUTPUT_FORMATS[out.suffix.lower()]
        total = len(frames)

        def report(i: int) -> None:
            if on_frame:
                on_frame(
                    VideoProgress(plan.start + i, i + 1, total, "encoded", time.perf_counter() - t0)
                )

        with atomic_output(out, overwrite=plan.video.overwrite) as tmp:
            if fmt == "gif":
                _write_gif(tmp, frames, plan.info.fps, report)
                return (
                    "dropped (a GIF has no sound)" if plan.info.audio else "none in the input"
                ), ""
            return _write_video(tmp, fmt, codec, frames, plan, params, report), ""
    finally:
        claim.release()


def _same_video(out: Path, params: dict) -> bool:
    """Whether ``out`` is a video artgen wrote with ``params``' settings and range."""
    if out.suffix.lower() == ".gif":
        return False  # a GIF records nothing: never assume
    try:
        old = read_video_params(out)
    except ArtgenError:
        return False
    # Every video setting (range, --crf, ...), and what the frames depend on.
    return old["video"] == params["video"] and _cache_key(old) == _cache_key(params)


def _write_gif(tmp: Path, frames: list[Path], fps: Fraction, report) -> None:
    def rest():
        for i, p in enumerate(frames[1:], start=1):
            im = load_image(p).rgb
            report(i)
            yield im

    first = load_image(frames[0]).rgb
    report(0)
    with open(tmp, "wb") as f:
        # GIF delays are in 1/100 s: the frame rate is kept to that precision.
        first.save(
            f,
            format="GIF",
            save_all=True,
            append_images=rest(),
            duration=max(20, round(1000 / float(fps))),
            loop=0,
        )


def _write_video(
    tmp: Path, fmt: str, codec: str, frames: list[Path], plan: VideoPlan, params: dict, report
) -> str:
    import av

    w, h = plan.size
    fps = plan.info.fps
    with open(tmp, "wb") as f:
        try:
            container = av.open(f, "w", format=fmt)
        except (av.FFmpegError, ValueError) as e:
            raise ArtgenError(f"{plan.output}: cannot write {fmt} ({clip(e, 120)})") from None
        try:
            opts = {"crf": str(plan.video.crf)}
            if codec == "libvpx-vp9":
                opts["b"] = "0"  # constant quality
            stream = container.add_stream(codec, rate=fps, options=opts)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            container.metadata["comment"] = json.dumps(params, sort_keys=True)
            oa, audio, how = _audio_packets(plan, container, fmt)
            pending = None
            for i, p in enumerate(frames):
                arr = np.asarray(load_image(p).rgb)
                if arr.shape[:2] != (h, w):
                    raise ArtgenError(
                        f"{p}: is {arr.shape[1]}x{arr.shape[0]}, not {w}x{h}; "
                        "remove it to make it again"
                    )
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                vf.pts = i
                for pk in stream.encode(vf):
                    container.mux(pk)
                # Interleave: the sound up to the end of this frame.
                now = (i + 1) / float(fps)
                while audio is not None:
                    if pending is None:
                        pending = next(audio, None)
                        if pending is None:
                            audio = None
                            break
                    if pending[0] > now:
                        break
                    container.mux(pending[1])
                    pending = None
                report(i)
            for pk in stream.encode(None):
                container.mux(pk)
            if pending is not None:
                container.mux(pending[1])
            for _, pk in audio or ():
                container.mux(pk)
        except av.FFmpegError as e:
            raise ArtgenError(f"{plan.output}: encoding failed ({clip(e, 120)})") from None
        finally:
            container.close()
    return how


# ------------------------------------------------------------------------------ the API


def stylize_video(
    source: str | os.PathLike,
    styles: Any,
    output: str | os.PathLike,
    options: Any = None,
    video: VideoOptions | None = None,
    *,
    method: str | None = None,
    model: Any = None,
    device: Any = None,
    on_frame: Callable[[VideoProgress], None] | None = None,
    callback: Callable[[Any], None] | None = None,
    masks: Any = None,
    content_mask: Any = None,
    upscale: bool | None = None,
    **overrides: Any,
) -> VideoResult:
    """Stylise a video (or a folder of numbered frames) into ``output`` (a video file, or a
    folder that gets one PNG per frame), temporally consistent by default.

    ``options`` is the style method's options dataclass (``method`` picks one by name, with
    keyword ``overrides`` of its fields, as in :func:`artgen.stylize`); ``video`` holds the
    frame range, shard, temporal settings and cache (:class:`VideoOptions`). ``model`` is a
    network loaded earlier with the method's ``load``. ``masks`` and ``content_mask``:
    regional styles as in :func:`artgen.stylize`, the same on every frame. Frames keep the
    input's size when it is below the options' ``size``, unless ``upscale`` (by default:
    when ``size`` is among the overrides, i.e. asked for). Returns a :class:`VideoResult`.
    """
    from artgen.style import resolve_options

    _, options = resolve_options(method, options, overrides)
    if upscale is None:
        upscale = "size" in overrides
    plan = plan_video(source, output, options, video, masks, content_mask, upscale=upscale)
    return run_video(
        plan,
        styles,
        options,
        model=model,
        device=device,
        on_frame=on_frame,
        callback=callback,
        masks=masks,
        content_mask=content_mask,
    )


# ------------------------------------------------------------------------------ info


def read_video_params(path: str | os.PathLike) -> dict:
    """The parameters artgen stored in a video it wrote (the container's comment tag)."""
    path = Path(path)
    if not path.is_file():
        raise ArtgenError(f"{path}: no such file")
    if path.suffix.lower() == ".gif":
        raise ArtgenError(
            f"{path}: a GIF holds no artgen parameters (a frame cache, kept with "
            "--keep-frames, does)"
        )
    container, f = _open_container(path)
    try:
        meta = {k.lower(): v for k, v in container.metadata.items()}
    finally:
        container.close()
        f.close()
    raw = meta.get("comment")
    if not raw:
        raise ArtgenError(f"{path}: holds no artgen parameters (not written by artgen video?)")
    try:
        params = json.loads(raw[:200_000])
    except (ValueError, RecursionError):
        raise ArtgenError(f"{path}: its artgen parameters are not valid JSON") from None
    if not isinstance(params, dict) or not isinstance(params.get("video"), dict):
        raise ArtgenError(f"{path}: holds no artgen video parameters")
    return params


_RATE_RE = re.compile(r"\d{1,9}(/\d{1,9}|\.\d{1,9})?")


def recorded_rate(value: Any) -> Fraction:
    """A frame rate read from a file's parameters ("24", "30000/1001", "12.5"), bounded
    before it is converted (a number like 1e99999999 must not hang, 1e400 not overflow)
    and within --fps's range, so the command it goes into runs."""
    if not isinstance(value, str) or not _RATE_RE.fullmatch(value):
        raise ArtgenError(f"its frame rate {clip(value, 24)!r} is not a frame rate")
    try:
        rate = Fraction(value)
    except ZeroDivisionError:
        raise ArtgenError(f"its frame rate {value!r} divides by zero") from None
    if not 0.1 <= rate <= 1000:
        raise ArtgenError(f"its frame rate {value} is outside 0.1 to 1000 fps")
    return rate


def video_command(params: dict) -> str:
    """The `artgen video` command line that remakes a video from its stored parameters
    (validated and shell-quoted as :func:`artgen.style.reproduce_command` does)."""
    v = params.get("video")
    if not isinstance(v, dict):
        raise ArtgenError("its parameters have no video settings")
    still = {k: val for k, val in params.items() if k not in ("video", "resolved")}
    parts = shlex.split(reproduce_command(still))[:-2]  # drops "-o OUT.png"
    parts[1] = "video"
    defaults = VideoOptions()
    try:
        given = VideoOptions(
            **{k: v[k] for k in _PIXEL_SETTINGS if k in v},
            start=v.get("start", 0),
            end=v.get("end"),
        )
    except (TypeError, ArtgenError) as e:
        raise ArtgenError(f"its video settings do not fit ({clip(e, 120)})") from None
    for name in (*_PIXEL_SETTINGS, "start"):
        if getattr(given, name) != getattr(defaults, name):
            parts += [
                f"--{name.replace('_', '-')}",
                f"{getattr(given, name):g}"
                if isinstance(getattr(given, name), float)
                else str(getattr(given, name)),
            ]
    if given.end is not None and given.end != v.get("frames"):
        parts += ["--end", str(given.end)]
    if v.get("input") == "folder" and "fps" in v:
        parts += ["--fps", f"{float(recorded_rate(v['fps'])):g}"]
    suffix = v.get("output")
    suffix = suffix if suffix in OUTPUT_FORMATS else "/"
    parts += ["-o", "OUT" + suffix if suffix != "/" else "OUT_FRAMES/"]
    if not all(p.isprintable() for p in parts):
        raise ArtgenError("its parameters hold control characters")
    return " ".join(shlex.quote(p) for p in parts)


def describe_video_params(params: dict) -> list[str]:
    """Lines for `artgen info` about a video artgen wrote (or one of its frames)."""
    m, options = validate_params({k: v for k, v in params.items() if k != "video"})
    v = params["video"]
    lines = [
        f"  input:   {clip(params['content']['file'])} ({clip(v.get('input'), 10)}, "
        f"{clip(v.get('frames'), 10)} frames at {clip(v.get('fps'), 16)} fps)"
    ]
    for s in params["styles"]:
        where = f"  mask {clip(s['mask']['file'])}" if "mask" in s else ""
        lines.append(f"  style:   {clip(s['file'])}  weight {s['weight']:g}{where}")
    if "content_mask" in params:
        lines.append(f"  content mask: {clip(params['content_mask']['file'])} (kept unstylised)")
    lines.append(f"  method:  {m.name}; consistency {clip(v.get('consistency'), 10)}")
    if isinstance(v.get("frame"), int):
        lines.append(f"  frame:   {v['frame']}")
    lines.append(f"  size:    {clip(v.get('size'), 20)}")
    lines.append("  options:")
    for k, val in options.to_dict().items():
        lines.append(f"    {k}: {clip(val)}")
    return lines


__all__ = [
    "OUTPUT_FORMATS",
    "VideoInfo",
    "VideoOptions",
    "VideoPlan",
    "VideoProgress",
    "VideoResult",
    "describe_video_params",
    "plan_video",
    "probe_video",
    "read_frames",
    "read_video_params",
    "run_video",
    "stylize_video",
    "video_command",
]
