"""Training an AdaIN decoder (`artgen train adain`), from scratch or from a pretrained one.

Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization", ICCV 2017, section 6.1: the encoder is fixed; the decoder g is trained
so that f(g(t)) matches t = AdaIN(f(c), f(s)) (the content loss, eq. 12) while the
channel means and stds of f(g(t)) match the style's at several layers (the style loss,
eq. 13): L = L_c + lambda L_s. Adam, batch 8, 256 px random crops, lr 1e-4 with the
inverse decay of pytorch-AdaIN (lr / (1 + 5e-5 * step)).

Departures, each deliberate:
- with the EfficientNet-Lite0 encoder the content loss is taken at every AdaIN level
  (strides 4, 8, 16) since the decoder is fed all three (artgen.models.adain);
- random crops are drawn at a random scale (the crop covers 1 to 2 times the final size
  of the image's short side at 2x the crop), which varies the brush scale the decoder
  sees; the paper crops at one scale;
- ``--base`` starts from a trained decoder: with a few images of one artist in --styles
  this is transfer learning of the fast method to that artist's style.

Run folder: config.json (resolved options), log.jsonl (one line per logged step),
samples/step-N.png and final.png (a sheet: content, style, result), checkpoints/step-N (safetensors +
JSON through artgen.runs.checkpoint, resumed exactly with --resume), model/ (the trained
network: config.json + decoder.safetensors, what `--model RUN` loads).

Several GPUs: ``accelerate launch -m artgen train adain ...`` (or torchrun) runs one process
per device, each drawing its own crops (data seed + process index) with ``--batch-size``
pairs, so a step sees batch x processes pairs; gradients are averaged across processes
before every Adam step (data-parallel SGD, as DDP does), and the run checks at the end that
every process holds the same decoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from artgen.core.devices import resolve_device
from artgen.core.errors import ArtgenError
from artgen.core.losses import covariance, covariance_loss, mean_std, stats_loss
from artgen.core.transforms import wct_levels
from artgen.runs.adain import DEFAULT_STYLE_WEIGHT, AdaINTrainOptions
from artgen.runs.checkpoint import (
    optimizer_to_tensors,
)
from artgen.train.skeleton import open_run, train


@dataclass(frozen=True)
class AdaINTrainProgress:
    """Sent to the callback after every step."""

    step: int
    total_steps: int
    loss: float
    content_loss: float
    style_loss: float
    lr: float
    elapsed: float
    samples: Path | None = None
    checkpoint: Path | None = None


class CropSource:
    """Images held in memory; random square crops at a random scale, with flips."""

    def __init__(self, files: list[Path], crop: int, what: str):
        from artgen.core.images import load_image

        self.crop = crop
        self.images: list[torch.Tensor] = []
        for f in files:
            im = load_image(f).rgb
            # Short side at twice the crop (the paper resizes to 512 for 256 crops).
            scale = 2 * crop / min(im.size)
            im = im.resize(
                (max(crop, round(im.width * scale)), max(crop, round(im.height * scale))),
                Image.Resampling.LANCZOS,
            )
            self.images.append(torch.from_numpy(_as_array(im)).permute(2, 0, 1).contiguous())
        if not self.images:
            raise ArtgenError(f"{what}: no images")

    def batch(self, n: int, g: torch.Generator) -> torch.Tensor:
        out = []
        for _ in range(n):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
            h, w = img.shape[-2:]
            side = min(h, w)
            size = int(self.crop + torch.randint(side - self.crop + 1, (1,), generator=g))
            top = int(torch.randint(h - size + 1, (1,), generator=g))
            left = int(torch.randint(w - size + 1, (1,), generator=g))
            x = img[:, top : top + size, left : left + size].float().div(255).unsqueeze(0)
            if size != self.crop:
                x = F.interpolate(
                    x,
                    size=(self.crop, self.crop),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            if bool(torch.rand((), generator=g) < 0.5):
                x = x.flip(-1)
            out.append(x)
        return torch.cat(out).clamp(0, 1)


def _as_array(im: Image.Image):
    import numpy as np

    return np.array(im.convert("RGB"), dtype=np.uint8)


def _example_photos() -> Path:
    from artgen.interop import catalog

    return catalog.styles_dir() / "examples"


def adain_losses(
    model,
    content: torch.Tensor,
    style: torch.Tensor,
    style_weight: float,
    content_levels: str = "all",
    cov_weight: float = 0.0,
    wct: Sequence[int] = (),
):
    """(total, content, style) losses of the paper for one batch (eq. 11-13).

    ``content_levels``: "deepest" takes the content loss at the deepest AdaIN level only,
    as the paper does (relu4_1); "all" at every level the decoder is fed (the held-out
    ablation in docs/adain.md: "deepest" loses the photo's edges, 0.31 against 0.60 edge
    correlation, and moves the style no closer).

    ``cov_weight`` > 0 adds sum over the style layers of
    :func:`artgen.core.losses.covariance_loss` (the relative distance of the channel covariances
    to the style's: Gatys's Gram matrices, centred) with that weight; the returned style
    loss is then L_s + cov_weight / style_weight * L_cov, so that the total stays
    L_c + style_weight * (returned style loss).

    ``wct``: the level indices the decoder's input gets whitening-colouring at (as
    ``artgen stylize --transform wct`` gives it), AdaIN elsewhere."""
    from artgen.models.adain import level_stats

    cfg = model.config
    s_feats = model.features(style, cfg.style_layers)
    t = model.stylise_features(content, [level_stats(s_feats[n]) for n in cfg.levels], 1.0, wct)
    out = model.decoder([v.to(next(model.decoder.parameters()).dtype) for v in t])
    g_feats = model.features(out, list(dict.fromkeys([*cfg.levels, *cfg.style_layers])))
    pairs = list(zip(cfg.levels, t, strict=True))
    if content_levels == "deepest":
        pairs = pairs[-1:]
    l_c = sum(F.mse_loss(g_feats[name].float(), tt.detach()) for name, tt in pairs)
    l_s = sum(stats_loss(g_feats[name], *mean_std(s_feats[name])) for name in cfg.style_layers)
    if cov_weight > 0:
        l_cov = sum(
            covariance_loss(g_feats[name], covariance(s_feats[name])) for name in cfg.style_layers
        )
        l_s = l_s + cov_weight / style_weight * l_cov
    return l_c + style_weight * l_s, l_c, l_s, out


def lite0_config(levels: int = 3, width_scale: float = 1.0):
    """The EfficientNet-Lite0 network's config with ``levels`` AdaIN levels (3: strides 4, 8
    and 16; 2: strides 8 and 16, the decoder upsampling three times after the last merge)
    and its decoder widths scaled by ``width_scale``."""
    import dataclasses

    from artgen.models.adain import LITE0_CONFIG as C

    def scale(ws):
        return tuple(max(4, round(w * width_scale)) for w in ws)

    if levels == 3:
        return dataclasses.replace(C, widths=scale(C.widths), tail=scale(C.tail))
    return dataclasses.replace(
        C,
        levels=C.levels[1:],
        level_channels=C.level_channels[1:],
        widths=scale(C.widths[1:]),
        tail=scale((C.widths[0], *C.tail)),
    )


def _initial_model(options: AdaINTrainOptions, device: torch.device):
    from artgen.interop import weights
    from artgen.models import adain as adain_models

    if options.base:
        model = weights.load_adain(options.base, device)
        source = options.base
    elif options.encoder == "vgg19":
        path = weights.adain_vgg_dir() / "vgg_normalised.pth"
        if not path.is_file():
            raise ArtgenError(f"--encoder vgg19 needs {path}; run `artgen weights fetch adain`")
        sd = weights.read_state_dict(path, "run `artgen weights fetch adain`")
        model = adain_models.build_model(adain_models.VGG19_CONFIG, sd)
        source = "scratch"
    else:
        sd = weights.read_state_dict(weights.efficientnet_lite0_path(), "reinstall it")
        model = adain_models.build_model(lite0_config(options.levels, options.width_scale), sd)
        source = "scratch"
    return model.to(device), source


def train_adain(
    options: AdaINTrainOptions,
    callback: Callable[[AdaINTrainProgress], None] | None = None,
) -> Path:
    """Train the decoder; returns the run folder (the network is in RUN/model)."""
    from artgen._version import __version__
    from artgen.core.data import list_images

    if not options.styles:
        raise ArtgenError("--styles: give the folder of style images")
    if not options.out:
        raise ArtgenError("--out: give a run folder to create")
    content_dir = options.content or (str(_example_photos()) if options.base else "")
    if not content_dir:
        raise ArtgenError("--content: give a folder of photos (needed when training from scratch)")
    style_files = list_images(options.styles)
    content_files = list_images(content_dir)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=resolve_device(options.device).type == "cpu")
    run = open_run(options, accelerator, create=False)  # every process checks first

    device = accelerator.device
    torch.manual_seed(options.seed)  # the same decoder initialisation in every process
    model, source = _initial_model(options, device)
    trainer = _AdaINTrainer(
        options,
        model,
        device,
        CropSource(content_files, options.crop, content_dir),
        CropSource(style_files, options.crop, options.styles),
        accelerator,
    )
    resolved = {
        "artgen": __version__,
        "method": options.KIND,
        "network": model.config.to_dict(),
        "base": source,
        "style_weight": trainer.style_weight,
        "content_folder": os.path.abspath(content_dir),
        "num_content": len(content_files),
        "num_styles": len(style_files),
        "device": str(device),
        "trainable_parameters": sum(p.numel() for p in model.decoder.parameters()),
        "global_batch": options.batch_size * accelerator.num_processes,
    }
    return train(trainer, options, run, resolved, accelerator=accelerator, callback=callback)


class _AdaINTrainer:
    """The decoder, its optimizer and one step of the paper's loss, for
    artgen.train.skeleton.train."""

    draws = None  # crops are drawn by CropSource from the data generator

    def __init__(
        self, options, model, device, contents: CropSource, styles: CropSource, accelerator=None
    ) -> None:
        self.options, self.model, self.device = options, model, device
        self.contents, self.styles = contents, styles
        self.accelerator = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        model.encoder.eval()
        self.decoder = model.decoder.train().requires_grad_(True)
        self.style_weight = options.style_weight or DEFAULT_STYLE_WEIGHT[model.config.encoder]
        self.wct = wct_levels(options.transform)
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=options.lr)
        use_bf16 = options.precision == "bf16" or (
            options.precision == "auto" and device.type == "cuda"
        )
        self.amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
        # Each process its own crops; process 0 draws exactly what a one-process run draws.
        self.g = torch.Generator().manual_seed(options.seed + rank)
        # A fixed sheet: the same 4 content crops and 4 style crops at every sample.
        g_fixed = torch.Generator().manual_seed(12345)
        self.sheet_c = contents.batch(4, g_fixed).to(device)
        self.sheet_s = styles.batch(4, g_fixed).to(device)

    def lr_at(self, step: int) -> float:
        return self.options.lr / (1.0 + self.options.lr_decay * step)

    def generators(self) -> dict[str, torch.Generator]:
        return {"data": self.g}

    def state(self) -> tuple[dict, dict]:
        opt_t, opt_meta = optimizer_to_tensors(self.opt)
        return {"decoder": self.decoder.state_dict(), "optimizer": opt_t}, {"optimizer": opt_meta}

    def load_state(self, ckpt: Any) -> None:
        ckpt.load_module("decoder", self.decoder)
        ckpt.load_optimizer("optimizer", self.opt)

    def step(self, step: int) -> dict[str, float]:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        c = self.contents.batch(self.options.batch_size, self.g).to(self.device)
        s = self.styles.batch(self.options.batch_size, self.g).to(self.device)
        with self.amp():
            loss, l_c, l_s, _ = adain_losses(
                self.model,
                c,
                s,
                self.style_weight,
                self.options.content_levels,
                self.options.cov_weight,
                self.wct,
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        losses = torch.stack([loss.detach(), l_c.detach(), l_s.detach()]).float()
        if self.world > 1:  # average the gradients (and, for the log, the losses)
            for p in self.decoder.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.world)
            torch.distributed.all_reduce(losses)
            losses /= self.world
        self.opt.step()
        return {
            "loss": float(losses[0]),
            "content": float(losses[1]),
            "style": float(losses[2]),
            "lr": self.lr_at(step),
        }

    def end(self) -> None:
        if self.world > 1:  # gradients were averaged, so every process must hold the same weights
            total = sum(p.detach().double().sum() for p in self.decoder.parameters())
            every = self.accelerator.gather(total.reshape(1, 1).to(self.device))
            if not torch.equal(every, every[:1].expand_as(every)):
                raise ArtgenError("the processes' decoders diverged; please report this")

    def sample(self) -> Image.Image:
        from artgen.core.images import grid, to_pil

        self.decoder.eval()
        with torch.no_grad(), self.amp():
            out = self.model(self.sheet_c, self.model.style_stats(self.sheet_s), wct=self.wct)
        self.decoder.train()
        out = out.float().clamp(0, 1)
        tiles = []
        for k in range(4):
            tiles += [to_pil(self.sheet_c[k]), to_pil(self.sheet_s[k]), to_pil(out[k])]
        return grid(tiles, cols=3)

    def finish(self, run: Path, resolved: dict) -> Callable[[Path], None]:
        from artgen.interop.weights import save_adain_folder

        self.decoder.eval()
        save_adain_folder(self.model, run / "model")
        return lambda final: _write_model_card(run, resolved)

    def progress(self, step, logs, elapsed, sample, checkpoint) -> AdaINTrainProgress:
        return AdaINTrainProgress(
            step,
            self.options.steps,
            logs["loss"],
            logs["content"],
            logs["style"],
            logs["lr"],
            elapsed,
            sample,
            checkpoint,
        )


def _write_model_card(run: Path, config: dict) -> None:
    o = config["options"]
    text = (
        f"# AdaIN decoder ({config['network']['encoder']} encoder)\n\n"
        f"Trained by artgen {config['artgen']} with `artgen train adain`: {o['steps']} steps, "
        f"batch {o['batch_size']}, {o['crop']} px crops, style weight {config['style_weight']}, "
        f"from {config['base']}; {config['num_content']} content and {config['num_styles']} "
        f"style images.\n\n"
        "Use it:\n\n"
        f"    artgen stylize photo.jpg --style painting.jpg --method adain --model {run} -o out.png\n\n"
        "```python\nimport artgen\n"
        f"image = artgen.stylize('photo.jpg', 'painting.jpg', method='adain', model='{run}')\n```\n"
    )
    tmp = run / ".README.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, run / "README.md")


__all__ = ["AdaINTrainOptions", "AdaINTrainProgress", "train_adain", "adain_losses"]
