import io
import os

import numpy as np
import pytest
from PIL import Image

from artgen.core.errors import ArtgenError
from artgen.core.images import load_image, read_params, save_png, to_pil, to_tensor

from .conftest import photo


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert load_image(p).size == (20, 40)


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "LA", "RGBA", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    base = photo(48, 32)
    if mode == "I;16":
        a = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        im = Image.fromarray(a)
        assert im.mode == "I;16"
    elif mode == "P":
        im = base.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = base.convert(mode)
    p = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(p)
    out = load_image(p)
    assert out.rgb.mode == "RGB" and out.size == (48, 32)
    # Not saturated: 16-bit grey must keep its range instead of turning white.
    mean = np.asarray(out.rgb, dtype=np.float32).mean()
    assert 40 < mean < 220, mean


def test_alpha_is_kept_apart_and_hidden_colour_dropped(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., 1] = 255  # hidden green under transparent pixels
    a[:16, :, 3] = 255
    a[:16, :, 0] = 255
    p = tmp_path / "a.png"
    Image.fromarray(a, "RGBA").save(p)
    out = load_image(p)
    assert out.alpha is not None and out.alpha.getextrema() == (0, 255)
    rgb = np.asarray(out.rgb)
    assert tuple(rgb[24, 5]) == (128, 128, 128)  # transparent area on neutral grey, not green


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("L", (10_000, 6_000)).save(p)
    with pytest.raises(ArtgenError, match=r"huge.png: refused, 10000x6000"):
        load_image(p)


def test_truncated_corrupt_and_non_images(tmp_path):
    buf = io.BytesIO()
    photo(200, 150).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.png").write_text("hello, not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ArtgenError, match=r"trunc.jpg: corrupt or truncated"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(ArtgenError, match=r"text.png: not a readable image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ArtgenError, match=r"empty.jpg: empty file"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ArtgenError, match=r"missing.png: no such file"):
        load_image(tmp_path / "missing.png")


def test_tiny_images_rejected(tmp_path):
    Image.new("RGB", (200, 3)).save(tmp_path / "thin.png")
    with pytest.raises(ArtgenError, match=r"thin.png: too small \(200x3\)"):
        load_image(tmp_path / "thin.png")


def test_messages_are_one_line(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(100))
    with pytest.raises(ArtgenError) as e:
        load_image(tmp_path / "bad.jpg")
    assert "\n" not in str(e.value) and "bad.jpg" in str(e.value)


def test_save_is_atomic_never_clobbers_and_keeps_params(tmp_path):
    p = tmp_path / "out.png"
    save_png(photo(), p, params={"a": 1})
    assert read_params(p) == {"a": 1}
    with pytest.raises(ArtgenError, match="already exists"):
        save_png(photo(seed=3), p, params={"a": 2})
    assert read_params(p) == {"a": 1}
    save_png(photo(seed=3), p, params={"a": 2}, overwrite=True)
    assert read_params(p) == {"a": 2}
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary files left


def test_tensor_round_trip():
    im = photo()
    assert np.array_equal(np.asarray(to_pil(to_tensor(im))), np.asarray(im))


def test_saved_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_png(photo(), tmp_path / "p.png")
    finally:
        os.umask(old)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------- outputs: checked before work, claimed


def test_check_output_refuses_unwritable_places_in_one_line(tmp_path):
    from artgen.core.images import check_output, check_output_dir

    (tmp_path / "afile").write_text("x")
    (tmp_path / "x.png").mkdir()
    cases = {
        tmp_path / "afile" / "out.png": "is a file, not a folder",
        tmp_path / "afile" / "deeper" / "out.png": "is a file, not a folder",
        tmp_path / "x.png": "is a folder",
        tmp_path / ("n" * 300 + ".png"): "the limit is 255",
        "/proc/artgen-out.png": "inside /proc",
        "/sys/kernel/artgen.png": "inside /sys",
    }
    for path, why in cases.items():
        for overwrite in (False, True):
            with pytest.raises(ArtgenError) as e:
                check_output(path, overwrite=overwrite)
            assert why in str(e.value) and "\n" not in str(e.value), (path, str(e.value))
    with pytest.raises(ArtgenError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "afile" / "sub")
    assert check_output(tmp_path / "new" / "dir" / "ok.png") == tmp_path / "new/dir/ok.png"
    assert (tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new/dir").iterdir())


def test_save_png_turns_os_errors_into_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "x.png").mkdir()
    for path in (tmp_path / "afile" / "o.png", tmp_path / "x.png", "/proc/artgen.png"):
        with pytest.raises(ArtgenError) as e:
            save_png(photo(32, 32), path, overwrite=True)
        assert "\n" not in str(e.value) and str(path)[:20] in str(e.value)
    assert (tmp_path / "x.png").is_dir()  # the folder was not replaced


def test_read_params_refuses_deep_and_huge_metadata(tmp_path):
    from PIL import PngImagePlugin

    for text, why in (
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('"' + "a" * 300_000 + '"', "characters long"),
        ('"' + "a" * 1_200_000 + '"', "too large to read safely"),
    ):
        info = PngImagePlugin.PngInfo()
        info.add_text("artgen", text, zip=True)
        p = tmp_path / "t.png"
        photo(32, 32).save(p, pnginfo=info)
        with pytest.raises(ArtgenError, match=why):
            read_params(p)


def test_an_output_claim_is_exclusive_and_released(tmp_path):
    from artgen.core.images import OutputClaim

    out = tmp_path / "a.png"
    first = OutputClaim(out)
    assert first.acquire() and first.owner() == os.getpid()
    assert not OutputClaim(out).acquire()  # a second open file description: refused
    with pytest.raises(ArtgenError, match="another artgen run .pid \\d+. is writing it"):
        with OutputClaim(out):
            pass
    first.release()
    assert not (tmp_path / ".a.png.lock").exists()
    (tmp_path / ".a.png.lock").write_text("12345\n")  # left by a killed run: nobody holds it
    with OutputClaim(out) as c:
        assert c.owner() == os.getpid()


def test_a_killed_owner_leaves_a_claim_that_is_free_at_once(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "k.png"
    code = (
        "import sys, time; from artgen.core.images import OutputClaim; "
        f"c = OutputClaim({str(out)!r}); assert c.acquire(); print('held', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from artgen.core.images import OutputClaim

        assert not OutputClaim(out).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        c = OutputClaim(out)
        assert c.acquire()
        c.release()
    finally:
        proc.kill()


def test_stale_temporary_files_are_cleaned_unless_being_written(tmp_path):
    from artgen.core.images import OutputClaim, clean_stale_files

    killed = tmp_path / ".a.png.k3j2h1g0.tmp"  # a run was killed while writing a.png
    killed.write_bytes(b"half a png")
    writing = tmp_path / ".b.png.zz99yy88.tmp"  # b.png is being written right now
    writing.write_bytes(b"in progress")
    stale_lock = tmp_path / ".c.png.lock"
    stale_lock.write_text("999999\n")
    mine = [tmp_path / ".hidden.tmp", tmp_path / "notes.png.x.tmp", tmp_path / ".d.jpg.abc.tmp"]
    for p in mine:  # not artgen's: never touched
        p.write_text("user file")
    with OutputClaim(tmp_path / "b.png"):
        removed = clean_stale_files(tmp_path)
        assert writing.exists()
    assert sorted(p.name for p in removed) == sorted([killed.name, stale_lock.name])
    assert not killed.exists() and not stale_lock.exists()
    assert all(p.exists() for p in mine)


def test_a_planted_lock_link_or_fifo_is_never_written_through(tmp_path):
    from artgen.core.images import OutputClaim, check_output

    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT DATA")
    (tmp_path / ".a.png.lock").symlink_to(victim)
    with pytest.raises(ArtgenError, match="lock file"):
        OutputClaim(tmp_path / "a.png").acquire()
    assert victim.read_text() == "IMPORTANT DATA"
    os.mkfifo(tmp_path / ".b.png.lock")
    with pytest.raises(ArtgenError, match="not a regular file"):
        OutputClaim(tmp_path / "b.png").acquire()
    (tmp_path / "dl.png").symlink_to(tmp_path / "missing.png")  # a dangling link exists
    with pytest.raises(ArtgenError, match="already exists"):
        check_output(tmp_path / "dl.png")
