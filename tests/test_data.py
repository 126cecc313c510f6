"""The shared data layer: folders, labels CSVs, balancing weights, the image set and sampler."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artgen.core.data import (
    ImageSet,
    Labels,
    balance_weights,
    check_attribute,
    list_images,
    proportions,
    read_labels,
)
from artgen.core.errors import ArtgenError

from .conftest import photo, stripes

# ---------------------------------------------------------------------------------------------
# list_images


def test_list_images_sorts_and_filters(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "d.TIFF"]:
        photo().save(tmp_path / name)
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub.png").mkdir()  # a folder with an image-like name
    (tmp_path / "inner").mkdir()
    photo().save(tmp_path / "inner" / "deep.png")  # not recursive
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp", "d.TIFF"]
    assert all(p.parent == tmp_path for p in list_images(str(tmp_path)))


def test_list_images_errors(tmp_path):
    with pytest.raises(ArtgenError, match=r"photos/: no such folder"):
        list_images(tmp_path / "photos")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "readme.txt").write_text("x")
    with pytest.raises(ArtgenError) as e:
        list_images(tmp_path / "photos")
    msg = str(e.value)
    assert "photos/: no images (looked for .png, .jpg" in msg and "\n" not in msg
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ArtgenError, match="file.png: not a folder"):
        list_images(tmp_path / "file.png")


# ---------------------------------------------------------------------------------------------
# read_labels


@pytest.fixture
def folder(tmp_path) -> list[Path]:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(4):
        photo(seed=i).save(d / f"img{i}.png")
    return list_images(d)


def _csv(tmp_path, text: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_read_labels_happy_path(tmp_path, folder):
    # Rows out of order, a BOM, spaces, a path in the file column, a blank line.
    text = (
        "\ufeffFilename, gender ,age\n"
        "img2.png,f,old\n\n"
        "photos/img0.png, m ,young\n"
        "img3.png,f,young\n"
        "img1.png,m,old\n"
    )
    labels = read_labels(_csv(tmp_path, text), folder)
    assert isinstance(labels, Labels)
    assert labels.attributes == ("gender", "age")
    assert labels.files == tuple(folder)
    assert labels.rows[0] == {"gender": "m", "age": "young"}
    assert labels.values("gender") == ["m", "m", "f", "f"]
    assert labels.values("age") == ["young", "old", "old", "young"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        labels.attributes = ()  # frozen


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name,gender\nimg0.png,f\n", r"labels.csv: no file column \(header is: name, gender\)"),
        ("file\nimg0.png\n", "no attribute columns"),
        ("", "labels.csv: empty"),
        ("file,g,g\nimg0.png,a,b\n", "'g' appears more than once"),
        (
            "file,g\nimg0.png,a\nimg1.png,b\nimg0.png,a\nimg2.png,a\nimg3.png,b\n",
            r"img0.png is listed twice \(rows 2 and 4\)",
        ),
        (
            "file,g\nimg0.png,a\nimg1.png,b\nimg2.png,a\nimg3.png,b\n"
            "x1.png,a\nx2.png,a\nx3.png,a\nx4.png,a\nx5.png,a\n",
            r"5 listed file\(s\) are not among the images: x1.png, x2.png, x3.png, ... \(2 more\)",
        ),
        ("file,g\nimg0.png,a\nimg3.png,b\n", r"2 image\(s\) have no row: img1.png, img2.png$"),
        (
            "file,g,h\nimg0.png,a,1\nimg1.png,,1\nimg2.png,a,1\nimg3.png,b,1\n",
            r"row 3 \(img1.png\) has no value for 'g'",
        ),
        (
            "file,g,h\nimg0.png,a\nimg1.png,b,1\nimg2.png,a,1\nimg3.png,b,1\n",
            r"row 2 \(img0.png\) has no value for 'h'",
        ),
        ("file,g\nimg0.png,a,extra\n", "row 2 has 3 fields but the header has 2"),
    ],
)
def test_read_labels_errors(tmp_path, folder, text, expected):
    with pytest.raises(ArtgenError, match=expected) as e:
        read_labels(_csv(tmp_path, text), folder)
    assert "labels.csv" in str(e.value) and "\n" not in str(e.value)


def test_read_labels_missing_or_binary_file(tmp_path, folder):
    with pytest.raises(ArtgenError, match="nope.csv: no such file"):
        read_labels(tmp_path / "nope.csv", folder)
    (tmp_path / "bin.csv").write_bytes(b"file,g\n\xff\xfe\x00garbage")
    with pytest.raises(ArtgenError, match="bin.csv: not UTF-8"):
        read_labels(tmp_path / "bin.csv", folder)


def test_check_attribute(tmp_path, folder):
    text = "image,gender,style\n" + "".join(f"img{i}.png,{'mf'[i % 2]},oil\n" for i in range(4))
    labels = read_labels(_csv(tmp_path, text), folder)
    check_attribute(labels, "gender")
    with pytest.raises(ArtgenError, match=r"no attribute 'age' \(it has: gender, style\)"):
        check_attribute(labels, "age")
    with pytest.raises(ArtgenError, match=r"'style' has only one value \('oil'\)"):
        check_attribute(labels, "style")


# ---------------------------------------------------------------------------------------------
# weights, proportions, sampler


def test_balance_weights_and_proportions():
    values = ["a"] * 9 + ["b"]
    w = balance_weights(values)
    assert w[:9] == pytest.approx([1 / 18] * 9) and w[9] == pytest.approx(0.5)
    assert sum(w) == pytest.approx(1.0)
    assert proportions(values) == {"a": 0.9, "b": pytest.approx(0.1)}
    assert list(proportions(["z", "a", "m", "a"])) == ["a", "m", "z"]
    assert proportions(["z", "a", "m", "a"])["a"] == 0.5
    three = balance_weights(["x", "y", "y", "z", "z", "z"])
    assert three == pytest.approx([1 / 3, 1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9])


# ---------------------------------------------------------------------------------------------
# ImageSet


def test_imageset_shapes_and_range(tmp_path):
    paths = [tmp_path / "wide.png", tmp_path / "square.png", tmp_path / "small.png"]
    photo(96, 64).save(paths[0])
    stripes(96).save(paths[1])
    stripes(20).save(paths[2])  # upscaled
    ds = ImageSet(paths, 32)
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert item["index"] == i
        x = item["pixels"]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
        assert x.min() < -0.5 and x.max() > 0.5  # uses the range, not squashed near 0
    # Shorter side is resized to the resolution once: the wide image keeps its aspect.
    assert tuple(ds._images[0].shape) == (3, 32, 48)
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    assert next(iter(loader))["pixels"].shape == (3, 3, 32, 32)


def test_imageset_center_crop_and_flip(tmp_path):
    p = tmp_path / "p.png"
    photo(96, 64).save(p)
    fixed = ImageSet([p], 64, center_crop=True, random_flip=False)
    a = fixed[0]["pixels"]
    assert torch.equal(a, fixed[0]["pixels"])  # deterministic
    # The centre crop of the 96x64 image at its own size is columns 16..80.
    ref = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32))
    ref = ref.permute(2, 0, 1)[:, :, 16:80] / 127.5 - 1
    assert torch.allclose(a, ref, atol=1e-6)
    flipping = ImageSet([p], 64, center_crop=True, random_flip=True)
    seen = {bool(torch.equal(flipping[0]["pixels"], a)) for _ in range(40)}
    assert seen == {True, False}
    for _ in range(10):
        b = flipping[0]["pixels"]
        assert torch.equal(b, a) or torch.equal(b, a.flip(2))  # only the orientation changes
    assert not torch.equal(a, a.flip(2))


def test_imageset_random_crop_uses_the_generator(tmp_path):
    p = tmp_path / "p.png"
    photo(96, 64).save(p)
    ds = ImageSet([p], 32, generator=torch.Generator().manual_seed(5))
    first = [ds[0]["pixels"] for _ in range(6)]
    assert len({x.sum().item() for x in first}) > 1  # crops differ
    ds.generator.manual_seed(5)
    assert all(torch.equal(x, ds[0]["pixels"]) for x in first)
    torch.manual_seed(0)
    g = ImageSet([p], 32)  # global RNG
    one = g[0]["pixels"]
    torch.manual_seed(0)
    assert torch.equal(one, g[0]["pixels"])


def test_imageset_corrupt_file_is_named(tmp_path):
    good = tmp_path / "good.png"
    photo().save(good)
    bad = tmp_path / "x.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ArtgenError, match=r"x\.png") as e:
        ImageSet([good, bad], 32)
    assert "\n" not in str(e.value)
    tiny = tmp_path / "tiny.png"
    photo(12, 12).save(tiny)
    with pytest.raises(ArtgenError, match=r"tiny\.png: too small"):
        ImageSet([tiny], 32)


def test_imageset_composites_transparency_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200  # hidden red under the transparent part
    rgba[:, :16, 3] = 0  # left half transparent
    rgba[:, 16:, :3] = (0, 0, 255)
    rgba[:, 16:24, 3] = 255  # opaque blue
    rgba[:, 24:, 3] = 128  # half-transparent blue
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    x = ImageSet([p], 32, center_crop=True, random_flip=False)[0]["pixels"]
    assert torch.allclose(x[:, :, :16], torch.ones(3, 32, 16))  # white, not red or grey
    assert torch.allclose(x[:, :, 16:24], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1))
    # Half-transparent blue over white: R and G about 127/255, B full.
    half = (x[:, :, 24:] + 1) * 127.5
    assert torch.allclose(half, torch.tensor([127.0, 127.0, 255.0]).view(3, 1, 1), atol=2)


# -- captions (issue 14 item 1) -----------------------------------------------------------


def _captioned(tmp_path: Path, n: int = 3) -> list[Path]:
    from .conftest import photo

    paths = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        photo(8, 8, seed=i).save(p)
        paths.append(p)
    return paths


def test_captions_from_txt_and_csv_with_the_rest_uncaptioned(tmp_path):
    from artgen.core.data import read_captions

    files = _captioned(tmp_path)
    (tmp_path / "im0.txt").write_text("  a  red\nfox \n")  # whitespace collapsed
    (tmp_path / "captions.csv").write_text("name,words\nim1.png,a blue fox\n")
    with pytest.raises(ArtgenError, match="needs a header row"):
        read_captions(files)
    # diffusers' metadata convention, with a spreadsheet's byte-order mark
    (tmp_path / "captions.csv").write_text("\ufefffile_name,text\nim1.png,a blue fox\n")
    assert read_captions(files) == ["a red fox", "a blue fox", None]
    (tmp_path / "captions.csv").write_text("File,Caption\nim1.png,a blue fox\n")
    assert read_captions(files) == ["a red fox", "a blue fox", None]
    other = tmp_path / "elsewhere.csv"
    other.write_text("image,prompt\nim2.png,a green fox\n")
    assert read_captions(files, other) == ["a red fox", None, "a green fox"]


@pytest.mark.parametrize(
    "txt, csv_text, message",
    [
        ("a fox", "file,caption\nim0.png,a dog\n", "im0.txt: differs from row 2"),
        ("", "", "im0.txt: empty caption"),
        (None, "file,caption\nnope.png,a dog\n", "row 2 (nope.png) names no image"),
        (None, "file,caption\nim1.png,a\nim1.png,b\n", "row 3: im1.png is listed twice"),
        (None, "file,caption\nim1.png,\n", "captions.csv: row 2: empty caption"),
        ("x" * 2001, "", "caption of 2001 characters"),
    ],
)
def test_bad_captions_are_one_line_naming_the_file(tmp_path, txt, csv_text, message):
    from artgen.core.data import read_captions

    files = _captioned(tmp_path)
    if txt is not None:
        (tmp_path / "im0.txt").write_text(txt)
    if csv_text:
        (tmp_path / "captions.csv").write_text(csv_text)
    with pytest.raises(ArtgenError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_captions(files)
    assert "\n" not in str(e.value)


def test_same_caption_in_both_places_is_fine_and_a_missing_csv_is_named(tmp_path):
    from artgen.core.data import read_captions

    files = _captioned(tmp_path)
    (tmp_path / "im0.txt").write_text("a fox")
    (tmp_path / "captions.csv").write_text("file,caption\nim0.png,a fox\n")
    assert read_captions(files) == ["a fox", None, None]
    with pytest.raises(ArtgenError, match="nope.csv: no such file"):
        read_captions(files, tmp_path / "nope.csv")
