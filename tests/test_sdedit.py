"""The sdedit method: a photo through the artist's own fine-tuned diffusion run (SDEdit)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import artgen
from artgen.cli import main
from artgen.core.errors import ArtgenError
from artgen.core.images import read_params
from artgen.eval.metrics import edge_correlation
from artgen.style import get_method
from artgen.style.sdedit import (
    SDEditOptions,
    canny_edges,
    load,
    output_size,
    run_sha256,
    stylize,
)
from artgen.testing import image_folder, tiny_ddpm
from artgen.train.diffusion import finetune_diffusion

from .conftest import photo
from .tiny_diffusion import tiny_sd

INSTANCE = "a sks painting"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A folder of runs: an unconditional DDPM run trained enough to denoise a little
    (full fine-tune, 200 steps: about 9 s), a text-to-image LoRA run, and a GAN run's
    config (run_class decides a folder's kind from its config.json alone)."""
    root = tmp_path_factory.mktemp("sdedit")
    images = image_folder(root / "images", n=8, size=24)

    def run(base: Path, name: str, **kw) -> Path:
        options = dict(
            images=str(images),
            out=str(root / "runs" / name),
            batch_size=4,
            lr=3e-3,
            warmup_steps=0,
            ema_decay=0.0,
            sample_every=1000,
            checkpoint_every=1000,
            num_samples=1,
            sample_steps=1,
            device="cpu",
        )
        options.update(kw)
        return finetune_diffusion(artgen.DiffusionFinetuneOptions(base=str(base), **options))

    ddpm = run(tiny_ddpm(root / "ddpm"), "ddpm-art", steps=200, method="full")
    sd_base = tiny_sd(root / "sd")
    sd = run(sd_base, "sd-art", steps=2, prompt=INSTANCE)
    gan = root / "runs" / "gan-art"
    gan.mkdir(parents=True)
    (gan / "config.json").write_text(json.dumps({"method": "train-gan"}))
    return {"ddpm": ddpm, "sd": sd, "gan": gan, "folder": root / "runs", "sd_base": sd_base}


@pytest.fixture(scope="module")
def ddpm(runs):
    return load(SDEditOptions(generator=str(runs["ddpm"])))


@pytest.fixture(scope="module")
def sd(runs):
    return load(SDEditOptions(generator=str(runs["sd"])))


@pytest.fixture(scope="module")
def controlnet(runs, tmp_path_factory) -> Path:
    """A tiny ControlNet made from the SD base's UNet, its zero convolutions given random
    weights (a new ControlNet adds nothing), saved as a folder."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(runs["sd_base"] / "unet")
    torch.manual_seed(0)
    # One stride-2 step in the edge encoder: the tiny VAE's latents are 1/2 of the pixels.
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    with torch.no_grad():
        for m in [
            net.controlnet_cond_embedding.conv_out,
            *net.controlnet_down_blocks,
            net.controlnet_mid_block,
        ]:
            m.weight.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("controlnet") / "canny"
    net.save_pretrained(folder)
    return folder


def px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def opts(run: Path, **kw) -> SDEditOptions:
    return SDEditOptions(generator=str(run), **kw)


def test_the_edge_judge(runs):
    p = photo(96, 64)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8))
    assert edge_correlation(p, p) == pytest.approx(1.0)
    assert abs(edge_correlation(p, noise)) < 0.1
    assert edge_correlation(p, Image.new("RGB", (96, 64), "grey")) == 0.0
    edges = np.asarray(canny_edges(p))
    assert edges.shape == (64, 96, 3) and set(np.unique(edges)) <= {0, 255} and edges.max() == 255


def test_noise_0_is_the_photo_resized(runs, ddpm):
    p = photo(96, 64)
    out = stylize(p, None, opts(runs["ddpm"], noise=0.0, size=32), model=ddpm)
    assert out.size == output_size(p.size, 32, 2) == (32, 22)
    assert np.array_equal(px(out), px(p.resize(out.size, Image.Resampling.LANCZOS)))
    # A noise that leaves no denoising step is the photo too, and says so.
    tiny = stylize(p, None, opts(runs["ddpm"], noise=0.01, steps=50, size=32), model=ddpm)
    assert np.array_equal(px(tiny), px(out)) and "no denoising step" in tiny.info["note"]
    # Default size: the run's resolution (16 px).
    assert stylize(p, None, opts(runs["ddpm"], noise=0.0), model=ddpm).size == (16, 10)


def test_noise_1_is_a_pure_sample(runs, ddpm):
    a, b = photo(64, 48, seed=0), photo(64, 48, seed=3).transpose(Image.Transpose.ROTATE_180)
    o = opts(runs["ddpm"], noise=1.0, size=32, steps=10, seed=4)
    x, y = stylize(a, None, o, model=ddpm), stylize(b, None, o, model=ddpm)
    assert np.abs(px(x) - px(y)).max() <= 1  # the photo plays no part
    other = stylize(a, None, opts(runs["ddpm"], noise=1.0, size=32, steps=10, seed=5), model=ddpm)
    assert np.abs(px(x) - px(other)).mean() > 10  # the seed does
    # DDPM's sampler (stochastic steps) draws from the seed too: the same seed, the same picture.
    o = opts(runs["ddpm"], noise=0.5, size=32, steps=10, scheduler="ddpm")
    assert np.array_equal(px(stylize(a, None, o, model=ddpm)), px(stylize(a, None, o, model=ddpm)))


def test_edge_correlation_falls_as_the_noise_rises(runs, ddpm):
    p = photo(96, 64)
    ref = p.resize((32, 22), Image.Resampling.LANCZOS)
    means = []
    for noise in (0.2, 0.5, 0.8):
        c = [
            edge_correlation(
                ref,
                stylize(
                    p,
                    None,
                    opts(runs["ddpm"], noise=noise, size=32, steps=20, seed=s),
                    model=ddpm,
                ),
            )
            for s in range(4)
        ]
        means.append(float(np.mean(c)))
    # Measured: about 0.88, 0.34 and 0.00 (docs/sdedit.md).
    assert means[0] > means[1] + 0.2 > means[2] + 0.2, means
    assert means[0] < 0.99


def test_text_to_image_run_uses_its_instance_prompt_and_lora(runs, sd):
    p = photo(64, 48)
    assert sd.family == "text-to-image" and sd.instance_prompt == INSTANCE
    o = opts(runs["sd"], noise=0.6, steps=10, size=32)
    out = stylize(p, None, o, model=sd)
    assert out.size == (32, 24) and out.info["prompt"] == INSTANCE
    same = stylize(
        p, None, opts(runs["sd"], noise=0.6, steps=10, size=32, prompt=INSTANCE), model=sd
    )
    assert np.array_equal(px(out), px(same))
    other = stylize(p, None, opts(runs["sd"], noise=0.6, steps=10, size=32, prompt="zz"), model=sd)
    assert not np.array_equal(px(out), px(other))
    sd.run.pipeline.disable_lora()  # the run's LoRA is what paints
    try:
        bare = stylize(p, None, o, model=sd)
    finally:
        sd.run.pipeline.enable_lora()
    assert not np.array_equal(px(out), px(bare))
    assert np.array_equal(px(stylize(p, None, o, model=sd)), px(out))
    # Strength 1: a plain text-to-image sample, whatever the photo.
    o1 = opts(runs["sd"], noise=1.0, steps=5, size=32)
    q = photo(64, 48, seed=7).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    assert (
        np.abs(px(stylize(p, None, o1, model=sd)) - px(stylize(q, None, o1, model=sd))).max() <= 1
    )


def test_controlnet_steers_with_the_photos_edges(runs, controlnet):
    p = photo(64, 48)
    plain = stylize(p, None, opts(runs["sd"], noise=0.6, steps=10, size=32))
    o = opts(runs["sd"], noise=0.6, steps=10, size=32, controlnet=str(controlnet))
    model = load(o)
    assert "ControlNet" in get_method("sdedit").describe(model)
    steered = stylize(p, None, o, model=model)
    assert steered.size == plain.size and not np.array_equal(px(steered), px(plain))
    o1 = opts(runs["sd"], noise=1.0, steps=5, size=32, controlnet=str(controlnet))
    assert stylize(p, None, o1, model=model).size == (32, 24)
    with pytest.raises(ArtgenError, match="only for text-to-image runs"):
        load(opts(runs["ddpm"], controlnet=str(controlnet)))
    with pytest.raises(ArtgenError, match="controlnet=.*no such folder"):
        load(opts(runs["sd"], controlnet="./nowhere"))


def test_bad_generators_get_one_line_errors(runs, tmp_path):
    cases = [
        (opts(runs["gan"]), "gan-art is a GAN run; --generator needs a diffusion run"),
        (opts(tmp_path / "missing"), "no such run folder"),
        (opts(tmp_path), "not an artgen run folder"),
        (SDEditOptions(), "give the folder of a diffusion run"),
        (opts(runs["ddpm"], run_sha256="0" * 64), "have changed since"),
    ]
    for o, message in cases:
        with pytest.raises(ArtgenError, match=message) as e:
            load(o)
        assert "\n" not in str(e.value)
    with pytest.raises(ArtgenError, match="noise=1.5"):
        SDEditOptions(noise=1.5)


def test_python_api_takes_no_styles(runs):
    p = photo(64, 48)
    out = artgen.stylize(p, method="sdedit", generator=str(runs["ddpm"]), noise=0.0, size=32)
    assert np.array_equal(px(out), px(p.resize(out.size, Image.Resampling.LANCZOS)))
    with pytest.raises(ArtgenError, match="takes no style images"):
        artgen.stylize(p, p, method="sdedit", generator=str(runs["ddpm"]))
    with pytest.raises(ArtgenError, match="needs at least one style image"):
        artgen.stylize(p, method="adain")


def test_cli_stylize_info_and_the_reproduce_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    photo(64, 48).save("photo.png")
    flags = ["--noise", "0.5", "--size", "16", "--steps", "10", "--seed", "3", "-q"]
    assert (
        main(["stylize", "photo.png", "--generator", str(runs["ddpm"]), *flags, "-o", "a.png"]) == 0
    )
    params = read_params("a.png")
    assert params["method"] == "sdedit" and params["styles"] == []
    o = params["options"]
    assert o["generator"] == str(runs["ddpm"]) and o["noise"] == 0.5 and o["seed"] == 3
    assert o["run_sha256"] == run_sha256(runs["ddpm"]) and len(o["run_sha256"]) == 64
    capsys.readouterr()
    assert main(["info", "a.png"]) == 0
    out = capsys.readouterr().out
    assert "(sdedit)" in out and f"run_sha256: {o['run_sha256'][:20]}" in out
    words = shlex.split(out.strip().splitlines()[-1])
    assert words[:4] == ["artgen", "stylize", "photo.png", "--method"] and "--style" not in words
    assert main([*words[1:-1], "again.png", "-q"]) == 0  # the reproduce line, run
    assert np.array_equal(px(Image.open("a.png")), px(Image.open("again.png")))
    # --method sdedit spelled out is the same.
    cmd = ["stylize", "photo.png", "--method", "sdedit", "--generator", str(runs["ddpm"])]
    assert main([*cmd, *flags, "-o", "b.png"]) == 0
    assert np.array_equal(px(Image.open("a.png")), px(Image.open("b.png")))


def test_cli_errors_are_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    photo(64, 48).save("photo.png")
    (tmp_path / "folder").mkdir()
    cases = [
        (["--generator", str(runs["gan"])], "is a GAN run; --generator needs a diffusion run"),
        (["--generator", "folder"], "folder: not an artgen run folder"),
        (["--generator", "nowhere"], "nowhere: no such run folder"),
        (["--generator", str(runs["ddpm"]), "--style", "swirls"], "takes no style images"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(["stylize", "photo.png", *extra, "-o", "x.png", "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()
    assert main(["video", "photo.png", "--generator", str(runs["ddpm"]), "-o", "v.mp4"]) == 2
    assert "not for videos" in capsys.readouterr().err


def test_cli_batch(runs, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        photo(48, 32, seed=i).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    argv = ["batch", str(photos), "--generator", str(runs["ddpm"]), "--steps", "5", "-q"]
    assert main([*argv, "-o", str(out)]) == 0
    assert "2 stylised" in capsys.readouterr().out
    assert read_params(out / "p1.png")["method"] == "sdedit"


def test_studio_offers_the_runs_it_is_pointed_at(runs, tmp_path):
    pytest.importorskip("gradio")
    from artgen.cli import studio as app

    studio = app.Studio(app.AppConfig(runs=str(runs["folder"]), device="cpu"))
    try:
        assert set(studio.runs) == {"ddpm-art", "sd-art"}  # not the GAN run
        demo = app.build(studio)
        assert demo is not None
        photo(64, 48).save(tmp_path / "photo.png")
        path, status, _, _, history = studio.sdedit(
            str(tmp_path / "photo.png"), "sd-art", 0.5, 1, "", []
        )
        assert status.startswith("Done:") and history == [path]
        p = read_params(path)
        assert p["method"] == "sdedit" and p["options"]["prompt"] == INSTANCE
        _, problem, *_ = studio.sdedit(str(tmp_path / "photo.png"), "nope", 0.5, 1, "", [])
        assert "Unknown run" in problem
    finally:
        studio.close()
    with pytest.raises(ArtgenError, match="holds no diffusion run"):
        app.find_runs(str(tmp_path))


def test_the_run_hash_covers_its_config_and_base_not_only_its_weights(runs, tmp_path):
    """issue 34: pointing a run's base at another base remade a different picture under the
    same run_sha256. The hash now covers config.json, the base's identity and the weights;
    a hash recorded before (of the weights alone) is still accepted for what it covers."""
    import shutil

    from safetensors.torch import load_file, save_file

    from artgen.style.sdedit import weights_sha256

    run = Path(shutil.copytree(runs["ddpm"], tmp_path / "run"))
    config = run / "config.json"
    doc = json.loads(config.read_text())
    base = Path(doc["options"]["base"])
    first, weights_only = run_sha256(run), weights_sha256(run)
    assert first == run_sha256(runs["ddpm"]) != weights_only  # a copied run: the same run
    # the same base, copied elsewhere: the same identity
    copy = Path(shutil.copytree(base, tmp_path / "same-base"))
    doc["options"]["base"] = str(copy)
    config.write_text(json.dumps(doc))
    assert run_sha256(run) == first
    # another base (other scheduler weights would do; here the UNet's differ)
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(unet))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(unet))
    changed = run_sha256(run)
    assert changed != first
    with pytest.raises(ArtgenError, match="have changed since"):
        load(opts(run, run_sha256=first))
    # a PNG recorded with the old scheme vouches for the weights only: accepted
    model = load(opts(run, run_sha256=weights_only))
    assert model.sha256 == changed
    out = stylize(photo(32, 32), options=opts(run, run_sha256=weights_only, size=16, steps=2))
    assert out.info["run_sha256"] == changed  # a remade picture records the full hash
    # an edited config (here the instance prompt) is a changed run too
    doc["options"]["prompt"] = "another prompt"
    config.write_text(json.dumps(doc))
    assert run_sha256(run) not in (first, changed)


def test_a_picture_recorded_when_noise_was_called_strength_reads_back():
    assert SDEditOptions.from_dict({"strength": 0.4, "steps": 10}).noise == 0.4
    with pytest.raises(ArtgenError, match="old and new names"):
        SDEditOptions.from_dict({"strength": 0.4, "noise": 0.5})
