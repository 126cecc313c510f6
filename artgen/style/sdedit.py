"""Stylise a photo with your own fine-tuned diffusion generator: SDEdit.

Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations", ICLR 2022. The photo is noised part of the way along the run's diffusion and
the run's adapted model denoises it back: the picture keeps the photo's layout and takes
the look the generator learned from the artist's set.

How it maps onto a run's scheduler (as diffusers' img2img pipelines do it):

- the schedule has ``steps`` steps; SDEdit runs the last ``n = int(steps * noise)`` of
  them, from the timestep t ~ noise * T (T: the training timesteps, 1000); ``noise`` is
  what diffusers' img2img pipelines call ``strength`` (artgen's ``strength`` means "0 the
  photo, 1 the method's default, above 1 more" for the style methods, so this knob has
  its own name);
- the photo x0 (in [-1, 1]; for text-to-image runs its VAE latent) is noised there,
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with eps drawn from ``seed``;
- the run's scheduler (DDIM by default, or DDPM) then denoises from t with the adapted
  UNet (its LoRA applied, or its whole fine-tuned UNet).

Noise 0 (or any noise that leaves no step, n = 0) returns the photo itself, resized to
the output size, unchanged. Noise 1 starts from pure noise: the result is a plain sample
of the generator, whatever the photo. In between, the more noise, the less of the
photo's structure is left.

Unconditional runs (UNet2DModel DDPM bases) go through the loop below. Text-to-image runs
(Stable-Diffusion-style bases) go through diffusers' StableDiffusionImg2ImgPipeline, made
from the run's own pipeline components, with the run's instance prompt unless ``prompt``
says otherwise. With ``controlnet`` (a hub id or a folder of a diffusers ControlNetModel,
e.g. a Canny-edge ControlNet for the run's base) they use
StableDiffusionControlNetImg2ImgPipeline, steered by the Canny edges of the photo
(:func:`canny_edges`). GAN runs have no noising process to enter part way: refused.

The method takes no style images: the style is what the run learned. The PNG records the
run's folder and the sha256 of what decides its pictures (``run_sha256``: its config.json,
its base's identity and its weights); given back (as the reproduce line of ``artgen info``
does), a run of which any of these changed since is refused. PNGs recorded before the
hash covered the config and the base hold the sha256 of the weights alone: they are
checked against that (all they vouch for), and a picture remade from one records the
full hash.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from artgen.core.devices import resolve_device
from artgen.core.errors import ArtgenError, clip, first_line
from artgen.core.images import LoadedImage, load_image, to_pil, to_tensor
from artgen.core.options import option
from artgen.style import OptionsRecord, StyleMethod
from artgen.style.gatys import StylizeProgress

SCHEDULERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class SDEditOptions(OptionsRecord):
    """Everything that decides a stylisation with a fine-tuned diffusion run (SDEdit)."""

    # Pictures recorded when the noise was called strength.
    RENAMED_SETTINGS: ClassVar[dict[str, str]] = {"strength": "noise"}

    generator: str = option(
        "",
        "the run folder of `artgen finetune` (a diffusion run) to paint with "
        "(default: none; required, and giving it selects this method)",
    )
    noise: float = option(
        0.6,
        "how far the photo is noised (diffusers' img2img strength): 0 the photo "
        "itself, 1 a pure sample of the generator",
    )
    steps: int = option(50, "steps of the whole schedule; noise x steps of them are run")
    scheduler: str = option("ddim", "sampler", choices=list(SCHEDULERS))
    prompt: str = option("", "text-to-image runs: the prompt (default: the run's instance prompt)")
    negative_prompt: str = option("", "text-to-image runs: what to steer away from (default: none)")
    guidance_scale: float = option(7.5, "text-to-image runs: classifier-free guidance")
    controlnet: str = option(
        "",
        "text-to-image runs: a ControlNet (hub id or folder) steered by the photo's "
        "Canny edges (default: none)",
    )
    controlnet_scale: float = option(1.0, "how strongly the ControlNet's edges steer")
    size: int = option(0, "long side of the output in pixels (0: the run's resolution)")
    seed: int = option(0, "seed of the noise")
    run_sha256: str = option(
        "",
        "the sha256 of the run (its config, base and weights), checked when given "
        "(the PNG records it) (default: not checked)",
    )

    def __post_init__(self) -> None:
        long_text = ("generator", "prompt", "negative_prompt", "controlnet")
        self.check_common(skip=long_text, bounded=("seed",))  # size 0: the run's resolution
        bad = self.refuse
        for name in long_text:
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > 4096 or not v.isprintable():
                raise bad(name, "must be a line of text")
        if not 0.0 <= self.noise <= 1.0:
            raise bad("noise", "must be between 0 and 1")
        if not 1 <= self.steps <= 1000:
            raise bad("steps", "must be between 1 and 1000")
        if not 0.0 <= self.guidance_scale <= 100.0:
            raise bad("guidance_scale", "must be between 0 and 100")
        if not 0.0 <= self.controlnet_scale <= 10.0:
            raise bad("controlnet_scale", "must be between 0 and 10")
        if self.size != 0 and not 8 <= self.size <= 4096:
            raise bad("size", "must be 0 (the run's resolution) or between 8 and 4096")
        if self.run_sha256 and not (
            len(self.run_sha256) == 64 and all(c in "0123456789abcdef" for c in self.run_sha256)
        ):
            raise bad("run_sha256", "must be 64 lowercase hex digits (a sha256)")


@dataclass
class Generator:
    """A loaded run, as :func:`load` returns it and :func:`stylize` takes it (``model=``).

    ``run``: the artgen.runs.diffusion.DiffusionRun; ``sha256``: of what decides its pictures
    (:func:`run_sha256`); ``family``: "unconditional", "text-to-image" or "sdxl";
    ``controlnet``: the ControlNetModel or None, loaded from ``controlnet_id``;
    ``weights_sha256``: the hash of the weights alone, which PNGs recorded before
    run_sha256 covered the config and base hold (:func:`weights_sha256`)."""

    run: Any
    path: str
    sha256: str
    family: str
    controlnet: Any = None
    controlnet_id: str = ""
    weights_sha256: str = ""

    def matches(self, recorded: str) -> bool:
        """Whether a recorded run_sha256 is this run's (under either scheme)."""
        return recorded in (self.sha256, self.weights_sha256)

    @property
    def resolution(self) -> int:
        return int(self.run.config["resolution"])

    @property
    def instance_prompt(self) -> str:
        return str(self.run.training_options.prompt or "")


# ---------------------------------------------------------------- the run


def run_weights(path: str | Path) -> list[Path]:
    """The files that hold what a diffusion run learned: its LoRA adapters (lora/) or its
    whole UNet (unet/), safetensors only."""
    root = Path(path)
    for sub in ("lora", "unet"):
        files = sorted(p for p in (root / sub).glob("*.safetensors") if p.is_file())
        if files:
            return files
    return []


def weights_sha256(path: str | Path) -> str:
    """The sha256 of a run's weights file (of "name sha256" lines when it has several): what
    PNGs recorded as run_sha256 before it covered the run's config and base. Empty when the
    run has no weights."""
    from artgen.core.images import sha256_file

    files = run_weights(path)
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.parent.name}/{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest() if files else ""


def _run_options(path: str | Path) -> tuple[dict, Any]:
    from artgen.runs.checkpoint import read_run_config
    from artgen.runs.diffusion import DiffusionFinetuneOptions

    return read_run_config(
        path,
        DiffusionFinetuneOptions,
        method="finetune-diffusion",
        paths=DiffusionFinetuneOptions.PATHS,
    )


def run_sha256(path: str | Path) -> str:
    """The sha256 of what decides a run's pictures, what the PNG records so that a changed
    run is noticed: its config.json (as JSON with sorted keys; its base by identity, not
    by path), the identity of its base (artgen.runs.diffusion.base_identity: the
    contents of a base folder, or a hub id's cached commit) and its weights (as
    weights_sha256). Empty when the run has no weights."""
    import json

    from artgen.runs.diffusion import base_identity

    weights = weights_sha256(path)
    if not weights:
        return ""
    config, options = _run_options(path)
    recorded = {**config, "options": {**config["options"], "base": None}}
    text = "\n".join(
        [
            "artgen run 2",
            json.dumps(recorded, sort_keys=True, separators=(",", ":")),
            base_identity(options.base),
            weights,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def check_generator(path: str) -> Path:
    """The run folder ``path``, checked to be a diffusion run before any weights load."""
    from artgen.runs.diffusion import DiffusionRun
    from artgen.runs.record import run_class

    if not path:
        raise ArtgenError("generator: give the folder of a diffusion run (--generator RUN)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ArtgenError(f"{clip(path, 200)}: no such run folder (--generator)")
    if not (root / "config.json").is_file():
        raise ArtgenError(
            f"{clip(path, 200)}: not an artgen run folder (no config.json); --generator needs "
            "the output folder of `artgen finetune`"
        )
    cls, _ = run_class(root)
    if not issubclass(cls, DiffusionRun):
        raise ArtgenError(
            f"{clip(path, 200)} is a {cls.title} run; --generator needs a diffusion run"
        )
    return root


def load(
    options: SDEditOptions | None = None, device: Any = "cpu", weights: Any = None
) -> Generator:
    """The run named by ``options.generator`` on ``device`` (and its ControlNet, if any).

    ``weights``: None, or the run's base pipeline already loaded (diffusers), to reuse."""
    from artgen.runs.diffusion import TEXT_FAMILIES, pipeline_family
    from artgen.runs.record import load_run

    options = options or SDEditOptions()
    if isinstance(weights, (str, Path)):
        raise ArtgenError("--weights: not used by sdedit (the run names its own base model)")
    from artgen.runs.diffusion import base_folder

    root = check_generator(options.generator)
    old = weights_sha256(root)
    # A hub base not yet in the cache has its identity (its commit) only once loaded.
    known = base_folder(_run_options(root)[1].base) is not None
    sha = run_sha256(root) if known else ""
    if known and options.run_sha256 and options.run_sha256 not in (sha, old):
        raise ArtgenError(_changed(options, sha))
    dev = resolve_device(device)
    run = load_run(root, device=dev, pipeline=weights)
    if not known:
        sha = run_sha256(root)
        if options.run_sha256 and options.run_sha256 not in (sha, old):
            raise ArtgenError(_changed(options, sha))
    family = pipeline_family(run.pipeline)
    controlnet = None
    if options.controlnet:
        if family not in TEXT_FAMILIES:
            raise ArtgenError(
                f"controlnet={clip(options.controlnet, 80)}: only for text-to-image runs, and "
                f"{clip(options.generator, 80)} is unconditional"
            )
        if family == "sdxl":
            raise ArtgenError(
                f"controlnet={clip(options.controlnet, 80)}: not yet for SDXL runs "
                f"({clip(options.generator, 80)}); leave it out"
            )
        controlnet = load_controlnet(options.controlnet, dev)
    return Generator(run, options.generator, sha, family, controlnet, options.controlnet, old)


def _changed(options: SDEditOptions, sha: str) -> str:
    return (
        f"run_sha256={options.run_sha256[:16]}...: the weights, config.json or base of the "
        f"run {clip(options.generator, 80)} have changed since (now {sha[:16] or 'none'}...)"
    )


def load_controlnet(name: str, device: Any = "cpu") -> Any:
    """A diffusers ControlNetModel from a folder or a hub id (offline: the cache only)."""
    from diffusers import ControlNetModel
    from huggingface_hub import constants

    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.is_dir():
        raise ArtgenError(f"controlnet={clip(name, 80)}: no such folder")
    try:
        model = ControlNetModel.from_pretrained(
            str(local) if local.is_dir() else name,
            local_files_only=bool(constants.HF_HUB_OFFLINE),
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise ArtgenError(
            f"controlnet={clip(name, 80)}: cannot load a ControlNet ({first_line(e)})"
        ) from None
    return model.to(device).eval()


def describe(model: Generator) -> str:
    net = f", ControlNet {clip(model.controlnet_id, 60)}" if model.controlnet is not None else ""
    return f"generator: {model.family} diffusion run {clip(model.path, 80)}{net}"


# ---------------------------------------------------------------- edges


def canny_edges(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """The photo's Canny edges (white on black, RGB): what Canny ControlNets are trained
    on (OpenCV's Canny with the thresholds of the ControlNet paper's examples)."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


# ---------------------------------------------------------------- SDEdit


def output_size(size: tuple[int, int], long_side: int, multiple: int) -> tuple[int, int]:
    """(W, H) with the long side about ``long_side``, the aspect kept and both sides
    multiples of ``multiple`` (what the networks' down-sampling needs)."""
    w, h = size
    scale = long_side / max(w, h)
    return (
        max(multiple, round(w * scale / multiple) * multiple),
        max(multiple, round(h * scale / multiple) * multiple),
    )


def _multiple(model: Generator) -> int:
    """The side lengths must be multiples of this: the UNet's down-sampling (times the
    VAE's, for latent runs)."""
    pipe = model.run.pipeline
    f = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if model.family != "unconditional":
        f *= 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        f = math.lcm(f, 8)  # diffusers' Stable Diffusion pipelines ask for multiples of 8
    return f


def _scheduler(pipe: Any, name: str) -> Any:
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if name == "ddim" else DDPMScheduler
    return cls.from_config(pipe.scheduler.config)


def denoise_steps(steps: int, noise: float) -> int:
    """How many of the schedule's ``steps`` SDEdit runs (diffusers' img2img rule)."""
    return min(int(steps * noise), steps)


def stylize(
    content: Any,
    styles: Any = None,
    options: SDEditOptions | None = None,
    *,
    model: Generator | None = None,
    device: Any = None,
    callback: Callable[[StylizeProgress], None] | None = None,
) -> Image.Image:
    """``content`` through the fine-tuned run ``options.generator`` (SDEdit); a PIL image
    (alpha kept) whose ``info`` names the run, prompt, size and run_sha256 used.

    ``model``: :func:`load`'s result, to reuse across calls (``options.generator`` may
    then be left empty). ``styles`` must be None or empty: the style is the run's."""
    options = options or SDEditOptions()
    if styles:
        raise ArtgenError(
            "method sdedit takes no style images: the style is the one the run "
            "(--generator) learned"
        )
    t0 = time.perf_counter()
    if model is None:
        model = load(options, device if device is not None else "cpu")
    elif options.generator and Path(options.generator).resolve() != Path(model.path).resolve():
        raise ArtgenError(
            f"generator={clip(options.generator, 80)}: the model given was loaded from "
            f"{clip(model.path, 80)}"
        )
    if options.run_sha256 and not model.matches(options.run_sha256):
        raise ArtgenError(_changed(options, model.sha256))
    if options.controlnet != model.controlnet_id:
        raise ArtgenError(
            f"controlnet={clip(options.controlnet, 80)}: the model given was loaded with "
            f"{clip(model.controlnet_id or 'none', 80)}; load it with these options"
        )
    loaded = content if isinstance(content, LoadedImage) else load_image(content)
    long_side = options.size or model.resolution
    size = output_size(loaded.size, long_side, _multiple(model))
    photo = (
        loaded.rgb if loaded.rgb.size == size else loaded.rgb.resize(size, Image.Resampling.LANCZOS)
    )
    n = denoise_steps(options.steps, options.noise)
    prompt = options.prompt or model.instance_prompt
    progress = _Progress(callback, n, size, t0)
    if n == 0:
        out = photo.copy()
    elif model.family == "unconditional":
        out = _sdedit_unconditional(model, photo, options, progress)
    else:
        out = _sdedit_text_to_image(model, photo, options, prompt, progress)
    if out.size != size:  # a pipeline that rounded the size its own way
        out = out.resize(size, Image.Resampling.LANCZOS)
    if loaded.alpha is not None:
        out.putalpha(loaded.alpha.resize(size, Image.Resampling.LANCZOS))
    out.info["generator"] = options.generator or model.path
    out.info["size"] = max(size)
    out.info["run_sha256"] = model.sha256
    if model.family != "unconditional":
        out.info["prompt"] = prompt
    if n == 0:
        out.info["note"] = (
            f"noise {options.noise:g} x {options.steps} steps leaves no denoising "
            "step: the output is the photo"
        )
    return out


class _Progress:
    """StylizeProgress for each denoising step (scale 1 of 1; loss 0: nothing is optimised)."""

    def __init__(self, callback, total: int, size: tuple[int, int], t0: float):
        self.callback, self.total, self.size, self.t0 = callback, total, size, t0

    def __call__(self, step: int, render: Callable[[], Image.Image]) -> None:
        if self.callback is None:
            return
        self.callback(
            StylizeProgress(
                step=step,
                total_steps=self.total,
                scale=1,
                num_scales=1,
                width=self.size[0],
                height=self.size[1],
                loss=0.0,
                elapsed=time.perf_counter() - self.t0,
                render=render,
            )
        )


def _noise_generator(seed: int) -> torch.Generator:
    # Noise is drawn on the CPU, so a seed means the same noise on every device.
    return torch.Generator("cpu").manual_seed(seed)


@torch.no_grad()
def _sdedit_unconditional(
    model: Generator, photo: Image.Image, options: SDEditOptions, progress: _Progress
) -> Image.Image:
    """The SDEdit loop for a UNet2DModel run, written out as diffusers' DDPMPipeline does."""
    pipe = model.run.pipeline
    unet = pipe.unet
    dev, dtype = unet.device, unet.dtype
    scheduler = _scheduler(pipe, options.scheduler)
    scheduler.set_timesteps(options.steps)
    n = denoise_steps(options.steps, options.noise)
    timesteps = scheduler.timesteps[options.steps - n :]
    gen = _noise_generator(options.seed)
    x0 = to_tensor(photo) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    if n == options.steps and options.noise >= 1.0:
        x = noise * scheduler.init_noise_sigma  # pure noise: a plain sample
    else:
        x = scheduler.add_noise(x0, noise, timesteps[:1])
    x = x.to(dev, dtype)
    was_training = unet.training
    unet.eval()
    try:
        for i, t in enumerate(timesteps):
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x, generator=gen).prev_sample
            current = x
            progress(i + 1, lambda c=current: to_pil(((c[0].float() + 1) / 2).clamp(0, 1).cpu()))
    finally:
        unet.train(was_training)
    return to_pil(((x[0].float() + 1) / 2).clamp(0, 1).cpu())


def _sdedit_text_to_image(
    model: Generator, photo: Image.Image, options: SDEditOptions, prompt: str, progress: _Progress
) -> Image.Image:
    """SDEdit for a Stable-Diffusion-style run: diffusers' img2img pipelines made from the
    run's components (its LoRA stays applied: they share the UNet). Strength 1 is a plain
    text-to-image sample (img2img would still add the photo at the first timestep)."""
    from diffusers import (
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    base = model.run.pipeline
    parts = {**base.components, "scheduler": _scheduler(base, options.scheduler)}
    pure = options.noise >= 1.0
    w, h = photo.size
    kw: dict[str, Any] = dict(
        prompt=prompt,
        negative_prompt=options.negative_prompt or None,
        num_inference_steps=options.steps,
        guidance_scale=options.guidance_scale,
        generator=_noise_generator(options.seed),
        output_type="pil",
    )
    if model.controlnet is not None:
        parts["controlnet"] = model.controlnet
        kw["controlnet_conditioning_scale"] = float(options.controlnet_scale)
        edges = canny_edges(photo)
        if pure:
            cls: Any = StableDiffusionControlNetPipeline
            kw.update(image=edges, height=h, width=w)
        else:
            cls = StableDiffusionControlNetImg2ImgPipeline
            kw.update(image=photo, control_image=edges, strength=options.noise)
            kw.update(height=h, width=w)
    elif pure:
        cls = StableDiffusionXLPipeline if model.family == "sdxl" else StableDiffusionPipeline
        kw.update(height=h, width=w)
    else:
        xl = model.family == "sdxl"
        cls = StableDiffusionXLImg2ImgPipeline if xl else StableDiffusionImg2ImgPipeline
        kw.update(image=photo, strength=options.noise)
    if model.family == "sdxl":
        # SDXL's own pipelines; an image-to-image one has the base's components plus
        # the refiner's aesthetic-score switch, off for a base model.
        extra: dict[str, Any] = {
            "force_zeros_for_empty_prompt": base.config.force_zeros_for_empty_prompt,
            "add_watermarker": False,  # the run's own picture, unmarked
        }
        if cls is StableDiffusionXLImg2ImgPipeline:
            extra["requires_aesthetics_score"] = False
        pipe = cls(**parts, **extra)
    else:
        pipe = cls(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def on_step(p: Any, i: int, t: Any, tensors: dict) -> dict:
        latents = tensors["latents"]

        def render() -> Image.Image:
            with torch.no_grad():
                img = p.vae.decode(latents / p.vae.config.scaling_factor).sample
            return to_pil(((img[0].float() + 1) / 2).clamp(0, 1).cpu())

        progress(i + 1, render)
        return tensors

    was_training = base.unet.training
    base.unet.eval()
    try:
        with torch.no_grad():
            out = pipe(**kw, callback_on_step_end=on_step)
    except ValueError as e:
        raise ArtgenError(f"{clip(model.path, 80)}: {first_line(e)}") from None
    finally:
        base.unet.train(was_training)
    return out.images[0].convert("RGB")


METHOD = StyleMethod(
    name="sdedit",
    summary="your fine-tuned diffusion generator repaints the photo (SDEdit, Meng et al. 2022)",
    options=SDEditOptions,
    load=load,
    stylize=stylize,
    resolved=("generator", "size", "prompt", "run_sha256"),
    describe=describe,
    needs_styles=False,
)

__all__ = [
    "METHOD",
    "Generator",
    "SDEditOptions",
    "canny_edges",
    "load",
    "run_sha256",
    "stylize",
    "weights_sha256",
]
