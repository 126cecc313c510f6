"""Fine-tune a pretrained diffusion generator on a small image set (full or LoRA).

Two families of diffusers pipelines:

* unconditional ``UNet2DModel`` pipelines (DDPM; Ho et al. 2020, "Denoising Diffusion
  Probabilistic Models"), sampled with DDPM or DDIM (Song et al. 2021);
* Stable-Diffusion-style text-to-image pipelines (Rombach et al. 2022, "High-Resolution
  Image Synthesis with Latent Diffusion Models"): the set gets an instance prompt as in
  DreamBooth (Ruiz et al. 2023), with optional prior preservation from class images;
* Stable Diffusion XL pipelines (Podell et al. 2023, "SDXL: Improving Latent Diffusion
  Models for High-Resolution Image Synthesis"), trained as diffusers'
  train_dreambooth_lora_sdxl.py does: the penultimate hidden states of both text encoders
  concatenated, the second encoder's pooled projection, and the size and crop
  micro-conditioning (original size, crop corner, target size; section 2.2).

Per-image captions (a NAME.txt beside the image, or captions.csv) replace the instance
prompt where given; text embeddings are computed once per caption unless the text encoders
train (``--train-text-encoder``, LoRA on their attention projections as in the diffusers
scripts).

Methods: LoRA (Hu et al. 2022) through peft, where only the adapters train and are
saved, or full fine-tuning; either can leave chosen UNet blocks frozen. The loop is
the one of diffusers' training scripts (train_unconditional.py, train_dreambooth_lora.py)
written out explicitly, with Hugging Face accelerate for devices, mixed precision,
gradient accumulation and several GPUs (``accelerate launch -m artgen finetune ...``).

Departures from those scripts, on purpose:

* Batches are drawn with ``torch.multinomial`` from a dedicated generator, not a
  DataLoader, so that importance weights (``--balance``) and an exact resume are simple:
  a resumed run draws the same batches, noise and timesteps as an uninterrupted one.
* Checkpoints hold no pickles (see artgen.runs.checkpoint).
* Augmentation is flips and crops only. Colour, translation and cutout (DiffAugment)
  would leak into what a diffusion model learns to generate (it models its training
  distribution, augmented images included); they belong to the GAN trainer, where they
  are applied to the discriminator's inputs only (Zhao et al. 2020).
* ``--cache-latents`` encodes each image once, at its centre crop, unflipped and mirrored,
  and keeps the VAE's posterior (mean and standard deviation); a step samples from it with
  the run's generator, exactly as an uncached step samples ``latent_dist``. This is kohya's
  cache_latents with flip_aug; diffusers' --cache_latents instead freezes one random crop
  and flip per image. Random crops are then not possible (the run records it).
* The EMA decay warms up as ``min(decay, (1 + step) / (10 + step))`` (diffusers' EMAModel
  default) so that short small-set runs are not dominated by the base weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError

from artgen.core.devices import resolve_device
from artgen.core.errors import ArtgenError, clip, first_line
from artgen.runs import lora_format
from artgen.runs.checkpoint import (
    check_finite,
    load_safetensors,
    optimizer_to_tensors,
    read_json,
    read_run_config,
    write_json,
)
from artgen.runs.diffusion import (
    ATTENTION_TARGETS,
    CONV_TARGETS,
    LORA_COMPONENTS,
    TEXT_ENCODER_TARGETS,
    TEXT_FAMILIES,
    DiffusionFinetuneOptions,
    _library_class,
    base_folder,
    check_base_folder,
    default_resolution,
    generate,
    load_base,
    pipeline_family,
    text_encoder_names,
)
from artgen.runs.record import SampleOptions  # noqa: F401 (the run record owns it; kept here by name)
from artgen.train.skeleton import Draws, open_run, train


@dataclass(frozen=True)
class FinetuneProgress:
    """One optimizer step, reported to the callback."""

    step: int
    total_steps: int
    loss: float
    lr: float
    elapsed: float
    samples: Path | None = None  # a sample grid written at this step
    checkpoint: Path | None = None  # a checkpoint written at this step


# -- the base model -------------------------------------------------------------------


# -- what trains -----------------------------------------------------------------------


def _check_freeze(unet: torch.nn.Module, freeze: Sequence[str]) -> None:
    names = [n for n, _ in unet.named_parameters()]
    for prefix in freeze:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            top = sorted({n.split(".")[0] for n in names})
            raise ArtgenError(f"--freeze {prefix}: no such UNet block (blocks: {', '.join(top)})")


def lora_config(options: DiffusionFinetuneOptions) -> Any:
    from peft import LoraConfig

    kinds = {s.strip() for s in options.lora_targets.split(",") if s.strip()}
    unknown = kinds - {"attention", "conv"}
    if unknown or not kinds:
        raise ArtgenError(f"--lora-targets {options.lora_targets}: use attention, conv or both")
    layers = (ATTENTION_TARGETS if "attention" in kinds else ()) + (
        CONV_TARGETS if "conv" in kinds else ()
    )
    alternatives = "|".join(re.escape(t) for t in layers)
    frozen = "|".join(re.escape(p) for p in options.freeze_list())
    skip = rf"(?!(?:{frozen})(?:\.|$))" if frozen else ""
    return LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha or options.lora_rank,
        init_lora_weights="gaussian",
        target_modules=rf"^{skip}.*\.(?:{alternatives})$",  # peft full-matches a str
    )


def prepare_trainable(unet: torch.nn.Module, options: DiffusionFinetuneOptions) -> list[str]:
    """Freeze what must not train, add LoRA adapters if asked; the names of what trains."""
    freeze = options.freeze_list()
    _check_freeze(unet, freeze)
    unet.requires_grad_(False)
    if options.method == "lora":
        from peft import inject_adapter_in_model

        try:
            inject_adapter_in_model(lora_config(options), unet)
        except ValueError as e:
            first = (str(e).strip().splitlines() or ["no match"])[0][:200]
            raise ArtgenError(f"LoRA: no layer to adapt ({first})") from None
        for n, p in unet.named_parameters():
            p.requires_grad_("lora_" in n)
    else:
        for n, p in unet.named_parameters():
            p.requires_grad_(not any(n == f or n.startswith(f + ".") for f in freeze))
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    if not names:
        raise ArtgenError("nothing left to train: every block is frozen")
    return names


class EMA:
    """Exponential moving average of some parameters (Polyak averaging), with warm-up."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, self.params, strict=True):
                    p.copy_(b)


# -- the loss ----------------------------------------------------------------------------


def diffusion_loss(
    unet: torch.nn.Module,
    noise_scheduler: Any,
    x0: torch.Tensor,
    cond: torch.Tensor | None,
    generator: torch.Generator,
    added_cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-sample denoising loss (Ho et al. 2020, simple loss), for any prediction type.
    ``added_cond``: SDXL's ``{"text_embeds": pooled, "time_ids": ...}``."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(
        x0.device
    )
    noisy = noise_scheduler.add_noise(x0, noise, t)
    kwargs: dict[str, Any] = {"encoder_hidden_states": cond} if cond is not None else {}
    if added_cond is not None:
        kwargs["added_cond_kwargs"] = added_cond
    pred = unet(noisy, t, **kwargs).sample
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = noise_scheduler.get_velocity(x0, noise, t)
    elif kind == "sample":
        target = x0
    else:
        raise ArtgenError(f"unsupported prediction type {kind!r} in the base's scheduler")
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


@torch.no_grad()
def encode_prompt(pipe: Any, prompt: str, device: torch.device) -> torch.Tensor:
    """A Stable Diffusion 1/2 prompt's text-encoder states (1, L, D)."""
    return encode_text(pipe, [prompt], device)[0]


def encode_text(
    pipe: Any,
    prompts: Sequence[str],
    device: torch.device,
    encoders: Sequence[torch.nn.Module] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The UNet's text conditioning for ``prompts``: (states (B, L, D), pooled (B, P) or
    None). Stable Diffusion 1/2: the text encoder's last hidden states. SDXL: the
    penultimate hidden states of both encoders, concatenated, and the second encoder's
    pooled projection, as StableDiffusionXLPipeline.encode_prompt and diffusers'
    train_dreambooth_lora_sdxl.py compute them. Gradients flow (for a trained text
    encoder); wrap in no_grad otherwise. ``encoders``: the text encoders to run instead of
    the pipeline's own (a training run's, wrapped by accelerate for several GPUs)."""
    xl = pipeline_family(pipe) == "sdxl"
    tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if xl else [])]
    encoders = list(encoders) if encoders else text_encoders(pipe)
    pairs = list(zip(tokenizers, encoders, strict=True))
    states, pooled = [], None
    for tokenizer, encoder in pairs:
        ids = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if not xl:
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
        pooled = out[0]  # the last encoder's pooled projection (text_embeds)
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def time_ids(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], resolution: int
) -> torch.Tensor:
    """SDXL's micro-conditioning for one training image (Podell et al. 2023, 2.2): its
    original (height, width), the crop's (top, left) in the resized image, and the target
    (height, width), as diffusers' SDXL training scripts' compute_time_ids."""
    return torch.tensor(
        [*original_size, *crop_top_left, resolution, resolution], dtype=torch.float32
    )


@torch.no_grad()
def to_model_space(pipe: Any, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixels in [-1, 1] -> what the UNet denoises (latents for latent diffusion)."""
    if pipeline_family(pipe) == "unconditional":
        return pixels
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator=generator)
    return _scale_latents(vae, latents)


def _scale_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()


class LatentCache:
    """``--cache-latents``: each image's VAE posterior at its centre crop, plain and
    mirrored, computed once (see the module docstring). ``draw`` returns what
    ``to_model_space`` would for the same crops and generator state: the posterior
    sample ``mean + std * noise`` (diffusers' DiagonalGaussianDistribution.sample)."""

    def __init__(self, pipe: Any, data: Any, device: torch.device, flips: bool, batch: int = 8):
        vae = pipe.vae
        self.vae, self.flips = vae, flips
        self.corners: list[list[tuple[int, int]]] = []
        means, stds = [], []
        views = [(i, f) for i in range(len(data)) for f in ((False, True) if flips else (False,))]
        crops = []
        for i, f in views:
            item = data.crop(i, *data.center(i), f)
            crops.append(item["pixels"])
            if not f:
                self.corners.append([])
            self.corners[i].append(item["crop_top_left"])
        with torch.no_grad():
            for k in range(0, len(crops), batch):
                x = torch.stack(crops[k : k + batch]).to(device, vae.dtype)
                dist = vae.encode(x).latent_dist
                means.append(dist.mean.float().cpu())
                stds.append(dist.std.float().cpu())
        per = 2 if flips else 1
        self.mean = torch.cat(means).unflatten(0, (len(data), per))
        self.std = torch.cat(stds).unflatten(0, (len(data), per))

    def draw(
        self, idx: Sequence[int], generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        flip = [
            int(torch.randint(0, 2, (1,), generator=generator)) if self.flips else 0 for _ in idx
        ]
        mean = torch.stack([self.mean[i, f] for i, f in zip(idx, flip, strict=True)])
        std = torch.stack([self.std[i, f] for i, f in zip(idx, flip, strict=True)])
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
        latents = (mean + std * noise).to(device)
        return _scale_latents(self.vae, latents), [
            self.corners[i][f] for i, f in zip(idx, flip, strict=True)
        ]


# -- the run -----------------------------------------------------------------------------


def _class_folder(options: DiffusionFinetuneOptions, run: Path) -> Path:
    return Path(options.class_images) if options.class_images else run / "class_images"


def _class_images(
    pipe: Any, options: DiffusionFinetuneOptions, run: Path, resolution: int, seed: int
) -> list[Path]:
    """DreamBooth's prior-preservation set: existing class images, topped up by the base model."""
    from artgen.core.data import list_images
    from artgen.core.images import save_png

    folder = _class_folder(options, run)
    folder.mkdir(parents=True, exist_ok=True)
    have = list_images(folder) if any(folder.iterdir()) else []
    missing = options.num_class_images - len(have)
    for i in range(max(0, missing)):
        g = torch.Generator().manual_seed(seed + 10_000 + i)
        image = pipe(
            options.class_prompt,
            num_inference_steps=options.sample_steps,
            guidance_scale=options.guidance_scale,
            height=resolution,
            width=resolution,
            generator=g,
            output_type="pil",
        ).images[0]
        name = folder / f"class-{len(have) + i:04d}.png"
        k = 0
        while name.exists():  # never overwrite a user's file
            k += 1
            name = folder / f"class-{len(have) + i:04d}-{k}.png"
        save_png(image, name, params={"artgen": "class image", "prompt": options.class_prompt})
    return list_images(folder)


def text_encoders(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's text encoders, in text_encoder_names' order."""
    return [getattr(pipe, n) for n in text_encoder_names(pipe)]


def prepare_text_encoders(pipe: Any, options: DiffusionFinetuneOptions) -> list[str]:
    """LoRA on every text encoder's attention projections; the names of the trainable
    tensors, as ``text_encoder.<name>`` / ``text_encoder_2.<name>``."""
    from peft import LoraConfig, inject_adapter_in_model

    names = []
    for prefix in text_encoder_names(pipe):
        encoder = getattr(pipe, prefix)
        config = LoraConfig(
            r=options.lora_rank,
            lora_alpha=options.lora_alpha or options.lora_rank,
            init_lora_weights="gaussian",
            target_modules=list(TEXT_ENCODER_TARGETS),
        )
        inject_adapter_in_model(config, encoder)
        names += [f"{prefix}.{n}" for n, p in encoder.named_parameters() if p.requires_grad]
    return names


def _check_captions(
    run: Path, options: DiffusionFinetuneOptions, files: Sequence[Path], prompts: list[str], acc
) -> None:
    """captions.json in the run: each image's prompt as trained. A resumed run must find
    the same (a changed NAME.txt would silently change the run it continues)."""
    path = run / "captions.json"
    table = {f.name: p for f, p in zip(files, prompts, strict=True)}
    if options.resume and path.is_file():
        if read_json(path, "captions") != table:
            raise ArtgenError(
                f"{path}: the images' captions have changed since the run started; "
                "restore them or start a new run"
            )
    elif acc.is_main_process:
        write_json(path, table)


def _place_frozen(pipe: Any, family: str, precision: str, device: Any) -> None:
    """The frozen VAE and text encoders on the device, in the weight dtype of the mixed
    precision (fp32 without one)."""
    if family not in TEXT_FAMILIES:
        return
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    # SDXL's VAE overflows in fp16 (diffusers' SDXL scripts keep it in fp32 too).
    vae_dtype = torch.float32 if family == "sdxl" and precision == "fp16" else weight_dtype
    for module, dtype in [(pipe.vae, vae_dtype)] + [(e, weight_dtype) for e in text_encoders(pipe)]:
        module.requires_grad_(False).to(device)
        if module.dtype != dtype:  # (diffusers warns on any dtype given to .to())
            module.to(dtype=dtype)


def _make_trainable(pipe: Any, options: DiffusionFinetuneOptions) -> list[str]:
    """Adapters (or the whole UNet) made trainable, with the same initialisation for the same
    seed, and gradient checkpointing where asked; returns the trainable tensors' names."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)  # the same seed gives the same adapter initialisation
        trainable_names = prepare_trainable(pipe.unet, options)
        if options.train_text_encoder:
            trainable_names += prepare_text_encoders(pipe, options)
    if options.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if options.train_text_encoder:
            for encoder in text_encoders(pipe):
                # transformers 5 renamed it (the old name warns of its removal)
                enable = getattr(encoder, "activation_checkpointing_enable", None)
                (enable or encoder.gradient_checkpointing_enable)()
    return trainable_names


def finetune_diffusion(
    options: DiffusionFinetuneOptions,
    *,
    pipeline: Any = None,
    callback: Callable[[FinetuneProgress], None] | None = None,
) -> Path:
    """Fine-tune ``options.base`` (or the ``pipeline`` handed in) on ``options.images``.

    Returns the run folder: config.json, README.md (model card), samples/, checkpoints/,
    and the trained weights (lora/ or unet/). Ctrl-C (KeyboardInterrupt) or a callback
    raising artgen.Cancelled saves a checkpoint first, then re-raises.
    """
    from accelerate import Accelerator

    from artgen._version import __version__
    from artgen.core.data import (
        ImageSet,
        balance_weights,
        list_images,
        read_captions,
        training_set,
    )

    if not options.base:
        raise ArtgenError("--base: give a diffusers hub id or a save_pretrained folder")
    files, labels = training_set(
        options.images, options.labels, options.balance, resume=options.resume
    )
    captions = read_captions(files, options.captions, echo=not options.resume)
    device = resolve_device(options.device)
    precision = options.mixed_precision
    if precision == "auto":
        cuda = device.type == "cuda"
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=options.grad_accum,
        cpu=device.type == "cpu",
    )
    run = open_run(options, accelerator)
    device_t = accelerator.device

    pipe = pipeline if pipeline is not None else load_base(options.base)
    family = pipeline_family(pipe)
    pipe.set_progress_bar_config(disable=True)
    resolution = options.resolution or default_resolution(pipe)
    unet = pipe.unet
    if family == "unconditional" and (options.cache_latents or options.train_text_encoder):
        flag = "--cache-latents" if options.cache_latents else "--train-text-encoder"
        raise ArtgenError(f"{flag}: {options.base} is unconditional (no VAE, no text encoder)")
    _place_frozen(pipe, family, precision, device_t)
    unet.to(device_t)

    g = torch.Generator().manual_seed(options.seed + accelerator.process_index)
    class_files: list[Path] = []
    if family in TEXT_FAMILIES and options.class_prompt:
        if accelerator.is_main_process:
            _class_images(pipe, options, run, resolution, options.seed)
        accelerator.wait_for_everyone()
        class_files = list_images(_class_folder(options, run))[: options.num_class_images]

    trainable_names = _make_trainable(pipe, options)

    def image_set(paths: list[Path]) -> ImageSet:
        # cached latents are of centre crops (see LatentCache)
        center = options.center_crop or options.cache_latents
        return ImageSet(
            paths, resolution, center_crop=center, random_flip=not options.no_flip, generator=g
        )

    data = image_set(files)
    class_data = image_set(class_files) if class_files else None
    values = labels.values(options.balance) if options.balance else None
    draws = Draws(
        len(files),
        g,
        weights=balance_weights(values) if values else None,
        values=values,
        attribute=options.balance,
    )
    prompts = [c or options.prompt for c in captions]
    if family in TEXT_FAMILIES:
        _check_captions(run, options, files, prompts, accelerator)
    batches = _Batches(data, class_data, draws, g, prompts)
    trainer = _DiffusionTrainer(
        options, accelerator, pipe, family, resolution, trainable_names, batches
    )
    resolved = {
        "artgen": __version__,
        "method": options.KIND,
        "family": family,
        "resolution": resolution,
        "learning_rate": options.learning_rate(),
        "mixed_precision": precision,
        "device": str(device_t),
        "num_images": len(files),
        "captioned_images": sum(c is not None for c in captions),
        "crops": "centre (cached latents)"
        if options.cache_latents
        else ("centre" if options.center_crop else "random"),
        "trainable_tensors": len(trainable_names),
        "trainable_parameters": sum(p.numel() for p in trainer.trainable),
    }
    return train(trainer, options, run, resolved, accelerator=accelerator, callback=callback)


class _Batches(NamedTuple):
    """Where a run's batches come from: the images (and DreamBooth's class images), the
    draws over them, the generator of crops and flips, and each image's prompt."""

    data: Any
    class_data: Any
    draws: Any
    g: torch.Generator
    prompts: list[str]


class _DiffusionTrainer:
    """One diffusion fine-tuning run's state and step, for artgen.train.skeleton.train."""

    def __init__(
        self, options, accelerator, pipe, family, resolution, trainable_names, batches: _Batches
    ) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.options, self.accelerator, self.pipe = options, accelerator, pipe
        self.data, self.class_data, self.draws, self.g, self.prompts = batches
        self.family, self.resolution = family, resolution
        self.names = trainable_names
        self.params = dict(pipe.unet.named_parameters())
        for prefix in text_encoder_names(pipe) if options.train_text_encoder else ():
            for n, q in getattr(pipe, prefix).named_parameters():
                self.params[f"{prefix}.{n}"] = q
        self.trainable = [self.params[n] for n in trainable_names]
        for q in self.trainable:  # train in fp32; autocast handles the forward pass
            q.data = q.data.float()
        unet_params = [self.params[n] for n in trainable_names if not n.startswith("text_encoder")]
        te_params = [self.params[n] for n in trainable_names if n.startswith("text_encoder")]
        groups = [{"params": unet_params}]
        if te_params:
            groups.append(
                {"params": te_params, "lr": options.text_encoder_lr or options.learning_rate()}
            )
        optimizer = torch.optim.AdamW(
            groups, lr=options.learning_rate(), weight_decay=options.weight_decay
        )
        self.lr_scheduler = get_scheduler(
            options.lr_schedule,
            optimizer,
            num_warmup_steps=options.warmup_steps,
            num_training_steps=options.steps,
        )
        self.ema = EMA(self.trainable, options.ema_decay) if options.ema_decay > 0 else None
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        device = accelerator.device
        self.latents = self.class_latents = None
        if family in TEXT_FAMILIES and options.cache_latents:
            self.latents = LatentCache(pipe, self.data, device, flips=not options.no_flip)
            self.class_latents = (
                LatentCache(pipe, self.class_data, device, flips=not options.no_flip)
                if self.class_data is not None
                else None
            )
        # Text embeddings, once per distinct prompt, unless the text encoders train.
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if family in TEXT_FAMILIES and not options.train_text_encoder:
            classes = {options.class_prompt} if self.class_data is not None else set()
            wanted = set(self.prompts) | classes
            with torch.no_grad():
                for prompt in sorted(wanted):
                    states, pooled = encode_text(pipe, [prompt], device)
                    self.text_cache[prompt] = (
                        states.float(),
                        None if pooled is None else pooled.float(),
                    )
        self.encoders = []
        if options.train_text_encoder:
            *self.encoders, self.unet, self.optimizer = accelerator.prepare(
                *text_encoders(pipe), pipe.unet, optimizer
            )
            for encoder in self.encoders:
                encoder.train()
        else:
            self.unet, self.optimizer = accelerator.prepare(pipe.unet, optimizer)
        self.unet.train()

    def _text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States and pooled embeddings for ``prompts``: cached, or live through the
        training text encoders."""
        if self.text_cache:
            pairs = [self.text_cache[p] for p in prompts]
            states = torch.cat([a for a, _ in pairs])
            pooled = None if pairs[0][1] is None else torch.cat([b for _, b in pairs])
            return states, pooled
        return encode_text(self.pipe, prompts, self.accelerator.device, self.encoders)

    def _batch(self, data, cache, idx: list[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Model-space images for ``idx`` and their crop corners."""
        device = self.accelerator.device
        if cache is not None:
            return cache.draw(idx, self.g, device)
        items = [data[i] for i in idx]
        pixels = torch.stack([it["pixels"] for it in items]).to(device)
        return to_model_space(self.pipe, pixels, self.g), [it["crop_top_left"] for it in items]

    def generators(self) -> dict[str, torch.Generator]:
        return {"batches": self.g}

    def state(self) -> tuple[dict, dict]:
        tensors = {"trainable": {n: self.params[n] for n in self.names}}
        if self.ema is not None:
            tensors["ema"] = dict(zip(self.names, self.ema.shadow, strict=True))
        opt_t, opt_meta = optimizer_to_tensors(self.optimizer.optimizer)
        tensors["optimizer"] = opt_t
        return tensors, {
            "optimizer": opt_meta,
            "lr_scheduler": _json_safe(self.lr_scheduler.state_dict()),
        }

    def load_state(self, ckpt: Any) -> None:
        ckpt.load_into("trainable", {n: self.params[n] for n in self.names})
        if self.ema is not None and ckpt.has("ema"):
            ckpt.load_into("ema", dict(zip(self.names, self.ema.shadow, strict=True)))
        ckpt.load_optimizer("optimizer", self.optimizer.optimizer)
        ckpt.load_scheduler("lr_scheduler", self.lr_scheduler)

    def step(self, step: int) -> dict[str, float] | None:
        o, acc, g = self.options, self.accelerator, self.g
        device = acc.device
        text = self.family in TEXT_FAMILIES
        with acc.accumulate(self.unet):
            idx = list(self.draws.draw(o.batch_size))
            x0, corners = self._batch(self.data, self.latents, idx)
            prompts = [self.prompts[i] for i in idx]
            sizes = [self.data.original_sizes[i] for i in idx]
            if self.class_data is not None:
                cidx = torch.randint(0, len(self.class_data), (o.batch_size,), generator=g)
                cidx = cidx.tolist()
                cx0, ccorners = self._batch(self.class_data, self.class_latents, cidx)
                x0 = torch.cat([x0, cx0])
                corners += ccorners
                prompts += [o.class_prompt] * len(cidx)
                sizes += [self.class_data.original_sizes[i] for i in cidx]
            c = added = None
            with acc.autocast():
                if text:
                    c, pooled = self._text(prompts)
                    if self.family == "sdxl":
                        ids = torch.stack(
                            [
                                time_ids(size, corner, self.resolution)
                                for size, corner in zip(sizes, corners, strict=True)
                            ]
                        ).to(device)
                        added = {"text_embeds": pooled, "time_ids": ids}
                per_sample = diffusion_loss(self.unet, self.noise_scheduler, x0, c, g, added)
            n = o.batch_size
            loss = per_sample[:n].mean()
            if self.class_data is not None:
                loss = loss + o.prior_weight * per_sample[n:].mean()
            acc.backward(loss)
            if acc.sync_gradients and o.max_grad_norm > 0:
                acc.clip_grad_norm_(self.trainable, o.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:
            return None
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(step + 1)
        loss_v = float(acc.gather(loss.detach()).mean())
        if not math.isfinite(loss_v):
            raise ArtgenError(f"step {step + 1}: the loss is {loss_v}; lower --lr")
        return {"loss": loss_v, "lr": self.lr_scheduler.get_last_lr()[0]}

    def sample(self) -> Image.Image:
        from artgen.core.images import grid

        return grid(
            _generate_training_samples(
                self.pipe, self.family, self.options, self.ema, self.resolution
            )
        )

    def finish(self, run: Path, resolved: dict) -> Callable[[Path], None]:
        unet = self.accelerator.unwrap_model(self.unet)
        encoders = [self.accelerator.unwrap_model(e) for e in self.encoders]
        with self.ema.applied() if self.ema is not None else nullcontext():
            save_weights(self.pipe, unet, self.family, self.options, run, encoders)
        return lambda final: write_model_card(run, resolved, final)

    def progress(self, step, logs, elapsed, sample, checkpoint) -> FinetuneProgress:
        return FinetuneProgress(
            step, self.options.steps, logs["loss"], logs["lr"], elapsed, sample, checkpoint
        )


def _json_safe(sd: dict) -> dict:
    """A scheduler's state dict, JSON only (LambdaLR stores plain functions as None)."""
    out = {}
    for k, v in sd.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


# -- saving, loading and sampling ----------------------------------------------------------


def save_weights(
    pipe: Any,
    unet: torch.nn.Module,
    family: str,
    options: DiffusionFinetuneOptions,
    run: Path,
    encoders: Sequence[torch.nn.Module] = (),
) -> Path:
    """LoRA: only the adapters (safetensors), the UNet's and those of the trained text
    ``encoders``. Full: the UNet (config.json + safetensors)."""
    from safetensors.torch import save_file

    if options.method == "full":
        target = run / "unet"
        tmp = run / ".unet.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unet.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return target
    state = _adapter_state(unet)
    target = run / "lora"
    target.mkdir(exist_ok=True)
    cfg = lora_config(options)
    meta = {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": cfg.target_modules,
        "init_lora_weights": cfg.init_lora_weights,
    }
    if family in TEXT_FAMILIES:
        # diffusers' own LoRA layout (peft names under "unet.", "text_encoder." and
        # "text_encoder_2."), which load_lora_weights() reads whole; see
        # artgen/runs/lora_format.py for why not convert_state_dict_to_diffusers.
        parts: dict[str, dict[str, torch.Tensor]] = {"unet": state}
        kw: dict[str, Any] = {}
        for name, encoder in zip(text_encoder_names(pipe), encoders, strict=False):
            parts[name] = _adapter_state(encoder)
            kw[f"{name}_lora_layers"] = lora_format.to_diffusers(parts[name])
            kw[f"{name}_lora_adapter_metadata"] = {
                **meta,
                "target_modules": list(TEXT_ENCODER_TARGETS),
                "init_lora_weights": "gaussian",
            }
        pipe.save_lora_weights(
            target,
            unet_lora_layers=lora_format.to_diffusers(state),
            unet_lora_adapter_metadata=meta,
            safe_serialization=True,
            **kw,
        )
        if options.export_format == "kohya":
            export_kohya(parts, cfg.lora_alpha, target / KOHYA_FILE, family)
    else:
        save_file(state, str(target / "adapter_model.safetensors"))
        write_json(target / "adapter_config.json", meta)
    return target


def _adapter_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A peft-adapted module's adapter tensors, fp32 on the CPU, ready to save."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().float().cpu().contiguous()
        for k, v in get_peft_model_state_dict(module).items()
    }


KOHYA_FILE = "lora_kohya.safetensors"


def export_kohya(
    parts: dict[str, dict[str, torch.Tensor]],
    lora_alpha: float,
    path: Path,
    family: str,
    *,
    overwrite: bool = True,
) -> Path:
    """The adapters (``parts``: "unet", "text_encoder", "text_encoder_2" -> peft state
    dict) as one kohya-style file (ComfyUI, A1111), written atomically with the usual
    permissions (0666 less the umask); an existing file is replaced only with
    ``overwrite``."""
    from safetensors.torch import save_file

    from artgen.core.images import atomic_output
    from artgen.runs.checkpoint import usual_permissions

    tensors = {
        k: v.detach().float().cpu().contiguous()
        for name, state in parts.items()
        for k, v in lora_format.to_kohya(
            state, lora_alpha, lora_format.kohya_prefix(name, family)
        ).items()
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            save_file(
                tensors,
                str(tmp),
                metadata={
                    "ss_network_module": "networks.lora",
                    "ss_network_alpha": f"{lora_alpha:g}",
                },
            )
            usual_permissions(tmp)  # safetensors writes 0600
        except (OSError, SafetensorError) as e:
            raise ArtgenError(f"{path}: cannot write ({first_line(e)})") from None
    return path


# A module path of a network: names and indices joined by dots (no "..", "/" or spaces).
_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")
_MAX_FEATURES = 1 << 16  # in or out features of one layer (SDXL's widest: 10,240)


def _adapter_layers(base: str, components: Sequence[str]) -> dict[str, dict] | None:
    """For each of ``components`` (unet, text_encoder...) of the base, its Linear and Conv2d
    layers by module path: (in features, out features, kernel size). The networks are built
    from their configs on the meta device (no weights, no memory). None when the base is
    not on this machine (a hub id not in the cache) or cannot be built."""
    from accelerate import init_empty_weights

    folder = base_folder(base)
    if folder is None or not folder.is_dir():
        return None
    check_base_folder(folder, base)
    index = read_json(folder / "model_index.json", "pipeline index (model_index.json)")
    out: dict[str, dict] = {}
    for name in components:
        entry = index.get(name)
        if not (
            isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)
        ):
            return None
        cls = _library_class(*entry)
        try:
            with init_empty_weights():
                if entry[0] == "transformers":
                    model = cls(cls.config_class.from_pretrained(folder / name))
                else:
                    model = cls.from_config(cls.load_config(folder / name))
        except Exception:  # noqa: BLE001 - any failure here only skips the comparison
            return None
        layers = {}
        for path, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                layers[path] = (m.in_features, m.out_features, None)
            elif isinstance(m, torch.nn.Conv2d):
                layers[path] = (m.in_channels // m.groups, m.out_channels, tuple(m.kernel_size))
        out[name] = layers
    return out


def check_adapters(
    parts: dict[str, dict[str, torch.Tensor]],
    rank: int,
    where: str | os.PathLike,
    layers: dict[str, dict] | None = None,
) -> None:
    """A LoRA file's adapters (``parts``: component -> peft state dict) are what a run
    writes: every name a plain module path ending in lora_A.weight or lora_B.weight, each
    module with both, of the run's ``rank``: A (rank, in[, k, k]) and B (out, rank[, 1, 1]).
    With ``layers`` (_adapter_layers: the base's own modules) each module must be one of
    the component's, of its in and out features and kernel. One line naming ``where``."""
    for component, state in parts.items():
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in state.items():
            module, sep, kind = key.rpartition(".lora_")
            if not (sep and kind in ("A.weight", "B.weight") and _MODULE_PATH.match(module)):
                raise ArtgenError(
                    f"{where}: {clip(component + '.' + key, 100)!r} is not a LoRA adapter of a "
                    "network module (names must be module paths ending in lora_A.weight or "
                    "lora_B.weight)"
                )
            modules.setdefault(module, {})[kind[0]] = t
        for module, ab in modules.items():
            name = f"{component}.{module}"
            if set(ab) != {"A", "B"}:
                raise ArtgenError(f"{where}: {clip(name, 100)} has only lora_{''.join(ab)}")
            a, b = ab["A"], ab["B"]
            conv = a.dim() == 4
            good = (
                a.dim() in (2, 4)
                and b.dim() == a.dim()
                and a.shape[0] == rank
                and b.shape[1] == rank
                and 1 <= a.shape[1] <= _MAX_FEATURES
                and 1 <= b.shape[0] <= _MAX_FEATURES
                and (not conv or (b.shape[2:] == (1, 1) and a.shape[2] == a.shape[3] <= 7))
            )
            if not good:
                raise ArtgenError(
                    f"{where}: {clip(name, 100)} has lora_A {list(a.shape)} and lora_B "
                    f"{list(b.shape)}, not the shapes of a rank-{rank} adapter"
                )
            if layers is None or component not in layers:
                continue
            found = layers[component].get(module)
            if found is None:
                raise ArtgenError(
                    f"{where}: {clip(name, 100)} is not a layer of the base's {component}"
                )
            fan_in, fan_out, kernel = found
            got = (a.shape[1], b.shape[0], tuple(a.shape[2:]) if conv else None)
            if got != (fan_in, fan_out, kernel):
                raise ArtgenError(
                    f"{where}: {clip(name, 100)} has lora_A {list(a.shape)} and lora_B "
                    f"{list(b.shape)}, which do not fit the base's layer ({fan_in} in, "
                    f"{fan_out} out{f', kernel {kernel[0]}x{kernel[1]}' if kernel else ''})"
                )


def export_lora(run_dir: str | os.PathLike, out: str | os.PathLike = "") -> Path:
    """A finished text-to-image LoRA run's adapters as one kohya-style file (ComfyUI,
    A1111): ``out``, or RUN/lora/lora_kohya.safetensors. An existing ``out`` is never
    overwritten. The output is checked before any work (see artgen.core.images.check_output),
    and the adapters before they are written (check_adapters, against the base's UNet
    and text encoders when the base is on this machine)."""
    from artgen.core.images import check_output

    run = Path(run_dir)
    target = Path(out) if out else run / "lora" / KOHYA_FILE
    if out:  # before any work: the name, the folder (made if missing, writable), not /proc
        if os.path.lexists(target):
            raise ArtgenError(f"{target}: exists; choose another name (artgen never overwrites it)")
        check_output(target, overwrite=True)
    config, options = read_run_config(
        run,
        DiffusionFinetuneOptions,
        method="finetune-diffusion",
        paths=DiffusionFinetuneOptions.PATHS,
    )
    weights = run / "lora" / "pytorch_lora_weights.safetensors"
    if options.method != "lora" or config.get("family") not in TEXT_FAMILIES:
        raise ArtgenError(
            f"{run}: only a LoRA run of a text-to-image base exports to kohya's format"
        )
    if not weights.is_file():
        raise ArtgenError(f"{run}: the run has not finished (no {weights.name})")
    if not out:
        check_output(target, overwrite=True)  # RUN/lora/, replaced (as training writes it)
    tensors = load_safetensors(weights)
    check_finite(tensors, weights)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in lora_format.peft_keys(tensors).items():
        name, _, rest = k.partition(".")
        if name not in LORA_COMPONENTS:
            raise ArtgenError(f"{weights}: unexpected tensor {clip(k, 80)!r}")
        parts.setdefault(name, {})[rest] = v
    check_adapters(parts, options.lora_rank, weights)
    check_adapters(parts, options.lora_rank, weights, _adapter_layers(options.base, list(parts)))
    alpha = options.lora_alpha or options.lora_rank
    return export_kohya(parts, alpha, target, config["family"], overwrite=not out)


def _generate_training_samples(
    pipe: Any, family: str, options: DiffusionFinetuneOptions, ema: EMA | None, resolution: int
) -> list[Image.Image]:
    modules = [pipe.unet, *(text_encoders(pipe) if family in TEXT_FAMILIES else [])]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        ctx = ema.applied() if ema is not None else nullcontext()
        with ctx:
            return generate(
                pipe,
                options.num_samples,
                seed=options.seed,
                steps=options.sample_steps,
                prompt=options.validation_prompt or options.prompt,
                guidance_scale=options.guidance_scale,
                resolution=resolution,
            )
    finally:
        for m, mode in zip(modules, was_training, strict=True):
            m.train(mode)


def write_model_card(run: Path, config: dict, grid_path: Path) -> None:
    o = config["options"]
    weights = "lora/ (adapters only)" if o["method"] == "lora" else "unet/ (the whole UNet)"
    prompt_line = ""
    if config["family"] != "unconditional":
        captioned = config.get("captioned_images", 0)
        encoders = "LoRA trained" if o.get("train_text_encoder") else "frozen"
        prompt_line = (
            f"- instance prompt: `{o['prompt']}`; {captioned} of {config['num_images']} "
            f"images with their own caption (captions.json); text encoders {encoders}\n"
        )
    base = f"DiffusionPipeline.from_pretrained({o['base']!r})"
    if o["method"] == "full":
        load = (
            f"With diffusers alone: `pipe = {base}`, then "
            "`pipe.unet = type(pipe.unet).from_pretrained('unet')`."
        )
    elif config["family"] in TEXT_FAMILIES:
        kohya = (run / "lora" / KOHYA_FILE).is_file()
        load = (
            f"With diffusers alone: `pipe = {base}`, then `pipe.load_lora_weights('lora')`.\n"
            + (
                f"In ComfyUI, copy `lora/{KOHYA_FILE}` into `ComfyUI/models/loras/` and use a "
                "LoraLoader node; in the A1111 web UI, copy it into `models/Lora/` and write "
                f"`<lora:{KOHYA_FILE.removesuffix('.safetensors')}:1>` in the prompt."
                if kohya
                else "For ComfyUI or the A1111 web UI, `artgen export RUN` writes the kohya-style "
                f"single file `lora/{KOHYA_FILE}`."
            )
        )
    else:
        load = (
            "The adapters are in peft's format (lora/adapter_config.json and "
            "adapter_model.safetensors); `peft.inject_adapter_in_model` puts them on the UNet."
        )
    text = f"""---
base_model: {o["base"]}
library_name: diffusers
tags: [artgen, {config["family"]}, {o["method"]}]
---

# {run.name}

Fine-tuned with artgen {config["artgen"]} from `{o["base"]}` on {config["num_images"]} images
from `{o["images"]}`.

- family: {config["family"]}; method: {o["method"]}; weights in {weights}
{prompt_line}- resolution {config["resolution"]} px, {o["steps"]} steps, batch {o["batch_size"]} x {o["grad_accum"]} accumulation, learning rate {config["learning_rate"]:g} ({o["lr_schedule"]}, {o["warmup_steps"]} warm-up)
- trainable parameters: {config["trainable_parameters"]:,}; frozen blocks: {o["freeze"] or "none"}; EMA decay {o["ema_decay"]}
- precision {config["mixed_precision"]} on {config["device"]}; seed {o["seed"]}
{"- balanced over attribute `" + o["balance"] + "` (see balance.json)" if o["balance"] else ""}

![samples](samples/{grid_path.name})

## Use it

```bash
artgen sample {run} -n 16 -o grid.png
```

```python
import artgen
run = artgen.load_run({str(run)!r})
images = run.generate(16, seed=0)
```

The weights apply to the base model named above, which must be available (online, in the
Hugging Face cache, or as the same local folder). {load}
Full settings: config.json. Training loss per step: log.jsonl.
"""
    tmp = run / ".README.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, run / "README.md")
