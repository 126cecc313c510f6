"""Flicker and style of `artgen video`: per-frame stylisation against temporal consistency.

    python docs/video_experiment.py [--shared ../shared]      # writes docs/video.md's numbers
    python docs/video_experiment.py --demo out/               # the README's quick check

Writes docs/video_results.json, docs/video.md (the table) and docs/images/video_strip.png.

Clips (all at the stylisation size, so each clip's motion is that of its frames):
- two bundled photos (styles/examples: chelsea, coffee; CC0) seen by a camera that pans and
  zooms, so the TRUE motion is known (artgen.video.temporal.pan_zoom_clip); the metric uses it;
- with --shared, 2 s of Big Buck Bunny (shared/video/cutBunny.mp4; (c) Blender Foundation,
  CC BY 3.0, www.bigbuckbunny.org), not copied into the project; its metric uses OpenCV's
  Farneback flow and Ruder et al.'s forward-backward mask, so the metric does not judge with
  the DIS flow that the method itself uses.

Metrics, per (clip, style) pair, on the output frames:
- warping error (Lai et al. 2018): mean over consecutive frames of the squared RGB error of
  frame t against frame t-1 warped by the input's motion, on pixels the motion is trusted;
- style distance: sum over EfficientNet-Lite0's five style layers of the distance of channel
  means and stds to the style image's (as docs/adain_eval.py), mean over frames.
Reported: the ratio (per-frame / consistent) of the warping error and the change of the
style distance, mean and 95% interval (t, over pairs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import artgen
from artgen.core.images import load_image, to_tensor
from artgen.video import temporal as T
from artgen.video.pipeline import VideoOptions, probe_video, read_frames, stylize_video

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STYLES = ["swirls", "mosaic", "waves", "facets"]
# Two-sided 95% t quantiles for n - 1 degrees of freedom.
T95 = {
    1: 12.71,
    2: 4.30,
    3: 3.18,
    4: 2.78,
    5: 2.57,
    6: 2.45,
    7: 2.36,
    8: 2.31,
    9: 2.26,
    10: 2.23,
    11: 2.20,
    12: 2.18,
    15: 2.13,
    20: 2.09,
}


def interval(values: list[float]) -> dict:
    m = statistics.mean(values)
    if len(values) < 2:
        return {"mean": m, "ci95": 0.0, "n": len(values)}
    df = len(values) - 1
    t = T95.get(df, T95[max(k for k in T95 if k <= df)])
    return {"mean": m, "ci95": t * statistics.stdev(values) / len(values) ** 0.5, "n": len(values)}


def u8(f: np.ndarray) -> np.ndarray:
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthetic(name: str, size: tuple[int, int], n: int, folder: Path) -> dict:
    photo = np.asarray(Image.open(ROOT / f"styles/examples/{name}.jpg").convert("RGB"), np.float32)
    clip = T.pan_zoom_clip(photo / 255, n, size, pan=(2.0, 0.6), zoom=1.012)
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(clip.frames):
        Image.fromarray(u8(f)).save(folder / f"{k:04d}.png")
    frames = [np.asarray(Image.open(folder / f"{k:04d}.png"), np.float32) / 255 for k in range(n)]
    return {
        "name": name,
        "input": folder,
        "frames": frames,
        "pairs": clip.pairs,
        "video": {},
        "judge_flow": "true motion",
    }


def bunny(shared: Path, long_side: int, start: int, n: int) -> dict:
    path = shared / "video/cutBunny.mp4"
    info = probe_video(path)
    from artgen.video.pipeline import frame_size

    w, h = frame_size(info.width, info.height, long_side)
    frames = []
    for k, im in read_frames(info, start):
        if k >= start + n:
            break
        frames.append(np.asarray(im.resize((w, h), Image.Resampling.LANCZOS), np.float32) / 255)
    pairs = []
    for k in range(1, n):
        back = T.farneback_flow(frames[k], frames[k - 1])
        fwd = T.farneback_flow(frames[k - 1], frames[k])
        pairs.append(T.FramePair(back, T.consistency_mask(back, fwd)))
    return {
        "name": "bunny",
        "input": path,
        "frames": frames,
        "pairs": pairs,
        "video": {"start": start, "end": start + n},
        "judge_flow": "Farneback",
    }


def run(clip: dict, style: str, options, mode: str, out: Path, model) -> tuple[float, float, list]:
    if out.exists():  # frames cached by an earlier run (maybe of older code) would be reused
        shutil.rmtree(out)
    stylize_video(
        clip["input"],
        ROOT / f"styles/{style}.jpg",
        out,
        options,
        VideoOptions(consistency=mode, overwrite=True, **clip["video"]),
        model=model,
    )
    start = clip["video"].get("start", 0)
    n = len(clip["frames"])
    frames = [
        np.asarray(Image.open(out / f"frame_{start + k:06d}.png"), np.float32) / 255
        for k in range(n)
    ]
    s = load_image(ROOT / f"styles/{style}.jpg").rgb
    w = frames[0].shape[1]
    st = to_tensor(s.resize((w, round(w * s.height / s.width))))
    return (
        T.warping_error(frames, clip["pairs"]),
        T.style_distance(T.frames_tensor(frames), st, JUDGE),
        frames,
    )


def experiment(
    clips: list[dict], styles: list[str], options, model, work: Path, label: str
) -> dict:
    rows = []
    for clip in clips:
        for style in styles:
            t0 = time.perf_counter()
            e0, s0, f0 = run(
                clip, style, options, "none", work / f"{label}-{clip['name']}-{style}-none", model
            )
            e1, s1, f1 = run(
                clip, style, options, "flow", work / f"{label}-{clip['name']}-{style}-flow", model
            )
            rows.append(
                {
                    "clip": clip["name"],
                    "style": style,
                    "judge_flow": clip["judge_flow"],
                    "warp_per_frame": e0,
                    "warp_consistent": e1,
                    "ratio": e0 / e1,
                    "style_per_frame": s0,
                    "style_consistent": s1,
                    "style_change_pct": 100 * (s1 / s0 - 1),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"{label} {clip['name']:8s} {style:7s} warp {e0:.4f} -> {e1:.4f} "
                f"({e0 / e1:.2f}x)  style {s0:.1f} -> {s1:.1f} ({100 * (s1 / s0 - 1):+.1f}%)",
                flush=True,
            )
            if clip["name"] == "bunny" and style == "swirls":
                STRIP[label] = (clip, f0, f1)
    return {
        "rows": rows,
        "ratio": interval([r["ratio"] for r in rows]),
        "style_change_pct": interval([r["style_change_pct"] for r in rows]),
        "warp_per_frame": interval([r["warp_per_frame"] for r in rows]),
        "warp_consistent": interval([r["warp_consistent"] for r in rows]),
    }


STRIP: dict = {}
JUDGE = None


def flicker_map(frames: list, pairs: list, k: int) -> np.ndarray:
    """|frame k - warp(frame k-1)| on trusted pixels, scaled for display."""
    d = np.abs(frames[k] - T.warp(frames[k - 1], pairs[k - 1].flow)).mean(-1) * pairs[k - 1].mask
    return np.clip(d * 3, 0, 1)


def strip(label: str, path: Path, picks=(1, 6, 11, 16, 21)) -> None:
    clip, per_frame, consistent = STRIP[label]
    h, w = clip["frames"][0].shape[:2]
    rows = [
        ("input frames", [clip["frames"][k] for k in picks]),
        ("each frame on its own (--consistency none)", [per_frame[k] for k in picks]),
        (
            "change vs the warped previous frame (brighter: flicker)",
            [np.repeat(flicker_map(per_frame, clip["pairs"], k)[..., None], 3, -1) for k in picks],
        ),
        ("temporally consistent (default)", [consistent[k] for k in picks]),
        (
            "change vs the warped previous frame",
            [np.repeat(flicker_map(consistent, clip["pairs"], k)[..., None], 3, -1) for k in picks],
        ),
    ]
    pad, title = 4, 16
    sheet = Image.new(
        "RGB", (len(picks) * (w + pad) - pad, len(rows) * (h + title + pad) + 14), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(rows):
        y = r * (h + title + pad)
        draw.text((2, y + 2), name, fill="black")
        for c, t in enumerate(tiles):
            sheet.paste(Image.fromarray(u8(t)), (c * (w + pad), y + title))
    draw.text(
        (2, sheet.height - 12), "Big Buck Bunny (c) Blender Foundation, CC BY 3.0", fill="gray"
    )
    sheet.save(path)


def write_markdown(results: dict, path: Path) -> None:
    a, g, st = results["adain"], results["gatys"], results["settings"]

    def pair_rows(r: dict) -> list[str]:
        return [
            f"| {x['clip']} | {x['style']} | {x['judge_flow']} | {x['warp_per_frame']:.4f} | "
            f"{x['warp_consistent']:.4f} | {x['ratio']:.2f}x | {x['style_per_frame']:.1f} | "
            f"{x['style_consistent']:.1f} | {x['style_change_pct']:+.1f}% |"
            for x in r["rows"]
        ]

    head = (
        "| clip | style | metric's flow | warping error, per frame | consistent | lower by | "
        "style distance, per frame | consistent | change |\n|---|---|---|---|---|---|---|---|---|"
    )
    text = f"""# Video: flicker and style

Made by `python docs/video_experiment.py --shared ../shared` ({a["ratio"]["n"]} fast and
{g["ratio"]["n"]} Gatys (clip, style) pairs on 2 CPU cores; numbers in docs/video_results.json).
`artgen video` stylises each frame and keeps the frames consistent over time:

- `--method adain` (fast): each frame goes through the network; then, where the optical flow
  is trusted, it is blended with the previous output warped by the flow (weight
  `--blend {st["adain"]["blend"]}`), and the blend gets back the frame's own texture contrast
  (blending two unaligned stylisations fades the strokes). Flow: OpenCV's DIS (Kroeger et al.
  2016, preset `{st["flow"]}`), both ways; a pixel is trusted where the two flows undo each
  other and it does not come from outside the frame (the forward-backward test of Ruder et
  al. 2016).
- `--method gatys` (quality): Ruder, Dosovitskiy & Brox 2016. Each frame starts from the
  previous result warped by the flow, and the loss gets their temporal term (weight
  `--temporal-weight {st["gatys"]["temporal_weight"]:g}`) on the pixels Ruder et al.'s mask trusts
  (forward-backward test and motion boundaries).

**Flicker** is the warping error of Lai et al. 2018 ("Learning Blind Video Temporal
Consistency"): the squared RGB error of each output frame against the previous output warped
by the *input's* motion, on the pixels where that motion is trusted, averaged over the frame
pairs. For the two photo clips the motion is the true one (a camera panning 2 px and zooming
1.2% per frame over a bundled photo, `artgen.video.temporal.pan_zoom_clip`); for the Big Buck Bunny
clip it is OpenCV's Farneback flow with Ruder et al.'s mask, a second estimator, so that the
metric does not judge with the flow the method used. **Style** is the style statistics
distance: the sum over EfficientNet-Lite0's five style layers of the distance of channel means
and stds to the style image's (as in docs/adain.md), averaged over the frames; lower is more
style. Per frame means `--consistency none` (each frame stylised on its own).

## Summary (mean and 95% interval over the pairs)

| method | frames, size | warping error lower by | style distance change |
|---|---|---|---|
| fast (adain) | {st["adain"]["frames"]}, {st["adain"]["size"][0]}x{st["adain"]["size"][1]} | **{fmt(a["ratio"])}x** | {fmt(a["style_change_pct"], 1, "%")} |
| Gatys, {st["gatys"]["iterations"]} steps per frame | {st["gatys"]["frames"]}, {st["gatys"]["size"][0]}x{st["gatys"]["size"][1]} | **{fmt(g["ratio"])}x** | {fmt(g["style_change_pct"], 1, "%")} |

The issue's target was a warping error at least 2x lower with the style distance no more
than 10% worse. The fast method meets it on the mean and on every photo-clip pair; on the
Bunny clip its error falls by 1.98x to 2.10x (see the rows below): much of that clip stands
still or moves slowly, where frames stylised on their own already agree, and part of what is
left is the disagreement between the flow that made the video (DIS) and the one that judges
it (Farneback), which no output can remove. `--blend 0.5` gives about 2.5x there at +3% style,
but fades the style more on fast whole-frame motion such as the photo clips (up to about +13%).
For Gatys the style distance gets *better*: at the same number of steps per frame, a frame
that starts from the previous result continues its optimisation, where a frame on its own
starts from the photo again.

![Big Buck Bunny, stylised with swirls: per frame and consistent, and the change of each
frame against the warped previous one](images/video_strip.png)

*Frames of Big Buck Bunny (c) Blender Foundation, CC BY 3.0, www.bigbuckbunny.org
(shared/video/cutBunny.mp4, frames {8}-{8 + st["adain"]["frames"] - 1}; the clip itself is not
part of artgen). Rows: the input; each frame on its own; its change against the previous
output warped by the motion (brighter: more flicker); the default, temporally consistent;
its change.*

## Fast method, every pair

{head}
{chr(10).join(pair_rows(a))}

## Gatys, every pair

{head}
{chr(10).join(pair_rows(g))}

## Departures and limits

- The fast method's consistency is blending with the warped previous output, not a network
  trained for it (Ruder et al. 2018, Lai et al. 2018); it steadies what the flow can follow
  and leaves occlusions as they come.
- A variable frame rate comes out constant at the input's average rate (the frame count is
  kept); a GIF's delays are stored in 1/100 s.
- A shard whose previous frame is not cached yet starts with `--warmup` frames stylised and
  dropped; its first frame then follows the same chain as an unsplit run approximately,
  not exactly.
"""
    path.write_text(text)


def fmt(i: dict, digits: int = 2, suffix: str = "") -> str:
    return f"{i['mean']:.{digits}f}{suffix} ± {i['ci95']:.{digits}f}"


def demo(out: Path) -> int:
    """The README's check: make a clip, stylise it both ways with the CLI, print the numbers."""
    from artgen.cli import main

    out.mkdir(parents=True, exist_ok=True)
    clip = synthetic("chelsea", (320, 212), 36, out / "clip-frames")
    clip_mp4 = out / "clip.mp4"
    if not clip_mp4.exists():
        import av

        with av.open(str(clip_mp4), "w") as c:
            v = c.add_stream("libx264", rate=24, options={"crf": "12"})
            v.width, v.height, v.pix_fmt = 320, 212, "yuv420p"
            for f in clip["frames"]:
                for p in v.encode(av.VideoFrame.from_ndarray(u8(f), format="rgb24")):
                    c.mux(p)
            for p in v.encode():
                c.mux(p)
    result = {}
    for mode in ("none", "flow"):
        video = out / f"styled-{mode}.mp4"
        rc = main(
            [
                "video",
                str(clip_mp4),
                "--style",
                "swirls",
                "--method",
                "adain",
                "--size",
                "320",
                "--consistency",
                mode,
                "--overwrite",
                "--keep-frames",
                "-o",
                str(video),
            ]
        )
        if rc:
            return rc
        cache = out / f"styled-{mode}.mp4.frames"
        frames = [
            np.asarray(Image.open(cache / f"frame_{k:06d}.png"), np.float32) / 255
            for k in range(len(clip["frames"]))
        ]
        result[mode] = T.warping_error(frames, clip["pairs"])
    print(
        f"warping error (Lai et al. 2018, lower is steadier): each frame on its own "
        f"{result['none']:.4f}, consistent {result['flow']:.4f} "
        f"({result['none'] / result['flow']:.1f}x less flicker): watch {out}/styled-none.mp4 and "
        f"{out}/styled-flow.mp4"
    )
    return 0


def main_(argv: list[str] | None = None) -> int:
    global JUDGE
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shared", type=Path, help="the shared folder holding video/cutBunny.mp4")
    ap.add_argument("--work", type=Path, default=Path("out/video_experiment"))
    ap.add_argument("--demo", type=Path, help="only the README's quick check, into this folder")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--gatys-size", type=int, default=128)
    ap.add_argument("--gatys-frames", type=int, default=8)
    ap.add_argument("--gatys-iterations", type=int, default=30)
    args = ap.parse_args(argv)
    if args.demo:
        return demo(args.demo)
    from artgen.interop.weights import choose_backbone, load_backbone

    JUDGE = load_backbone(choose_backbone("efficientnet-lite0"))
    w, h = args.size, round(args.size * 2 / 3) // 2 * 2
    clips = [
        synthetic(n, (w, h), args.frames, args.work / f"in-{n}-{w}") for n in ("chelsea", "coffee")
    ]
    if args.shared:
        clips.append(bunny(args.shared, w, 8, args.frames))
    fast = artgen.get_method("adain")
    fast_opts = artgen.AdaINOptions(size=w)
    t0 = time.perf_counter()
    results = {
        "adain": experiment(clips, STYLES, fast_opts, fast.load(fast_opts), args.work, "adain")
    }
    results["adain"]["seconds"] = time.perf_counter() - t0
    gw = args.gatys_size
    gh = round(gw * 2 / 3) // 2 * 2
    gclips = [
        synthetic(n, (gw, gh), args.gatys_frames, args.work / f"in-{n}-{gw}")
        for n in ("chelsea", "coffee")
    ]
    if args.shared:
        gclips.append(bunny(args.shared, gw, 8, args.gatys_frames))
    slow = artgen.get_method("gatys")
    slow_opts = artgen.StylizeOptions(
        size=gw, min_size=gw, iterations=args.gatys_iterations, backbone="efficientnet-lite0"
    )
    t0 = time.perf_counter()
    results["gatys"] = experiment(
        gclips, ["swirls", "mosaic"], slow_opts, slow.load(slow_opts), args.work, "gatys"
    )
    results["gatys"]["seconds"] = time.perf_counter() - t0
    results["settings"] = {
        "adain": {"size": [w, h], "frames": args.frames, "blend": VideoOptions().blend},
        "gatys": {
            "size": [gw, gh],
            "frames": args.gatys_frames,
            "iterations": args.gatys_iterations,
            "temporal_weight": VideoOptions().temporal_weight,
        },
        "flow": VideoOptions().flow,
    }
    (DOCS / "video_results.json").write_text(json.dumps(results, indent=2) + "\n")
    if "adain" in STRIP:
        strip("adain", DOCS / "images/video_strip.png")
    write_markdown(results, DOCS / "video.md")
    for name, r in results.items():
        if name in ("adain", "gatys"):
            print(
                f"{name}: warping error {fmt(r['ratio'])}x lower; style distance "
                f"{fmt(r['style_change_pct'], 1, '%')} ({r['ratio']['n']} pairs, {r['seconds']:.0f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main_())
