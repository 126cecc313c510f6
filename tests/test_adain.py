"""The fast style method: AdaIN maths, the networks, the shipped decoder, the published
weights' loader, and the method behind the registry."""

from __future__ import annotations

import pytest
import torch

import artgen
from artgen.core.errors import ArtgenError
from artgen.core.images import to_tensor
from artgen.core.losses import mean_std, stats_distance
from artgen.interop import weights
from artgen.models import adain as M

from .conftest import photo, stripes


def test_adain_gives_the_style_statistics_and_keeps_the_content_pattern():
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 5, 8, 9, generator=g) * 3 + 1
    style = torch.randn(2, 5, 6, 7, generator=g) * 0.5 - 2
    s_mean, s_std = mean_std(style)
    out = M.adain(content, s_mean, s_std)
    o_mean, o_std = mean_std(out)
    # The paper's eq. 8: the output has the style's mean and (eps-adjusted) std per channel.
    assert torch.allclose(o_mean, s_mean, atol=1e-5)
    assert torch.allclose(o_std, s_std, atol=1e-3)
    # ... and is an affine function of the content per channel (correlation 1).
    c = content[0, 0].flatten()
    o = out[0, 0].flatten()
    assert torch.corrcoef(torch.stack([c, o]))[0, 1] > 0.9999
    # By hand for one channel: sigma_y (x - mu_x) / sigma_x + mu_y.
    x = content[1, 2]
    by_hand = s_std[1, 2] * (x - x.mean()) / (x.var(unbiased=False) + 1e-5).sqrt() + s_mean[1, 2]
    assert torch.allclose(out[1, 2], by_hand, atol=1e-5)


def test_mean_std_values():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 1, 2, 2)
    m, s = mean_std(x, eps=0.0)
    assert m.item() == pytest.approx(3.0)
    assert s.item() == pytest.approx((((1 - 3) ** 2 + 1 + 0 + 9) / 4) ** 0.5)


def test_blending_statistics_equals_blending_adain_outputs():
    g = torch.Generator().manual_seed(1)
    content = torch.randn(1, 4, 6, 6, generator=g)
    a = [mean_std(torch.randn(1, 4, 5, 5, generator=g) * 2 + 1)]
    b = [mean_std(torch.randn(1, 4, 5, 5, generator=g) * 0.3 - 1)]
    blended = M.blend_stats([a, b], [0.7, 0.3])
    out = M.adain(content, *blended[0])
    mix = 0.7 * M.adain(content, *a[0]) + 0.3 * M.adain(content, *b[0])
    assert torch.allclose(out, mix, atol=1e-5)


def test_config_round_trip_and_refusals():
    cfg = M.LITE0_CONFIG
    assert M.AdaINConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown AdaIN config"):
        M.AdaINConfig.from_dict({**cfg.to_dict(), "evil": 1})
    with pytest.raises(ValueError, match="out of range"):
        M.AdaINConfig.from_dict({**cfg.to_dict(), "widths": [64, 96, 10**9]})


def test_any_output_size_goes_through_the_lite0_network(lite0):
    model = M.AdaINModel(
        lite0.truncate(["block3_2"]), M.build_decoder(M.LITE0_CONFIG), M.LITE0_CONFIG
    )
    stats = model.style_stats(torch.rand(1, 3, 40, 40))
    for h, w in ((37, 53), (16, 16), (70, 33)):
        assert model(torch.rand(1, 3, h, w), stats).shape == (1, 3, h, w)


# ---------------------------------------------------------------- published VGG pair


def _write_published(folder, seed=0):
    """Random tensors in pytorch-AdaIN's layout under its real file names."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(M.vgg_normalised_sequential().state_dict(), folder / "vgg_normalised.pth")
    torch.save(M.VGGDecoder().published_state_dict(), folder / "decoder.pth")


def test_published_layout_keys_are_the_sequential_indices():
    enc = M.vgg_normalised_sequential().state_dict()
    dec = M.VGGDecoder().published_state_dict()
    # pytorch-AdaIN: the encoder starts with a 1x1 conv (index 0), its second conv is index 2;
    # relu4_1 is index 30 (17 convs up to relu5_4); the decoder's first conv follows a padding layer (index 1).
    assert list(enc)[:4] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert enc["0.weight"].shape == (3, 3, 1, 1) and enc["29.weight"].shape == (512, 256, 3, 3)
    assert len(enc) == 34 and list(dec)[:2] == ["1.weight", "1.bias"] and len(dec) == 18
    assert dec["1.weight"].shape == (256, 512, 3, 3) and dec["28.weight"].shape == (3, 64, 3, 3)


def test_published_weights_load_from_the_cache_as_a_user_runs_them(tmp_path):
    folder = weights.adain_vgg_dir()
    _write_published(folder)
    model = weights.load_adain("vgg19")
    ref = torch.load(folder / "vgg_normalised.pth", weights_only=True)
    # The loaded encoder's first conv and relu4_1's conv are the file's tensors.
    assert torch.equal(model.encoder.stages["pre_relu1_1"][0].weight, ref["0.weight"])
    assert torch.equal(model.encoder.stages["pre_relu4_1"][1].weight, ref["29.weight"])
    dec = torch.load(folder / "decoder.pth", weights_only=True)
    assert torch.equal(model.decoder.net[28].weight, dec["28.weight"])
    # relu4_1 is at 1/8 of the input; the network paints any size.
    feats = model.features(torch.rand(1, 3, 64, 48), ["relu4_1"])
    assert feats["relu4_1"].shape == (1, 512, 8, 6)
    out = artgen.stylize(photo(60, 44), stripes(48), method="adain", model=model, size=60)
    assert out.size == (60, 44)


def test_missing_or_corrupt_published_weights_give_one_line(tmp_path):
    with pytest.raises(
        ArtgenError, match=r"vgg_normalised.pth not found.*artgen weights fetch adain"
    ):
        weights.load_adain("vgg19")
    folder = weights.adain_vgg_dir()
    _write_published(folder)
    (folder / "decoder.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtgenError, match=r"decoder.pth: corrupt") as e:
        weights.load_adain("vgg19")
    assert "\n" not in str(e.value)
    # A file of the wrong layout (the decoder saved as the encoder) is refused by name.
    _write_published(folder)
    torch.save(M.VGGDecoder().published_state_dict(), folder / "vgg_normalised.pth")
    with pytest.raises(ArtgenError, match="not the pytorch-AdaIN VGG/decoder layout"):
        weights.load_adain("vgg19")


def test_a_recorded_hash_is_checked_on_every_load(tmp_path):
    folder = weights.adain_vgg_dir()
    _write_published(folder)
    (folder / "decoder.pth.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ArtgenError, match="decoder.pth: corrupt .sha256"):
        weights.load_adain("vgg19")


# ---------------------------------------------------------------- the shipped decoder


@pytest.fixture(scope="module")
def shipped():
    return weights.load_adain("shipped")


def test_shipped_decoder_is_small_safetensors_and_fp16():
    from safetensors.torch import load_file

    path = weights.ADAIN_SHIPPED / "decoder.safetensors"
    assert path.stat().st_size < 20 * 2**20
    assert all(v.dtype == torch.float16 for v in load_file(str(path)).values())


def test_shipped_decoder_reconstructs_a_photo(shipped):
    """With strength 0 the decoder gets the photo's own features: it must give the photo back."""
    im = photo(160, 112, seed=3)
    out = artgen.stylize(im, stripes(96), method="adain", model=shipped, strength=0.0, size=160)
    styled = artgen.stylize(im, stripes(96), method="adain", model=shipped, size=160)
    x, y = to_tensor(im), to_tensor(out)
    err = (x - y).abs().mean().item()
    psnr = -10 * torch.log10(((x - y) ** 2).mean()).item()
    # Measured 0.098 and 18.4 dB here (17-18 dB on real held-out photos, docs/adain.md): the
    # decoder was never trained to reconstruct, and it paints a little even at strength 0.
    assert err < 0.12 and psnr > 16.5, (err, psnr)
    assert err < 0.6 * (x - to_tensor(styled)).abs().mean().item()


def test_shipped_decoder_moves_style_statistics_toward_the_style(shipped):
    content, style = photo(160, 112, seed=4), stripes(128, seed=5)
    layers = list(shipped.config.style_layers)

    def distance(img) -> float:
        f = shipped.features(to_tensor(img), layers)
        s = shipped.features(to_tensor(style), layers)
        return sum(stats_distance(f[n], *mean_std(s[n])).item() for n in layers)

    d0 = distance(content)
    half = artgen.stylize(content, style, method="adain", model=shipped, strength=0.5, size=160)
    full = artgen.stylize(content, style, method="adain", model=shipped, strength=1.0, size=160)
    more = artgen.stylize(content, style, method="adain", model=shipped, strength=1.5, size=160)
    assert distance(full) < 0.85 * d0, (distance(full), d0)  # measured 0.76 of the photo's
    # 0 the photo, 1 the default, above 1 more: the same meaning as Gatys's strength.
    assert distance(more) < distance(full) < distance(half) < d0


def test_same_input_same_picture_and_batches_match_singles(shipped):
    a, b = photo(96, 64, seed=1), photo(96, 64, seed=2)
    one = artgen.stylize(a, stripes(), method="adain", model=shipped, size=96)
    again = artgen.stylize(a, stripes(), method="adain", model=shipped, size=96)
    assert one.tobytes() == again.tobytes()
    from artgen.style import get_method

    both = get_method("adain").stylize_many(
        [a, b], stripes(), model=shipped, options=artgen.AdaINOptions(size=96)
    )
    diff = (to_tensor(both[0]) - to_tensor(one)).abs().max().item()
    assert diff <= 2 / 255  # the same up to float rounding in a batched convolution


def test_colour_preservation_keeps_the_photos_colours(shipped):
    content, style = photo(128, 96, seed=6), stripes(96, seed=7)
    plain = artgen.stylize(content, style, method="adain", model=shipped, size=128)
    lum = artgen.stylize(
        content, style, method="adain", model=shipped, size=128, preserve_color="luminance"
    )
    hist = artgen.stylize(
        content, style, method="adain", model=shipped, size=128, preserve_color="histogram"
    )
    c_mean = to_tensor(content).mean(dim=(2, 3))

    def colour_error(img) -> float:
        return (to_tensor(img).mean(dim=(2, 3)) - c_mean).abs().sum().item()

    assert colour_error(lum) < 0.5 * colour_error(plain)
    assert colour_error(hist) < 0.5 * colour_error(plain)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ArtgenError, match=r"strength=2.5: must be between 0 and 2"):
        artgen.AdaINOptions(strength=2.5)
    with pytest.raises(ArtgenError, match="unknown option"):
        artgen.AdaINOptions.from_dict({"iterations": 3})
    with pytest.raises(ArtgenError, match="not an AdaIN model"):
        weights.load_adain("/nonexistent/folder")


def test_bf16_path_runs_and_matches_fp32(shipped):
    """The CUDA path's bf16 autocast, exercised on the CPU (no GPU here): close to fp32."""
    content, style = photo(96, 64, seed=8), stripes(64, seed=9)
    fp32 = artgen.stylize(content, style, method="adain", model=shipped, size=96, precision="fp32")
    bf16 = artgen.stylize(content, style, method="adain", model=shipped, size=96, precision="bf16")
    diff = (to_tensor(fp32) - to_tensor(bf16)).abs().mean().item()
    assert 0 < diff < 0.03, diff


def test_gatys_can_start_from_the_fast_picture(shipped, lite0):
    content, style = photo(64, 48, seed=10), stripes(64, seed=11)
    fast = artgen.stylize(content, style, method="adain", model=shipped, size=64)
    one_step = artgen.stylize(
        content, style, extractor=lite0, size=64, min_size=64, iterations=1, init="fast", lr=0.001
    )
    from_photo = artgen.stylize(
        content, style, extractor=lite0, size=64, min_size=64, iterations=1, lr=0.001
    )
    to_fast = (to_tensor(one_step) - to_tensor(fast)).abs().mean().item()
    assert to_fast < 0.01 < (to_tensor(from_photo) - to_tensor(fast)).abs().mean().item()


def test_a_damaged_model_folder_is_one_line_naming_the_file(tmp_path, images, capsys):
    """`--model FOLDER`: a truncated, non-finite or garbled model gives one line, exit 2."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from artgen.cli import main
    from artgen.interop.weights import ADAIN_SHIPPED

    def copy(name):
        d = tmp_path / name
        shutil.copytree(ADAIN_SHIPPED, d)
        return d

    cases = {}
    d = copy("truncated")
    w = d / "decoder.safetensors"
    w.write_bytes(w.read_bytes()[:5000])
    cases[d] = "decoder.safetensors: unreadable, truncated"
    d = copy("nan")
    sd = load_file(str(d / "decoder.safetensors"))
    first = sorted(sd)[0]
    sd[first] = torch.full_like(sd[first], float("nan"))
    save_file(sd, str(d / "decoder.safetensors"))
    cases[d] = f"{first} holds non-finite values"
    for name, text in (
        ("list", "[]"),
        ("brace", "{"),
        ("deep", "[" * 50_000),
        ("widths", '{"encoder": "efficientnet-lite0", "widths": 5}'),
    ):
        d = copy(name)
        (d / "config.json").write_text(text)
        cases[d] = "config.json"
    d = copy("keys")
    cfg = json.loads((ADAIN_SHIPPED / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "levels": None}))
    cases[d] = "not an AdaIN model config"
    for folder, why in cases.items():
        rc = main(
            [
                "stylize",
                str(images["content"]),
                "--method",
                "adain",
                "--model",
                str(folder),
                "--style",
                str(images["style"]),
                "--size",
                "48",
                "-o",
                str(tmp_path / f"{folder.name}.png"),
                "-q",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and why in err and err.count("\n") == 1, (folder.name, err)
        assert str(folder) in err


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 3)])
def test_upsample_conv_is_upsample_pad_conv_at_four_ninths_the_work(size):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, *size, generator=g, requires_grad=True)
    w = torch.randn(4, 6, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g)
    up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    mode = "reflect" if min(size) > 1 else "replicate"  # reflect needs 2 pixels
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(up, (1, 1, 1, 1), mode=mode), w, b)
    got = M.upsample_conv(x, M.upsample_conv_weight(w), b)
    assert got.shape == want.shape == (2, 4, 2 * size[0], 2 * size[1])
    assert torch.allclose(got, want, atol=1e-5)
    # The same gradients too, so training uses it as well.
    gx, gw = torch.autograd.grad((want * want.detach().sin()).sum(), (x, w))
    hx, hw = torch.autograd.grad((got * want.detach().sin()).sum(), (x, w))
    assert torch.allclose(gx, hx, atol=1e-4) and torch.allclose(gw, hw, atol=1e-4)
    # The 4x4 kernel: 16 taps, each a sum of 1, 2 or 4 of the 9 (by hand for one corner).
    k = M.upsample_conv_weight(w)
    assert k.shape == (6, 4, 4, 4)
    assert torch.allclose(k[0, 0, 1, 1], w[0, 0, 1:, 1:].sum())
    assert torch.allclose(k[0, 0, 3, 0], w[0, 0, 0, 2])
    # The phase form (the ONNX graphs'): four 2x2 kernels, the same picture.
    phases = M.upsample_conv_phases(x, M.upsample_phase_weight(w), b)
    assert phases.shape == want.shape and torch.allclose(phases, want, atol=1e-5)
    # By hand for phase (odd row, even column), the third group: its rows sum the 3x3
    # kernel's rows 0+1 and 2, its columns the columns 0 and 1+2.
    q, k0 = M.upsample_phase_weight(w).detach(), w[0, 0].detach()
    assert q.shape == (16, 6, 2, 2)
    by_hand = [[k0[:2, 0].sum(), k0[:2, 1:].sum()], [k0[2, 0], k0[2, 1:].sum()]]
    assert torch.allclose(q[8, 0], torch.tensor(by_hand))


def test_skip_decoder_fast_forward_equals_the_straightforward_one_and_follows_its_weights():
    torch.manual_seed(0)
    dec = M.SkipDecoder((5, 6, 7), (8, 9, 10), (6, 4)).eval()
    feats = [torch.randn(2, 5, 12, 16), torch.randn(2, 6, 6, 8), torch.randn(2, 7, 3, 4)]
    with torch.inference_mode():
        a, b = dec(feats), dec.forward_reference(feats)
    assert a.shape == (2, 3, 48, 64) and torch.allclose(a, b, atol=1e-5)
    # The transposed kernels are kept between calls, and refreshed when a weight changes.
    with torch.no_grad():
        for p in dec.parameters():
            p.mul_(1.5)
    with torch.inference_mode():
        a, b = dec(feats), dec.forward_reference(feats)
    assert torch.allclose(a, b, atol=1e-4)
    # Sizes that are not a factor of 2 apart take the straightforward path.
    odd = [torch.randn(1, 5, 13, 16), torch.randn(1, 6, 6, 8), torch.randn(1, 7, 3, 4)]
    with torch.no_grad():
        assert torch.allclose(dec(odd), dec.forward_reference(odd), atol=1e-5)


@pytest.mark.parametrize("phases", [False, True])
def test_the_decoder_skips_what_the_border_cuts_off_and_paints_the_rest_the_same(phases):
    """With ``crop`` (the border the caller cuts off) the finer stages work on what is kept
    plus what the rest of the network sees of it: the kept picture is the whole one's."""
    torch.manual_seed(1)
    dec = M.SkipDecoder((5, 6, 7), (8, 9, 10), (6, 4)).eval()
    # A 61 x 90 picture with the 32 px border, padded to 128 x 160 (multiples of 16).
    feats = [torch.randn(1, 5, 32, 40), torch.randn(1, 6, 16, 20), torch.randn(1, 7, 8, 10)]
    b, h, w = 32, 61, 90
    with torch.no_grad():
        whole = dec.forward_reference(feats)[..., b : b + h, b : b + w]
        out = dec(feats, crop=b, phases=phases)
    first, last, d = dec.trims(b)
    assert (first, last, d) == (20, 8, 28)  # reach 11 px kept at stride 4, 3 at stride 2
    assert out.shape[-2:] == (128 - 2 * d, 160 - 2 * d)
    assert torch.allclose(out[..., b - d : b - d + h, b - d : b - d + w], whole, atol=1e-5)
    # The margins are needed: keeping one cell less at stride 4 changes the picture's edge.
    dec.trims = lambda crop: (first + 4, last, d + 4)
    with torch.no_grad():
        short = dec(feats, crop=b, phases=phases)[..., b - d - 4 :, b - d - 4 :][..., :h, :w]
    assert (short - whole).abs().amax() > 1e-3
    assert M.SkipDecoder((5, 6, 7), (8, 9, 10), (6, 4)).trims(0) == (0, 0, 0)


def test_adain_blend_is_the_papers_interpolation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 6, generator=g) * 2 + 0.5
    m, s = mean_std(torch.randn(2, 3, 4, 4, generator=g) * 0.4 - 1)
    for alpha in (0.0, 0.3, 1.0):
        want = alpha * M.adain(x, m, s) + (1 - alpha) * x  # eq. 11's target
        assert torch.allclose(M.adain_blend(x, m, s, alpha), want, atol=1e-5)


# ---------------------------------------------------------------- tiles


def test_tiles_cover_the_picture_and_their_parts_partition_it():
    from artgen.models.adain import TILE_EDGE, _core, _ramp, _tile_starts

    for size, tile, overlap in ((1600, 640, 256), (640, 640, 256), (2064, 1024, 256)):
        starts = _tile_starts(size, tile, overlap, 16)
        assert starts[0] == 0 and starts[-1] + min(tile, size) == size
        assert all(s % 16 == 0 for s in starts)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
        cores = [_core(s, starts, tile, size) for s in starts]
        assert cores[0][0] == 0 and cores[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:], strict=False))  # no gaps
        for s, (lo, hi) in zip(starts, cores, strict=True):
            # each part keeps TILE_EDGE px away from its tile's inner edges
            assert (lo == 0 or lo - s >= TILE_EDGE) and (hi == size or s + tile - hi >= TILE_EDGE)
        total = torch.zeros(size)
        for s in starts:
            n = min(tile, size)
            w = _ramp(s, n, size, overlap, "cpu")
            if s > 0:
                assert (w[:TILE_EDGE] == 0).all()  # the edge band gets no weight
            total[s : s + n] += w
        assert (total > 0.01).all()  # every pixel has weight from some tile


@pytest.mark.parametrize("wct", [(), (0,)], ids=["adain", "wct"])
def test_tiled_output_is_the_whole_pictures_without_seams(shipped, wct):
    from PIL import Image

    im = Image.open("styles/examples/chelsea.jpg").convert("RGB").resize((900, 600))
    style = to_tensor(stripes(200, seed=3).resize((896, 896)))  # a multiple of the stride
    x = to_tensor(im)
    with torch.inference_mode():
        whole_stats = shipped.style_stats(style)
        tiled_stats = shipped.style_stats_tiled(style, tile=640, overlap=256)
        for (a, b, cov), (c, d, cov2) in zip(whole_stats, tiled_stats, strict=True):
            assert torch.allclose(a, c, atol=1e-3) and torch.allclose(b, d, atol=1e-3, rtol=1e-3)
            assert torch.allclose(cov, cov2, atol=1e-3, rtol=1e-3)
        whole = shipped(x, whole_stats, 0.8, border=16, wct=wct).clamp(0, 1)
        calls = []
        tiled = shipped.forward_tiled(
            x,
            whole_stats,
            0.8,
            border=16,
            tile=640,
            overlap=256,
            on_tile=lambda d, t: calls.append((d, t)),
            wct=wct,
        ).clamp(0, 1)
    assert tiled.shape == whole.shape == (1, 3, 600, 900)
    assert calls[-1] == (4, 4)  # 932 x 632 px padded: 2 x 1 tiles, two passes
    assert (tiled - whole).abs().max().item() < 2e-3
    # Seam visibility: gradient energy on the columns and rows where tiles meet, against
    # elsewhere (issue: within a few percent).
    gx = (tiled[..., :, 1:] - tiled[..., :, :-1]).abs().mean((0, 1, 2))
    from artgen.models.adain import _tile_starts

    starts = _tile_starts(944, 640, 256, 16)  # 900 + 2 x 16 margin, up to a multiple of 16
    assert starts == [0, 304]
    border_cols = [c - 16 for c in (starts[1], 640)]  # where the tiles meet, unpadded
    ratio = gx[border_cols].mean() / gx.mean()
    ref = (whole[..., :, 1:] - whole[..., :, :-1]).abs().mean((0, 1, 2))
    assert abs(ratio - ref[border_cols].mean() / ref.mean()) < 0.03


def test_tiling_is_chosen_when_the_estimate_says_it_does_not_fit(
    shipped, monkeypatch, tmp_path, capsys
):
    from artgen.cli import main
    from artgen.core import devices
    from artgen.style import adain as fast

    photo(300, 200).save(tmp_path / "c.png")
    stripes(96).save(tmp_path / "s.png")
    assert fast._choose_tile(0, 800, 600, 1, torch.device("cpu"), 4) == 0  # fits here
    assert fast._choose_tile(-1, 8000, 6000, 1, torch.device("cpu"), 4) == 0
    assert fast._choose_tile(1024, 800, 600, 1, torch.device("cpu"), 4) == 0  # one tile
    monkeypatch.setattr(devices, "available_memory", lambda dev: 100 * 2**20)  # 100 MiB free
    assert fast._choose_tile(0, 2000, 1500, 1, torch.device("cpu"), 4) == 640
    rc = main(
        [
            "stylize",
            str(tmp_path / "c.png"),
            "--style",
            str(tmp_path / "s.png"),
            "--method",
            "adain",
            "--size",
            "700",
            "-o",
            str(tmp_path / "o.png"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "does not fit in memory in one piece: tiles of 640 px" in err
    main(["info", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert "tile: 640" in out and "--tile 640" in out  # recorded, reproduced as made
    with pytest.raises(ArtgenError, match="tile"):
        artgen.AdaINOptions(tile=300)


def covariance_of(x):
    """Channel covariance in float64, as the whitening computes it."""
    from artgen.core.losses import covariance

    return covariance(x, dtype=torch.float64)


def _wct_by_eigendecomposition(c, sm, scov):
    """Li et al. 2017's whitening and colouring, eqs. 2-4, written out with eigh (and the
    same ridge as artgen's), as a reference for the Newton-Schulz version."""
    from artgen.models.adain import _ridge

    def power(a, p):
        e, v = torch.linalg.eigh(a[0])
        return v @ torch.diag(e**p) @ v.T

    n, ch, h, w = c.shape
    f = c.double().flatten(2)[0]
    mu = f.mean(1, keepdim=True)
    whiten = power(_ridge(covariance_of(c)), -0.5)
    colour = power(_ridge(scov.double()), 0.5)
    return (colour @ whiten @ (f - mu) + sm.double().view(ch, 1)).view(n, ch, h, w)


def test_whitening_colouring_gives_the_styles_covariance_as_li_et_al():
    from artgen.models.adain import level_stats, sqrt_pair, wct_blend

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(24, 24, generator=g)
    c = torch.einsum("ij,njhw->nihw", mix, torch.randn(1, 24, 20, 30, generator=g)).relu()
    s = torch.randn(1, 24, 16, 16, generator=g).relu() * torch.rand(1, 24, 1, 1, generator=g) * 4
    sm, _, scov = level_stats(s)
    out = wct_blend(c, sm, scov)
    ref = _wct_by_eigendecomposition(c, sm, scov)
    assert (out.double() - ref).abs().max() < 1e-4 * ref.abs().max()
    # the output has the style's channel means and covariance (to the ridge, 1e-4)
    assert torch.allclose(out.mean((2, 3)), sm.flatten(1), atol=1e-4)
    cov = covariance_of(out)
    assert (cov - scov.double()).norm() / scov.double().norm() < 2e-3
    # and a covariance the content did not have: not AdaIN's per-channel match
    assert (covariance_of(c) - scov.double()).norm() / scov.double().norm() > 0.5
    # alpha blends with the content's features, as AdaIN's does (eq. 11)
    half = wct_blend(c, sm, scov, 0.25)
    assert torch.allclose(half, 0.25 * out + 0.75 * c, atol=1e-5)
    # the square roots: (A^1/2)^2 = A and A^1/2 A^-1/2 = I
    a = covariance_of(c) + 1e-3 * torch.eye(24, dtype=torch.double)
    root, inv = sqrt_pair(a)
    assert torch.allclose(root @ root, a, atol=1e-9 * float(a.abs().max()))
    assert torch.allclose(root @ inv, torch.eye(24, dtype=torch.double).expand_as(a), atol=1e-9)


def test_whitening_colouring_in_a_region_uses_the_regions_own_covariance(shipped):
    """A mask that covers everything gives the unmasked picture; two regions with one style
    each give, inside each, that style's covariance (at the finest level)."""
    x = to_tensor(photo(96, 64, seed=3))
    s1, s2 = to_tensor(stripes(64, seed=1)), to_tensor(photo(64, 64, seed=7))
    with torch.inference_mode():
        st1, st2 = shipped.style_stats(s1), shipped.style_stats(s2)
        whole = shipped(x, st1, 1.0, border=16, wct=(0,))
        ones = torch.ones(1, 1, 64, 96)
        masked = shipped.forward_masked(x, [st1], ones, 1.0, border=16, wct=(0,))
        assert (whole - masked).abs().max() < 1e-4
        f = shipped.encoder(x, shipped.config.levels)["block1_1"]
        left = torch.zeros(1, 1, *f.shape[-2:])
        left[..., : f.shape[-1] // 2] = 1
        from artgen.models.adain import adain_regions

        t = adain_regions(f, [st1[0], st2[0]], torch.cat([left, 1 - left], 1), wct=True)
        half = f.shape[-1] // 2
        for part, st in ((t[..., :half], st1), (t[..., half:], st2)):
            err = (covariance_of(part) - st[0][2].double()).norm() / st[0][2].double().norm()
            assert err < 1e-2


def test_a_shared_model_is_moved_once_and_then_left_alone(shipped):
    """Concurrent jobs share one model (the studio): it is put on the device in
    channels_last once, under a lock; later calls do not touch its parameters (Module.to
    swaps their storage, which a convolution in another thread must not see)."""
    import torch

    from artgen.style.adain import _device_and_model, _on

    fresh = type(shipped)(shipped.encoder, shipped.decoder, shipped.config)
    model, dev = _device_and_model(fresh, "cpu", artgen.AdaINOptions())
    assert _on(model, dev)

    def moved(*args, **kwargs):
        raise AssertionError("the model was moved again")

    model.to = moved  # a second call must not touch it
    again, _ = _device_and_model(model, "cpu", artgen.AdaINOptions())
    assert again is model
    del model.to
    assert not _on(torch.nn.Conv2d(3, 3, 3), torch.device("cpu"))  # contiguous 4-D weight
