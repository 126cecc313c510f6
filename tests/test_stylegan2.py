"""StyleGAN2 generator and discriminator (artgen.models.stylegan2) on tiny configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from artgen.core.errors import ArtgenError
from artgen.models import stylegan2
from artgen.models.stylegan2 import (
    CONFIG_LIMITS,
    MAX_PARAMETERS,
    Conv2dLayer,
    Discriminator,
    FullyConnectedLayer,
    Generator,
    StyleGAN2Config,
    _conv2d,
    _upsample2x,
    modulated_conv2d,
)

TINY = dict(z_dim=32, w_dim=32, channel_base=256, channel_max=32, mapping_layers=2)


def tiny(resolution: int = 32, **kw) -> StyleGAN2Config:
    return StyleGAN2Config(resolution=resolution, **{**TINY, **kw})


def with_noise(g: Generator) -> Generator:
    """Noise strengths start at 0 (noise has no effect); make noise visible."""
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    return g


# -- shapes and names --------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [16, 32])
def test_shapes(resolution):
    cfg = tiny(resolution)
    g, d = Generator(cfg).eval(), Discriminator(cfg)
    log2 = int(math.log2(resolution))
    assert g.num_ws == 2 * log2 - 2  # one w per conv, plus the last toRGB
    z = torch.randn(4, cfg.z_dim)
    ws = g.mapping(z)
    assert ws.shape == (4, g.num_ws, cfg.w_dim)
    img, feats = g(z, return_features=True)
    assert img.shape == (4, 3, resolution, resolution)
    assert [f.shape[-1] for f in feats] == [2**i for i in range(2, log2 + 1)]  # low res first
    assert all(f.shape[:2] == (4, cfg.channels(f.shape[-1])) for f in feats)
    assert torch.isfinite(img).all()
    assert d(img).shape == (4, 1)
    assert d.block_names() == [f"b{2**i}" for i in range(log2, 1, -1)]


def test_conditional_shapes():
    cfg = tiny(16, c_dim=3)
    g, d = Generator(cfg), Discriminator(cfg)
    z, c = torch.randn(2, 32), torch.eye(3)[[0, 2]]
    img = g(z, c)
    assert img.shape == (2, 3, 16, 16)
    assert d(img, c).shape == (2, 1)
    with pytest.raises(ValueError, match="c"):
        g(z)


def test_official_names():
    g, d = Generator(tiny(32)), Discriminator(tiny(32))
    gsd, dsd = g.state_dict(), d.state_dict()
    for name in [
        "mapping.fc0.weight",
        "mapping.fc1.bias",
        "mapping.w_avg",
        "synthesis.b4.const",
        "synthesis.b4.resample_filter",
        "synthesis.b4.conv1.affine.weight",
        "synthesis.b4.conv1.affine.bias",
        "synthesis.b4.conv1.noise_strength",
        "synthesis.b4.conv1.noise_const",
        "synthesis.b8.conv0.weight",
        "synthesis.b8.conv0.resample_filter",
        "synthesis.b8.torgb.weight",
        "synthesis.b8.torgb.affine.weight",
        "synthesis.b32.conv1.bias",
    ]:
        assert name in gsd, name
    assert not any(k.startswith(("mapping.embed", "synthesis.b4.conv0")) for k in gsd)
    for name in [
        "b32.fromrgb.weight",
        "b32.skip.weight",
        "b32.conv1.resample_filter",
        "b16.conv0.weight",
        "b4.conv.weight",
        "b4.fc.weight",
        "b4.out.weight",
        "b4.out.bias",
    ]:
        assert name in dsd, name
    assert "b16.fromrgb.weight" not in dsd and "b32.skip.bias" not in dsd
    assert gsd["synthesis.b8.conv0.weight"].shape == (32, 32, 3, 3)
    assert dsd["b4.fc.weight"].shape == (32, 32 * 16)
    cond = Discriminator(tiny(32, c_dim=3)).state_dict()
    assert "mapping.embed.weight" in cond and "mapping.fc7.weight" in cond  # official D: 8 layers
    assert cond["b4.out.weight"].shape == (32, 32)  # projects onto a cmap of 32 channels
    orig = Discriminator(tiny(32, d_architecture="orig")).state_dict()
    assert not any(".skip." in k for k in orig)


# -- config -----------------------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    cfg = tiny(16, c_dim=2, conv_clamp=256)
    assert StyleGAN2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert StyleGAN2Config.from_dict({}) == StyleGAN2Config()
    with pytest.raises(ArtgenError, match="unknown key 'resolutoin'"):
        StyleGAN2Config.from_dict({"resolutoin": 64})
    with pytest.raises(ArtgenError, match="resolution"):
        StyleGAN2Config.from_dict({"resolution": 48})
    with pytest.raises(ArtgenError, match="z_dim"):
        StyleGAN2Config.from_dict({"z_dim": "512"})
    with pytest.raises(ArtgenError, match="d_architecture"):
        StyleGAN2Config.from_dict({"d_architecture": "skip"})
    with pytest.raises(ArtgenError, match="resolution"):
        Discriminator(StyleGAN2Config(resolution=4))


# -- save / load ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    cfg = tiny(16)
    g, d = with_noise(Generator(cfg)).eval(), Discriminator(cfg).eval()
    g.save_pretrained(tmp_path / "g")
    d.save_pretrained(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    meta = json.loads((tmp_path / "g" / "config.json").read_text())
    assert meta["class"] == "Generator" and meta["format"] == "artgen-stylegan2"
    assert meta["version"] == 1 and meta["resolution"] == 16
    assert "synthesis.b8.conv0.noise_const" in load_file(tmp_path / "g" / "model.safetensors")

    g2 = Generator.from_pretrained(tmp_path / "g")
    d2 = Discriminator.from_pretrained(tmp_path / "d")
    assert g2.config == cfg and not g2.training

    z = torch.randn(3, 32)
    with torch.no_grad():
        a = g(z, generator=torch.Generator().manual_seed(5))
        b = g2(z, generator=torch.Generator().manual_seed(5))
        other = g2(z, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b)
        assert not torch.equal(a, other)  # the noise is really random, and really used
        assert torch.equal(g(z, noise_mode="const"), g2(z, noise_mode="const"))
        assert torch.equal(d(a), d2(a))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ArtgenError, match="no such folder"):
        Generator.from_pretrained(tmp_path / "missing")
    with pytest.raises(ArtgenError, match="config.json"):
        Generator.from_pretrained(tmp_path)

    folder = tmp_path / "g"
    Generator(tiny(16)).save_pretrained(folder)
    with pytest.raises(ArtgenError, match="holds a Generator, not a Discriminator"):
        Discriminator.from_pretrained(folder)

    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    tensors["synthesis.b8.conv0.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(tensors, weights)
    with pytest.raises(ArtgenError, match=r"synthesis\.b8\.conv0\.weight has shape") as e:
        Generator.from_pretrained(folder)
    assert "\n" not in str(e.value)

    del tensors["synthesis.b8.conv0.weight"]
    save_file(tensors, weights)
    with pytest.raises(ArtgenError, match="missing synthesis.b8.conv0.weight"):
        Generator.from_pretrained(folder)

    weights.unlink()
    with pytest.raises(ArtgenError, match="model.safetensors"):
        Generator.from_pretrained(folder)


def test_sizes_are_bounded_above_as_well_as_below():
    """A config comes from a file: every size has an upper bound, above every published
    network, with a one-line message naming the field and the allowed range."""
    StyleGAN2Config(resolution=1024, channel_base=65536, channel_max=1024, c_dim=1000)
    for name, (low, high) in CONFIG_LIMITS.items():
        for value in (low - 1, high + 1, 2**31):
            with pytest.raises(
                ArtgenError,
                match=rf"^StyleGAN2 config: {name} must be in "
                rf"\[{low}, {high}\], got {value}$",
            ):
                StyleGAN2Config(**{name: value})
    with pytest.raises(ArtgenError, match="resolution must be a power of two"):
        StyleGAN2Config(resolution=48)
    with pytest.raises(ArtgenError, match="conv_clamp must be > 0 and finite"):
        StyleGAN2Config(conv_clamp=math.inf)
    with pytest.raises(ArtgenError, match="mapping_lr_multiplier must be finite"):
        StyleGAN2Config(mapping_lr_multiplier=math.nan)
    # the float settings are bounded too (issue 34): absurd values draw only blank images
    with pytest.raises(ArtgenError, match=r"mapping_lr_multiplier must be > 0 \(at most 100\)"):
        StyleGAN2Config(mapping_lr_multiplier=1e30)
    with pytest.raises(ArtgenError, match=r"conv_clamp must be > 0 and finite \(at most 1e\+06\)"):
        StyleGAN2Config(conv_clamp=1e30)
    StyleGAN2Config(mapping_lr_multiplier=0.01, conv_clamp=256)  # the official values
    # Each field within its range, the product not: 32 layers of 4096 x 4096.
    with pytest.raises(
        ArtgenError,
        match=r"the generator would have 576,\d+,\d+ parameters, more than the 536,870,912",
    ):
        StyleGAN2Config(z_dim=4096, w_dim=4096, mapping_layers=32)
    huge = tuple("x")
    for _ in range(60):  # a value from a file whose repr is 2**60 characters
        huge = (huge, huge)
    with pytest.raises(ArtgenError, match="z_dim must be an integer") as e:
        StyleGAN2Config(z_dim=huge)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize(
    "cfg",
    [
        tiny(16),
        tiny(16, c_dim=5),
        tiny(32, d_architecture="orig", img_channels=1, mbstd_num_channels=2),
        tiny(8, mapping_layers=1, z_dim=7),
    ],
)
def test_parameter_counts_are_exact(cfg):
    counts = cfg.parameter_counts()
    for network, cls in (("generator", Generator), ("discriminator", Discriminator)):
        assert counts[network] == sum(t.numel() for t in cls(cfg).state_dict().values())
    official = StyleGAN2Config(resolution=1024, channel_base=32768, channel_max=512)
    assert 30e6 < max(official.parameter_counts().values()) < MAX_PARAMETERS / 10


def test_allocation_failures_are_artgen_errors(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            "you tried to allocate 68719476736 bytes."
        )

    monkeypatch.setattr(stylegan2.SynthesisLayer, "__init__", out_of_memory)
    with pytest.raises(
        ArtgenError,
        match=r"^StyleGAN2 generator of [\d,]+ parameters "
        r"\(resolution 16\): not enough memory to build it$",
    ):
        Generator(tiny(16))
    monkeypatch.setattr(stylegan2.DiscriminatorBlock, "__init__", out_of_memory)
    with pytest.raises(ArtgenError, match="StyleGAN2 discriminator of .* not enough memory"):
        Discriminator(tiny(16))

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(stylegan2.SynthesisLayer, "__init__", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a bug keeps its traceback
        Generator(tiny(16))


def test_bad_config_json_and_weights_name_the_file(tmp_path):
    folder = tmp_path / "g"
    Generator(tiny(16)).save_pretrained(folder)
    config_path, weights = folder / "config.json", folder / "model.safetensors"
    good = json.loads(config_path.read_text())
    cases = {
        "z_dim 2**31": ({**good, "z_dim": 2**31}, r"z_dim must be in \[1, 4096\]"),
        "string": ({**good, "channel_base": "abc"}, "channel_base must be an integer"),
        "infinite": ({**good, "w_avg_beta": math.inf}, "w_avg_beta must be finite"),
        "list": ([1, 2], "not an artgen-stylegan2 config"),
        "class": ({**good, "class": ["x"] * 1000}, r"holds a \['x', 'x'"),
        "version": ({**good, "version": "v" * 10**5}, "unsupported version 'vvv"),
        "key": ({**good, "k" * 10**5: 1}, "unknown key 'kkk"),
    }
    for what, (meta, message) in cases.items():
        config_path.write_text(json.dumps(meta))
        with pytest.raises(ArtgenError, match=message) as e:
            Generator.from_pretrained(folder)
        text = str(e.value)
        assert text.startswith(f"{config_path}: ") and "\n" not in text, what
        assert len(text) < len(str(config_path)) + 300, what
    for text, message in (
        ("[" * 100_000, "unreadable"),
        ("{", "unreadable"),
        (" " * (2 << 20), "larger than"),
    ):
        config_path.write_text(text)
        with pytest.raises(ArtgenError, match=message) as e:
            Generator.from_pretrained(folder)
        assert str(e.value).startswith(f"{config_path}: ")

    config_path.write_text(json.dumps(good))
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], b"\xff" * 16, b""):
        weights.write_bytes(broken)
        with pytest.raises(ArtgenError, match="unreadable") as e:
            Generator.from_pretrained(folder)
        assert str(e.value).startswith(f"{weights}: ") and "\n" not in str(e.value)


# -- mapping: truncation and w_avg ----------------------------------------------------------------


def test_truncation_and_w_avg():
    g = Generator(tiny(16))
    z = torch.randn(8, 32)
    assert torch.equal(g.mapping.w_avg, torch.zeros(32))
    g.mapping(z)
    assert torch.equal(g.mapping.w_avg, torch.zeros(32))  # only updated when asked
    ws = g.mapping(z, update_w_avg=True)
    expected = ws[:, 0].mean(0) * (1 - g.config.w_avg_beta)  # lerp from zero
    assert torch.allclose(g.mapping.w_avg, expected, atol=1e-6)

    ws0 = g.mapping(z, truncation_psi=0)
    assert torch.equal(ws0, g.mapping.w_avg.expand_as(ws0))
    half = g.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(half[:, :2], (ws[:, :2] + g.mapping.w_avg) / 2, atol=1e-6)
    assert torch.equal(half[:, 2:], ws[:, 2:])


# -- training: gradients, train/eval paths -------------------------------------------------------------


def test_gradients_reach_every_parameter():
    cfg = tiny(16, c_dim=3)
    g, d = Generator(cfg).train(), Discriminator(cfg).train()
    z, c = torch.randn(4, 32), torch.eye(3)[[0, 1, 2, 0]]
    # noise_mode "random" so that the noise strengths get gradients too (with
    # "const" they would also; with "none" they legitimately would not).
    d(g(z, c, noise_mode="random"), c).sum().backward()
    for net in (g, d):
        no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
        assert not no_grad, no_grad


def test_train_and_eval_paths_agree():
    """Training uses the non-fused modulated conv, inference the grouped (fused) one."""
    g = with_noise(Generator(tiny(16)))
    z = torch.randn(3, 32)
    with torch.no_grad():
        fused = g.eval()(z, noise_mode="const")
        unfused = g.train()(z, noise_mode="const")
    assert torch.allclose(fused, unfused, atol=1e-4)


# -- GAN-specific numerics ---------------------------------------------------------------------------


def test_demodulation_restores_unit_variance():
    torch.manual_seed(0)
    n, c_in, c_out = 4, 64, 64
    x = torch.randn(n, c_in, 16, 16)
    weight = torch.randn(c_out, c_in, 3, 3)
    styles = torch.randn(n, c_in).exp()  # strongly non-uniform modulation, scale ~1.6
    for fused in (True, False):
        y = modulated_conv2d(x, weight, styles, fused=fused)
        inner = y[:, :, 1:-1, 1:-1]  # borders see zero padding
        std = inner.std(dim=(1, 2, 3))  # per sample, over channels and pixels
        assert ((std > 0.9) & (std < 1.1)).all(), std
    raw = modulated_conv2d(x, weight, styles, demodulate=False)
    assert raw[:, :, 1:-1, 1:-1].std() > 10  # without demodulation the scale explodes
    # Demodulation makes the layer invariant to the scale of its weight and styles.
    y = modulated_conv2d(x, weight, styles)
    assert torch.allclose(modulated_conv2d(x, 3 * weight, 0.5 * styles), y, atol=1e-4)


def test_equalized_learning_rate():
    torch.manual_seed(0)
    fc = FullyConnectedLayer(64, 8, lr_multiplier=0.01, bias_init=1)
    x = torch.randn(5, 64)
    # Stored weights are N(0, 1) / lr_mul; the runtime gain is lr_mul / sqrt(fan_in).
    assert 80 < fc.weight.std().item() < 120
    expected = x @ (fc.weight * 0.01 / 8).t() + fc.bias * 0.01
    assert torch.allclose(fc(x), expected, atol=1e-5)
    with torch.no_grad():
        fc.weight.mul_(2)
    assert torch.allclose(fc(x), 2 * (expected - 0.01) + 0.01, atol=1e-5)

    conv = Conv2dLayer(16, 8, 3, activation="lrelu")
    img = torch.randn(2, 16, 8, 8)
    y = conv(img)
    ref = torch.nn.functional.conv2d(img, conv.weight / math.sqrt(16 * 9), padding=1)
    assert torch.allclose(y, torch.nn.functional.leaky_relu(ref, 0.2) * math.sqrt(2), atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(3)
    assert torch.allclose(conv(img), 3 * y, atol=1e-5)  # zero bias, lrelu is homogeneous
    # Unit-variance input gives roughly unit second moment after lrelu * sqrt(2).
    assert (
        0.7
        < Conv2dLayer(64, 64, 3, activation="lrelu")(torch.randn(4, 64, 8, 8)).square().mean()
        < 1.3
    )


def test_resampling_keeps_constant_images_constant():
    """The [1,3,3,1] filter has unit DC gain: a flat image stays flat away from the borders."""
    g = Generator(tiny(16))
    f = g.synthesis.b8.resample_filter
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    flat = torch.full((1, 2, 8, 8), 3.0)
    up = _upsample2x(flat, f)
    assert up.shape == (1, 2, 16, 16)
    assert torch.allclose(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 3.0))
    down = _conv2d(flat, torch.ones(1, 2, 1, 1), f, down=2)
    assert down.shape == (1, 1, 4, 4)
    assert torch.allclose(down[:, :, 1:-1, 1:-1], torch.full((1, 1, 2, 2), 6.0))


def test_minibatch_stddev_groups():
    d = Discriminator(tiny(16, mbstd_group_size=2))
    img = torch.randn(4, 3, 16, 16)
    img[2] = img[0]  # groups are strided: samples 0 and 2 share a group
    feats = d.b8(d.b16(img))
    stats = d.b4.mbstd(feats)[:, -1, 0, 0]
    assert stats.shape == (4,)
    assert stats[0] == stats[2] and stats[0] < 1e-3  # identical samples: std ~ sqrt(1e-8)
    assert stats[1] > 0.01
    with pytest.raises(ValueError, match="group size"):
        d(torch.randn(3, 3, 16, 16))
