import numpy as np
import pytest
import torch
from PIL import Image

import artgen
from artgen.core.errors import ArtgenError, Cancelled
from artgen.core.images import load_image, to_tensor
from artgen.core.losses import gram
from artgen.style import gatys
from artgen.style.gatys import StylizeOptions, scale_sizes

FAST = dict(size=64, min_size=64, iterations=40)


def style_distance(ext, image, style) -> float:
    """Mean relative Gram distance between two images over the style layers."""
    layers = ext.spec.style_layers
    with torch.no_grad():
        a = ext(to_tensor(image), layers)
        b = ext(to_tensor(style), layers)
    return float(
        np.mean([((gram(a[n]) - gram(b[n])).norm() / gram(b[n]).norm()).item() for n in layers])
    )


def content_distance(ext, image, content) -> float:
    n = ext.spec.content_layers[0]
    with torch.no_grad():
        a = ext(to_tensor(image), [n])[n]
        b = ext(to_tensor(content.resize(image.size)), [n])[n]
    return float((a - b).norm() / b.norm())


def structure(image, content) -> float:
    """Correlation of coarse (8x6) luminance: is the content's layout still there?"""
    a = np.asarray(image.convert("L").resize((8, 6), Image.Resampling.BOX), dtype=float).ravel()
    b = np.asarray(content.convert("L").resize((8, 6), Image.Resampling.BOX), dtype=float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_stylisation_moves_style_statistics_and_keeps_content(lite0, images):
    content = load_image(images["content"]).rgb
    style = load_image(images["style"]).rgb.resize((64, 64))
    out = artgen.stylize(
        images["content"], images["style"], extractor=lite0, size=64, min_size=32, iterations=60
    )
    assert out.size == (64, 43)
    before = style_distance(lite0, content.resize(out.size), style)
    after = style_distance(lite0, out, style)
    assert after < 0.6 * before, (before, after)
    # Content kept: its layout survives (the style image scores about 0.4 here, noise 0.1),
    # and the content-layer distance stays below that of the style image itself.
    assert structure(out, content) > 0.9
    assert structure(style, content) < 0.6
    assert content_distance(lite0, out, content) < content_distance(
        lite0, style.resize(out.size), content
    )
    assert out.info["backbone"] == "efficientnet-lite0"


def test_strength_changes_the_balance(lite0, images):
    style = load_image(images["style"]).rgb.resize((64, 64))
    weak = artgen.stylize(images["content"], images["style"], extractor=lite0, strength=0.2, **FAST)
    strong = artgen.stylize(
        images["content"], images["style"], extractor=lite0, strength=5.0, **FAST
    )
    assert style_distance(lite0, strong, style) < style_distance(lite0, weak, style)


def test_same_seed_same_picture(lite0, images):
    a = artgen.stylize(
        images["content"], images["style"], extractor=lite0, init="noise", seed=3, **FAST
    )
    b = artgen.stylize(
        images["content"], images["style"], extractor=lite0, init="noise", seed=3, **FAST
    )
    c = artgen.stylize(
        images["content"], images["style"], extractor=lite0, init="noise", seed=4, **FAST
    )
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_blend_of_two_styles_lies_between(lite0, images):
    s1 = load_image(images["style"]).rgb.resize((64, 64))
    s2 = load_image(images["style2"]).rgb.resize((64, 64))
    only1 = artgen.stylize(images["content"], images["style"], extractor=lite0, strength=4, **FAST)
    mixed = artgen.stylize(
        images["content"],
        [(images["style"], 0.5), (images["style2"], 0.5)],
        extractor=lite0,
        strength=4,
        **FAST,
    )
    # The blend is further from style 1 and closer to style 2 than the style-1-only result.
    assert style_distance(lite0, mixed, s2) < style_distance(lite0, only1, s2)
    assert style_distance(lite0, mixed, s1) > style_distance(lite0, only1, s1)


def _chroma(im: Image.Image) -> np.ndarray:
    from artgen.core.color import rgb_to_yiq

    return rgb_to_yiq(to_tensor(im))[0, 1:].numpy()


def test_preserve_color(lite0, images):
    content = load_image(images["content"]).rgb
    plain = artgen.stylize(images["content"], images["style"], extractor=lite0, **FAST)
    lum = artgen.stylize(
        images["content"], images["style"], extractor=lite0, preserve_color="luminance", **FAST
    )
    hist = artgen.stylize(
        images["content"], images["style"], extractor=lite0, preserve_color="histogram", **FAST
    )
    ref = _chroma(content.resize(plain.size, Image.Resampling.LANCZOS))
    err = {
        k: np.abs(_chroma(v) - ref).mean()
        for k, v in {"plain": plain, "lum": lum, "hist": hist}.items()
    }
    assert err["lum"] < 0.02 < err["plain"], err
    # Histogram matching keeps the content's palette: mean colour close to the content's.
    mean = lambda im: np.asarray(im, dtype=float).reshape(-1, 3).mean(0) / 255  # noqa: E731
    ref_mean = mean(content.resize(plain.size))
    d_plain, d_hist = np.abs(mean(plain) - ref_mean).sum(), np.abs(mean(hist) - ref_mean).sum()
    assert d_hist < 0.5 * d_plain, (d_hist, d_plain)


def test_alpha_is_kept(lite0, tmp_path, images):
    rgba = load_image(images["content"]).rgb.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, :20, 3] = 0
    Image.fromarray(a).save(tmp_path / "alpha.png")
    out = artgen.stylize(tmp_path / "alpha.png", images["style"], extractor=lite0, **FAST)
    assert out.mode == "RGBA"
    alpha = np.asarray(out)[..., 3]
    assert alpha[:, :10].max() < 30 and alpha[:, 30:].min() > 225


def test_lbfgs_lowers_the_loss(lite0, images):
    losses = []
    artgen.stylize(
        images["content"],
        images["style"],
        extractor=lite0,
        optimizer="lbfgs",
        callback=lambda p: losses.append(p.loss),
        size=64,
        min_size=64,
        iterations=30,
    )
    assert losses[-1] < 0.9 * losses[0]  # measured: about 0.8


def test_progress_callback_and_cancel(lite0, images):
    seen = []

    def cb(p):
        seen.append(p)
        if p.step == 5:
            raise Cancelled

    with pytest.raises(Cancelled):
        artgen.stylize(images["content"], images["style"], extractor=lite0, callback=cb, **FAST)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert seen[0].total_steps == 40 and seen[0].num_scales == 1
    assert seen[-1].image().size == (64, 43)


def test_multi_scale_schedule():
    assert scale_sizes(StylizeOptions(size=512)) == [128, 256, 512]
    assert scale_sizes(StylizeOptions(size=384)) == [192, 384]
    assert scale_sizes(StylizeOptions(size=512, scale_factor=2**0.5)) == [128, 181, 256, 362, 512]
    assert scale_sizes(StylizeOptions(size=100)) == [100]


def test_multi_scale_progress_visits_each_scale(lite0, images):
    sizes = []
    artgen.stylize(
        images["content"],
        images["style"],
        extractor=lite0,
        size=96,
        min_size=48,
        iterations=3,
        callback=lambda p: sizes.append((p.scale, p.width)),
    )
    assert sizes == [(1, 48)] * 3 + [(2, 96)] * 3


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(size=5), "size=5"),
        (dict(preserve_color="sepia"), "preserve_color='sepia'"),
        (dict(strength=-1), "strength=-1"),
        (dict(style_scale=0), "style_scale=0"),
        (dict(style_layer_weights=(0, 0)), "style_layer_weights"),
    ],
)
def test_bad_options_name_the_value(kw, match):
    with pytest.raises(ArtgenError, match=match):
        StylizeOptions(**kw)


def test_wrong_number_of_layer_weights(lite0, images):
    with pytest.raises(ArtgenError, match="has 2 values; efficientnet-lite0 has 5 style layers"):
        artgen.stylize(
            images["content"], images["style"], extractor=lite0, style_layer_weights=(1, 2), **FAST
        )


def test_too_large_for_memory_says_what_fits(lite0, images, monkeypatch):
    monkeypatch.setattr(gatys, "available_memory", lambda device: 200 * 2**20)  # 200 MiB
    with pytest.raises(ArtgenError) as e:
        artgen.stylize(images["content"], images["style"], extractor=lite0, size=4096, iterations=1)
    msg = str(e.value)
    assert "4096x2731 needs about" in msg and "largest size that fits is about" in msg
    largest = int(msg.split("--size ")[1].rstrip(")"))
    assert 64 <= largest < 4096
    # And that size does fit by the same estimate.
    used = lite0.truncate([*lite0.spec.content_layers, *lite0.spec.style_layers])
    gatys.check_fits(used, largest, round(largest * 2731 / 4096), torch.device("cpu"), 4)


@pytest.mark.slow
def test_real_size_stylisation_of_the_bundled_example(lite0):
    """256 px, default settings, bundled cat and style (about 15 s on 2 cores)."""
    from .conftest import REPO

    content = load_image(REPO / "styles/examples/chelsea.jpg").rgb
    style = load_image(REPO / "styles/swirls.jpg").rgb
    out = artgen.stylize(content, style, extractor=lite0, size=256)
    s = style.resize((256, 256))
    assert style_distance(lite0, out, s) < 0.5 * style_distance(lite0, content.resize(out.size), s)
    assert structure(out, content) > 0.8
