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

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError

from artgen.core.devices import resolve_device
from artgen.core.errors import ArtgenError, clip, first_line
from artgen.runs import lora_format
from artgen.runs.checkpoint import (
    MAX_BATCH,
    RUN_LIMITS,
    check_finite,
    load_safetensors,
    optimizer_to_tensors,
    read_json,
    read_run_config,
    write_json,
)
from artgen.runs.record import SampleOptions  # noqa: F401 (the run record owns it; kept here by name)
from artgen.train.skeleton import Draws, RunOptions, open_run, train
from artgen.train.skeleton import options_for_resume as options_for_resume  # the one policy

FAMILIES = ("unconditional", "text-to-image", "sdxl")
TEXT_FAMILIES = ("text-to-image", "sdxl")  # the families with a VAE and text encoders
# The text encoders' LoRA targets: CLIP's attention projections (diffusers' DreamBooth
# LoRA scripts, --train_text_encoder).
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")  # pipeline components
LORA_COMPONENTS = ("unet", *TEXT_ENCODER_NAMES)  # the key prefixes of a LoRA file
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CONV_TARGETS = ("conv1", "conv2")  # the two convolutions of every ResNet block
# Settings that name files or folders: recorded as absolute paths (see absolute_paths).
# The base is one only when it is a local folder (it may be a hub id): recorded absolute
# when local, and resolved on reading by DiffusionFinetuneOptions.resolve_saved.
PATHS = ("images", "out", "class_images", "labels", "captions")


@dataclass(frozen=True)
class DiffusionFinetuneOptions(RunOptions):
    """Everything a fine-tuning run needs. The CLI's flags are made from these fields
    (the ones every trainer has come from artgen.train.skeleton.RunOptions)."""

    KIND: ClassVar[str] = "finetune-diffusion"
    PATHS: ClassVar[tuple[str, ...]] = PATHS
    NAMED_PATHS: ClassVar[tuple[str, ...]] = ("base",)  # a folder or a hub id
    # Only the output side may change on resume; anything else alters the run.
    RESUMABLE_EXTRA: ClassVar[tuple[str, ...]] = (
        "export_format",
        "num_samples",
        "sample_steps",
        "guidance_scale",
        "validation_prompt",
    )

    base: str = field(default="", metadata={"help": "diffusers hub id or save_pretrained folder"})
    images: str = field(default="", metadata={"help": "folder of training images"})
    method: str = field(
        default="lora", metadata={"help": "what trains", "choices": ["lora", "full"]}
    )
    prompt: str = field(
        default="a painting in sks style",
        metadata={"help": "instance prompt for text-to-image bases (DreamBooth)"},
    )
    class_prompt: str = field(
        default="",
        metadata={"help": "prior preservation: prompt for the class (e.g. 'a painting')"},
    )
    class_images: str = field(
        default="",
        metadata={
            "help": "prior preservation: folder of class images; missing ones are "
            "generated by the base model (default: RUN_DIR/class_images)"
        },
    )
    num_class_images: int = field(default=50, metadata={"help": "class images to use"})
    prior_weight: float = field(default=1.0, metadata={"help": "weight of the prior loss"})
    resolution: int = field(
        default=0, metadata={"help": "training size in px (0: the base model's own)"}
    )
    batch_size: int = field(default=4, metadata={"help": "images per step per device"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=0.0, metadata={"help": "learning rate (0: 1e-4 LoRA, 1e-5 full)"})
    lr_schedule: str = field(
        default="constant_with_warmup",
        metadata={
            "help": "learning-rate schedule",
            "choices": ["constant_with_warmup", "cosine", "linear", "constant"],
        },
    )
    warmup_steps: int = field(default=50, metadata={"help": "learning-rate warm-up steps"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=0.0, metadata={"help": "LoRA alpha (0: same as rank)"})
    lora_targets: str = field(
        default="attention,conv",
        # Adapters on the ResNet convolutions as well as attention (LoCon-style) learn a
        # style markedly faster: on the tiny test models, 0.59x vs 0.91x the loss in 30 steps.
        metadata={"help": "layers that get adapters: attention, conv, or attention,conv"},
    )
    freeze: str = field(
        default="",
        metadata={
            "help": "comma-separated UNet blocks that stay frozen, e.g. down_blocks "
            "or down_blocks,mid_block"
        },
    )
    center_crop: bool = field(
        default=False, metadata={"help": "center crops (default: random crops)"}
    )
    no_flip: bool = field(default=False, metadata={"help": "no random horizontal flips"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA of the weights (0: off)"})
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 on a GPU that has it, else fp32",
            "choices": ["auto", "no", "fp16", "bf16"],
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for memory"}
    )
    labels: str = field(default="", metadata={"help": "CSV: file name plus attribute columns"})
    balance: str = field(
        default="", metadata={"help": "attribute whose values are drawn equally often"}
    )
    num_samples: int = field(default=16, metadata={"help": "images in each sample grid"})
    sample_steps: int = field(default=50, metadata={"help": "DDIM steps for the sample grids"})
    guidance_scale: float = field(
        default=7.5, metadata={"help": "classifier-free guidance for text-to-image samples"}
    )
    captions: str = field(
        default="",
        metadata={
            "help": "CSV of file,caption (default: IMAGES/captions.csv if there is one); a "
            "NAME.txt beside an image is its caption too; uncaptioned images get --prompt"
        },
    )
    validation_prompt: str = field(
        default="",
        metadata={"help": "prompt of the sample grids (default: the instance prompt)"},
    )
    cache_latents: bool = field(
        default=False,
        metadata={
            "help": "encode the images with the VAE once (centre crops, plain and "
            "mirrored) instead of every step"
        },
    )
    train_text_encoder: bool = field(
        default=False,
        metadata={"help": "LoRA on the text encoder(s) too (text embeddings are then live)"},
    )
    text_encoder_lr: float = field(
        default=0.0, metadata={"help": "learning rate of the text encoders' LoRA (0: --lr)"}
    )
    export_format: str = field(
        default="diffusers",
        metadata={
            "help": "LoRA of a text-to-image base: diffusers (lora/, for "
            "load_lora_weights) or kohya (also lora/lora_kohya.safetensors, for "
            "ComfyUI and the A1111 web UI)",
            "choices": ["diffusers", "kohya"],
        },
    )

    # Settings added after runs were recorded, with the value that reproduces such a run
    # (options_from_dict fills them in; any other missing setting is an error).
    ADDED_SETTINGS: ClassVar[dict[str, Any]] = {
        "export_format": "diffusers",
        "captions": "",
        "validation_prompt": "",
        "cache_latents": False,
        "train_text_encoder": False,
        "text_encoder_lr": 0.0,
    }

    def recorded(self) -> dict:
        """As config.json records them: path settings absolute, a local base too."""
        d = super().recorded()
        if d["base"] and _is_local(d["base"]):
            d["base"] = os.path.abspath(os.path.expanduser(d["base"]))
        return d

    @classmethod
    def resolve_saved(cls, run: Path, saved: dict) -> dict:
        """A recorded run's options with its base resolved (see run_base); used by
        artgen.runs.checkpoint.read_run_config."""
        base = saved.get("base")
        if isinstance(base, str):
            saved = {**saved, "base": run_base(run, base)}
        return saved

    def learning_rate(self) -> float:
        return self.lr or (1e-4 if self.method == "lora" else 1e-5)

    def check(self) -> None:
        """The settings' own ranges and choices (files, folders and the base are checked
        when the run starts). Also what a run's config.json must pass when read back."""
        if self.method not in ("lora", "full"):
            raise ArtgenError(f"--method {self.method}: use lora or full")
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "sample_every",
            "checkpoint_every",
            "num_samples",
            "sample_steps",
            "lora_rank",
        ):
            if getattr(self, name) < 1:
                raise ArtgenError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.batch_size > MAX_BATCH:
            raise ArtgenError(f"--batch-size {self.batch_size}: at most {MAX_BATCH}")
        for name in (
            "keep_checkpoints",
            "warmup_steps",
            "num_class_images",
            "resolution",
            "lr",
            "lora_alpha",
            "weight_decay",
            "max_grad_norm",
            "prior_weight",
            "text_encoder_lr",
        ):
            if getattr(self, name) < 0:
                raise ArtgenError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ArtgenError(f"--ema-decay {self.ema_decay}: must be in [0, 1)")
        for name in ("lr_schedule", "mixed_precision"):
            f = next(f for f in dataclasses.fields(self) if f.name == name)
            if getattr(self, name) not in f.metadata["choices"]:
                raise ArtgenError(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r}: use one "
                    f"of {', '.join(f.metadata['choices'])}"
                )
        if self.train_text_encoder and self.method != "lora":
            raise ArtgenError("--train-text-encoder: only with --method lora")
        if self.balance and not self.labels:
            raise ArtgenError("--balance needs --labels (a CSV of file names and attributes)")
        self.check_limits()  # every size within its bounds (artgen.runs.checkpoint.RUN_LIMITS)

    def freeze_list(self) -> list[str]:
        return [s.strip() for s in self.freeze.split(",") if s.strip()]


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


def _is_local(base: str) -> bool:
    """Whether ``base`` names a folder rather than a hub id (load_base's rule)."""
    return base.startswith((".", "/", "~")) or Path(base).expanduser().exists()


def run_base(run: str | os.PathLike, base: str) -> str:
    """The base a run's config.json names, as load_base takes it. A folder is recorded
    absolute; a relative one is taken from the run folder (as every path in a run's
    config, so the run means the same from any current folder): one that exists there or
    starts with "." or "~". Anything else is a hub id, unless it names a folder of the
    current folder (diffusers would load that one): refused as ambiguous."""
    if not base:
        return base
    p = Path(base).expanduser()
    if p.is_absolute():
        return str(p)
    in_run = Path(os.path.abspath(Path(run) / p))
    if base.startswith(".") or in_run.exists():
        return str(in_run)
    if p.exists():
        raise ArtgenError(
            f"{Path(run) / 'config.json'}: base {clip(base, 80)!r} is not in the run folder "
            "(a run's relative paths are taken from it) but is a folder here; give the "
            "base as an absolute path"
        )
    return base


# -- the base model -------------------------------------------------------------------

# The libraries a pipeline's components may come from: diffusers and transformers, and
# diffusers' own pipeline modules (model_index.json names Stable Diffusion's safety checker
# as ["stable_diffusion", "StableDiffusionSafetyChecker"]). Anything else is code shipped
# with the model, which artgen never runs.
BASE_LIBRARIES = ("diffusers", "transformers")
COMPONENT_CONFIGS = ("config.json", "scheduler_config.json")


def _library_module(library: str) -> str | None:
    """The module a component library of model_index.json names, None if not one of
    BASE_LIBRARIES or diffusers' pipeline modules."""
    import diffusers.pipelines

    if library in BASE_LIBRARIES:
        return library
    if library.isidentifier() and isinstance(
        getattr(diffusers.pipelines, library, None), type(diffusers)
    ):
        return f"diffusers.pipelines.{library}"
    return None


def _library_class(library: str, name: str) -> Any:
    """The class ``name`` of a component library, or None where there is no such class
    (or no such library)."""
    import importlib

    module_name = _library_module(library)
    if module_name is None or not name.isidentifier():
        return None
    try:
        found = getattr(importlib.import_module(module_name), name, None)
    except (ImportError, RuntimeError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def check_base_folder(folder: Path, base: str) -> None:
    """A pipeline folder (a local base, or a hub snapshot) checked before diffusers builds
    anything from it: model_index.json names a pipeline class of diffusers and components
    of classes that diffusers or transformers have (custom code is refused: artgen never
    runs code from a model folder), and every size the components' configs claim is within
    artgen.runs.checkpoint.BASE_CONFIG_LIMITS. One line naming the file otherwise."""
    import diffusers

    from artgen.runs.checkpoint import BASE_CONFIG_LIMITS, check_limits

    index_path = folder / "model_index.json"
    try:
        index = read_json(index_path, "pipeline index (model_index.json)")
    except FileNotFoundError:
        raise ArtgenError(
            f"{base}: not a diffusers pipeline folder (no model_index.json)"
        ) from None
    if not isinstance(index, dict):
        raise ArtgenError(f"{index_path}: not a pipeline index (a JSON object)")
    custom = "code that comes with the model, which artgen never runs"
    name = index.get("_class_name")
    if not isinstance(name, str):
        why = f"a custom pipeline ({custom})" if isinstance(name, list) else "not a class name"
        raise ArtgenError(f"{index_path}: _class_name is {why}")
    if "_custom_pipeline" in index:
        raise ArtgenError(f"{index_path}: names a custom pipeline ({custom})")
    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ArtgenError(
            f"{index_path}: _class_name {clip(name, 80)!r} is not a pipeline of diffusers "
            f"{diffusers.__version__}"
        )
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or value == [None, None]:
            continue
        if not (len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ArtgenError(f"{index_path}: {clip(key, 60)} is not a [library, class] pair")
        library, class_name = value
        if _library_class(library, class_name) is None:
            why = (
                f"a {clip(class_name, 60)!r}, a class {library} does not have"
                if _library_module(library) is not None
                else f"from {clip(library, 60)!r}, not diffusers or transformers: {custom}"
            )
            raise ArtgenError(f"{index_path}: {clip(key, 60)} is {why}")
        for config_name in COMPONENT_CONFIGS:
            path = folder / key / config_name
            if not path.is_file():
                continue
            config = read_json(path, f"{key} config")
            if not isinstance(config, dict):
                raise ArtgenError(f"{path}: not a config (a JSON object)")
            # nested configs too (a safety checker's text_config and vision_config)
            found = [(config, "")]
            while found:
                part, prefix = found.pop()
                check_limits(part, BASE_CONFIG_LIMITS, path, prefix=prefix)
                found += [(v, f"{prefix}{k}.") for k, v in part.items() if isinstance(v, dict)]


def _hub_snapshot(base: str, offline: bool) -> Path | None:
    """The folder of the hub id ``base`` in the Hugging Face cache holding its
    model_index.json and its components' configs (fetched first when online: small files,
    so that they are checked before the weights come); None when offline and not cached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        index = Path(hf_hub_download(base, "model_index.json", local_files_only=offline))
    except (OSError, ValueError, EntryNotFoundError) as e:
        if offline:
            return None
        raise ArtgenError(f"{base}: cannot load the base model: {first_line(e)}") from None
    folder = index.parent
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return folder  # check_base_folder says what is wrong with it
    if isinstance(components, dict):
        for key, value in components.items():
            if key.startswith("_") or not isinstance(value, list) or not key.isidentifier():
                continue
            for config_name in COMPONENT_CONFIGS:
                try:
                    hf_hub_download(base, f"{key}/{config_name}", local_files_only=offline)
                except (OSError, ValueError, EntryNotFoundError):
                    continue  # no such file: the component has the other name, or none
    return folder


def base_folder(base: str) -> Path | None:
    """The folder ``base`` is loaded from: itself when local, its snapshot in the Hugging
    Face cache for a hub id (None if it is not there)."""
    from huggingface_hub import try_to_load_from_cache

    if _is_local(base):
        return Path(base).expanduser()
    try:
        found = try_to_load_from_cache(base, "model_index.json")
    except (OSError, ValueError):
        return None
    return Path(found).parent if isinstance(found, str) else None


# Hashes of base files already read in this process: (path, size, mtime, inode) -> sha256.
_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def base_identity(base: str) -> str:
    """What decides which base a run draws with, as text (artgen.style.sdedit records its
    sha256 with the run's): for a folder, the sha256 of model_index.json and of every file
    of the components it names; for a hub id, the id and the commit of its snapshot in
    the Hugging Face cache (which names its files' contents). Files are hashed once per
    process unless they change."""
    from artgen.core.images import sha256_file

    folder = base_folder(base)
    if folder is not None and not _is_local(base):
        return f"hub {base} {folder.name}"
    if folder is None:
        return f"hub {base} (not in the cache)"
    try:
        index = read_json(folder / "model_index.json", "pipeline index (model_index.json)")
    except FileNotFoundError:
        return f"folder {folder} (no model_index.json)"
    names = sorted(k for k in index if not k.startswith("_")) if isinstance(index, dict) else []
    files = [folder / "model_index.json"]
    for name in names:
        part = folder / name
        if part.is_dir() and not name.startswith("."):
            files += sorted(
                p
                for p in part.rglob("*")
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(part).parts)
            )
    lines = []
    for f in files:
        try:
            st = f.stat()
            key = (str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
            if key not in _FILE_HASHES:
                _FILE_HASHES[key] = sha256_file(f)
            lines.append(f"{f.relative_to(folder).as_posix()} {_FILE_HASHES[key]}")
        except OSError as e:
            raise ArtgenError(f"{f}: unreadable ({first_line(e)})") from None
    return "folder\n" + "\n".join(lines)


def load_base(base: str, *, device: str | torch.device = "cpu") -> Any:
    """Load a diffusers pipeline from a hub id or a folder written by save_pretrained.

    Offline (``HF_HUB_OFFLINE=1``) a hub id loads from the Hugging Face cache only. The
    pipeline's index and its components' configs are checked first (check_base_folder).
    """
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    local = Path(base).expanduser()
    looks_local = _is_local(base)
    if looks_local and not local.is_dir():
        raise ArtgenError(
            f"{base}: no such folder (give a folder written by save_pretrained "
            "or a hub id such as google/ddpm-cifar10-32)"
        )
    if looks_local and not (local / "model_index.json").is_file():
        raise ArtgenError(f"{base}: not a diffusers pipeline folder (no model_index.json)")
    offline = bool(constants.HF_HUB_OFFLINE)
    fix = (
        ""
        if looks_local
        else f". Download it once online (huggingface-cli download {base}) or pass a local "
        "save_pretrained folder"
    )
    folder = local if looks_local else _hub_snapshot(base, offline)
    if folder is None:  # the one case where offline is the reason
        raise ArtgenError(
            f"{base}: cannot load the base model: offline (HF_HUB_OFFLINE=1) and not in "
            f"the Hugging Face cache{fix}"
        )
    check_base_folder(folder, base)
    kwargs: dict[str, Any] = {"local_files_only": offline}
    try:
        pipe = DiffusionPipeline.from_pretrained(str(local) if looks_local else base, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, SafetensorError) as e:
        raise ArtgenError(f"{base}: cannot load the base model: {first_line(e)}{fix}") from None
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _out_of_memory(e):
            raise
        raise ArtgenError(f"{base}: not enough memory to load the base model") from None
    pipeline_family(pipe)  # refuses pipelines artgen cannot fine-tune
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or any(
        s in text for s in ("not enough memory", "out of memory", "can't allocate")
    )


def pipeline_family(pipe: Any) -> str:
    """The family: "unconditional" (UNet2DModel), "text-to-image" (Stable Diffusion 1/2: one text
    encoder, a VAE) or "sdxl" (two text encoders, a VAE, a UNet with SDXL's text_time
    micro-conditioning); anything else is refused with one line."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    unet = getattr(pipe, "unet", None)
    if isinstance(unet, UNet2DModel):
        return "unconditional"
    if isinstance(unet, UNet2DConditionModel):
        parts = ("vae", "text_encoder", "tokenizer")
        has = all(getattr(pipe, p, None) is not None for p in parts)
        if has and not hasattr(pipe, "text_encoder_2"):
            return "text-to-image"
        xl = ("text_encoder_2", "tokenizer_2")
        if (
            has
            and all(getattr(pipe, p, None) is not None for p in xl)
            and unet.config.addition_embed_type == "text_time"
        ):
            return "sdxl"
        raise ArtgenError(
            f"{type(pipe).__name__}: only Stable Diffusion 1/2 (one text encoder, a VAE) "
            "and SDXL base pipelines (two text encoders, a VAE) are supported for "
            "text-to-image fine-tuning"
        )
    raise ArtgenError(
        f"{type(pipe).__name__}: not a UNet diffusion pipeline (artgen fine-tunes "
        "UNet2DModel and UNet2DConditionModel pipelines)"
    )


def default_resolution(pipe: Any) -> int:
    size = pipe.unet.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    if pipeline_family(pipe) in TEXT_FAMILIES:
        size *= 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return int(size)


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


def text_encoder_names(pipe: Any) -> list[str]:
    """The pipeline's text encoders' component names: one (SD 1/2) or two (SDXL)."""
    return [n for n in TEXT_ENCODER_NAMES if getattr(pipe, n, None) is not None]


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
        check_attribute,
        list_images,
        read_captions,
        read_labels,
    )

    if not options.base:
        raise ArtgenError("--base: give a diffusers hub id or a save_pretrained folder")
    if not options.images:
        raise ArtgenError("--images: give the folder of training images")
    options.check()
    files = list_images(options.images)
    # On resume the labels path comes from the run's config.json, which may point anywhere:
    # errors then name rows and columns, never the file's text.
    labels = read_labels(options.labels, files, echo=not options.resume) if options.labels else None
    if options.balance:
        check_attribute(labels, options.balance)
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
    trainer = _DiffusionTrainer(
        options,
        accelerator,
        pipe,
        family,
        resolution,
        trainable_names,
        data,
        class_data,
        draws,
        g,
        prompts,
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


class _DiffusionTrainer:
    """One diffusion fine-tuning run's state and step, for artgen.train.skeleton.train."""

    def __init__(
        self,
        options,
        accelerator,
        pipe,
        family,
        resolution,
        trainable_names,
        data,
        class_data,
        draws,
        g,
        prompts,
    ) -> None:
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.options, self.accelerator, self.pipe = options, accelerator, pipe
        self.family, self.resolution = family, resolution
        self.data, self.class_data, self.draws, self.g = data, class_data, draws, g
        self.prompts = prompts
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
            self.latents = LatentCache(pipe, data, device, flips=not options.no_flip)
            self.class_latents = (
                LatentCache(pipe, class_data, device, flips=not options.no_flip)
                if class_data is not None
                else None
            )
        # Text embeddings, once per distinct prompt, unless the text encoders train.
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if family in TEXT_FAMILIES and not options.train_text_encoder:
            wanted = set(prompts) | ({options.class_prompt} if class_data is not None else set())
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


def load_run(run_dir: str | os.PathLike, *, pipeline: Any = None, device: str = "cpu") -> Any:
    """The fine-tuned pipeline of a run folder (the base plus the run's weights).

    Everything read from the run is checked first: its config.json (as a resumed run's,
    see artgen.runs.checkpoint.read_run_config), the weights' files, and the weights themselves,
    which must be finite (NaN or infinite weights only ever draw noise)."""
    run = Path(run_dir)
    config, options = read_run_config(
        run,
        DiffusionFinetuneOptions,
        method="finetune-diffusion",
        paths=DiffusionFinetuneOptions.PATHS,
    )
    resolution = config.get("resolution")
    high = RUN_LIMITS["resolution"][1]
    if (
        not isinstance(resolution, int)
        or isinstance(resolution, bool)
        or not 1 <= resolution <= high
    ):
        raise ArtgenError(
            f"{run / 'config.json'}: resolution is {clip(json.dumps(resolution), 60)}, not a "
            f"whole number of pixels from 1 to {high}"
        )
    pipe = pipeline if pipeline is not None else load_base(options.base)
    family = pipeline_family(pipe)
    if options.method == "full":
        if not (run / "unet").is_dir():
            raise ArtgenError(
                f"{run}: the run has not finished (no unet/); sample a checkpoint "
                "by finishing it with --resume"
            )
        cls = type(pipe.unet)
        try:
            unet = cls.from_pretrained(run / "unet")
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as e:
            raise ArtgenError(f"{run / 'unet'}: unreadable UNet ({_first_line(e)})") from None
        check_finite(unet.state_dict(), run / "unet")
        pipe.register_modules(unet=unet)
    else:
        lora = run / "lora"
        if family in TEXT_FAMILIES:
            weights = lora / "pytorch_lora_weights.safetensors"
            if not weights.is_file():
                raise ArtgenError(f"{run}: the run has not finished (no lora/ weights)")
            tensors = load_safetensors(weights)
            check_finite(tensors, weights)
            _load_diffusers_lora(pipe, lora, weights, tensors, options)
        else:
            _load_peft_adapters(pipe.unet, lora, run)
    pipe.set_progress_bar_config(disable=True)
    pipe.artgen_config = config
    pipe.artgen_options = options
    return pipe.to(device)


def _load_diffusers_lora(
    pipe: Any, lora: Path, weights: Path, tensors: dict, options: DiffusionFinetuneOptions
) -> None:
    """The run's LoRA onto the pipeline with load_lora_weights, then checked: every
    module the file adapts, in the UNet and the text encoders, must be adapted (diffusers
    drops what it cannot place, with only a warning)."""
    wanted = lora_format.adapted_modules(tensors)
    peft_named = lora_format.peft_keys(tensors)
    try:
        if peft_named == tensors:
            pipe.load_lora_weights(lora)
        else:
            # Written before the key fix (attention adapters under diffusers' old names):
            # renamed in memory. Without the header's config diffusers takes alpha = rank,
            # so lora_B carries the run's alpha / rank.
            scale = (options.lora_alpha or options.lora_rank) / options.lora_rank
            pipe.load_lora_weights(
                {k: v * scale if ".lora_B." in k else v for k, v in peft_named.items()}
            )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as e:
        raise ArtgenError(f"{weights}: cannot load the LoRA weights ({_first_line(e)})") from None
    got = adapted(pipe)
    if got != wanted:
        missing = sorted(wanted - got) or sorted(got - wanted)
        raise ArtgenError(
            f"{weights}: {len(wanted - got)} of {len(wanted)} adapters did not "
            f"load (e.g. {missing[0][:80]})"
        )


def adapted(pipe: Any) -> set[str]:
    """``component.module`` for every module of the UNet and text encoders that carries a
    LoRA adapter (the keys' module paths in diffusers' LoRA files)."""
    out = set()
    for name in LORA_COMPONENTS:
        component = getattr(pipe, name, None)
        if component is None:
            continue
        out |= {
            f"{name}.{n}" for n, m in component.named_modules() if hasattr(m, "lora_A") and m.lora_A
        }
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _load_peft_adapters(unet: torch.nn.Module, lora: Path, run: Path) -> None:
    """lora/adapter_config.json + adapter_model.safetensors (peft's format) onto ``unet``,
    each checked: the config's fields and types, the file's tensors against the adapters
    the config makes (names and shapes), finite."""
    from peft import (
        LoraConfig,
        get_peft_model_state_dict,
        inject_adapter_in_model,
        set_peft_model_state_dict,
    )

    weights, meta_path = lora / "adapter_model.safetensors", lora / "adapter_config.json"
    if not weights.is_file():
        raise ArtgenError(f"{run}: the run has not finished (no lora/ weights)")
    try:
        meta = read_json(meta_path, "LoRA config")
    except FileNotFoundError:
        raise ArtgenError(f"{meta_path}: missing") from None
    kinds = {
        "r": int,
        "lora_alpha": (int, float),
        "target_modules": (str, list),
        "init_lora_weights": (str, bool),
    }
    if not isinstance(meta, dict) or set(meta) != set(kinds):
        raise ArtgenError(f"{meta_path}: needs exactly the fields {', '.join(kinds)}")
    for k, kind in kinds.items():
        v = meta[k]
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            v = None
        if not isinstance(v, kind) or (
            isinstance(v, list) and not all(isinstance(t, str) for t in v)
        ):
            raise ArtgenError(f"{meta_path}: {k} has the wrong type")
    low, high = RUN_LIMITS["lora_rank"]
    if not (low <= meta["r"] <= high and 0 < meta["lora_alpha"] <= RUN_LIMITS["lora_alpha"][1]):
        raise ArtgenError(
            f"{meta_path}: r must be {low} to {high} and lora_alpha positive (at most "
            f"{RUN_LIMITS['lora_alpha'][1]:g})"
        )
    tensors = load_safetensors(weights)
    check_finite(tensors, weights)
    try:
        inject_adapter_in_model(LoraConfig(**meta), unet)
    except (ValueError, TypeError, KeyError) as e:
        raise ArtgenError(f"{meta_path}: does not fit the base's UNet ({_first_line(e)})") from None
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(unet).items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        odd = sorted(set(expected) ^ set(got)) or sorted(k for k in got if got[k] != expected[k])
        raise ArtgenError(
            f"{weights}: does not match {meta_path.name} and the base "
            f"({len(odd)} tensors differ, e.g. {odd[0][:80]})"
        )
    set_peft_model_state_dict(unet, tensors)


@torch.no_grad()
def generate(
    pipe: Any,
    n: int,
    *,
    seed: int = 0,
    steps: int = 50,
    scheduler: str = "ddim",
    prompt: str | None = None,
    guidance_scale: float = 7.5,
    resolution: int | None = None,
    batch_size: int = 8,
) -> list[Image.Image]:
    """``n`` images; image i depends only on ``seed + i`` (not on the batch size)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    family = pipeline_family(pipe)
    if scheduler not in ("ddim", "ddpm"):
        raise ArtgenError(f"--scheduler {scheduler}: use ddim or ddpm")
    original = pipe.scheduler
    cls = DDIMScheduler if scheduler == "ddim" else DDPMScheduler
    pipe.scheduler = cls.from_config(original.config)
    device = pipe.unet.device
    gen_device = "cpu" if device.type == "mps" else device
    images: list[Image.Image] = []
    try:
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            gens = [torch.Generator(gen_device).manual_seed(seed + start + i) for i in range(k)]
            if family == "unconditional":
                out = pipe(
                    batch_size=k, generator=gens, num_inference_steps=steps, output_type="pil"
                )
            else:
                res = resolution or default_resolution(pipe)
                out = pipe(
                    [prompt or ""] * k,
                    generator=gens,
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    height=res,
                    width=res,
                    output_type="pil",
                )
            images.extend(out.images)
    finally:
        pipe.scheduler = original
    return images


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
