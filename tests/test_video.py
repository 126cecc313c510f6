"""`artgen video`: decode, stylise with temporal consistency, cache/resume, shards, encode.

Clips are made here: a bundled photo (styles/examples/chelsea.jpg) seen by a camera that
pans and zooms, so the true motion between frames is known, written with PyAV (with a
sine tone as the audio track) or as a folder of PNG frames.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import artgen
from artgen.cli import main
from artgen.core.images import load_image, read_params, to_tensor
from artgen.video import temporal as T
from artgen.video.pipeline import VideoOptions, VideoProgress, plan_video, run_video, stylize_video

from .conftest import REPO, one_line_error
from .media import u8, write_video

W, H, N, FPS = 96, 64, 12, 12
STYLE = str(REPO / "styles/swirls.jpg")
FAST = ["--method", "adain", "--size", str(W), "-q"]


@pytest.fixture(scope="module")
def clip() -> T.SyntheticClip:
    cat = np.asarray(Image.open(REPO / "styles/examples/chelsea.jpg").convert("RGB"), np.float32)
    return T.pan_zoom_clip(cat / 255, N, (W, H), pan=(1.5, 0.5), zoom=1.012)


@pytest.fixture(scope="module")
def media(clip, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    frames = d / "frames"
    frames.mkdir()
    for k, f in enumerate(clip.frames):
        Image.fromarray(u8(f)).save(frames / f"img{k}.png")  # natural order: img2 < img10
    return {"mp4": write_video(d / "clip.mp4", clip.frames), "frames": frames, "dir": d}


@pytest.fixture(scope="module")
def fast_model():
    m = artgen.get_method("adain")
    return m.load(artgen.AdaINOptions())


def decode(path: Path):
    """(frames as arrays, average rate, audio codec or None, audio seconds)."""
    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
        codec = c.streams.audio[0].codec_context.name if c.streams.audio else None
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    seconds = 0.0
    if codec:
        with av.open(str(path)) as c:
            seconds = sum(f.samples / f.sample_rate for f in c.decode(audio=0))
    return frames, rate, codec, seconds


def png_frames(folder: Path, n: int = N) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(folder / f"frame_{k:06d}.png"), np.float32) / 255 for k in range(n)
    ]


# ----------------------------------------------------------------------- the numbers


def test_fast_method_flickers_at_least_2x_less_and_keeps_the_style(
    clip, media, fast_model, lite0, tmp_path
):
    """The issue's target, on the test clip: the warping error (Lai et al. 2018, judged with the
    clip's TRUE motion, not the flow the method used) at least 2x lower than independent
    frames, and the style statistics distance at most 10% worse (mean over two styles; the
    harder one, swirls, alone is measured at +10.1% on this tiny clip, so 12% each)."""
    opts = artgen.AdaINOptions(size=W)
    ratios, worse = [], []
    for name in ("swirls", "mosaic"):
        style = load_image(REPO / f"styles/{name}.jpg")
        st = to_tensor(style.rgb.resize((W, round(W * style.size[1] / style.size[0]))))
        got = {}
        for mode in ("none", "flow"):
            out = tmp_path / f"{name}-{mode}"
            stylize_video(
                media["frames"],
                [(style, 1.0)],
                out,
                opts,
                VideoOptions(consistency=mode),
                model=fast_model,
            )
            frames = png_frames(out)
            got[mode] = (
                T.warping_error(frames, clip.pairs),
                T.style_distance(T.frames_tensor(frames), st, lite0),
            )
        ratios.append(got["none"][0] / got["flow"][0])
        worse.append(got["flow"][1] / got["none"][1] - 1)
        assert ratios[-1] >= 1.9 and worse[-1] <= 0.12, (name, got)
    # The 2x is held on the mean. Measured with the 12,000-step decoder: 1.98x and
    # 2.24x, style cost +4.2% and +5.8% (the 6,000-step one: 2.2x or more on the mean, and
    # swirls +10.1%), so each style is held to 1.9x.
    assert np.mean(ratios) >= 2.0 and np.mean(worse) <= 0.10, (ratios, worse)


def test_gatys_temporal_loss_flickers_at_least_2x_less(lite0, tmp_path):
    """Ruder et al. 2016 through the registry's guided hook: each frame starts from the warped
    previous result with the temporal loss; three frames, tiny and few steps (measured: 3.6x
    lower, style distance 7% better)."""
    n, w, h = 3, 64, 42
    cat = np.asarray(Image.open(REPO / "styles/examples/chelsea.jpg").convert("RGB"), np.float32)
    small = T.pan_zoom_clip(cat / 255, n, (w, h), pan=(1.0, 0.4), zoom=1.01)
    folder = tmp_path / "in"
    folder.mkdir()
    for k, f in enumerate(small.frames):
        Image.fromarray(u8(f)).save(folder / f"{k}.png")
    opts = artgen.StylizeOptions(size=w, min_size=w, iterations=20, backbone="efficientnet-lite0")
    st = to_tensor(load_image(STYLE).rgb.resize((w, w)))
    got = {}
    for mode in ("none", "flow"):
        out = tmp_path / mode
        stylize_video(folder, STYLE, out, opts, VideoOptions(consistency=mode), model=lite0)
        frames = png_frames(out, n)
        got[mode] = (
            T.warping_error(frames, small.pairs),
            T.style_distance(T.frames_tensor(frames), st, lite0),
        )
    assert got["none"][0] / got["flow"][0] >= 2.0, got
    assert got["flow"][1] <= 1.10 * got["none"][1], got


def test_gatys_hook_starts_from_init_and_adds_the_extra_loss(lite0):
    g = artgen.get_method("gatys")
    content = Image.fromarray(np.full((32, 48, 3), 128, np.uint8))
    start = Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8))
    seen = []

    def extra(y):
        seen.append(tuple(y.shape))
        return y.sum() * 0

    opts = artgen.StylizeOptions(size=48, min_size=16, iterations=2, lr=0.0)  # Adam, no steps
    out = g.stylize_guided(content, STYLE, opts, model=lite0, init=start, extra_loss=extra)
    assert np.array_equal(np.asarray(out), np.asarray(start))  # started there, only there
    assert seen == [(1, 3, 32, 48)] * 2  # one scale (the final), every step
    # Unused, the hook changes nothing: three scales, and the content as the start.
    plain = g.stylize(content, STYLE, opts, model=lite0)
    assert np.array_equal(np.asarray(plain), np.asarray(content))


# ----------------------------------------------------------------------- the command


def test_video_keeps_frame_count_rate_and_audio_and_info_remakes_it(media, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    assert main(["video", str(media["mp4"]), "--style", STYLE, "-o", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert (
        f"12 frames stylised, 0 from the cache -> {out} (12 frames, 12 fps, 96x64; audio: kept (aac, copied))"
        in text
    )
    frames, rate, codec, seconds = decode(out)
    assert len(frames) == N and rate == FPS and frames[0].shape == (H, W, 3)
    assert codec == "aac" and seconds == pytest.approx(1.0, abs=0.07)
    assert not (tmp_path / "styled.mp4.frames").exists()  # the cache went once the video was made
    assert sorted(os.listdir(tmp_path)) == ["styled.mp4"]  # no temporaries, no locks
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "(video)" in info and "consistency flow" in info
    cmd = info.strip().splitlines()[-1].strip()
    assert cmd.startswith(
        "artgen video clip.mp4 --method adain --style swirls:1 --size 96"
    ) and cmd.endswith("-o OUT.mp4")
    # Without --overwrite an existing output is refused before any work.
    rc = main(["video", str(media["mp4"]), "--style", STYLE, "-o", str(out), *FAST])
    one_line_error(capsys, rc, str(out), "already exists")


def test_folder_in_folder_out_gif_and_webm(media, tmp_path, capsys):
    folder = tmp_path / "styled"
    argv = ["video", str(media["frames"]), "--style", "mosaic", "--fps", "8", *FAST]
    assert main([*argv, "-o", str(folder)]) == 0
    assert (
        f"-> {folder} (12 frames, 8 fps, 96x64; audio: none in the input)"
        in capsys.readouterr().out
    )
    names = sorted(os.listdir(folder))
    assert names == ["artgen-video.json", *[f"frame_{k:06d}.png" for k in range(N)]]
    # Each frame remembers how it was made; `artgen info` reads it.
    p = read_params(folder / "frame_000003.png")
    assert p["video"]["frame"] == 3 and p["method"] == "adain" and p["video"]["fps"] == "8"
    assert main(["info", str(folder / "frame_000003.png")]) == 0
    assert "--fps 8" in capsys.readouterr().out
    # Again: all done, nothing redone.
    before = (folder / "frame_000000.png").stat().st_mtime_ns
    assert main([*argv, "-o", str(folder)]) == 0
    assert "0 frames stylised, 12 from the cache" in capsys.readouterr().out
    assert (folder / "frame_000000.png").stat().st_mtime_ns == before
    gif = tmp_path / "styled.gif"
    assert main([*argv, "-o", str(gif)]) == 0
    with Image.open(gif) as im:
        # GIF delays are in 1/100 s: 125 ms per frame is stored as 12 or 13.
        assert im.n_frames == N and im.size == (W, H) and abs(im.info["duration"] - 125) <= 10
    # mp4's AAC cannot go into WebM: re-encoded as Opus there.
    webm = tmp_path / "styled.webm"
    assert main(["video", str(media["mp4"]), "--style", "mosaic", "-o", str(webm), *FAST]) == 0
    assert "aac re-encoded as opus" in capsys.readouterr().out
    frames, rate, codec, seconds = decode(webm)
    assert len(frames) == N and rate == FPS and codec == "opus"
    assert seconds == pytest.approx(1.0, abs=0.1)


def test_44k1_aac_into_webm_becomes_48k_opus(clip, tmp_path, capsys):
    """libopus takes 48 kHz, not 44.1: the sound is resampled (it once failed after every
    frame was made, blaming a 'corrupt audio track')."""
    from artgen.video.pipeline import encoder_rate

    assert encoder_rate("libopus", 44100) == 48000 and encoder_rate("libopus", 16000) == 16000
    assert encoder_rate("aac", 44100) == 44100
    src = write_video(tmp_path / "cd.mp4", clip.frames[:4], rate=44100)
    out = tmp_path / "out.webm"
    assert main(["video", str(src), "--style", STYLE, "-o", str(out), *FAST]) == 0
    assert "re-encoded as opus for webm, resampled to 48 kHz" in capsys.readouterr().out
    frames, _, codec, seconds = decode(out)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.sample_rate == 48000
    assert len(frames) == 4 and codec == "opus" and abs(seconds - 1.0) < 0.05


def test_sound_that_cannot_be_written_or_read_is_refused_before_any_frame(clip, tmp_path, capsys):
    flac = write_video(tmp_path / "flac.mkv", clip.frames[:3], rate=44100, acodec="flac")
    out = tmp_path / "x.mov"  # MOV cannot hold FLAC: the muxer refuses the pair
    rc = main(["video", str(flac), "--style", STYLE, "-o", str(out), *FAST])
    one_line_error(capsys, rc, "x.mov", "cannot write the sound of flac.mkv as flac into mov")
    assert not out.exists() and not (tmp_path / "x.mov.frames").exists()
    # A sound codec id FFmpeg does not know: one line, not an AttributeError.
    pcm = write_video(tmp_path / "pcm.mkv", clip.frames[:3], rate=16000, acodec="pcm_s16le")
    data = pcm.read_bytes()
    assert data.count(b"A_PCM/INT/LIT") == 1
    (tmp_path / "odd.mkv").write_bytes(data.replace(b"A_PCM/INT/LIT", b"A_QQQ/INT/LIT"))
    rc = main(["video", str(tmp_path / "odd.mkv"), "--style", STYLE, "-o", str(out), *FAST])
    one_line_error(capsys, rc, "odd.mkv", "codec is unknown to FFmpeg")


def test_start_and_end_pick_a_range_and_trim_the_sound(media, tmp_path, capsys):
    out = tmp_path / "part.mov"
    argv = ["video", str(media["mp4"]), "--style", STYLE, "--start", "3", "--end", "9"]
    assert main([*argv, "-o", str(out), *FAST]) == 0
    assert "-> " in capsys.readouterr().out
    frames, rate, codec, seconds = decode(out)
    assert len(frames) == 6 and rate == FPS and codec == "aac"
    assert seconds == pytest.approx(0.5, abs=0.1)  # frames 3..8 of a 12 fps clip


def test_an_interrupted_run_resumes_from_its_cache(media, fast_model, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    cache = tmp_path / "styled.mp4.frames"
    opts = artgen.AdaINOptions(size=W)
    seen: list[VideoProgress] = []

    def stop_after_five(p: VideoProgress) -> None:
        seen.append(p)
        if p.status == "stylised" and p.done == 5:
            raise KeyboardInterrupt

    video = VideoOptions(batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        stylize_video(
            media["mp4"], STYLE, out, opts, video, model=fast_model, on_frame=stop_after_five
        )
    assert [p.frame for p in seen] == [0, 1, 2, 3, 4] and seen[-1].total == N
    assert not out.exists()
    assert sorted(os.listdir(cache)) == [
        "artgen-video.json",
        *[f"frame_{k:06d}.png" for k in range(5)],
    ]
    config = json.loads((cache / "artgen-video.json").read_text())
    assert config["method"] == "adain" and config["video"]["blend"] == 0.4
    assert config["options"]["size"] == W and config["video"]["size"] == [W, H]
    kept = {k: (cache / f"frame_{k:06d}.png").stat().st_mtime_ns for k in range(5)}
    # The same command again (the CLI this time) finishes the other seven, reusing five.
    argv = ["video", str(media["mp4"]), "--style", STYLE, "--batch-size", "3", "--keep-frames"]
    assert main([*argv, "-o", str(out), *FAST]) == 0
    assert "7 frames stylised, 5 from the cache" in capsys.readouterr().out
    assert {k: (cache / f"frame_{k:06d}.png").stat().st_mtime_ns for k in range(5)} == kept
    resumed = png_frames(cache)
    # ... and they are the frames an uninterrupted run makes.
    whole = tmp_path / "whole"
    stylize_video(media["mp4"], STYLE, whole, opts, video, model=fast_model)
    assert (
        max(np.abs(a - b).max() for a, b in zip(resumed, png_frames(whole), strict=True)) <= 2 / 255
    )
    assert len(decode(out)[0]) == N


def test_shards_split_the_frames_and_the_last_one_writes_the_video(media, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    argv = ["video", str(media["mp4"]), "--style", STYLE, "-o", str(out), *FAST]
    # Shard 2 first: its first frame's predecessor is not there yet, so it warms up.
    assert main([*argv, "--shard", "2/2"]) == 0
    text = capsys.readouterr().out
    assert "6 frames stylised, 0 from the cache; 6 of 12 frames still to be made" in text
    assert not out.exists()
    assert sorted(
        int(p.stem[6:]) for p in (tmp_path / "styled.mp4.frames").glob("frame_*.png")
    ) == list(range(6, 12))
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "6 frames stylised, 0 from the cache -> " in capsys.readouterr().out
    assert len(decode(out)[0]) == N
    for bad in ("3/2", "0/2", "a/b", "1/13"):
        rc = main([*argv, "--overwrite", "--shard", bad])
        one_line_error(capsys, rc, "--shard")


def _paused_run(media, out, fast_model, video: VideoOptions, pause_at: int):
    """stylize_video in a thread that stops after ``pause_at`` frames until released:
    (thread, paused event, release event, outcome dict)."""
    import threading

    paused, go, outcome = threading.Event(), threading.Event(), {}

    def on_frame(p: VideoProgress) -> None:
        if p.status == "stylised" and p.done == pause_at:
            paused.set()
            assert go.wait(120)

    def work() -> None:
        try:
            outcome["result"] = stylize_video(
                media["mp4"],
                STYLE,
                out,
                artgen.AdaINOptions(size=W),
                video,
                model=fast_model,
                on_frame=on_frame,
            )
        except Exception as e:  # noqa: BLE001 - checked by the test
            outcome["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    assert paused.wait(120), outcome
    return t, go, outcome


def test_overwrite_never_touches_frames_a_live_run_is_making(media, fast_model, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    cache = tmp_path / "styled.mp4.frames"
    t, go, outcome = _paused_run(media, out, fast_model, VideoOptions(batch_size=1), 3)
    try:
        before = {p.name: p.stat().st_mtime_ns for p in cache.glob("frame_*.png")}
        config = (cache / "artgen-video.json").read_text()
        argv = ["video", str(media["mp4"]), "--style", STYLE, "-o", str(out), *FAST]
        rc = main([*argv, "--overwrite", "--strength", "0.5"])
        error_line(capsys, rc, str(cache), "another artgen run is making frames there")
        assert {p.name: p.stat().st_mtime_ns for p in cache.glob("frame_*.png")} == before
        assert (cache / "artgen-video.json").read_text() == config and len(before) == 3
    finally:
        go.set()
        t.join(120)
    assert "error" not in outcome, outcome
    r = outcome["result"]
    assert r.output == out and r.stylised == N and len(decode(out)[0]) == N
    assert not cache.exists()  # the last run to leave cleans up, lock files included
    # Once nobody uses it, --overwrite with other settings starts again as before.
    assert main([*argv, "--overwrite", "--strength", "0.5", "--end", "2"]) == 0


def test_overlapping_runs_of_the_same_settings_both_end_well(media, fast_model, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    cache = tmp_path / "styled.mp4.frames"
    t, go, outcome = _paused_run(media, out, fast_model, VideoOptions(shard="2/2"), 1)
    try:
        argv = ["video", str(media["mp4"]), "--style", STYLE, "-o", str(out), *FAST]
        assert main(argv) == 0  # the whole range, while shard 2/2 is still running
        text = capsys.readouterr().out
        assert f"the frames stay in {cache} while another run uses them" in text
        assert len(decode(out)[0]) == N and cache.is_dir()
    finally:
        go.set()
        t.join(120)
    assert "error" not in outcome, outcome
    r = outcome["result"]
    assert r.output == out and r.missing == 0
    assert r.note == f"another run with the same settings wrote {out} first"
    assert not cache.exists()


def test_the_last_run_to_leave_removes_only_lock_files_it_knows(tmp_path):
    """A run that removed the lock files as the last user must not, when it then leaves,
    remove the lock files of a run that joined since (which made that run invisible to a
    later --overwrite with other settings)."""
    from artgen.video.pipeline import CacheUsers

    cache = tmp_path / "c.frames"
    a = CacheUsers(cache)
    with a:
        assert a.alone()
        a.join()
    with a:  # A ends its run: the last user, it removes the folder's lock files
        assert a.alone()
        a.remove_files()
    d = CacheUsers(cache)
    with d:
        d.join()  # D starts, with new lock files
    a.leave()  # A leaves afterwards
    e = CacheUsers(cache)
    with e:
        assert not e.alone()  # D is still seen
    d.leave()
    with e:
        assert e.alone()
    e.leave()


def test_a_run_waits_for_another_writing_the_same_output(media, fast_model, tmp_path):
    import threading

    from artgen.core.images import OutputClaim

    out = tmp_path / "styled.mp4"
    held = OutputClaim(out)
    assert held.acquire()  # another run is encoding this output
    done = {}

    def work() -> None:
        done["r"] = stylize_video(
            media["mp4"], STYLE, out, artgen.AdaINOptions(size=W), model=fast_model
        )

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(3)
    assert t.is_alive() and not out.exists()  # its frames are made; it waits, not fails
    held.release()
    t.join(120)
    assert done["r"].output == out and len(decode(out)[0]) == N


def test_a_refusal_removes_nothing_of_the_users(media, tmp_path, capsys):
    mine = tmp_path / "mycache"
    mine.mkdir()
    (mine / "artgen-video.json").write_text('{"my": "own notes"}')
    argv = ["video", str(media["mp4"]), "--style", STYLE, "-o", str(tmp_path / "o.mp4")]
    rc = main([*argv, "--cache", str(mine), *FAST])
    error_line(capsys, rc, "not a record artgen video wrote")
    assert (mine / "artgen-video.json").read_text() == '{"my": "own notes"}'
    assert sorted(os.listdir(mine)) == ["artgen-video.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main([*argv, "--cache", str(empty), "--end", "2", *FAST, "--style", "/nope.png"])
    assert rc == 2 and empty.is_dir() and os.listdir(empty) == []


def test_a_whole_run_whose_frames_vanish_does_not_exit_0(media, tmp_path, capsys, monkeypatch):
    import artgen.video.pipeline as V

    real = V.cached_frames
    calls = {"n": 0}

    def losing(cache):  # the check after the frames are made finds one gone
        calls["n"] += 1
        have = real(cache)
        return have - {0} if calls["n"] >= 2 else have

    monkeypatch.setattr(V, "cached_frames", losing)
    out = tmp_path / "styled.mp4"
    rc = main(["video", str(media["mp4"]), "--style", STYLE, "-o", str(out), "--end", "3", *FAST])
    error_line(capsys, rc, "1 frames this run made are gone", "nothing was written")
    assert not out.exists()


def test_plan_gives_consecutive_shares(media):
    opts = artgen.AdaINOptions(size=W)
    shares = [
        plan_video(
            media["frames"], media["dir"] / "x", opts, VideoOptions(shard=f"{i}/3", start=1, end=11)
        )
        for i in (1, 2, 3)
    ]
    assert [(p.first, p.last) for p in shares] == [(1, 4), (4, 7), (7, 11)]
    assert shares[0].info.files[2].name == "img2.png" and shares[0].info.fps == Fraction(24)


def error_line(capsys, rc: int, *names: str) -> str:
    """As conftest.one_line_error, for errors found once the network is loaded (its one line
    of description comes first)."""
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("model:", "backbone:"))]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("artgen: error: ") and all(n in lines[0] for n in names), err
    return lines[0]


def test_a_cache_made_with_other_settings_is_not_reused(media, tmp_path, capsys):
    folder = tmp_path / "styled"
    argv = ["video", str(media["frames"]), "--style", STYLE, "-o", str(folder), "--end", "3", *FAST]
    assert main(argv) == 0
    capsys.readouterr()
    rc = main([*argv, "--blend", "0.2"])
    error_line(capsys, rc, str(folder), "another run", "video")
    assert main([*argv, "--blend", "0.2", "--overwrite"]) == 0
    assert "3 frames stylised, 0 from the cache" in capsys.readouterr().out
    # A folder of someone's own frames is never written into.
    mine = tmp_path / "mine"
    mine.mkdir()
    Image.new("RGB", (8, 8)).save(mine / "frame_000000.png")
    rc = main([*argv[:5], str(mine), *argv[6:]])
    error_line(capsys, rc, str(mine), "no artgen video run recorded")


def test_bad_inputs_are_one_line_errors(media, tmp_path, capsys):
    d = tmp_path
    (d / "notes.mp4").write_text("not a video at all")
    (d / "empty").mkdir()
    Image.new("RGB", (64, 48)).save(d / "still.png")
    (d / "zero.mp4").write_bytes(b"")
    out = str(d / "o.mp4")
    mp4 = str(media["mp4"])
    cases = [
        ([str(d / "missing.mp4"), "-o", out], "missing.mp4"),
        ([str(d / "notes.mp4"), "-o", out], "notes.mp4"),
        ([str(d / "zero.mp4"), "-o", out], "zero.mp4"),
        ([str(d / "still.png"), "-o", out], "still.png"),
        ([str(d / "empty"), "-o", out], "empty"),
        ([mp4, "-o", out, "--start", "12"], "--start 12"),
        ([mp4, "-o", out, "--start", "5", "--end", "3"], "--end"),
        ([mp4, "-o", out, "--end", "99"], "--end 99"),
        ([mp4, "-o", out, "--fps", "30"], "--fps"),
        ([mp4, "-o", out, "--blend", "1.5"], "--blend"),
        ([mp4, "-o", str(d / "o.png")], "o.png"),
        ([mp4, "-o", mp4, "--overwrite"], "clip.mp4"),
        ([str(media["frames"]), "-o", str(media["frames"])], "frames"),
    ]
    for args, name in cases:
        rc = main(["video", *args, "--style", STYLE, *FAST])
        one_line_error(capsys, rc, name)
    assert not os.path.exists(out)


def _lying_avi(path: Path, sizes) -> Path:
    """An MJPEG AVI whose header says 64x48 and whose frames have the given sizes."""
    import io

    out = av.open(str(path), "w")
    st = out.add_stream("mjpeg", rate=12)
    st.width, st.height, st.pix_fmt = 64, 48, "yuvj420p"
    for k, (w, h) in enumerate(sizes):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (40 * k, 90, 20)).save(buf, "JPEG")
        pkt = av.Packet(buf.getvalue())
        pkt.stream, pkt.pts, pkt.dts = st, k, k
        out.mux(pkt)
    out.close()
    return path


def test_frames_larger_than_the_header_are_refused_before_decoding(tmp_path, capsys):
    import resource

    from artgen.video.pipeline import probe_video

    liar = _lying_avi(tmp_path / "liar.avi", [(64, 48), (64, 48), (6000, 6000)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc = main(["video", str(liar), "--style", STYLE, "-o", str(tmp_path / "o.mp4"), *FAST])
    one_line_error(capsys, rc, "liar.avi", "frame 2", "larger than the 64x48")
    # A decoded 6000x6000 frame alone would take 54 MB (yuv420) to 108 MB (RGB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 40_000  # KiB
    smaller = _lying_avi(tmp_path / "smaller.avi", [(64, 48), (32, 32)])
    with pytest.raises(artgen.ArtgenError, match="frame 1 is 32x32, its header says 64x48"):
        probe_video(smaller)


def test_probe_stops_decoding_at_the_frame_limit(media):
    from artgen.video.pipeline import probe_video

    seen = []
    real = av.container.InputContainer.decode

    def counting(self, *a, **k):
        for f in real(self, *a, **k):
            seen.append(f)
            yield f

    import unittest.mock

    with unittest.mock.patch.object(av.container.InputContainer, "decode", counting):
        with pytest.raises(artgen.ArtgenError, match="more than 3 frames"):
            probe_video(media["mp4"], max_frames=3)
    assert len(seen) == 4  # not the clip's 12


def test_text_containers_that_open_other_files_are_refused(media, tmp_path, capsys):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # FFmpeg's concat demuxer would open it and wait forever
    lists = {
        "list.mp4": f"ffconcat version 1.0\nfile '{media['mp4']}'\nfile 'pipe.mp4'\n",
        "play.mp4": "#EXTM3U\n#EXTINF:1,\npipe.mp4\n",
        "pattern.mp4": "img%03d.png",
    }
    for name, text in lists.items():
        (tmp_path / name).write_text(text)
        rc = main(["video", str(tmp_path / name), "--style", STYLE, "-o", str(tmp_path / "o.mp4")])
        one_line_error(capsys, rc, name, "not a video artgen reads")


@pytest.mark.parametrize(
    "fps,why",
    [
        ("1e99999999", "not a frame rate"),
        ("1e400", "not a frame rate"),
        ("0", "outside 0.1 to 1000"),
        ("5000/1", "outside 0.1 to 1000"),
        ("24/0", "divides by zero"),
        (24, "not a frame rate"),
    ],
)
def test_frame_rates_read_from_a_frame_are_bounded(media, tmp_path, capsys, fps, why):
    folder = tmp_path / "styled"
    argv = ["video", str(media["frames"]), "--style", STYLE, "-o", str(folder), "--end", "1"]
    assert main([*argv, *FAST]) == 0
    frame = folder / "frame_000000.png"
    params = read_params(frame)
    params["video"]["fps"] = fps
    from artgen.core.images import save_png

    save_png(Image.open(frame), frame, params=params, overwrite=True)
    capsys.readouterr()
    rc = main(["info", str(frame)])
    one_line_error(capsys, rc, why)


def test_entries_named_like_frames_that_are_not_files_are_counted(media, fast_model, tmp_path):
    import shutil

    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        shutil.copy(media["frames"] / f"img{k}.png", frames / f"img{k}.png")
    os.mkfifo(frames / "img3.png")  # opening it would hang
    (frames / "img4.png").mkdir()
    (frames / "img5.png").symlink_to(tmp_path / "gone.png")
    r = stylize_video(
        frames, STYLE, tmp_path / "out", artgen.AdaINOptions(size=W), model=fast_model
    )
    assert r.frames == 3 and r.output == tmp_path / "out"
    assert r.note == (
        f"skipped 3 entries of {frames} named like frames that are not regular files "
        "(folders, FIFOs, devices or broken links)"
    )


def test_the_api_runs_a_plan_and_reports_progress(media, fast_model, tmp_path):
    opts = artgen.AdaINOptions(size=64)
    plan = plan_video(media["mp4"], tmp_path / "o.mkv", opts, VideoOptions(end=4))
    assert plan.size == (64, 42) and (plan.first, plan.last) == (0, 4)
    seen = []
    r = run_video(plan, {STYLE: 1.0}, opts, model=fast_model, on_frame=seen.append)
    assert r.output == tmp_path / "o.mkv" and r.frames == 4 and r.stylised == 4 and r.missing == 0
    assert [p.status for p in seen] == ["stylised"] * 4 + ["encoded"] * 4
    frames, rate, codec, _ = decode(r.output)
    assert len(frames) == 4 and frames[0].shape == (42, 64, 3) and codec == "aac"
    assert artgen.stylize_video is stylize_video


def test_a_small_clip_keeps_its_size_unless_a_size_is_asked(media, tmp_path):
    """The method's default size (512) is a ceiling for video, never a reason to upscale a
    96x64 clip; an explicit size (upscale=True, i.e. --size given) is honoured."""
    opts = artgen.AdaINOptions()
    assert opts.size == 512
    assert plan_video(media["mp4"], tmp_path / "a.mkv", opts).size == (W, H)
    assert plan_video(media["mp4"], tmp_path / "b.mkv", opts, upscale=True).size == (512, 340)
    small = artgen.AdaINOptions(size=48)  # smaller than the clip: downscaled either way
    assert plan_video(media["mp4"], tmp_path / "c.mkv", small).size == (48, 32)


# ----------------------------------------------------------------- masks (issue 12, sec. 3)


def test_masks_apply_to_every_frame_and_are_recorded(media, clip, tmp_path, capsys):
    """A style where the mask is white (the left half), the photo elsewhere, on each frame;
    the frames record the mask, `info` remakes the command with it, and a cache made with
    another mask is not reused."""
    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    out = tmp_path / "masked"
    args = ["video", str(media["frames"]), "--style", STYLE, "--mask", str(tmp_path / "left.png")]
    rc = main([*args, "-o", f"{out}/", "--consistency", "none", "--keep-frames", *FAST])
    assert rc == 0, capsys.readouterr().err
    for k, frame in enumerate(png_frames(out)):
        src = np.asarray(Image.open(media["frames"] / f"img{k}.png"), np.float32) / 255
        d = np.abs(frame - src)
        # Measured: 0 on the right (the photo's own pixels), about 0.3 on the left.
        assert d[:, int(0.6 * W) :].mean() < 1 / 255, k
        assert d[:, : int(0.4 * W)].mean() > 0.1, k
    params = read_params(out / "frame_000003.png")
    assert params["styles"][0]["mask"]["file"] == "left.png"
    capsys.readouterr()
    assert main(["info", str(out / "frame_000003.png")]) == 0
    info = capsys.readouterr().out
    assert "mask left.png" in info
    assert "--mask left.png" in info.strip().splitlines()[-1]
    # Temporal consistency with a mask: the photo's side stays close to the photo.
    steady = tmp_path / "steady"
    assert main([*args, "-o", f"{steady}/", *FAST]) == 0
    last = png_frames(steady)[-1]
    src = np.asarray(Image.open(media["frames"] / f"img{N - 1}.png"), np.float32) / 255
    assert np.abs(last - src)[:, int(0.6 * W) :].mean() < 0.03
    # Another mask: the cache of the first run is refused, naming what differs.
    capsys.readouterr()
    Image.fromarray(255 - left).save(tmp_path / "right.png")
    rc = main(
        [
            "video",
            str(media["frames"]),
            "--style",
            STYLE,
            "--mask",
            str(tmp_path / "right.png"),
            "-o",
            f"{out}/",
            "--consistency",
            "none",
            *FAST,
        ]
    )
    line = error_line(capsys, rc, str(out), "styles differ")
    assert "--overwrite" in line


def test_a_mask_of_the_clips_shape_fits_small_even_sided_frames(media, tmp_path, capsys):
    """96x64 frames at --size 32 become 32x20 (even sides), 6.7% off the mask's aspect."""
    left = np.zeros((H, W), np.uint8)
    left[:, : W // 2] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    out = tmp_path / "small.mp4"
    argv = ["video", str(media["mp4"]), "--style", STYLE, "--mask", str(tmp_path / "left.png")]
    rc = main([*argv, "-o", str(out), "--end", "2", "--method", "adain", "--size", "32", "-q"])
    assert rc == 0, capsys.readouterr().err
    frames = decode(out)[0]
    assert len(frames) == 2 and frames[0].shape[:2] == (20, 32)
    assert not (tmp_path / "small.mp4.frames").exists()


def test_a_mask_of_another_shape_is_refused_before_any_work(media, tmp_path, capsys):
    Image.new("L", (64, 64), 255).save(tmp_path / "square.png")
    out = tmp_path / "out"
    rc = main(
        ["video", str(media["frames"]), "--style", STYLE, "--mask", str(tmp_path / "square.png")]
        + ["-o", f"{out}/", *FAST]
    )
    one_line_error(capsys, rc, "square.png", "the mask is 64x64 but the picture is 96x64")
    assert not out.exists()
    rc = main(
        [
            "video",
            str(media["frames"]),
            "--style",
            STYLE,
            "--content-mask",
            str(tmp_path / "square.png"),
        ]
        + ["-o", f"{out}/", *FAST]
    )
    one_line_error(capsys, rc, "square.png", "the mask is 64x64")
