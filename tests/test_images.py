import io
import os

import numpy as np
import pytest
from PIL import Image

from artgen.errors import ArtgenError
from artgen.images import load_image, read_params, save_png, to_pil, to_tensor

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
