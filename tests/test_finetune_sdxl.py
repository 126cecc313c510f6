"""SDXL DreamBooth-LoRA (issue 14 item 1) on a tiny SDXL pipeline built in the test:
recognition, the text conditioning and micro-conditioning against diffusers' own
pipeline, cached latents against the uncached draw, per-image captions, validation
prompts, LoRA on both text encoders, prior preservation, exact resume, loading in plain
diffusers (separate process) and from kohya's single file, sampling, eval and SDEdit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from artgen.core.data import ImageSet, list_images
from artgen.core.errors import ArtgenError, Cancelled
from artgen.core.images import read_params
from artgen.runs.diffusion import adapted, load_run
from artgen.runs.options import options_for_resume
from artgen.testing import image_folder
from artgen.train.diffusion import (
    DiffusionFinetuneOptions,
    LatentCache,
    default_resolution,
    encode_text,
    finetune_diffusion,
    load_base,
    pipeline_family,
    time_ids,
    to_model_space,
)

from .conftest import lora_probes, photo
from .tiny_diffusion import tiny_sdxl

RES = 16  # the tiny VAE halves, the UNet's sample size is 8


@pytest.fixture(scope="module")
def xl(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdxl")
    images = image_folder(root / "images", n=6, size=24)
    (images / "img00.txt").write_text("a red sks painting\n")
    (images / "captions.csv").write_text("file,caption\nimg01.png,a blue sks painting\n")
    return {"base": tiny_sdxl(root / "base"), "images": images}


def xl_options(xl, out, **kw) -> DiffusionFinetuneOptions:
    args = dict(
        base=str(xl["base"]),
        images=str(xl["images"]),
        out=str(out),
        steps=4,
        batch_size=2,
        lr=3e-2,
        warmup_steps=0,
        sample_every=2,
        checkpoint_every=2,
        num_samples=2,
        sample_steps=2,
        ema_decay=0.0,
        resolution=RES,
        device="cpu",
        prompt="a sks painting",
    )
    args.update(kw)
    return DiffusionFinetuneOptions(**args)


FULL = dict(  # every SDXL feature at once
    train_text_encoder=True,
    text_encoder_lr=1e-2,
    cache_latents=True,
    validation_prompt="a green sks painting",
    class_prompt="a painting",
    num_class_images=2,
    export_format="kohya",
    lora_rank=4,
    lora_alpha=2,
    ema_decay=0.9,
    gradient_checkpointing=True,
)


@pytest.fixture(scope="module")
def xl_run(xl, tmp_path_factory) -> Path:
    return finetune_diffusion(xl_options(xl, tmp_path_factory.mktemp("xlrun") / "run", **FULL))


def test_an_sdxl_pipeline_is_recognised_and_a_refiner_is_not(xl):
    pipe = load_base(str(xl["base"]))
    assert pipeline_family(pipe) == "sdxl"
    assert default_resolution(pipe) == RES
    pipe.text_encoder = None  # the SDXL refiner's layout: only the second encoder
    with pytest.raises(ArtgenError, match="SDXL base pipelines"):
        pipeline_family(pipe)


def test_text_conditioning_matches_the_sdxl_pipeline(xl):
    pipe = load_base(str(xl["base"]))
    cpu = torch.device("cpu")
    prompts = ["a sks painting", "a cat"]
    with torch.no_grad():
        states, pooled = encode_text(pipe, prompts, cpu)
        ref, _, ref_pooled, _ = pipe.encode_prompt(
            prompts, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    assert states.shape == (2, 32, 32) and pooled.shape == (2, 16)  # 16 + 16 concatenated
    torch.testing.assert_close(states, ref, rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=0)


def test_micro_conditioning_by_hand(xl, tmp_path):
    """A 40x30 photo at 16 px: resized to 21x16; a crop at left 3, mirrored, is the crop
    at left 21 - 16 - 3 = 2 of the mirrored image; the six ids are SDXL's."""
    path = tmp_path / "wide.png"
    photo(40, 30, seed=3).save(path)
    data = ImageSet([path], RES, random_flip=True)
    assert data.original_sizes == [(30, 40)]
    item = data.crop(0, 0, 3, True)
    assert item["crop_top_left"] == (0, 2)
    plain = data.crop(0, 0, 3, False)
    assert torch.equal(item["pixels"], plain["pixels"].flip(2))
    ids = time_ids((30, 40), item["crop_top_left"], RES)
    assert ids.tolist() == [30, 40, 0, 2, 16, 16]
    pipe = load_base(str(xl["base"]))
    ref = pipe._get_add_time_ids(
        (30, 40), (0, 2), (16, 16), torch.float32, text_encoder_projection_dim=16
    )
    torch.testing.assert_close(ids[None], ref)


def test_cached_latents_are_the_uncached_draw(xl):
    """With centre crops, the cache draws the same flips and posterior noise from the
    same generator as an uncached step does."""
    pipe = load_base(str(xl["base"]))
    files = list_images(xl["images"])
    idx = [3, 0, 5, 0]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    data = ImageSet(files, RES, center_crop=True, random_flip=True, generator=g1)
    items = [data[i] for i in idx]
    ref = to_model_space(pipe, torch.stack([it["pixels"] for it in items]), g1)
    cache = LatentCache(pipe, data, torch.device("cpu"), flips=True)
    got, corners = cache.draw(idx, g2, torch.device("cpu"))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert corners == [it["crop_top_left"] for it in items]
    assert torch.equal(g1.get_state(), g2.get_state())  # the same randomness used


def test_the_run_records_captions_crops_and_trains_every_adapter(xl, xl_run):
    config = json.loads((xl_run / "config.json").read_text())
    assert config["family"] == "sdxl"
    assert config["captioned_images"] == 2
    assert config["crops"] == "centre (cached latents)"
    captions = json.loads((xl_run / "captions.json").read_text())
    assert captions["img00.png"] == "a red sks painting"  # NAME.txt
    assert captions["img01.png"] == "a blue sks painting"  # captions.csv
    assert captions["img02.png"] == "a sks painting"  # the instance prompt
    assert len(list((xl_run / "class_images").iterdir())) == 2  # prior preservation
    assert sorted(p.name for p in (xl_run / "samples").iterdir()) == [
        "final.png",
        "step-0000002.png",
    ]
    keys = load_file(str(xl_run / "lora" / "pytorch_lora_weights.safetensors"))
    parts = {k.split(".")[0] for k in keys}
    assert parts == {"unet", "text_encoder", "text_encoder_2"}
    pipe = load_run(xl_run)
    got = adapted(pipe)
    te = {m for m in got if m.startswith("text_encoder")}
    assert len(te) == 2 * 2 * 4  # 2 encoders x 2 layers x q, k, v, out projections
    assert len(keys) == 2 * len(got)  # every adapter in the file came back
    base = load_base(str(xl["base"]))
    # the text encoders' adapters trained (lora_B starts at zero)
    b = [v for k, v in keys.items() if k.startswith("text_encoder_2.") and ".lora_B." in k]
    assert max(float(v.abs().max()) for v in b) > 1e-4
    with torch.no_grad():
        ours = encode_text(pipe, ["a sks painting"], torch.device("cpu"))[0]
        theirs = encode_text(base, ["a sks painting"], torch.device("cpu"))[0]
    assert (ours - theirs).abs().max() > 1e-4


def test_validation_prompt_makes_the_sample_grids(xl, tmp_path, monkeypatch):
    import artgen.train.diffusion as d

    seen = []
    real = d.generate

    def spy(pipe, n, **kw):
        seen.append(kw["prompt"])
        return real(pipe, n, **kw)

    monkeypatch.setattr(d, "generate", spy)
    finetune_diffusion(
        xl_options(xl, tmp_path / "v", steps=2, validation_prompt="a green sks painting")
    )
    assert seen == ["a green sks painting"]


def trained(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir())[-1]
    return load_file(str(last / "trainable.safetensors"))


def test_resume_continues_exactly(xl, tmp_path):
    opts = dict(FULL, num_class_images=2, class_images=str(tmp_path / "class"))
    straight = finetune_diffusion(xl_options(xl, tmp_path / "a", checkpoint_every=1, **opts))

    def stop_at_2(p):
        if p.step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        finetune_diffusion(
            xl_options(xl, tmp_path / "b", checkpoint_every=1, **opts), callback=stop_at_2
        )
    resumed = finetune_diffusion(options_for_resume(tmp_path / "b"))
    a, b = trained(straight), trained(resumed)
    assert a.keys() == b.keys() and any(k.startswith("text_encoder_2.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_resume_refuses_changed_captions(xl, tmp_path):
    import shutil

    images = Path(shutil.copytree(xl["images"], tmp_path / "images"))
    run = tmp_path / "run"

    def stop(p):
        raise Cancelled

    with pytest.raises(Cancelled):
        finetune_diffusion(
            xl_options(xl, run, images=str(images), checkpoint_every=1), callback=stop
        )
    (images / "img03.txt").write_text("something else")
    with pytest.raises(ArtgenError, match="captions have changed"):
        finetune_diffusion(options_for_resume(run))


_PROBE = """
import sys, torch
from diffusers import StableDiffusionXLPipeline
base, pairs = sys.argv[1], sys.argv[2:]
for lora, out in zip(pairs[::2], pairs[1::2]):  # a fresh pipeline for each
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    if lora != "-":
        pipe.load_lora_weights(lora)
    adapted = sorted(
        f"{c}.{n}"
        for c in ("unet", "text_encoder", "text_encoder_2")
        for n, m in getattr(pipe, c).named_modules()
        if hasattr(m, "lora_A") and m.lora_A
    )
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        states, _, pooled, _ = pipe.encode_prompt("a sks painting", device=torch.device("cpu"), do_classifier_free_guidance=False)
        ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]])
        y = pipe.unet(
            x, 500, encoder_hidden_states=states,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
        ).sample
    torch.save({"y": y, "adapted": adapted}, out)
"""


def _probe(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        states, pooled = encode_text(pipe, ["a sks painting"], torch.device("cpu"))
        ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]])
        return pipe.unet(
            x,
            500,
            encoder_hidden_states=states,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
        ).sample


def test_plain_diffusers_and_kohyas_file_load_every_adapter(xl, xl_run, tmp_path):
    """In a separate process, as a user would: StableDiffusionXLPipeline.from_pretrained
    and load_lora_weights, of lora/ and of the kohya-style single file."""
    loras = {
        "base": "-",
        "lora": str(xl_run / "lora"),
        "kohya": str(xl_run / "lora" / "lora_kohya.safetensors"),
    }
    outs = lora_probes(_PROBE, xl["base"], loras, tmp_path)
    pipe = load_run(xl_run)
    want = sorted(adapted(pipe))
    ours = _probe(pipe)
    assert (ours - outs["base"]["y"]).abs().max() > 1e-3
    for name in ("lora", "kohya"):
        assert outs[name]["adapted"] == want, name
        torch.testing.assert_close(outs[name]["y"], ours, atol=1e-5, rtol=1e-4)


def test_kohya_keys_for_sdxl(xl_run):
    tensors = load_file(str(xl_run / "lora" / "lora_kohya.safetensors"))
    prefixes = {k.split("_")[1] for k in tensors}
    assert prefixes == {"unet", "te1", "te2"}
    q = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    assert tensors[f"{q}.lora_down.weight"].shape == (4, 16)
    assert tensors[f"{q}.alpha"].item() == 2.0


def test_cli_sample_eval_and_sdedit_with_an_sdxl_run(xl, xl_run, tmp_path, capsys):
    from artgen.cli import main

    grid = tmp_path / "grid.png"
    assert main(["sample", str(xl_run), "-n", "2", "--steps", "2", "-o", str(grid)]) == 0
    assert Image.open(grid).size == (2 * RES + 2, RES)
    code = main(
        [
            "eval",
            str(xl_run),
            "--images",
            str(xl["images"]),
            "--num-samples",
            "4",
            "--sample-steps",
            "2",
            "--lpips",
            "stand-in",
            "--kid-subsets",
            "5",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((xl_run / "eval.json").read_text())["samples"]["count"] == 4
    src = tmp_path / "photo.png"
    photo(32, 32, seed=2).save(src)
    out = tmp_path / "edit.png"
    code = main(
        ["stylize", str(src), "--generator", str(xl_run), "--noise", "0.5", "--steps", "4"]
        + ["-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (RES, RES)
    params = read_params(out)
    assert params["method"] == "sdedit" and params["options"]["prompt"] == "a sks painting"
