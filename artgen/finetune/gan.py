"""Train a StyleGAN2 generator, and adapt a pretrained one to a small or balanced image set.

The models are artgen.models.stylegan2 (Karras et al. 2020). The training loop is the one of
StyleGAN2-ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited
Data") written out explicitly: non-saturating logistic loss, lazy R1 regularisation on real
images, Adam with betas (0, 0.99) scaled for lazy regularisation as its training_loop.py does
(lr * c and betas ** c, c = 4/5 for G and 16/17 for D), an exponential moving average of the
generator's weights with ADA's half-life ramp-up when training from scratch and without it
when adapting a pretrained network (its train.py sets ema_rampup = None whenever it resumes
from a pickle), and differentiable augmentation of everything the discriminator sees
(DiffAugment, Zhao et al. 2020; see artgen.augment) in place of ADA's adaptive pipeline.

Adaptation methods (``finetune_gan``), combinable:

* full fine-tuning of the pretrained generator and discriminator (the few-shot baseline);
* FreezeD (Mo, Cho and Shin 2020, "Freeze the Discriminator"): the first k discriminator
  blocks, counted from the image, stay frozen;
* frozen generator layers (e.g. the mapping network, or the coarse synthesis blocks);
* cross-domain distance consistency (Ojha et al. 2021, "Few-shot Image Generation via
  Cross-domain Correspondence"): the pairwise similarities of a batch's intermediate features
  in the adapted generator are kept close (KL) to those in the frozen source generator. As
  in the authors' train.py (utkarshojha/few-shot-gan-adaptation): 4 fresh latents per step,
  each anchor compared in one randomly drawn modulated-convolution layer (any but the first,
  4x4 one), the KL averaged over the 4 x 3 entries (``nn.KLDivLoss()``), weight ``--cdc``
  (their kl_wt default 1000). Departures: the paper's patch-level discriminator on "anchor"
  regions is not implemented (the whole-image discriminator judges every sample), and both
  generators get the same constant noise where the official code draws fresh noise for each.

Fair transfer learning (Teo, Abdollahzadeh and Cheung 2023, "Fair Generative Models via
Transfer Learning"): a generator pretrained on a large, biased set is adapted on a small
balanced reference set.

* ``method="fairtl"`` is that adaptation (full fine-tuning on the reference set).
* ``method="fairtl++"`` adds the paper's two changes:
  - multiple feedback: a frozen copy of the pretrained discriminator judges quality, the
    trained one judges closeness to the reference set, and the generator minimises
    ``lambda * L_fair + (1 - lambda) * L_quality``;
  - linear probing then fine-tuning (LP-FT): for the first ``lp_steps`` only part of the
    networks train, then all of them. The paper leaves the split to its code; the authors'
    released fairTL++ script (sutd-visual-computing-group/FairTL,
    ProGAN/pytorch_GAN_zoo-main/train_fairTL++.py) trains all of G and freezes the
    discriminator's 8 and 16 px blocks during linear probing (``lp_split="authors"``, the
    default). Their StyleGAN2 scripts (train_2D_LP.py) are not in that repository, so the
    split is carried over from the ProGAN one by resolution. ``lp_split="mapping"`` is
    artgen's earlier reading: only G's mapping network and D's last block (b4) train first.
    The authors' StyleGAN2 recipe also runs without augmentation (``--aug=noaug``); artgen's
    default stays DiffAugment (pass ``augment=""`` to follow them).

Importance weighting (Choi et al. 2020, "Fair Generative Modeling via Weak Supervision") is
available to both procedures through ``labels`` and ``balance``: every value of the
attribute is drawn equally often. Departure: Choi et al. estimate the weights with a
density-ratio classifier; with labels for every image the exact weights are used.

Departures from StyleGAN2-ADA, all as in its own ``cifar`` configuration or for small CPU
runs: no style-mixing regularisation and no path-length regularisation, fp32 throughout, and
DiffAugment instead of ADA. Several GPUs go through Hugging Face accelerate; gradients are
averaged across processes by hand, as StyleGAN2-ADA does, because R1's double backward does
not go through DistributedDataParallel.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from artgen.checkpoint import (
    MAX_BATCH,
    StepInterrupt,
    absolute_paths,
    check_finite,
    check_run_folder,
    list_checkpoints,
    optimizer_to_tensors,
    options_from_dict,
    read_checkpoint,
    read_json,
    read_run_config,
    resolve_run_path,
    rng_to_tensors,
    save_checkpoint,
    write_json,
)
from artgen.checkpoint import (
    options_for_resume as _options_for_resume,
)
from artgen.devices import resolve_device
from artgen.errors import ArtgenError, Cancelled

METHODS = ("full", "fairtl", "fairtl++")
# fairTL++'s linear-probing split (see the module docstring): "authors" as the authors' code,
# "mapping" the reading artgen used before (the mapping network and D's last block).
LP_SPLITS = ("authors", "mapping")
# The D blocks the authors' code freezes while linear probing: train_fairTL++.py freezes its
# ProGAN discriminator's scaleLayers 0 and 1, the 8 and 16 px blocks (next to the 4x4 output
# block; the loop visits scaleLayers in reverse, from the image side).
LP_FROZEN_D = ("b8", "b16")
# CDC anchors per step: Ojha et al.'s train.py draws feat_const_batch = 4 fresh latents every
# iteration, whatever the batch size.
CDC_BATCH = 4
# StyleGAN2-ADA (training_loop.py) lowers lr and betas by c = interval / (interval + 1) for
# each network with a lazy regulariser: G_reg_interval = 4 (its default, which train.py keeps
# for every config, "cifar" with pl_weight = 0 included) and D_reg_interval = 16 (--r1-every).
G_REG_INTERVAL = 4
RUN_KINDS = ("train-gan", "finetune-gan")  # the "method" a GAN run's config.json records
# Settings that name files or folders: recorded as absolute paths (see absolute_paths).
PATHS = ("base", "images", "out", "labels")
# What a resumed run may change; anything else would silently alter the run it continues.
RESUMABLE = ("steps", "sample_every", "checkpoint_every", "keep_checkpoints", "device")


@dataclass(frozen=True)
class GanTrainOptions:
    """``artgen train gan``: a StyleGAN2 generator from scratch (a base of your own)."""

    images: str = field(default="", metadata={"help": "folder of training images"})
    out: str = field(default="", metadata={"help": "run folder to create (or to --resume)"})
    resolution: int = field(default=32, metadata={"help": "image size in px (a power of two)"})
    z_dim: int = field(default=128, metadata={"help": "latent size"})
    w_dim: int = field(default=128, metadata={"help": "style (W) size"})
    mapping_layers: int = field(default=2, metadata={"help": "mapping network depth"})
    channel_base: int = field(
        default=4096, metadata={"help": "channels at resolution r: min(base // r, max)"}
    )
    channel_max: int = field(default=256, metadata={"help": "most channels in a block"})
    steps: int = field(default=5000, metadata={"help": "training steps (one D and one G step)"})
    batch_size: int = field(default=16, metadata={"help": "images per step per device"})
    lr: float = field(default=0.0025, metadata={"help": "Adam learning rate (G and D)"})
    r1_gamma: float = field(
        default=0.0, metadata={"help": "R1 weight (0: ADA's heuristic 2e-4 * res^2 / batch)"}
    )
    r1_every: int = field(default=16, metadata={"help": "lazy R1: every N steps"})
    ema_kimg: float = field(
        default=0.0, metadata={"help": "EMA half-life in thousands of images (0: batch * 10/32)"}
    )
    augment: str = field(
        default="color,translation",
        metadata={"help": "DiffAugment policy for D's inputs ('' for none)"},
    )
    labels: str = field(default="", metadata={"help": "CSV: file name plus attribute columns"})
    balance: str = field(
        default="", metadata={"help": "attribute whose values are drawn equally often"}
    )
    sample_every: int = field(default=500, metadata={"help": "write a sample grid every N steps"})
    checkpoint_every: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints to keep (0: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, batches and noise"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out"})

    def check(self) -> None:
        """The settings' own ranges (files and folders are checked when the run starts)."""
        _check_values(self)
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise ArtgenError(f"--resolution {r}: must be a power of two >= 4")


@dataclass(frozen=True)
class GanFinetuneOptions:
    """``artgen finetune gan``: adapt a pretrained StyleGAN2 to a small or balanced set."""

    base: str = field(
        default="",
        metadata={"help": "folder with generator/ and discriminator/ (an artgen train or "
                  "finetune run, or the output of artgen convert)"},
    )  # fmt: skip
    images: str = field(default="", metadata={"help": "folder of training (reference) images"})
    out: str = field(default="", metadata={"help": "run folder to create (or to --resume)"})
    method: str = field(
        default="full",
        metadata={"help": "full: fine-tune; fairtl: the same, on a balanced reference set; "
                  "fairtl++: plus multiple feedback and LP-FT", "choices": list(METHODS)},
    )  # fmt: skip
    steps: int = field(default=1000, metadata={"help": "training steps (one D and one G step)"})
    batch_size: int = field(default=8, metadata={"help": "images per step per device"})
    lr: float = field(default=0.002, metadata={"help": "Adam learning rate (G and D)"})
    r1_gamma: float = field(
        default=0.0, metadata={"help": "R1 weight (0: ADA's heuristic 2e-4 * res^2 / batch)"}
    )
    r1_every: int = field(default=16, metadata={"help": "lazy R1: every N steps"})
    ema_kimg: float = field(
        default=0.0, metadata={"help": "EMA half-life in thousands of images (0: batch * 10/32)"}
    )
    augment: str = field(
        default="color,translation,cutout",
        metadata={"help": "DiffAugment policy for D's inputs ('' for none)"},
    )
    freeze_d: int = field(
        default=0, metadata={"help": "FreezeD: freeze the first K discriminator blocks"}
    )
    freeze_g: str = field(
        default="",
        metadata={"help": "generator parts that stay frozen, e.g. mapping or mapping,b4,b8"},
    )
    class_index: int = field(
        default=-1,
        metadata={"help": "class-conditional bases (e.g. CIFAR-10): the class to adapt from, "
                  "0 to c_dim-1; the adapted generator draws it by default"},
    )  # fmt: skip
    cdc: float = field(
        default=0.0,
        metadata={"help": "weight of cross-domain distance consistency (Ojha et al.; "
                  "1000 in the paper; 0: off)"},
    )  # fmt: skip
    feedback_lambda: float = field(
        default=0.5,
        metadata={"help": "fairtl++: weight of the trained discriminator (1 - it: the frozen "
                  "pretrained one)"},
    )  # fmt: skip
    lp_steps: int = field(
        default=-1,
        metadata={"help": "fairtl++: steps of linear probing before fine-tuning all "
                  "(-1: a quarter of --steps)"},
    )  # fmt: skip
    lp_split: str = field(
        default="authors",
        metadata={"help": "fairtl++: what trains during linear probing. authors: all of G, "
                  "D without its 8 and 16 px blocks (Teo et al.'s code); mapping: G's mapping "
                  "network and D's last block (artgen's earlier reading)",
                  "choices": list(LP_SPLITS)},
    )  # fmt: skip
    labels: str = field(default="", metadata={"help": "CSV: file name plus attribute columns"})
    balance: str = field(
        default="", metadata={"help": "attribute whose values are drawn equally often"}
    )
    sample_every: int = field(default=250, metadata={"help": "write a sample grid every N steps"})
    checkpoint_every: int = field(default=250, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints to keep (0: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the batches and noise"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out"})

    def check(self) -> None:
        """The settings' own ranges (files, folders and the base's shape are checked when
        the run starts)."""
        _check_values(self)
        if self.method not in METHODS:
            raise ArtgenError(f"--method {self.method}: use one of {', '.join(METHODS)}")
        if not 0 <= self.feedback_lambda <= 1:
            raise ArtgenError(f"--feedback-lambda {self.feedback_lambda}: must be in [0, 1]")
        if self.cdc < 0:
            raise ArtgenError(f"--cdc {self.cdc}: must be >= 0")
        if self.lp_split not in LP_SPLITS:
            raise ArtgenError(f"--lp-split {self.lp_split}: use one of {', '.join(LP_SPLITS)}")
        if self.freeze_d < 0 or self.class_index < -1 or self.lp_steps < -1:
            raise ArtgenError("--freeze-d must be >= 0, --class-index and --lp-steps >= -1")


def _check_values(options: Any) -> None:
    """Checks that both GAN option classes share: used when a run starts, and when a run's
    config.json is read back (see artgen.checkpoint.options_from_dict)."""
    from artgen.augment import parse_policy

    for name in ("steps", "batch_size", "r1_every", "sample_every", "checkpoint_every"):
        if getattr(options, name) < 1:
            raise ArtgenError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be >= 1")
    if options.batch_size > MAX_BATCH:
        raise ArtgenError(f"--batch-size {options.batch_size}: at most {MAX_BATCH}")
    if options.keep_checkpoints < 0:
        raise ArtgenError(f"--keep-checkpoints {options.keep_checkpoints}: must be >= 0")
    if not options.lr > 0:
        raise ArtgenError(f"--lr {options.lr}: must be positive")
    if options.r1_gamma < 0 or options.ema_kimg < 0:
        raise ArtgenError("--r1-gamma and --ema-kimg must be >= 0")
    parse_policy(options.augment)
    if options.balance and not options.labels:
        raise ArtgenError("--balance needs --labels (a CSV of file names and attributes)")


@dataclass(frozen=True)
class GanProgress:
    """Reported after every training step."""

    step: int
    total_steps: int
    loss_g: float
    loss_d: float
    elapsed: float
    samples: Path | None = None
    checkpoint: Path | None = None


@dataclass(frozen=True)
class GanSampleOptions:
    """``artgen sample`` flags that only GAN runs use."""

    truncation: float = field(
        default=1.0, metadata={"help": "GAN runs: truncation psi (1: none; 0.7: safer images)"}
    )
    class_index: int = field(
        default=-1,
        metadata={"help": "GAN runs, class-conditional networks: the class to draw (default: "
                  "the class the run adapted)"},
    )  # fmt: skip


# -- losses (pure functions) --------------------------------------------------------------


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's logistic loss: softplus(D(fake)) + softplus(-D(real)), averaged."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss softplus(-D(G(z))) (Goodfellow et al. 2014)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient norm of D at real images (Mescheder et al. 2018)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]).mean()


def _similarity_distribution(f: torch.Tensor, log: bool) -> torch.Tensor:
    """Each sample's softmax over its cosine similarities to the batch's other samples
    (N, N-1): row i lists sim(f_i, f_j) for j != i in increasing j, as the official code's
    loop fills ``dist_source[pair1, tmpc]``."""
    flat = F.normalize(f.flatten(1), dim=1)
    sim = flat @ flat.T
    n = sim.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    sim = sim[off].view(n, n - 1)
    return F.log_softmax(sim, dim=1) if log else F.softmax(sim, dim=1)


def cdc_loss(
    source: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    layers: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """Cross-domain distance consistency (Ojha et al. 2021, eq. 2), as their code computes it.

    ``source[l]`` and ``target[l]`` are layer l's features (N, ...) of the same N >= 3
    latents in the frozen source generator and the adapted one; ``layers[i]`` is the layer
    anchor i is compared in (the official train.py draws one per anchor,
    ``feat_ind = numpy.random.randint(1, n_latent - 1, size=feat_const_batch)``). Row i of
    each distribution is the softmax over j != i of the cosine similarity of samples i and j
    in layer ``layers[i]``; the loss is ``nn.KLDivLoss()(log p_target, p_source)``, the
    default reduction "mean": the sum of p_s (log p_s - log p_t) over the N (N-1) entries,
    divided by N (N-1).

    Departure from the paper's text, not its code: eq. 2 sums the KL over anchors; the code
    (and artgen) averages. An earlier artgen divided by N ("batchmean": N - 1 times this),
    summed three block outputs and used max(batch, 4) anchors, about 45 times the official
    strength at one weight. That form is not kept: the official one at a larger weight
    reaches the same strength, and the old form was not measured to be better.
    """
    if len(source) != len(target) or not source:
        raise ValueError("cdc_loss needs the same, non-zero number of source and target layers")
    layers = torch.as_tensor(layers, dtype=torch.long).flatten().cpu()
    n = source[0].shape[0]
    if n < 3:
        raise ValueError("cdc_loss needs a batch of at least 3")
    if layers.numel() != n or bool((layers < 0).any()) or bool((layers >= len(source)).any()):
        raise ValueError(f"cdc_loss needs one layer index per anchor (N = {n}), each below "
                         f"{len(source)}")  # fmt: skip
    rows_s, rows_t = [], []
    for layer in sorted(set(layers.tolist())):
        s, t = source[layer], target[layer]
        if s.shape[0] != n or t.shape != s.shape:
            raise ValueError(f"cdc_loss: layer {layer} has {tuple(s.shape)} and {tuple(t.shape)}")
        anchors = (layers == layer).nonzero().flatten()
        rows_s.append(_similarity_distribution(s.detach(), log=False)[anchors.to(s.device)])
        rows_t.append(_similarity_distribution(t, log=True)[anchors.to(t.device)])
    p_s, log_p_t = torch.cat(rows_s), torch.cat(rows_t)
    # nn.KLDivLoss()'s "mean", written out (torch warns that its "mean" will change): the sum
    # over all N (N-1) entries over their number. Rows in any order give the same mean.
    return F.kl_div(log_p_t, p_s, reduction="sum") / p_s.numel()


# -- the networks ------------------------------------------------------------------------


def load_gan(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The generator and discriminator in ``folder``/generator and ``folder``/discriminator."""
    from artgen.models.stylegan2 import Discriminator, Generator

    root = Path(folder)
    if not root.is_dir():
        raise ArtgenError(
            f"{folder}: no such folder (give a run folder or an artgen convert output)"
        )
    if not (root / "generator").is_dir() or not (root / "discriminator").is_dir():
        raise ArtgenError(f"{folder}: needs generator/ and discriminator/ folders "
                          "(written by artgen train gan, finetune gan or convert)")  # fmt: skip
    G = Generator.from_pretrained(root / "generator", device=device)
    D = Discriminator.from_pretrained(root / "discriminator", device=device)
    check_finite(G.state_dict(), root / "generator" / "model.safetensors")
    check_finite(D.state_dict(), root / "discriminator" / "model.safetensors")
    _check_pair(G, D, folder)
    return G, D


def _check_pair(G: Any, D: Any, where: str | os.PathLike) -> None:
    if G.config.c_dim != D.config.c_dim:
        raise ArtgenError(f"{where}: the generator has {G.config.c_dim} classes but the "
                          f"discriminator {D.config.c_dim}")  # fmt: skip


def class_labels(
    c_dim: int, class_index: int, n: int = 1, device: str | torch.device = "cpu"
) -> torch.Tensor | None:
    """One-hot labels (n, c_dim) of ``class_index`` for a conditional network, None for an
    unconditional one (c_dim 0, class_index -1)."""
    if c_dim == 0:
        if class_index != -1:
            raise ArtgenError(f"--class-index {class_index}: this network is unconditional "
                              "(it has no classes)")  # fmt: skip
        return None
    if class_index == -1:
        raise ArtgenError(f"this network is class-conditional ({c_dim} classes): pass "
                          f"--class-index K, a class from 0 to {c_dim - 1}")  # fmt: skip
    if not 0 <= class_index < c_dim:
        raise ArtgenError(f"--class-index {class_index}: this network is class-conditional; "
                          f"give a class from 0 to {c_dim - 1}")  # fmt: skip
    c = torch.zeros(n, c_dim, device=device)
    c[:, class_index] = 1
    return c


def load_generator(run_or_folder: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The generator of a GAN run (its generator/ folder) or a generator folder itself."""
    from artgen.models.stylegan2 import Generator

    root = Path(run_or_folder)
    folder = root / "generator" if (root / "generator").is_dir() else root
    G = Generator.from_pretrained(folder, device=device)
    # NaN or infinite weights (a damaged file, or a run that diverged) only ever draw
    # blank images; say so instead.
    check_finite(G.state_dict(), folder / "model.safetensors")
    return G


def _freeze_g_prefixes(G: torch.nn.Module, spec: str) -> list[str]:
    names = [n for n, _ in G.named_parameters()]
    prefixes = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        prefix = part if part.startswith(("mapping", "synthesis")) else f"synthesis.{part}"
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            blocks = sorted({n.split(".")[1] for n in names if n.startswith("synthesis.")},
                            key=lambda b: int(b[1:]) if b[1:].isdigit() else 0)  # fmt: skip
            raise ArtgenError(f"--freeze-g {part}: no such generator part "
                              f"(valid: mapping, {', '.join(blocks)})")  # fmt: skip
        prefixes.append(prefix)
    return prefixes


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def synthesis_layers(G: torch.nn.Module) -> list[torch.nn.Module]:
    """G's modulated convolutions in order, b4.conv1, b8.conv0, b8.conv1, ...: the layers
    whose outputs rosinality's StyleGAN2 (on which Ojha et al.'s CDC code is built) returns
    as ``feat_list``, 2 log2(R) - 3 of them."""
    layers = []
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        if hasattr(block, "conv0"):
            layers.append(block.conv0)
        layers.append(block.conv1)
    return layers


def layer_features(
    G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor | None
) -> list[torch.Tensor]:
    """The outputs (N, C, H, W) of each of :func:`synthesis_layers`, with constant noise."""
    feats: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: feats.append(out))
             for m in synthesis_layers(G)]  # fmt: skip
    try:
        G(z, c, noise_mode="const")
    finally:
        for h in hooks:
            h.remove()
    return feats


@torch.no_grad()
def _ema_update(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


# -- sampling ----------------------------------------------------------------------------


@torch.no_grad()
def generate_gan(
    G: Any,
    n: int,
    *,
    seed: int = 0,
    truncation_psi: float = 1.0,
    batch_size: int = 16,
    noise_mode: str = "random",
    class_index: int = -1,
) -> list[Image.Image]:
    """``n`` images; image i draws its latent and noise from seed ``seed + i`` alone.

    A class-conditional ``G`` needs ``class_index`` (0 to c_dim-1); all images are of it."""
    from artgen.images import to_pil

    device = next(G.parameters()).device
    c = class_labels(G.config.c_dim, class_index, 1, device)
    was_training = G.training
    G.eval()
    images: list[Image.Image] = []
    try:
        for start in range(0, n, batch_size):
            for i in range(start, min(n, start + batch_size)):
                g = torch.Generator(device=device).manual_seed(seed + i)
                z = torch.randn(1, G.config.z_dim, generator=g, device=device)
                x = G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode, generator=g)
                images.append(to_pil((x[0].float().clamp(-1, 1) + 1) / 2))
    finally:
        G.train(was_training)
    return images


def sample_gan_run(
    run_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    truncation_psi: float = 1.0,
    batch_size: int = 16,
    device: str = "cpu",
    class_index: int = -1,
) -> list[Image.Image]:
    """``n`` images from a GAN run folder (its generator/, the EMA weights).

    For a class-conditional generator, ``class_index`` -1 means the class the run adapted."""
    if n < 1:
        raise ArtgenError(f"-n {n}: must be >= 1")
    G = load_generator(run_dir, device=resolve_device(device))
    recorded = run_class_index(run_dir)  # also checks the run's config.json, if it has one
    if G.config.c_dim and class_index == -1:
        class_index = recorded
        if class_index == -1:
            raise ArtgenError(f"{run_dir}: a class-conditional generator ({G.config.c_dim} "
                              f"classes); pass --class-index K (0 to {G.config.c_dim - 1})")  # fmt: skip
    return generate_gan(G, n, seed=seed, truncation_psi=truncation_psi, batch_size=batch_size,
                        class_index=class_index)  # fmt: skip


def run_class_index(run_dir: str | os.PathLike) -> int:
    """The class a run of a class-conditional base adapted (-1: none recorded, as for a
    generator folder or a run trained from scratch). A run config.json that is there but
    damaged is an ArtgenError naming it, not a silent -1."""
    root = Path(run_dir)
    if _network_config(root) is not None:
        return -1  # a generator folder itself: no run settings
    found = read_run_config(root, method=RUN_KINDS, missing_ok=True)
    if found is None:
        return -1
    cls = GanTrainOptions if found[0]["method"] == "train-gan" else GanFinetuneOptions
    config = read_run_config(root, method=RUN_KINDS)[0]
    saved = config.get("options")
    if isinstance(saved, dict):  # a run recorded before a setting existed: what it did
        saved = {**ADDED_SETTINGS.get(cls, {}), **saved}
        saved = {k: (resolve_run_path(root, v) if k in PATHS and isinstance(v, str) else v)
                 for k, v in saved.items()}  # fmt: skip
    elif "options" not in config:
        raise ArtgenError(f"{root / 'config.json'}: no options field")
    options = options_from_dict(cls, saved, root / "config.json")  # checked, one field used
    return getattr(options, "class_index", -1)


def _network_config(folder: Path) -> dict | None:
    """The config.json of a saved StyleGAN2 network in ``folder``, None if it holds none
    (ArtgenError if a config.json there is unreadable)."""
    try:
        config = read_json(folder / "config.json", "config")
    except FileNotFoundError:
        return None
    except ArtgenError:
        if (folder / "model.safetensors").exists():  # a network folder with a damaged config
            raise
        return None  # a run's config.json, read (and checked) by whoever reads the run
    if isinstance(config, dict) and config.get("format") == "artgen-stylegan2":
        return config
    return None


def is_gan_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a GAN: a generator folder itself, a run whose config.json
    says it is a GAN run, or a folder with a generator/ entry.

    Decided from what the folder is, not from whether its files are intact: a damaged
    generator/config.json (or a generator/ that links to some other folder) is still a GAN
    run, and loading it then says what is wrong with it."""
    root = Path(run_dir)
    if _network_config(root) is not None:
        return True
    found = read_run_config(root, missing_ok=True) if (root / "config.json").exists() else None
    if found is not None and "method" in found[0]:
        return found[0]["method"] in RUN_KINDS
    return os.path.lexists(root / "generator")


# -- the runs ----------------------------------------------------------------------------


# Settings added after runs may have been recorded, each with the value that reproduces what
# such a run did. options_from_dict refuses a missing setting (today's default could silently
# change the run), so a run recorded without one gets this value instead: on reading, and
# written into its config.json when it is resumed (which rewrites that file anyway).
ADDED_SETTINGS: dict[type, dict[str, Any]] = {GanFinetuneOptions: {"lp_split": "mapping"}}


def _record_added_settings(cls: type, run_dir: str | os.PathLike) -> None:
    added = ADDED_SETTINGS.get(cls)
    path = Path(run_dir) / "config.json"
    if not added or not path.is_file():
        return
    try:
        config = read_json(path, "run config")
    except ArtgenError:
        return  # the reader below names what is wrong with it
    saved = config.get("options") if isinstance(config, dict) else None
    if isinstance(saved, dict) and any(k not in saved for k in added):
        config["options"] = {**added, **saved}
        write_json(path, config)


def options_for_resume(cls: type, run_dir: str | os.PathLike, **overrides: Any) -> Any:
    """The ``cls`` options a run was started with, with ``overrides`` of RESUMABLE settings."""
    method = "train-gan" if cls is GanTrainOptions else "finetune-gan"
    _record_added_settings(cls, run_dir)
    return _options_for_resume(cls, run_dir, overrides, changeable=RESUMABLE, method=method,
                               paths=PATHS)  # fmt: skip


def _check_common(options: Any) -> tuple[list[Path], Any]:
    from artgen.data import check_attribute, list_images, read_labels

    if not options.images:
        raise ArtgenError("--images: give the folder of training images")
    if not options.out:
        raise ArtgenError("--out: give a run folder to create")
    options.check()
    files = list_images(options.images)
    # On resume the labels path comes from the run's config.json, which may have been
    # edited to point anywhere: errors then name rows and columns, never the file's text.
    labels = (read_labels(options.labels, files, echo=not options.resume)
              if options.labels else None)  # fmt: skip
    if options.balance:
        check_attribute(labels, options.balance)
    check_run_folder(Path(options.out), options.resume)
    return files, labels


def train_gan(
    options: GanTrainOptions, *, callback: Callable[[GanProgress], None] | None = None
) -> Path:
    """Train a StyleGAN2 generator from scratch on ``options.images``; returns the run folder.

    The run folder holds config.json, README.md (model card), log.jsonl, samples/,
    checkpoints/, generator/ (EMA weights) and discriminator/.
    """
    from artgen.models.stylegan2 import Discriminator, Generator, StyleGAN2Config

    files, labels = _check_common(options)
    r = options.resolution
    try:
        config = StyleGAN2Config(resolution=r, z_dim=options.z_dim, w_dim=options.w_dim,
                                 mapping_layers=options.mapping_layers,
                                 channel_base=options.channel_base,
                                 channel_max=options.channel_max)  # fmt: skip
    except ValueError as e:
        raise ArtgenError(f"network settings: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        G, D = Generator(config), Discriminator(config)
    return _run(options, "train-gan", G, D, files, labels, callback)


def finetune_gan(
    options: GanFinetuneOptions,
    *,
    networks: tuple[Any, Any] | None = None,
    callback: Callable[[GanProgress], None] | None = None,
) -> Path:
    """Adapt the GAN in ``options.base`` (or the ``networks`` (G, D) handed in) to
    ``options.images``; returns the run folder (laid out as train_gan's)."""
    if options.method not in METHODS:
        raise ArtgenError(f"--method {options.method}: use one of {', '.join(METHODS)}")
    if not options.base and networks is None:
        raise ArtgenError("--base: give a folder with generator/ and discriminator/")
    files, labels = _check_common(options)
    # Networks handed in are copied: the caller's modules are never trained in place.
    G, D = copy.deepcopy(networks) if networks is not None else load_gan(options.base)
    _check_pair(G, D, options.base or "networks")
    class_labels(G.config.c_dim, options.class_index)  # a clear error before any work
    if options.freeze_d < 0 or options.freeze_d >= len(D.block_names()):
        raise ArtgenError(f"--freeze-d {options.freeze_d}: must be between 0 and "
                          f"{len(D.block_names()) - 1} (D has blocks {', '.join(D.block_names())})")  # fmt: skip
    frozen = _freeze_g_prefixes(G, options.freeze_g)
    if all(_under(n, frozen) for n, _ in G.named_parameters()):
        raise ArtgenError(f"--freeze-g {options.freeze_g}: that freezes the whole generator")
    mapping = [n for n, _ in G.named_parameters() if n.startswith("mapping.")]
    if (
        options.method == "fairtl++"
        and options.lp_split == "mapping"
        and options.lp_steps != 0
        and all(_under(n, frozen) for n in mapping)
    ):
        raise ArtgenError("fairtl++ trains the mapping network first (linear probing); "
                          "leave it out of --freeze-g, or pass --lp-steps 0")  # fmt: skip
    return _run(options, "finetune-gan", G, D, files, labels, callback)


def _run(
    options: Any,
    kind: str,
    G: torch.nn.Module,
    D: torch.nn.Module,
    files: list[Path],
    labels: Any,
    callback: Callable[[GanProgress], None] | None,
) -> Path:
    from accelerate import Accelerator

    from artgen import __version__
    from artgen.augment import diff_augment
    from artgen.data import ImageSet, balance_weights, proportions
    from artgen.images import grid, save_png

    group = D.config.mbstd_group_size
    if options.batch_size % min(group, options.batch_size):
        raise ArtgenError(f"--batch-size {options.batch_size}: must be a multiple of the "
                          f"discriminator's minibatch-stddev group ({group}), or smaller")  # fmt: skip
    device = resolve_device(options.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    dev = accelerator.device
    world = accelerator.num_processes
    run = Path(options.out)
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    finetune = kind == "finetune-gan"
    method = getattr(options, "method", "train")
    res = G.config.resolution
    # A class-conditional base adapts with one class's label throughout (D sees it too).
    class_index = getattr(options, "class_index", -1)
    label = class_labels(G.config.c_dim, class_index, 1, dev)

    def cond(n: int) -> torch.Tensor | None:
        return None if label is None else label.expand(n, -1)

    G = G.to(dev).train().requires_grad_(True)
    D = D.to(dev).train().requires_grad_(True)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    D_quality = G_source = None
    if method == "fairtl++" and options.feedback_lambda < 1:
        D_quality = copy.deepcopy(D).eval().requires_grad_(False)  # the pretrained critic
    if finetune and options.cdc > 0:
        G_source = copy.deepcopy(G).eval().requires_grad_(False)
        n_cdc_layers = len(synthesis_layers(G))

    # What trains: everything but the user's frozen parts (FreezeD, --freeze-g).
    frozen_d = D.block_names()[: options.freeze_d] if finetune else []
    frozen_g = _freeze_g_prefixes(G, options.freeze_g) if finetune else []
    g_params = {n: p for n, p in G.named_parameters() if not _under(n, frozen_g)}
    d_params = {n: p for n, p in D.named_parameters() if not _under(n, frozen_d)}
    for n, p in G.named_parameters():
        p.requires_grad_(n in g_params)
    for n, p in D.named_parameters():
        p.requires_grad_(n in d_params)
    lp_steps = 0
    if method == "fairtl++":
        lp_steps = options.lp_steps if options.lp_steps >= 0 else options.steps // 4
        if options.resume:  # where linear probing ends was fixed when the run started
            saved = read_run_config(run)[0].get("lp_steps", lp_steps)
            if not isinstance(saved, int) or isinstance(saved, bool) or not 0 <= saved <= 1 << 62:
                raise ArtgenError(f"{run / 'config.json'}: lp_steps is not a whole number >= 0")
            lp_steps = saved
    lp_split = getattr(options, "lp_split", "authors")
    if lp_split == "mapping":  # artgen's earlier reading
        lp_g = {n for n in g_params if n.startswith("mapping.")}
        lp_d = {n for n in d_params if n.startswith(D.block_names()[-1] + ".")}
        lp_frozen_d = D.block_names()[:-1]
    else:  # the authors' train_fairTL++.py: all of G; D without its 8 and 16 px blocks
        lp_frozen_d = [b for b in D.block_names()[:-1] if b in LP_FROZEN_D]
        lp_g = set(g_params)
        lp_d = {n for n in d_params if not _under(n, lp_frozen_d)}

    batch = options.batch_size
    r1_gamma = options.r1_gamma or 2e-4 * res * res / (batch * world)
    ema_kimg = options.ema_kimg or batch * world * 10 / 32
    # Lazy regularisation (StyleGAN2 app. B; StyleGAN2-ADA training_loop.py): each network
    # with a lazy regulariser gets lr * c and betas ** c, c = interval / (interval + 1). ADA
    # keeps G_reg_interval = 4 even where path-length regularisation is off (its cifar config),
    # so G is scaled too. A resumed run restores the lr and betas its checkpoint holds.
    c_g = G_REG_INTERVAL / (G_REG_INTERVAL + 1)
    c = options.r1_every / (options.r1_every + 1)
    opt_g = torch.optim.Adam(list(g_params.values()), lr=options.lr * c_g,
                             betas=(0.0, 0.99**c_g), eps=1e-8)  # fmt: skip
    opt_d = torch.optim.Adam(list(d_params.values()), lr=options.lr * c,
                             betas=(0.0, 0.99**c), eps=1e-8)  # fmt: skip

    # Two generators: one on the device for latents, noise and augmentation, one on the CPU
    # for batch draws and flips. Both are checkpointed, so a resumed run continues exactly.
    g = torch.Generator(device=dev).manual_seed(options.seed + accelerator.process_index)
    g_data = torch.Generator().manual_seed(options.seed + 1000 + accelerator.process_index)
    data = ImageSet(files, res, center_crop=True, random_flip=True, generator=g_data)
    if options.balance:
        values = labels.values(options.balance)
        weights = torch.tensor(balance_weights(values), dtype=torch.float64)
    else:
        values = None
        weights = torch.ones(len(files), dtype=torch.float64)

    step = 0
    drawn: Counter[str] = Counter()
    ckpt_dir = run / "checkpoints"
    if options.resume:
        found = list_checkpoints(ckpt_dir)
        if not found:
            raise ArtgenError(f"{run}: no checkpoint to resume from in {ckpt_dir}")
        step = restore(found[-1], G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d,
                       generators={"device": g, "data": g_data}, world=world,
                       rank=accelerator.process_index, drawn=drawn)  # fmt: skip
        if step >= options.steps:
            raise ArtgenError(f"{run}: already at step {step} of {options.steps}; "
                              "pass a larger --steps to train further")  # fmt: skip

    resolved = {
        "artgen": __version__, "method": kind,
        "options": absolute_paths(dataclasses.asdict(options), PATHS),
        "network": G.config.to_dict(), "r1_gamma": r1_gamma, "ema_kimg": ema_kimg,
        "lp_steps": lp_steps, "frozen_d_blocks": frozen_d, "frozen_g": frozen_g,
        "lp_frozen_d_blocks": lp_frozen_d if lp_steps else [],
        "ema_rampup": None if finetune else 0.05, "g_lr": options.lr * c_g,
        "device": str(dev), "num_processes": world, "num_images": len(files),
        "trainable_parameters_g": sum(p.numel() for p in g_params.values()),
        "trainable_parameters_d": sum(p.numel() for p in d_params.values()),
    }  # fmt: skip
    resolved["options"]["resume"] = False
    if accelerator.is_main_process:
        write_json(run / "config.json", resolved)

    def checkpoint(at: int) -> Path | None:
        """Every process calls this; the main one writes, with every process's RNG state."""
        rng = [rng_to_tensors({"device": g, "data": g_data})]
        if world > 1:
            rng = [None] * world
            torch.distributed.all_gather_object(rng, rng_to_tensors({"device": g, "data": g_data}))
        if not accelerator.is_main_process:
            return None
        opt_g_t, opt_g_meta = optimizer_to_tensors(opt_g)
        opt_d_t, opt_d_meta = optimizer_to_tensors(opt_d)
        tensors = {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                   "opt_g": opt_g_t, "opt_d": opt_d_t}  # fmt: skip
        state = {"opt_g": opt_g_meta, "opt_d": opt_d_meta, "drawn": dict(drawn),
                 "num_processes": world}  # fmt: skip
        for rank, (rng_t, rng_meta) in enumerate(rng):
            tensors[f"rng{rank}"] = rng_t
            state[f"rng{rank}"] = rng_meta
        return save_checkpoint(ckpt_dir, at, tensors, state, keep=options.keep_checkpoints)

    def samples(at: int | str) -> Path:
        images = generate_gan(G_ema, 16, seed=options.seed, noise_mode="const",
                              class_index=class_index)  # fmt: skip
        name = f"step-{at:07d}.png" if isinstance(at, int) else f"{at}.png"
        return save_png(grid(images, cols=8), run / "samples" / name, overwrite=True,
                        params={"artgen": __version__, "step": at, "seed": options.seed})  # fmt: skip

    def sync(params: Sequence[torch.nn.Parameter]) -> None:
        if world > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(world)

    def augment(x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, options.augment, generator=g) if options.augment else x

    def fakes(n: int, update_w_avg: bool = False) -> torch.Tensor:
        z = torch.randn(n, G.config.z_dim, generator=g, device=dev)
        return G(z, cond(n), update_w_avg=update_w_avg, generator=g)

    def set_stage(lp: bool) -> None:
        for n, p in g_params.items():
            p.requires_grad_(n in lp_g if lp else True)
        for n, p in d_params.items():
            p.requires_grad_(n in lp_d if lp else True)

    log = (run / "log.jsonl").open("a") if accelerator.is_main_process else None
    start = time.perf_counter()
    last_saved = step
    stop = StepInterrupt(enabled=world == 1)  # Ctrl-C takes effect between steps
    try:
        stop.install()
        while step < options.steps:
            stop.mid_step = True
            set_stage(step < lp_steps)
            idx = torch.multinomial(weights, batch, replacement=True, generator=g_data)
            if values is not None:
                drawn.update(values[i] for i in idx.tolist())
            real = torch.stack([data[i]["pixels"] for i in idx.tolist()]).to(dev)

            # Discriminator: logistic loss; every r1_every steps a separate R1 step on the
            # (augmented) reals, weighted by the interval (ADA's lazy "Dreg" phase).
            with torch.no_grad():
                fake = fakes(batch, update_w_avg=True)
            loss_d = d_logistic_loss(D(augment(real), cond(batch)), D(augment(fake), cond(batch)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            sync(d_params.values())
            opt_d.step()
            if step % options.r1_every == 0:
                real_r1 = real.detach().requires_grad_(True)
                r1 = r1_penalty(D(augment(real_r1), cond(batch)), real_r1)
                opt_d.zero_grad(set_to_none=True)
                (r1 * (r1_gamma / 2) * options.r1_every).backward()
                sync(d_params.values())
                opt_d.step()

            # Generator: non-saturating loss (with the frozen critic for fairTL++, and CDC).
            fake = fakes(batch, update_w_avg=True)
            aug_fake = augment(fake)
            loss_g = g_nonsaturating_loss(D(aug_fake, cond(batch)))
            if D_quality is not None:
                lam = options.feedback_lambda
                quality = g_nonsaturating_loss(D_quality(aug_fake, cond(batch)))
                loss_g = lam * loss_g + (1 - lam) * quality
            if G_source is not None:
                # Ojha et al.'s train.py: 4 fresh anchors, anchor i compared in layer
                # randint(1, n_latent - 1): any modulated convolution but the first.
                z = torch.randn(CDC_BATCH, G.config.z_dim, generator=g, device=dev)
                layers = torch.randint(1, n_cdc_layers, (CDC_BATCH,), generator=g, device=dev)
                with torch.no_grad():
                    f_src = layer_features(G_source, z, cond(CDC_BATCH))
                f_tgt = layer_features(G, z, cond(CDC_BATCH))
                loss_g = loss_g + options.cdc * cdc_loss(f_src, f_tgt, layers)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            sync(g_params.values())
            opt_g.step()

            step += 1
            cur_nimg = step * batch * world
            # ADA's ramp-up from scratch; off when adapting a pretrained network, as ADA's
            # train.py does whenever it resumes from a pickle (args.ema_rampup = None).
            ema_nimg = ema_kimg * 1000 if finetune else min(ema_kimg * 1000, cur_nimg * 0.05)
            _ema_update(G_ema, G, 0.5 ** (batch * world / max(ema_nimg, 1e-8)))

            losses = torch.stack([loss_d.detach(), loss_g.detach()])
            if world > 1:  # every process sees the same verdict, so none waits for ever
                torch.distributed.all_reduce(losses)
                losses /= world
            ld, lg = float(losses[0]), float(losses[1])
            stop.mid_step = False
            if not (math.isfinite(ld) and math.isfinite(lg)):
                raise ArtgenError(f"step {step}: the losses are {ld} (D) and {lg} (G); "
                                  "lower --lr or raise --r1-gamma")  # fmt: skip
            sample_path = ckpt_path = None
            if accelerator.is_main_process:
                log.write(json.dumps({"step": step, "loss_d": ld, "loss_g": lg}) + "\n")
                log.flush()
                if step % options.sample_every == 0 and step < options.steps:
                    sample_path = samples(step)
            if step % options.checkpoint_every == 0 or step == options.steps:
                ckpt_path = checkpoint(step)
                last_saved = step
            if accelerator.is_main_process:
                if callback is not None:
                    callback(GanProgress(step, options.steps, lg, ld, time.perf_counter() - start,
                                         sample_path, ckpt_path))  # fmt: skip
            stop.raise_if_requested()
    except (KeyboardInterrupt, Cancelled):
        # Several processes save only at the periodic checkpoints (saving gathers every
        # process's random state, which an interrupted process cannot take part in).
        if world == 1 and not stop.mid_step and step > last_saved:
            checkpoint(step)
        raise
    finally:
        stop.restore()
        if log is not None:
            log.close()

    if world > 1:  # gradients were averaged, so every process must hold the same weights
        sums = torch.stack([sum(p.detach().double().sum() for p in net.parameters())
                            for net in (G, D)]).to(dev)  # fmt: skip
        every = accelerator.gather(sums.unsqueeze(0))
        if not torch.equal(every, every[:1].expand_as(every)):
            raise ArtgenError("the processes' networks diverged; please report this")
    if accelerator.is_main_process:
        _save_networks(run, G_ema, D)
        final = samples("final")
        if options.balance:
            write_json(run / "balance.json", {"attribute": options.balance,
                                              "dataset": proportions(values),
                                              "realised": proportions(drawn)})  # fmt: skip
        write_model_card(run, resolved, final)
    accelerator.wait_for_everyone()
    return run


def restore(
    path: Path,
    *,
    G: torch.nn.Module,
    D: torch.nn.Module,
    G_ema: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    world: int = 1,
    rank: int = 0,
    drawn: Counter[str] | None = None,
) -> int:
    """Put the checkpoint in ``path`` back into a GAN run's networks, optimizers and random
    generators (``drawn``: the attribute values drawn so far); returns its step. Every
    piece is checked first (artgen.checkpoint.Checkpoint): a damaged checkpoint is one
    ArtgenError naming its file and field."""
    ckpt = read_checkpoint(path)
    saved_by = ckpt.int_field("num_processes", 1)
    if saved_by != world:
        raise ArtgenError(f"{path}: saved by {saved_by} process(es); resume with the same "
                          f"number, not {world}")  # fmt: skip
    for stem, net in (("G", G), ("D", D), ("G_ema", G_ema)):
        ckpt.load_module(stem, net)
    ckpt.load_optimizer("opt_g", opt_g)
    ckpt.load_optimizer("opt_d", opt_d)
    ckpt.load_rng(f"rng{rank}", generators)
    counts = ckpt.counts("drawn")
    if drawn is not None:
        drawn.update(counts)
    return ckpt.step


def _save_networks(run: Path, G_ema: torch.nn.Module, D: torch.nn.Module) -> None:
    for name, net in (("generator", G_ema), ("discriminator", D)):
        tmp = run / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp)
        if (run / name).exists():
            shutil.rmtree(run / name)
        os.replace(tmp, run / name)


def write_model_card(run: Path, config: dict, grid_path: Path) -> None:
    """RUN_DIR/README.md: what was trained, how, and how to use it."""
    o = config["options"]
    net = config["network"]
    if config["method"] == "train-gan":
        what = f"a StyleGAN2 generator trained from scratch on {config['num_images']} images"
        base = ""
    else:
        names = {"full": "full fine-tuning", "fairtl": "fairTL (Teo et al. 2023): adaptation "
                 "on a balanced reference set", "fairtl++": "fairTL++ (Teo et al. 2023): "
                 "multiple feedback and LP-FT"}  # fmt: skip
        what = f"{names[o['method']]} of the StyleGAN2 in `{o['base']}` on {config['num_images']} images"
        base = f"base_model: {o['base']}\n"
        extras = []
        if config["frozen_d_blocks"]:
            extras.append(f"FreezeD on {', '.join(config['frozen_d_blocks'])}")
        if config["frozen_g"]:
            extras.append(f"frozen generator parts {', '.join(config['frozen_g'])}")
        if o.get("class_index", -1) >= 0:
            extras.append(f"class {o['class_index']} of {net['c_dim']}")
        if o.get("cdc"):
            extras.append(f"cross-domain distance consistency (weight {o['cdc']})")
        if o["method"] == "fairtl++":
            split = o.get("lp_split", "mapping")
            extras.append(f"lambda {o['feedback_lambda']}, {config['lp_steps']} LP steps "
                          f"({split} split)")  # fmt: skip
        if extras:
            what += " (" + "; ".join(extras) + ")"
    cls = f", class_index={o['class_index']}" if o.get("class_index", -1) >= 0 else ""
    balance = f"- balanced attribute: `{o['balance']}` (see balance.json)\n" if o["balance"] else ""
    text = f"""---
{base}library_name: artgen
tags: [artgen, stylegan2, gan]
---
# {run.name}

{what}, with artgen {config["artgen"]}.

![samples](samples/{grid_path.name})

- resolution {net["resolution"]} px, z {net["z_dim"]}, w {net["w_dim"]}
- {o["steps"]} steps of batch {o["batch_size"]} on {config["num_processes"]} process(es),
  lr {o["lr"]}, R1 gamma {config["r1_gamma"]:.4g}, DiffAugment `{o["augment"] or "none"}`
{balance}
## Use

```
artgen sample {run} -n 16 -o grid.png
```

```python
from artgen.finetune.gan import load_generator, generate_gan
G = load_generator({str(run)!r})
images = generate_gan(G, 16, seed=0, truncation_psi=1.0{cls})
```

generator/ holds the EMA weights and discriminator/ the discriminator, each as
config.json + model.safetensors. Full settings: config.json. Losses per step: log.jsonl.
"""
    tmp = run / ".README.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, run / "README.md")
