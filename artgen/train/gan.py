"""Train a StyleGAN2 generator, and adapt a pretrained one to a small or balanced image set.

The models are artgen.models.stylegan2 (Karras et al. 2020). The training loop is the one of
StyleGAN2-ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited
Data") written out explicitly: non-saturating logistic loss, lazy R1 regularisation on real
images, Adam with betas (0, 0.99) scaled for lazy regularisation as its training_loop.py does
(lr * c and betas ** c, c = 4/5 for G and 16/17 for D), an exponential moving average of the
generator's weights with ADA's half-life ramp-up when training from scratch and without it
when adapting a pretrained network (its train.py sets ema_rampup = None whenever it resumes
from a pickle), and differentiable augmentation of everything the discriminator sees
(DiffAugment, Zhao et al. 2020; see artgen.core.augment) in place of ADA's adaptive pipeline.

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
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from artgen.core.devices import resolve_device
from artgen.core.errors import ArtgenError
from artgen.runs.checkpoint import (
    optimizer_to_tensors,
    read_checkpoint,
    read_run_config,
)
from artgen.runs.gan import (
    LP_FROZEN_D,
    METHODS,
    GanFinetuneOptions,
    GanTrainOptions,
    _check_pair,
    class_labels,
    generate_gan,
    load_gan,
)
from artgen.runs.record import GanSampleOptions  # noqa: F401 (the run record owns it; kept here by name)
from artgen.train.gan_loss import (  # noqa: F401 - the maths, importable from here too
    CDC_BATCH,
    CDCTerm,
    FeedbackLoss,
    StyleGAN2Loss,
    _similarity_distribution,
    cdc_loss,
    d_logistic_loss,
    g_nonsaturating_loss,
    layer_features,
    r1_penalty,
    synthesis_layers,
)
from artgen.train.skeleton import Draws, open_run, train

# StyleGAN2-ADA (training_loop.py) lowers lr and betas by c = interval / (interval + 1) for
# each network with a lazy regulariser: G_reg_interval = 4 (its default, which train.py keeps
# for every config, "cifar" with pl_weight = 0 included) and D_reg_interval = 16 (--r1-every).
G_REG_INTERVAL = 4


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


# -- the networks ------------------------------------------------------------------------


def _freeze_g_prefixes(G: torch.nn.Module, spec: str) -> list[str]:
    names = [n for n, _ in G.named_parameters()]
    prefixes = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        prefix = part if part.startswith(("mapping", "synthesis")) else f"synthesis.{part}"
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            blocks = sorted(
                {n.split(".")[1] for n in names if n.startswith("synthesis.")},
                key=lambda b: int(b[1:]) if b[1:].isdigit() else 0,
            )
            raise ArtgenError(
                f"--freeze-g {part}: no such generator part (valid: mapping, {', '.join(blocks)})"
            )
        prefixes.append(prefix)
    return prefixes


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@torch.no_grad()
def _ema_update(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


# -- sampling ----------------------------------------------------------------------------


# -- the runs ----------------------------------------------------------------------------


# The one resume policy (artgen.train.skeleton): options_for_resume(run_dir, **overrides).


def _check_common(options: Any) -> tuple[list[Path], Any, Path, Any]:
    from artgen.core.data import training_set

    if not options.out:
        raise ArtgenError("--out: give a run folder to create")
    files, labels = training_set(
        options.images, options.labels, options.balance, resume=options.resume
    )
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=resolve_device(options.device).type == "cpu")
    run = open_run(options, accelerator, create=False)  # refuses changed settings, no checkpoint
    return files, labels, run, accelerator


def train_gan(
    options: GanTrainOptions, *, callback: Callable[[GanProgress], None] | None = None
) -> Path:
    """Train a StyleGAN2 generator from scratch on ``options.images``; returns the run folder.

    The run folder holds config.json, README.md (model card), log.jsonl, samples/,
    checkpoints/, generator/ (EMA weights) and discriminator/.
    """
    from artgen.models.stylegan2 import Discriminator, Generator, StyleGAN2Config

    files, labels, run, accelerator = _check_common(options)
    r = options.resolution
    try:
        config = StyleGAN2Config(
            resolution=r,
            z_dim=options.z_dim,
            w_dim=options.w_dim,
            mapping_layers=options.mapping_layers,
            channel_base=options.channel_base,
            channel_max=options.channel_max,
        )
    except ValueError as e:
        raise ArtgenError(f"network settings: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        G, D = Generator(config), Discriminator(config)
    return _run(options, "train-gan", G, D, files, labels, callback, run, accelerator)


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
    files, labels, run, accelerator = _check_common(options)
    # Networks handed in are copied: the caller's modules are never trained in place.
    G, D = copy.deepcopy(networks) if networks is not None else load_gan(options.base)
    _check_pair(G, D, options.base or "networks")
    class_labels(G.config.c_dim, options.class_index)  # a clear error before any work
    if options.freeze_d < 0 or options.freeze_d >= len(D.block_names()):
        raise ArtgenError(
            f"--freeze-d {options.freeze_d}: must be between 0 and "
            f"{len(D.block_names()) - 1} (D has blocks {', '.join(D.block_names())})"
        )
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
        raise ArtgenError(
            "fairtl++ trains the mapping network first (linear probing); "
            "leave it out of --freeze-g, or pass --lp-steps 0"
        )
    return _run(options, "finetune-gan", G, D, files, labels, callback, run, accelerator)


def _run(
    options: Any,
    kind: str,
    G: torch.nn.Module,
    D: torch.nn.Module,
    files: list[Path],
    labels: Any,
    callback: Callable[[GanProgress], None] | None,
    run: Path,
    accelerator: Any,
) -> Path:
    from artgen._version import __version__
    from artgen.core.data import ImageSet, balance_weights

    group = D.config.mbstd_group_size
    if options.batch_size % min(group, options.batch_size):
        raise ArtgenError(
            f"--batch-size {options.batch_size}: must be a multiple of the "
            f"discriminator's minibatch-stddev group ({group}), or smaller"
        )
    dev = accelerator.device
    # Two generators: one on the device for latents, noise and augmentation, one on the CPU
    # for batch draws and flips. Both are checkpointed, so a resumed run continues exactly.
    g = torch.Generator(device=dev).manual_seed(options.seed + accelerator.process_index)
    g_data = torch.Generator().manual_seed(options.seed + 1000 + accelerator.process_index)
    data = ImageSet(
        files, G.config.resolution, center_crop=True, random_flip=True, generator=g_data
    )
    values = labels.values(options.balance) if options.balance else None
    draws = Draws(
        len(files),
        g_data,
        weights=balance_weights(values) if values else None,
        values=values,
        attribute=options.balance,
    )
    trainer = _GanTrainer(options, kind, G, D, data, draws, g, g_data, accelerator, run)
    resolved = {
        "artgen": __version__,
        "method": kind,
        "network": G.config.to_dict(),
        "r1_gamma": trainer.r1_gamma,
        "ema_kimg": trainer.ema_kimg,
        "lp_steps": trainer.lp_steps,
        "frozen_d_blocks": trainer.frozen_d,
        "frozen_g": trainer.frozen_g,
        "lp_frozen_d_blocks": trainer.lp_frozen_d if trainer.lp_steps else [],
        "ema_rampup": None if trainer.finetune else 0.05,
        "g_lr": options.lr * trainer.c_g,
        "device": str(dev),
        "num_images": len(files),
        "trainable_parameters_g": sum(p.numel() for p in trainer.g_params.values()),
        "trainable_parameters_d": sum(p.numel() for p in trainer.d_params.values()),
    }
    return train(trainer, options, run, resolved, accelerator=accelerator, callback=callback)


class _GanTrainer:
    """A StyleGAN2 run's networks, optimizers and phases, for artgen.train.skeleton.train."""

    def __init__(self, options, kind, G, D, data, draws, g, g_data, accelerator, run) -> None:
        from artgen.core.augment import diff_augment

        self.options, self.kind, self.data, self.draws = options, kind, data, draws
        self.g, self.g_data, self.accelerator = g, g_data, accelerator
        dev = accelerator.device
        self.world = world = accelerator.num_processes
        self.finetune = finetune = kind == "finetune-gan"
        method = options.method if finetune else "train"
        res = G.config.resolution
        # A class-conditional base adapts with one class's label throughout (D sees it too).
        self.class_index = getattr(options, "class_index", -1)
        label = class_labels(G.config.c_dim, self.class_index, 1, dev)

        def cond(n: int) -> torch.Tensor | None:
            return None if label is None else label.expand(n, -1)

        self.G = G = G.to(dev).train().requires_grad_(True)
        self.D = D = D.to(dev).train().requires_grad_(True)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)

        # What trains: everything but the user's frozen parts (FreezeD, --freeze-g).
        self.frozen_d = D.block_names()[: options.freeze_d] if finetune else []
        self.frozen_g = _freeze_g_prefixes(G, options.freeze_g) if finetune else []
        self.g_params = {n: p for n, p in G.named_parameters() if not _under(n, self.frozen_g)}
        self.d_params = {n: p for n, p in D.named_parameters() if not _under(n, self.frozen_d)}
        for n, p in G.named_parameters():
            p.requires_grad_(n in self.g_params)
        for n, p in D.named_parameters():
            p.requires_grad_(n in self.d_params)
        self.lp_steps = 0
        if method == "fairtl++":
            self.lp_steps = options.lp_steps if options.lp_steps >= 0 else options.steps // 4
            if options.resume:  # where linear probing ends was fixed when the run started
                saved = read_run_config(run)[0].get("lp_steps", self.lp_steps)
                if (
                    not isinstance(saved, int)
                    or isinstance(saved, bool)
                    or not 0 <= saved <= 1 << 62
                ):
                    raise ArtgenError(f"{run / 'config.json'}: lp_steps is not a whole number >= 0")
                self.lp_steps = saved
        lp_split = getattr(options, "lp_split", "authors")
        if lp_split == "mapping":  # artgen's earlier reading
            self.lp_g = {n for n in self.g_params if n.startswith("mapping.")}
            self.lp_d = {n for n in self.d_params if n.startswith(D.block_names()[-1] + ".")}
            self.lp_frozen_d = D.block_names()[:-1]
        else:  # the authors' train_fairTL++.py: all of G; D without its 8 and 16 px blocks
            self.lp_frozen_d = [b for b in D.block_names()[:-1] if b in LP_FROZEN_D]
            self.lp_g = set(self.g_params)
            self.lp_d = {n for n in self.d_params if not _under(n, self.lp_frozen_d)}

        batch = options.batch_size
        self.r1_gamma = options.r1_gamma or 2e-4 * res * res / (batch * world)
        self.ema_kimg = options.ema_kimg or batch * world * 10 / 32
        # Lazy regularisation (StyleGAN2 app. B; StyleGAN2-ADA training_loop.py): each network
        # with a lazy regulariser gets lr * c and betas ** c, c = interval / (interval + 1).
        # ADA keeps G_reg_interval = 4 even where path-length regularisation is off (its
        # cifar config), so G is scaled too. A resumed run restores the lr and betas its
        # checkpoint holds.
        self.c_g = c_g = G_REG_INTERVAL / (G_REG_INTERVAL + 1)
        c = options.r1_every / (options.r1_every + 1)
        self.opt_g = torch.optim.Adam(
            list(self.g_params.values()), lr=options.lr * c_g, betas=(0.0, 0.99**c_g), eps=1e-8
        )
        self.opt_d = torch.optim.Adam(
            list(self.d_params.values()), lr=options.lr * c, betas=(0.0, 0.99**c), eps=1e-8
        )

        def augment(x: torch.Tensor) -> torch.Tensor:
            return diff_augment(x, options.augment, generator=g) if options.augment else x

        common = dict(
            generator=g,
            augment=augment,
            cond=cond,
            r1_gamma=self.r1_gamma,
            r1_every=options.r1_every,
        )
        if method == "fairtl++" and options.feedback_lambda < 1:
            D_quality = copy.deepcopy(D).eval().requires_grad_(False)  # the pretrained critic
            self.loss = FeedbackLoss(G, D, D_quality, options.feedback_lambda, **common)
        else:
            self.loss = StyleGAN2Loss(G, D, **common)
        if finetune and options.cdc > 0:
            G_source = copy.deepcopy(G).eval().requires_grad_(False)
            self.loss.terms.append(CDCTerm(G, G_source, options.cdc, generator=g, cond=cond))

    def generators(self) -> dict[str, torch.Generator]:
        return {"device": self.g, "data": self.g_data}

    def state(self) -> tuple[dict, dict]:
        opt_g_t, opt_g_meta = optimizer_to_tensors(self.opt_g)
        opt_d_t, opt_d_meta = optimizer_to_tensors(self.opt_d)
        tensors = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": opt_g_t,
            "opt_d": opt_d_t,
        }
        return tensors, {"opt_g": opt_g_meta, "opt_d": opt_d_meta}

    def load_state(self, ckpt: Any) -> None:
        _load_networks(
            ckpt, G=self.G, D=self.D, G_ema=self.G_ema, opt_g=self.opt_g, opt_d=self.opt_d
        )

    def _set_stage(self, lp: bool) -> None:
        for n, p in self.g_params.items():
            p.requires_grad_(n in self.lp_g if lp else True)
        for n, p in self.d_params.items():
            p.requires_grad_(n in self.lp_d if lp else True)

    def _sync(self, params) -> None:
        if self.world > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.world)

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self._sync(params)
        opt.step()

    def step(self, step: int) -> dict[str, float]:
        batch, world = self.options.batch_size, self.world
        self._set_stage(step < self.lp_steps)
        idx = self.draws.draw(batch)
        real = torch.stack([self.data[i]["pixels"] for i in idx]).to(self.accelerator.device)
        loss_d = self.loss.d_main(real)
        self._update(self.opt_d, loss_d, self.d_params.values())
        r1 = self.loss.d_reg(real, step)
        if r1 is not None:
            self._update(self.opt_d, r1, self.d_params.values())
        loss_g = self.loss.g_main(batch)
        self._update(self.opt_g, loss_g, self.g_params.values())

        cur_nimg = (step + 1) * batch * world
        # ADA's ramp-up from scratch; off when adapting a pretrained network, as ADA's
        # train.py does whenever it resumes from a pickle (args.ema_rampup = None).
        ema_nimg = (
            self.ema_kimg * 1000 if self.finetune else min(self.ema_kimg * 1000, cur_nimg * 0.05)
        )
        _ema_update(self.G_ema, self.G, 0.5 ** (batch * world / max(ema_nimg, 1e-8)))

        losses = torch.stack([loss_d.detach(), loss_g.detach()])
        if world > 1:  # every process sees the same verdict, so none waits for ever
            torch.distributed.all_reduce(losses)
            losses /= world
        ld, lg = float(losses[0]), float(losses[1])
        if not (math.isfinite(ld) and math.isfinite(lg)):
            raise ArtgenError(
                f"step {step + 1}: the losses are {ld} (D) and {lg} (G); "
                "lower --lr or raise --r1-gamma"
            )
        return {"loss_d": ld, "loss_g": lg}

    def sample(self) -> Image.Image:
        from artgen.core.images import grid

        images = generate_gan(
            self.G_ema, 16, seed=self.options.seed, noise_mode="const", class_index=self.class_index
        )
        return grid(images, cols=8)

    def end(self) -> None:
        if self.world > 1:  # gradients were averaged, so every process must hold the same weights
            dev = self.accelerator.device
            sums = torch.stack(
                [
                    sum(p.detach().double().sum() for p in net.parameters())
                    for net in (self.G, self.D)
                ]
            ).to(dev)
            every = self.accelerator.gather(sums.unsqueeze(0))
            if not torch.equal(every, every[:1].expand_as(every)):
                raise ArtgenError("the processes' networks diverged; please report this")

    def finish(self, run: Path, resolved: dict) -> Callable[[Path], None]:
        _save_networks(run, self.G_ema, self.D)
        return lambda final: write_model_card(run, resolved, final)

    def progress(self, step, logs, elapsed, sample, checkpoint) -> GanProgress:
        return GanProgress(
            step, self.options.steps, logs["loss_g"], logs["loss_d"], elapsed, sample, checkpoint
        )


def _load_networks(ckpt: Any, *, G, D, G_ema, opt_g, opt_d) -> None:
    for stem, net in (("G", G), ("D", D), ("G_ema", G_ema)):
        ckpt.load_module(stem, net)
    ckpt.load_optimizer("opt_g", opt_g)
    ckpt.load_optimizer("opt_d", opt_d)


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
    piece is checked first (artgen.runs.checkpoint.Checkpoint): a damaged checkpoint is one
    ArtgenError naming its file and field."""
    ckpt = read_checkpoint(path)
    saved_by = ckpt.int_field("num_processes", 1)
    if saved_by != world:
        raise ArtgenError(
            f"{path}: saved by {saved_by} process(es); resume with the same number, not {world}"
        )
    _load_networks(ckpt, G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d)
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
        names = {
            "full": "full fine-tuning",
            "fairtl": "fairTL (Teo et al. 2023): adaptation on a balanced reference set",
            "fairtl++": "fairTL++ (Teo et al. 2023): multiple feedback and LP-FT",
        }
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
            extras.append(
                f"lambda {o['feedback_lambda']}, {config['lp_steps']} LP steps ({split} split)"
            )
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
import artgen
run = artgen.load_run({str(run)!r})
images = run.generate(16, seed=0, truncation=1.0{cls})
```

generator/ holds the EMA weights and discriminator/ the discriminator, each as
config.json + model.safetensors. Full settings: config.json. Losses per step: log.jsonl.
"""
    tmp = run / ".README.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, run / "README.md")
