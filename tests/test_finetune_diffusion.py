"""Fine-tuning tiny diffusion pipelines (built in the process, saved with save_pretrained)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from artgen.core.errors import ArtgenError, Cancelled
from artgen.runs.diffusion import load_run
from artgen.runs.options import options_for_resume
from artgen.testing import image_folder, tiny_ddpm
from artgen.train.diffusion import (
    DiffusionFinetuneOptions,
    diffusion_loss,
    finetune_diffusion,
    generate,
    load_base,
    to_model_space,
)

from .conftest import REPO, edit_json, lora_probes, one_line_error
from .tiny_diffusion import tiny_sd


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {
        "ddpm": tiny_ddpm(root / "ddpm"),
        "sd": tiny_sd(root / "sd"),
        "images": image_folder(root / "images", n=8, size=24),
    }


def fast(bases, out, base="ddpm", **kw) -> DiffusionFinetuneOptions:
    """Options for a quick CPU run on the tiny models."""
    args = dict(
        base=base,
        images=str(bases["images"]),
        out=str(out),
        steps=40,
        batch_size=4,
        lr=3e-3,
        warmup_steps=0,
        sample_every=1000,
        checkpoint_every=1000,
        num_samples=4,
        sample_steps=2,
        ema_decay=0.0,
        device="cpu",
    )
    args.update(kw)
    args["base"] = str(bases.get(args["base"], args["base"]))
    return DiffusionFinetuneOptions(**args)


@torch.no_grad()
def fixed_batch_loss(pipe, folder: Path, resolution: int, seed: int = 123) -> float:
    """The denoising loss on the training images with fixed noise and timesteps."""
    from diffusers import DDPMScheduler

    from artgen.core.data import ImageSet, list_images

    data = ImageSet(list_images(folder), resolution, center_crop=True, random_flip=False)
    pixels = torch.stack([data[i]["pixels"] for i in range(len(data))])
    g = torch.Generator().manual_seed(seed)
    x0 = to_model_space(pipe, pixels, g)
    cond = None
    if hasattr(pipe, "text_encoder"):
        from artgen.train.diffusion import encode_prompt

        cond = encode_prompt(pipe, "a painting in sks style", torch.device("cpu"))
        cond = cond.expand(x0.shape[0], -1, -1)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.unet.eval()
    losses = [diffusion_loss(pipe.unet, sched, x0, cond, g).mean() for _ in range(8)]
    return float(torch.stack(losses).mean())


def test_lora_unconditional_learns_saves_only_adapters_and_samples(bases, tmp_path):
    before = fixed_batch_loss(load_base(str(bases["ddpm"])), bases["images"], 16)
    run = finetune_diffusion(fast(bases, tmp_path / "run", steps=30, lr=1e-2))
    pipe = load_run(run)
    after = fixed_batch_loss(pipe, bases["images"], 16)
    assert after < 0.75 * before, (before, after)

    lora = load_file(str(run / "lora" / "adapter_model.safetensors"))
    assert lora and all("lora_A" in k or "lora_B" in k for k in lora)
    adapters = {k for k in pipe.unet.state_dict() if "lora_" in k}
    assert len(lora) == len(adapters)  # every adapter tensor, and nothing else
    unet_params = sum(p.numel() for p in load_base(str(bases["ddpm"])).unet.parameters())
    assert sum(v.numel() for v in lora.values()) < 0.6 * unet_params

    images = generate(pipe, 3, steps=3, seed=5)
    assert [im.size for im in images] == [(16, 16)] * 3
    again = generate(pipe, 1, steps=3, seed=5)[0]
    assert list(again.getdata()) == list(images[0].getdata())  # image i depends on seed + i

    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "unconditional" and config["options"]["method"] == "lora"
    card = (run / "README.md").read_text()
    assert "base_model:" in card and "samples/final.png" in card
    assert Image.open(run / "samples" / "final.png").size == (16 * 2 + 2, 16 * 2 + 2)


def test_full_finetune_with_frozen_down_blocks(bases, tmp_path):
    base = load_base(str(bases["ddpm"]))
    start = {k: v.clone() for k, v in base.unet.state_dict().items()}
    run = finetune_diffusion(
        fast(bases, tmp_path / "run", method="full", freeze="down_blocks", lr=1e-3, steps=30)
    )
    tuned = load_run(run).unet.state_dict()
    frozen = [k for k in start if k.startswith("down_blocks.")]
    trained = [k for k in start if k.startswith("up_blocks.")]
    assert frozen and all(torch.equal(start[k], tuned[k]) for k in frozen)
    assert any(not torch.equal(start[k], tuned[k]) for k in trained)
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_text_to_image_lora_with_prior_preservation(bases, tmp_path):
    before = fixed_batch_loss(load_base(str(bases["sd"])), bases["images"], 16)
    run = finetune_diffusion(
        fast(
            bases,
            tmp_path / "run",
            base="sd",
            steps=40,
            lr=1e-2,
            class_prompt="a painting",
            num_class_images=3,
        )
    )
    assert len(list((run / "class_images").glob("*.png"))) == 3
    pipe = load_run(run)
    after = fixed_batch_loss(pipe, bases["images"], 16)
    assert after < 0.9 * before, (before, after)
    # diffusers' own LoRA format: loads onto the base with load_lora_weights().
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    images = generate(pipe, 2, steps=2, prompt="a painting in sks style")
    assert [im.size for im in images] == [(16, 16)] * 2


def test_text_to_image_full(bases, tmp_path):
    run = finetune_diffusion(fast(bases, tmp_path / "run", base="sd", method="full", steps=4))
    assert (run / "unet" / "config.json").is_file()
    assert len(generate(load_run(run), 1, steps=2)) == 1


def trained(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir())[-1]
    return load_file(str(last / "trainable.safetensors"))


@pytest.mark.parametrize("how", ["callback", "ctrl-c mid-step"])
def test_resume_after_interrupt_continues_exactly(
    bases, tmp_path, monkeypatch, sigint_default, how
):
    straight = finetune_diffusion(
        fast(bases, tmp_path / "a", steps=8, ema_decay=0.99, lr_schedule="cosine", warmup_steps=2)
    )

    def stop_at_5(p):
        if p.step == 5:
            raise Cancelled

    calls = []

    def loss_then_sigint(*args, **kw):  # Ctrl-C arrives inside step 5, before its update
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return diffusion_loss(*args, **kw)

    opts = fast(
        bases, tmp_path / "b", steps=8, ema_decay=0.99, lr_schedule="cosine", warmup_steps=2
    )
    if how == "callback":
        with pytest.raises(Cancelled):
            finetune_diffusion(opts, callback=stop_at_5)
    else:
        monkeypatch.setattr("artgen.train.diffusion.diffusion_loss", loss_then_sigint)
        with pytest.raises(KeyboardInterrupt):  # after step 5 is whole, not inside it
            finetune_diffusion(opts)
        monkeypatch.undo()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-0000005"]
    with pytest.raises(ArtgenError, match="already holds a run; pass --resume"):
        finetune_diffusion(opts)
    steps_seen = []
    resumed = finetune_diffusion(
        options_for_resume(tmp_path / "b"), callback=lambda p: steps_seen.append(p.step)
    )
    assert steps_seen == [6, 7, 8]
    a, b = trained(straight), trained(resumed)
    assert a.keys() == b.keys() and not any(".default_" in k for k in b)  # no duplicate adapters
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ema_a = load_file(str(straight / "checkpoints/step-0000008/ema.safetensors"))
    ema_b = load_file(str(resumed / "checkpoints/step-0000008/ema.safetensors"))
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=0, atol=1e-6)
    log = [json.loads(line)["step"] for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 9))


def test_resume_refuses_changed_settings(bases, tmp_path):
    run = finetune_diffusion(fast(bases, tmp_path / "r", steps=2, checkpoint_every=1))
    state = run / "checkpoints" / "step-0000002" / "state.json"
    saved = json.loads(state.read_text())
    assert saved["num_processes"] == 1 and "rng0" in saved
    state.write_text(json.dumps({**saved, "num_processes": 2}))
    with pytest.raises(ArtgenError, match="saved by 2 process.*not 1"):
        finetune_diffusion(options_for_resume(run, steps=3))
    with pytest.raises(ArtgenError, match="--lora-rank cannot change when resuming"):
        options_for_resume(tmp_path / "r", lora_rank=4, steps=3)
    # the trainer itself keeps the run's settings, for options built by hand too
    changed = dataclasses.replace(options_for_resume(run, steps=3), lora_rank=4)
    with pytest.raises(ArtgenError, match="--lora-rank: the run .* used 8, not 4"):
        finetune_diffusion(changed)
    for k, v in (("lr", 0.5), ("batch_size", 2)):  # no longer silently allowed
        with pytest.raises(ArtgenError, match=f"--{k.replace('_', '-')}: the run"):
            finetune_diffusion(dataclasses.replace(options_for_resume(run, steps=3), **{k: v}))


def test_resume_without_a_checkpoint_is_an_error_naming_the_folder(bases, tmp_path):
    run = finetune_diffusion(fast(bases, tmp_path / "r", steps=1, checkpoint_every=1))
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ArtgenError, match=r"r: no checkpoint to resume from in .*checkpoints"):
        finetune_diffusion(options_for_resume(run, steps=3))
    with pytest.raises(ArtgenError, match="nothing to resume"):
        options_for_resume(tmp_path / "nothing")


def test_balance_draws_attribute_values_equally(bases, tmp_path):
    folder = image_folder(tmp_path / "set", n=20, size=20)
    rows = ["file,hair"] + [f"img{i:02d}.png,{'dark' if i < 18 else 'light'}" for i in range(20)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = finetune_diffusion(
        fast(
            bases,
            tmp_path / "run",
            images=str(folder),
            labels=str(tmp_path / "labels.csv"),
            balance="hair",
            steps=100,
            batch_size=4,
            lr=1e-4,
        )
    )
    balance = json.loads((run / "balance.json").read_text())
    assert balance["dataset"] == {"dark": 0.9, "light": 0.1}
    assert abs(balance["realised"]["light"] - 0.5) < 0.08, balance  # 400 draws


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": "EMPTY"}, "no images"),
        ({"images": "BAD"}, "broken.png"),
        ({"labels": "MISSING_FILES", "balance": "hair"}, "not among the images"),
        ({"labels": "GOOD", "balance": "eyes"}, "eyes"),
        ({"balance": "hair"}, "--balance needs --labels"),
        ({"base": "/nonexistent/model"}, "no such folder"),
        ({"method": "dreambooth"}, "--method .dreambooth.: choose one of lora, full"),
        ({"freeze": "encoder_blocks"}, "no such UNet block"),
        (
            {
                "freeze": "down_blocks,mid_block,up_blocks,conv_in,conv_out,time_embedding,conv_norm_out",
                "method": "full",
            },
            "nothing left to train",
        ),
    ],
)
def test_bad_inputs(bases, tmp_path, change, message):
    (tmp_path / "empty").mkdir()
    bad = image_folder(tmp_path / "bad", n=2, size=20)
    (bad / "broken.png").write_bytes(b"not a png at all")
    good = "file,hair\n" + "".join(f"img{i:02d}.png,{'a' if i % 2 else 'b'}\n" for i in range(8))
    (tmp_path / "good.csv").write_text(good)
    (tmp_path / "missing.csv").write_text(good + "ghost.png,a\n")
    subst = {
        "EMPTY": tmp_path / "empty",
        "BAD": bad,
        "GOOD": tmp_path / "good.csv",
        "MISSING_FILES": tmp_path / "missing.csv",
    }
    change = {k: str(subst.get(v, v)) for k, v in change.items()}
    with pytest.raises(ArtgenError, match=message):
        finetune_diffusion(fast(bases, tmp_path / "run", steps=1, **change))


def test_cli_finetune_sample_eval(bases, tmp_path, capsys):
    from artgen.cli import main

    run = tmp_path / "run"
    code = main(
        [
            "finetune",
            "diffusion",
            "--base",
            str(bases["ddpm"]),
            "--images",
            str(bases["images"]),
            "--out",
            str(run),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--sample-every",
            "2",
            "--num-samples",
            "4",
            "--sample-steps",
            "2",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (run / "samples" / "step-0000002.png").is_file()
    grid = tmp_path / "grid.png"
    assert main(["sample", str(run), "-n", "6", "--steps", "2", "-o", str(grid)]) == 0
    assert Image.open(grid).size == (3 * 16 + 2 * 2, 2 * 16 + 2)
    assert main(["sample", str(run), "-n", "6", "--steps", "2", "-o", str(grid)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                str(run),
                "--images",
                str(bases["images"]),
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
        == 0
    )
    out = capsys.readouterr().out
    assert "FID" in out and "efficientnet-lite0" in out and "stand-in" in out
    assert json.loads((run / "eval.json").read_text())["samples"]["count"] == 4

    assert (
        main(
            [
                "finetune",
                "diffusion",
                "--base",
                str(bases["ddpm"]),
                "--images",
                str(bases["images"]),
                "--out",
                str(run),
                "--steps",
                "3",
            ]
        )
        == 2
    )
    assert "pass --resume" in capsys.readouterr().err
    # --resume needs only the run folder; a longer --steps extends the run.
    assert main(["finetune", "diffusion", "--out", str(run), "--resume", "--steps", "5", "-q"]) == 0
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 5


def test_hub_id_loads_offline_from_the_cache(bases, tmp_path):
    """The path a real hub id takes: HF_HUB_OFFLINE=1 and a Hugging Face cache on disk."""
    snap = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--artgen-test--tiny-ddpm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snap)
    import shutil

    shutil.copytree(bases["ddpm"], repo / "snapshots" / snap)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "artgen",
        "finetune",
        "diffusion",
        "--images",
        str(bases["images"]),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--num-samples",
        "1",
        "--sample-steps",
        "1",
        "--device",
        "cpu",
        "-q",
    ]
    ok = subprocess.run(
        [*cmd, "--base", "artgen-test/tiny-ddpm", "--out", str(tmp_path / "r1")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r1" / "lora" / "adapter_model.safetensors").is_file()
    bad = subprocess.run(
        [*cmd, "--base", "artgen-test/not-cached", "--out", str(tmp_path / "r2")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert "artgen-test/not-cached" in last and "not in the Hugging Face cache" in last


@pytest.mark.heavy
def test_two_processes_through_torchrun(bases, tmp_path):
    """What accelerate launch does on several GPUs, here as two CPU processes (gloo DDP)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    cmd = [
        str(torchrun),
        "--standalone",  # a free port, not the fixed 29500 another run may hold
        "--nproc_per_node",
        "2",
        "-m",
        "artgen",
        "finetune",
        "diffusion",
        "--base",
        str(bases["ddpm"]),
        "--images",
        str(bases["images"]),
        "--out",
        str(run),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--num-samples",
        "1",
        "--sample-steps",
        "1",
        "--device",
        "cpu",
        "-q",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done:") == 1
    assert json.loads((run / "config.json").read_text())["num_processes"] == 2
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000002", "step-0000004"]
    last = run / "checkpoints" / "step-0000004"
    assert json.loads((last / "state.json").read_text())["num_processes"] == 2
    rng0, rng1 = (load_file(str(last / f"rng{r}.safetensors")) for r in (0, 1))
    assert any(not torch.equal(rng0[k], rng1[k]) for k in rng0)  # each process's own stream


# -- damaged runs: one line naming the file and the field, never a traceback ----------------


@pytest.fixture(scope="module")
def runs(bases, tmp_path_factory) -> dict[str, Path]:
    """Finished tiny runs (LoRA with checkpoints at steps 1 and 2; full), copied by each
    test that damages one."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "lora": finetune_diffusion(fast(bases, root / "lora", steps=2, checkpoint_every=1)),
        "full": finetune_diffusion(fast(bases, root / "full", method="full", steps=1)),
    }


def copy_of(runs, kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[kind], tmp_path / kind))


def _sample(run: Path, tmp_path: Path) -> list[str]:
    return ["sample", str(run), "-n", "1", "--steps", "1", "-o", str(tmp_path / "s.png")]


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("step is a string", ["state.json", "step"]),
        ("no optimizer in state.json", ["state.json", "optimizer"]),
        ("garbled rng state", ["rng0", "numpy"]),
        ("no rng0.safetensors", ["rng0.safetensors"]),
        ("truncated trainable.safetensors", ["trainable.safetensors"]),
        ("truncated optimizer.safetensors", ["optimizer.safetensors"]),
        ("lr_scheduler garbage", ["state.json", "lr_scheduler"]),
    ],
)
def test_a_damaged_diffusion_checkpoint_is_one_line(runs, tmp_path, capsys, damage, names):
    from artgen.cli import main

    run = copy_of(runs, "lora", tmp_path)
    ckpt = run / "checkpoints" / "step-0000002"
    state = ckpt / "state.json"
    if damage == "step is a string":
        edit_json(state, lambda s: s.update(step="2"))
    elif damage == "no optimizer in state.json":
        edit_json(state, lambda s: s.pop("optimizer"))
    elif damage == "garbled rng state":
        edit_json(state, lambda s: s["rng0"]["numpy"].__setitem__(1, "garbled"))
    elif damage == "no rng0.safetensors":
        (ckpt / "rng0.safetensors").unlink()
    elif damage.startswith("truncated"):
        f = ckpt / damage.split()[1]
        f.write_bytes(f.read_bytes()[:-9])
    elif damage == "lr_scheduler garbage":
        edit_json(state, lambda s: s["lr_scheduler"].update(last_epoch="many"))
    rc = main(["finetune", "diffusion", "--out", str(run), "--resume", "--steps", "3", "-q"])
    one_line_error(capsys, rc, str(ckpt), *names)
    with pytest.raises(ArtgenError):
        finetune_diffusion(options_for_resume(run, steps=3))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"method": "finetune-diffusion", "options": []}', "options is [], not an object"),
        ("BATCH", 'options.batch_size is "abc", not a whole number'),
        ("{", "not valid JSON"),
        ("[]", "not a run config object"),
        ('{"options": {}}', "method is null"),
        ('{"method": "finetune-diffusion", "options": {}}', "options.out is missing"),
        ("RESOLUTION", "resolution"),
    ],
)
def test_a_damaged_diffusion_run_config_is_one_line(runs, tmp_path, capsys, content, message):
    from artgen.cli import main

    run = copy_of(runs, "lora", tmp_path)
    config = run / "config.json"
    if content == "BATCH":
        edit_json(config, lambda c: c["options"].update(batch_size="abc"))
    elif content == "RESOLUTION":
        edit_json(config, lambda c: c.update(resolution="big"))
    else:
        config.write_text(content)
    one_line_error(capsys, main(_sample(run, tmp_path)), str(config), message)
    with pytest.raises(ArtgenError, match=str(config)):
        load_run(run)
    if content != "RESOLUTION":  # resuming reads the options only
        rc = main(["finetune", "diffusion", "--out", str(run), "--resume", "--steps", "3", "-q"])
        one_line_error(capsys, rc, str(config), message)


@pytest.mark.parametrize(
    ("kind", "damage", "file"),
    [
        ("lora", "truncated", "lora/adapter_model.safetensors"),
        ("lora", "non-finite", "lora/adapter_model.safetensors"),
        ("lora", "garbled config", "lora/adapter_config.json"),
        ("lora", "wrong rank", "lora/adapter_model.safetensors"),
        ("full", "truncated", "unet"),
        ("full", "non-finite", "unet"),
    ],
)
def test_damaged_run_weights_are_refused_when_sampling(runs, tmp_path, capsys, kind, damage, file):
    from artgen.cli import main

    run = copy_of(runs, kind, tmp_path)
    weights = run / "lora" / "adapter_model.safetensors"
    if kind == "full":
        weights = run / "unet" / "diffusion_pytorch_model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-11])
    elif damage == "non-finite":
        tensors = load_file(str(weights))
        name = sorted(tensors)[0]
        tensors[name].view(-1)[0] = float("nan")
        save_file(tensors, str(weights))
    elif damage == "garbled config":
        edit_json(run / file, lambda c: c.update(r="eight"))
    elif damage == "wrong rank":
        edit_json(run / "lora" / "adapter_config.json", lambda c: c.update(r=3))
    line = one_line_error(capsys, main(_sample(run, tmp_path)), str(run / file))
    if damage == "non-finite":
        assert "non-finite" in line
    with pytest.raises(ArtgenError):
        load_run(run)


def test_resume_with_a_relative_path_in_the_config_uses_the_run_folder(runs, bases, tmp_path):
    run = copy_of(runs, "lora", tmp_path)
    saved = json.loads((run / "config.json").read_text())["options"]
    assert saved["images"] == str(bases["images"]) and os.path.isabs(saved["base"])
    shutil.copytree(bases["images"], run / "data")
    edit_json(run / "config.json", lambda c: c["options"].update(images="data"))
    options = options_for_resume(run, steps=3)
    assert options.images == str(run / "data")
    finetune_diffusion(options)
    assert json.loads((run / "config.json").read_text())["options"]["images"] == str(run / "data")


# -- LoRA files that other tools load (issue 14 item 2) -------------------------------------

_UNET_PROBE = """
import sys, torch
from diffusers import StableDiffusionPipeline
base, pairs = sys.argv[1], sys.argv[2:]
for lora, out in zip(pairs[::2], pairs[1::2]):  # a fresh pipeline for each
    pipe = StableDiffusionPipeline.from_pretrained(base)
    if lora != "-":
        pipe.load_lora_weights(lora)
    kinds = {type(m.base_layer).__name__ for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    adapted = sorted(n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and m.lora_A)
    g = torch.Generator().manual_seed(7)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 3, 32, generator=g)
    with torch.no_grad():
        y = pipe.unet(x, 500, encoder_hidden_states=c).sample
    torch.save({"y": y, "adapted": adapted, "kinds": sorted(kinds)}, out)
"""


def _unet_probe(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 3, 32, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=c).sample


def _adapted(unet) -> dict[str, str]:
    """Module path -> the class of the layer it adapts, for every module with an adapter."""
    return {
        n: type(m.base_layer).__name__
        for n, m in unet.named_modules()
        if hasattr(m, "lora_A") and m.lora_A
    }


@pytest.fixture(scope="module")
def sd_lora(bases, tmp_path_factory) -> Path:
    """A text-to-image LoRA on attention and convolutions, alpha != rank, kohya export."""
    root = tmp_path_factory.mktemp("sdlora")
    return finetune_diffusion(
        fast(
            bases,
            root / "run",
            base="sd",
            steps=3,
            lr=3e-2,
            lora_rank=4,
            lora_alpha=2,
            export_format="kohya",
            sample_every=1000,
            num_samples=1,
        )
    )


def _trained_adapters(bases) -> dict[str, str]:
    """What training adapts: a fresh UNet given the run's LoraConfig."""
    from artgen.train.diffusion import prepare_trainable

    unet = load_base(str(bases["sd"])).unet
    prepare_trainable(unet, fast(bases, "unused", base="sd", lora_rank=4, lora_alpha=2))
    return _adapted(unet)


def test_lora_file_holds_every_adapter_in_peft_names_and_load_run_restores_all(bases, sd_lora):
    keys = load_file(str(sd_lora / "lora" / "pytorch_lora_weights.safetensors"))
    assert keys and all(
        k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys
    )
    trained = _trained_adapters(bases)
    # both kinds of layer: attention projections (Linear) and ResNet convolutions (Conv2d)
    assert set(trained.values()) == {"Linear", "Conv2d"}
    assert len(keys) == 2 * len(trained)
    pipe = load_run(sd_lora)
    assert _adapted(pipe.unet) == trained  # 16 + 32 adapters on the tiny UNet, none dropped


def test_plain_diffusers_loads_the_whole_lora_and_matches_artgen(bases, sd_lora, tmp_path):
    """In a separate process, as a user would: from_pretrained + load_lora_weights (one
    process, a fresh pipeline for each of the base, lora/ and the kohya file)."""
    loras = {
        "base": "-",
        "lora": str(sd_lora / "lora"),
        "kohya": str(sd_lora / "lora" / "lora_kohya.safetensors"),
    }
    outs = lora_probes(_UNET_PROBE, bases["sd"], loras, tmp_path)
    trained = _trained_adapters(bases)
    for name in ("lora", "kohya"):  # diffusers' kohya reader places every adapter too
        assert outs[name]["adapted"] == sorted(trained), name
        assert outs[name]["kinds"] == ["Conv2d", "Linear"]
    ours = _unet_probe(load_run(sd_lora).unet)
    base = outs["base"]["y"]
    assert (ours - base).abs().max() > 1e-3  # the LoRA changes the model...
    torch.testing.assert_close(outs["lora"]["y"], ours, atol=1e-5, rtol=1e-4)  # ...the same way
    # kohya's alpha (2) / rank (4) scale survives the round trip
    torch.testing.assert_close(outs["kohya"]["y"], ours, atol=1e-5, rtol=1e-4)


def test_kohya_file_layout(bases, sd_lora):
    from safetensors import safe_open

    path = sd_lora / "lora" / "lora_kohya.safetensors"
    tensors = load_file(str(path))
    peft = load_file(str(sd_lora / "lora" / "pytorch_lora_weights.safetensors"))
    modules = sorted(_trained_adapters(bases))
    names = ["lora_unet_" + m.replace(".", "_") for m in modules]
    assert sorted(tensors) == sorted(
        f"{n}.{s}" for n in names for s in ("alpha", "lora_down.weight", "lora_up.weight")
    )
    for m, n in zip(modules, names, strict=True):
        assert torch.equal(tensors[f"{n}.lora_down.weight"], peft[f"unet.{m}.lora_A.weight"])
        assert torch.equal(tensors[f"{n}.lora_up.weight"], peft[f"unet.{m}.lora_B.weight"])
        assert tensors[f"{n}.alpha"].item() == 2.0
    # a ResNet conv is LoCon: 3x3 down, 1x1 up
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{conv}.lora_down.weight"].shape[2:] == (3, 3)
    assert tensors[f"{conv}.lora_up.weight"].shape[2:] == (1, 1)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["ss_network_module"] == "networks.lora"


def test_lora_written_before_the_key_fix_loads_whole(bases, sd_lora, tmp_path):
    """Files of earlier runs mixed peft's names (convolutions) with diffusers' old
    attention names; load_run renames them in memory and keeps the run's alpha."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors import safe_open

    run = Path(shutil.copytree(sd_lora, tmp_path / "old"))
    path = run / "lora" / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    mixed = convert_state_dict_to_diffusers(load_file(str(path)))
    assert any(".lora.down." in k for k in mixed) and any(".lora_A." in k for k in mixed)
    save_file(mixed, str(path), metadata=meta)
    pipe = load_run(run)
    assert _adapted(pipe.unet) == _trained_adapters(bases)
    torch.testing.assert_close(_unet_probe(pipe.unet), _unet_probe(load_run(sd_lora).unet))


def test_lora_that_does_not_load_whole_is_an_error(bases, sd_lora, tmp_path):
    run = Path(shutil.copytree(sd_lora, tmp_path / "odd"))
    path = run / "lora" / "pytorch_lora_weights.safetensors"
    with_extra = load_file(str(path))
    key = next(iter(with_extra))
    rank = with_extra[key].shape[0]
    with_extra["unet.no_such_block.proj.lora_A.weight"] = torch.zeros(rank, 8)
    with_extra["unet.no_such_block.proj.lora_B.weight"] = torch.zeros(8, rank)
    save_file(with_extra, str(path))
    with pytest.raises(ArtgenError, match=r"pytorch_lora_weights.safetensors: .*"):
        load_run(run)


def test_unconditional_lora_restores_every_adapter(bases, tmp_path):
    from artgen.train.diffusion import prepare_trainable

    run = finetune_diffusion(fast(bases, tmp_path / "run", steps=2))
    unet = load_base(str(bases["ddpm"])).unet
    prepare_trainable(unet, fast(bases, "unused"))
    assert set(_adapted(unet).values()) == {"Linear", "Conv2d"}
    assert _adapted(load_run(run).unet) == _adapted(unet)


def test_relative_base_is_recorded_so_sampling_works_from_elsewhere(bases, tmp_path, monkeypatch):
    from artgen.cli import main

    monkeypatch.chdir(bases["ddpm"].parent)
    assert (
        main(
            [
                "finetune",
                "diffusion",
                "--base",
                "./ddpm",
                "--images",
                str(bases["images"]),
                "--out",
                str(tmp_path / "run"),
                "--steps",
                "1",
                "--sample-every",
                "1000",
                "--num-samples",
                "1",
                "--sample-steps",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["options"]["base"]
    assert recorded == str(bases["ddpm"].resolve())
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "sample",
                str(tmp_path / "run"),
                "-n",
                "1",
                "--steps",
                "1",
                "-o",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s.png").is_file()


def test_artgen_export_writes_the_kohya_file_of_a_finished_run(sd_lora, tmp_path, capsys):
    from artgen.cli import main

    run = Path(shutil.copytree(sd_lora, tmp_path / "run"))
    kohya = run / "lora" / "lora_kohya.safetensors"
    expected = load_file(str(kohya))
    kohya.unlink()
    assert main(["export", str(run)]) == 0
    again = load_file(str(kohya))
    assert sorted(again) == sorted(expected)
    assert all(torch.equal(again[k], expected[k]) for k in expected)
    # to a file of the user's choice, never over an existing one
    mine = tmp_path / "mine.safetensors"
    assert main(["export", str(run), "-o", str(mine)]) == 0 and mine.is_file()
    capsys.readouterr()
    assert one_line_error(capsys, main(["export", str(run), "-o", str(mine)]), str(mine))
    # a finished run is not resumable: the message says how to train further
    with pytest.raises(ArtgenError, match="already at step 3 of 3"):
        finetune_diffusion(options_for_resume(run))


def test_text_encoder_lora_of_a_stable_diffusion_run(bases, tmp_path):
    """--train-text-encoder on an SD-1-style base: the text encoder's adapters are saved,
    come back with load_run, and kohya's file names them lora_te_ (read by diffusers)."""
    from diffusers import StableDiffusionPipeline

    from artgen.runs.diffusion import adapted
    from artgen.train.diffusion import encode_prompt

    run = finetune_diffusion(
        fast(
            bases,
            tmp_path / "run",
            base="sd",
            steps=3,
            lr=3e-2,
            lora_rank=4,
            train_text_encoder=True,
            export_format="kohya",
        )
    )
    pipe = load_run(run)
    te = {m for m in adapted(pipe) if m.startswith("text_encoder.")}
    assert len(te) == 2 * 4  # two layers x q, k, v, out projections
    kohya = load_file(str(run / "lora" / "lora_kohya.safetensors"))
    assert {k.split("_")[1] for k in kohya} == {"unet", "te"}
    fresh = StableDiffusionPipeline.from_pretrained(str(bases["sd"]))
    fresh.load_lora_weights(str(run / "lora" / "lora_kohya.safetensors"))
    assert adapted(fresh) == adapted(pipe)
    cpu = torch.device("cpu")
    torch.testing.assert_close(
        encode_prompt(fresh, "a sks painting", cpu), encode_prompt(pipe, "a sks painting", cpu)
    )
    base = load_base(str(bases["sd"]))
    assert (encode_prompt(base, "x", cpu) - encode_prompt(pipe, "x", cpu)).abs().max() > 1e-4
    with pytest.raises(ArtgenError, match="--train-text-encoder: .* unconditional"):
        finetune_diffusion(fast(bases, tmp_path / "u", steps=1, train_text_encoder=True))


# -- issue 34: the base, the run's paths, and export ----------------------------------------


def _run_with_base(runs, tmp_path: Path, edit_index=None) -> tuple[Path, Path]:
    """A copy of the LoRA run whose base is a copy of the tiny DDPM base (its
    model_index.json changed by ``edit_index``)."""
    run = copy_of(runs, "lora", tmp_path)
    base = Path(json.loads((run / "config.json").read_text())["options"]["base"])
    copy = Path(shutil.copytree(base, tmp_path / "base"))
    if edit_index is not None:
        edit_json(copy / "model_index.json", edit_index)
    edit_json(run / "config.json", lambda c: c["options"].update(base=str(copy)))
    return run, copy


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"_class_name": "NopePipeline"}, "_class_name 'NopePipeline' is not a pipeline of"),
        ({"unet": ["diffusers", "UNetNope"]}, "unet is a 'UNetNope', a class diffusers does not"),
        ({"unet": ["mymodule", "UNetX"]}, "unet is from 'mymodule', not diffusers"),
        ({"_class_name": ["pipeline", "MyPipeline"]}, "_class_name is a custom pipeline"),
    ],
)
@pytest.mark.parametrize("offline", [False, True])
def test_a_base_that_diffusers_cannot_build_is_one_line_with_its_reason(
    runs, tmp_path, capsys, monkeypatch, entry, message, offline
):
    """A class diffusers lacks was an AttributeError traceback; custom code, with
    HF_HUB_OFFLINE set, was reported as 'offline, not in the cache'."""
    from huggingface_hub import constants

    from artgen.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    run, base = _run_with_base(runs, tmp_path, lambda d: d.update(entry))
    line = one_line_error(capsys, main(_sample(run, tmp_path)), str(base / "model_index.json"))
    assert message in line and "offline" not in line and "huggingface-cli" not in line
    if "custom" in message or "mymodule" in message:
        assert "artgen never runs" in line


def test_a_relative_base_in_a_run_config_is_taken_from_the_run_folder(
    runs, bases, tmp_path, capsys, monkeypatch
):
    """As every path in a run's config.json: the run means the same from any folder."""
    from artgen.cli import main

    run = copy_of(runs, "lora", tmp_path)
    shutil.copytree(bases["ddpm"], run / "the-base")
    here = tmp_path / "elsewhere"
    (here / "the-base").mkdir(parents=True)  # a folder of the same name here: not a base
    monkeypatch.chdir(here)
    for written in ("the-base", "./the-base", "../lora/the-base"):
        edit_json(run / "config.json", lambda c, w=written: c["options"].update(base=w))
        assert main(_sample(run, tmp_path) + ["--overwrite"]) == 0, written
        options = options_for_resume(run, steps=3)
        assert options.base == str(run / "the-base")
    # a name that is no folder of the run's but one of the current folder: ambiguous
    (here / "other").mkdir()
    edit_json(run / "config.json", lambda c: c["options"].update(base="other"))
    rc = main(_sample(run, tmp_path) + ["--overwrite"])
    line = one_line_error(capsys, rc, str(run / "config.json"))
    assert "'other' is not in the run folder" in line


@pytest.mark.parametrize(
    "output",
    ["/proc/lora.safetensors", "{run}/config.json/lora.safetensors", "{tmp}/" + "x" * 300],
)
def test_export_checks_its_output_before_any_work(sd_lora, tmp_path, capsys, output):
    """An impossible output was a SafetensorError traceback (after the work)."""
    from artgen.cli import main

    run = Path(shutil.copytree(sd_lora, tmp_path / "run"))
    out = output.format(run=run, tmp=tmp_path)
    one_line_error(capsys, main(["export", str(run), "-o", out]), out[:60])


def test_export_writes_with_the_usual_permissions(sd_lora, tmp_path):
    from artgen.cli import main

    run = Path(shutil.copytree(sd_lora, tmp_path / "run"))
    before = os.umask(0o022)
    try:
        assert main(["export", str(run), "-o", str(tmp_path / "mine.safetensors")]) == 0
        assert main(["export", str(run)]) == 0
    finally:
        os.umask(before)
    for path in (tmp_path / "mine.safetensors", run / "lora" / "lora_kohya.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("a name with ../", "is not a LoRA adapter of a network module"),
        ("lora_B of another rank", "not the shapes of a rank-4 adapter"),
        ("lora_A of other in-features", "which do not fit the base's layer"),
        ("a module the UNet lacks", "is not a layer of the base's unet"),
        ("lora_A alone", "has only lora_A"),
    ],
)
def test_export_refuses_adapters_that_are_not_the_runs(sd_lora, tmp_path, capsys, damage, message):
    """Before, any tensor went out: a key with ../ as lora_unet___/__/__/x, any shape."""
    from artgen.cli import main

    run = Path(shutil.copytree(sd_lora, tmp_path / "run"))
    weights = run / "lora" / "pytorch_lora_weights.safetensors"
    tensors = load_file(str(weights))
    a_key = next(k for k in tensors if k.startswith("unet.") and k.endswith("conv1.lora_A.weight"))
    a = tensors[a_key]
    if damage == "a name with ../":
        tensors["unet.../../x.lora_A.weight"] = torch.zeros(4, 8)
        tensors["unet.../../x.lora_B.weight"] = torch.zeros(8, 4)
    elif damage == "lora_B of another rank":
        b_key = a_key.replace("lora_A", "lora_B")
        tensors[b_key] = torch.zeros(tensors[b_key].shape[0], 5, 1, 1)
    elif damage == "lora_A of other in-features":
        tensors[a_key] = torch.zeros(a.shape[0], a.shape[1] + 1, *a.shape[2:])
    elif damage == "a module the UNet lacks":
        tensors["unet.down_blocks.9.resnets.0.conv1.lora_A.weight"] = a.clone()
        tensors["unet.down_blocks.9.resnets.0.conv1.lora_B.weight"] = tensors[
            a_key.replace("lora_A", "lora_B")
        ].clone()
    else:
        tensors.pop(a_key.replace("lora_A", "lora_B"))
    save_file(tensors, str(weights))
    out = tmp_path / "out.safetensors"
    line = one_line_error(capsys, main(["export", str(run), "-o", str(out)]), str(weights))
    assert message in line
    assert not out.exists() and not list(tmp_path.glob(".out.safetensors*"))
