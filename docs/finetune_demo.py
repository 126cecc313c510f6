"""A small, real transfer-learning run on a CPU: the picture and numbers in the README.

    python docs/finetune_demo.py [--out out/finetune-demo] [--pretrain-steps 2500]

No pretrained diffusion model can be downloaded on the project's machines, so the
script first makes its own base: a 1.1 M-parameter DDPM trained from scratch
(``artgen finetune diffusion --method full`` on a randomly initialised pipeline) on
96 crops of three bundled styles (swirls, waves, facets). It then adapts that base
with LoRA to 12 crops of a fourth style it has never seen (mosaic), and measures
both against the mosaic crops with ``artgen eval``. About 15 minutes on 2 CPU cores.
Writes docs/images/finetune_demo.png and docs/finetune_demo.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SIZE = 32


def crops(style: str, n: int, folder: Path, seed: int) -> None:
    """Random SIZE x SIZE crops of a bundled style, shrunk so a crop holds some structure."""
    from artgen.core.images import load_image

    im = load_image(REPO / "styles" / f"{style}.jpg").rgb
    im = im.resize((160, round(160 * im.height / im.width)), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x, y = rng.integers(0, im.width - SIZE), rng.integers(0, im.height - SIZE)
        im.crop((x, y, x + SIZE, y + SIZE)).save(folder / f"{style}-{i:03d}.png")


def random_base(folder: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=SIZE,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        folder
    )
    return folder


def labelled(image: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (image.width, image.height + 22), "white")
    out.paste(image, (0, 22))
    ImageDraw.Draw(out).text((4, 5), text, fill="black")
    return out


def main() -> None:
    import diffusers

    from artgen.core.images import grid, load_image
    from artgen.eval.evaluate import EvalOptions, evaluate
    from artgen.runs.diffusion import load_run
    from artgen.train.diffusion import (
        DiffusionFinetuneOptions,
        finetune_diffusion,
        generate,
        load_base,
    )

    diffusers.utils.logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "out" / "finetune-demo"))
    ap.add_argument("--pretrain-steps", type=int, default=2500)
    ap.add_argument("--finetune-steps", type=int, default=600)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out}: exists; remove it or pass --out")
    for style, n, seed in (("swirls", 32, 1), ("waves", 32, 2), ("facets", 32, 3)):
        crops(style, n, out / "base_set", seed)
    crops("mosaic", 12, out / "mosaic", 4)

    def progress(p):
        if p.step % 100 == 0:
            print(
                f"  step {p.step}/{p.total_steps} loss {p.loss:.4f} ({p.elapsed:.0f} s)", flush=True
            )

    print("1. pretraining a base DDPM from scratch on swirls, waves and facets")
    common = dict(
        batch_size=8,
        sample_every=10**6,
        checkpoint_every=500,
        num_samples=16,
        sample_steps=50,
        device="cpu",
        seed=0,
    )
    base_run = finetune_diffusion(
        DiffusionFinetuneOptions(
            base=str(random_base(out / "random_base")),
            images=str(out / "base_set"),
            out=str(out / "base_run"),
            method="full",
            steps=args.pretrain_steps,
            lr=1e-3,
            lr_schedule="cosine",
            warmup_steps=100,
            ema_decay=0.999,
            **common,
        ),
        callback=progress,
    )
    # The pretrained base, as a folder any diffusers user (and artgen) can load.
    base_pipe = load_run(base_run)
    base_pipe.save_pretrained(out / "base")

    print("2. LoRA fine-tuning of that base on 12 mosaic crops")
    run = finetune_diffusion(
        DiffusionFinetuneOptions(
            base=str(out / "base"),
            images=str(out / "mosaic"),
            out=str(out / "mosaic_run"),
            method="lora",
            steps=args.finetune_steps,
            lr=1e-3,
            lora_rank=8,
            **common,
        ),
        callback=progress,
    )

    print("3. measuring both against the mosaic crops")
    opts = EvalOptions(
        images=str(out / "mosaic"), num_samples=48, sample_steps=50, lpips="auto", device="cpu"
    )
    base = load_base(str(out / "base"))
    before = evaluate(out / "base_run", opts, generate=lambda n, s: generate(base, n, seed=s))
    after = evaluate(run, opts)
    tuned = load_run(run)
    results = {
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps,
        "fid_network": before["fid"]["network"],
        "diversity_distance": after["diversity"]["distance"],
        "base": {
            "fid": before["fid"]["value"],
            "kid": before["kid"]["mean"],
            "diversity": before["diversity"]["intra_cluster"],
        },
        "lora": {
            "fid": after["fid"]["value"],
            "kid": after["kid"]["mean"],
            "diversity": after["diversity"]["intra_cluster"],
        },
    }
    print(json.dumps(results, indent=2))

    up = 3  # 32 px is small on a page
    panels = [
        (
            "12 mosaic crops (the new set)",
            grid([load_image(p).rgb for p in sorted((out / "mosaic").glob("*.png"))], cols=4),
        ),
        ("base model (swirls/waves/facets)", grid(generate(base, 16, seed=7), cols=4)),
        (f"after LoRA ({args.finetune_steps} steps)", grid(generate(tuned, 16, seed=7), cols=4)),
    ]
    panels = [
        labelled(g.resize((g.width * up, g.height * up), Image.Resampling.NEAREST), t)
        for t, g in panels
    ]
    sheet = Image.new(
        "RGB", (sum(p.width for p in panels) + 20 * 2, max(p.height for p in panels)), "white"
    )
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + 20
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    sheet.save(REPO / "docs" / "images" / "finetune_demo.png")
    (REPO / "docs" / "finetune_demo.json").write_text(json.dumps(results, indent=2) + "\n")
    print("wrote docs/images/finetune_demo.png and docs/finetune_demo.json")


if __name__ == "__main__":
    main()
