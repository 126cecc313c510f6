"""Test videos written in the process with PyAV: frames in [0, 1] as H.264, with an
optional tone as sound. Shared by the video and studio tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def u8(f: np.ndarray) -> np.ndarray:
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_video(
    path: Path,
    frames,
    fps: int = 12,
    audio_seconds: float | None = 1.0,
    rate: int = 16000,
    acodec: str = "aac",
) -> Path:
    """An H.264 video (nearly lossless; the container from the suffix) with, optionally, a
    mono sine tone at ``rate`` Hz (AAC unless ``acodec`` says otherwise)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps, options={"crf": "4"})
    v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    a = out.add_stream(acodec, rate=rate, layout="mono") if audio_seconds else None
    for f in frames:
        for p in v.encode(av.VideoFrame.from_ndarray(u8(f), format="rgb24")):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    if a is not None:
        n = int(rate * audio_seconds)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        for s in range(0, n, 1024):
            fr = av.AudioFrame.from_ndarray(tone[None, s : s + 1024], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = rate, s
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    out.close()
    return path
