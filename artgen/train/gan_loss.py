"""The StyleGAN2 objective as loss objects, in NVlabs' manner (stylegan2-ada-pytorch
training/loss.py, ``StyleGAN2Loss``): the training loop only calls them.

- ``StyleGAN2Loss``: the discriminator's logistic loss, lazy R1 on the reals (Mescheder
  et al. 2018; StyleGAN2 app. B), the generator's non-saturating loss (Goodfellow et al.
  2014), with DiffAugment (Zhao et al. 2020) on everything D sees.
- ``FeedbackLoss``: fairTL++'s multiple feedback (Teo et al. 2023): the generator is
  also judged by the frozen pretrained discriminator, ``lam * L(D) + (1 - lam) * L(D0)``.
- ``CDCTerm``: cross-domain distance consistency (Ojha et al. 2021), an extra generator
  term, as their code computes it.

The pure functions (the losses' maths) come first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# Ojha et al.'s train.py compares a constant batch of 4 anchors (feat_const_batch).
CDC_BATCH = 4


# -- the maths (pure functions) --------------------------------------------------------------


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
        raise ValueError(
            f"cdc_loss needs one layer index per anchor (N = {n}), each below {len(source)}"
        )
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
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: feats.append(out)) for m in synthesis_layers(G)
    ]
    try:
        G(z, c, noise_mode="const")
    finally:
        for h in hooks:
            h.remove()
    return feats


# -- loss objects --------------------------------------------------------------------------


class StyleGAN2Loss:
    """Logistic D loss, lazy R1, non-saturating G loss, for generator ``G`` and critic
    ``D`` (cond: the label batch of a class-conditional run, else None). Every random
    draw (latents, noise, augmentation) comes from ``generator``, in a fixed order, so a
    resumed run continues exactly. ``terms`` are extra generator losses, each given the
    batch size and adding to the G loss."""

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        *,
        generator: torch.Generator,
        augment: Callable[[torch.Tensor], torch.Tensor],
        cond: Callable[[int], torch.Tensor | None],
        r1_gamma: float,
        r1_every: int,
        terms: Sequence[Callable[[int], torch.Tensor]] = (),
    ) -> None:
        self.G, self.D, self.g, self.augment, self.cond = G, D, generator, augment, cond
        self.r1_gamma, self.r1_every, self.terms = r1_gamma, r1_every, list(terms)

    def fakes(self, n: int, update_w_avg: bool = False) -> torch.Tensor:
        z = torch.randn(n, self.G.config.z_dim, generator=self.g, device=self.g.device)
        return self.G(z, self.cond(n), update_w_avg=update_w_avg, generator=self.g)

    def d_main(self, real: torch.Tensor) -> torch.Tensor:
        """D's phase: logistic loss on (augmented) reals and fresh fakes."""
        n = real.shape[0]
        with torch.no_grad():
            fake = self.fakes(n, update_w_avg=True)
        return d_logistic_loss(
            self.D(self.augment(real), self.cond(n)), self.D(self.augment(fake), self.cond(n))
        )

    def d_reg(self, real: torch.Tensor, step: int) -> torch.Tensor | None:
        """ADA's lazy "Dreg" phase: every r1_every steps, R1 on the (augmented) reals,
        weighted by gamma / 2 and by the interval; None on the other steps."""
        if step % self.r1_every:
            return None
        real = real.detach().requires_grad_(True)
        r1 = r1_penalty(self.D(self.augment(real), self.cond(real.shape[0])), real)
        return r1 * (self.r1_gamma / 2) * self.r1_every

    def g_main(self, n: int) -> torch.Tensor:
        """G's phase: the non-saturating loss of fresh fakes, plus the extra terms."""
        aug_fake = self.augment(self.fakes(n, update_w_avg=True))
        loss = self.g_adversarial(aug_fake, n)
        for term in self.terms:
            loss = loss + term(n)
        return loss

    def g_adversarial(self, aug_fake: torch.Tensor, n: int) -> torch.Tensor:
        return g_nonsaturating_loss(self.D(aug_fake, self.cond(n)))


class FeedbackLoss(StyleGAN2Loss):
    """fairTL++'s multiple feedback (Teo et al. 2023, eq. 4): the adapted critic weighted
    ``lam``, the frozen pretrained one ``1 - lam``."""

    def __init__(self, G, D, D_quality: torch.nn.Module, lam: float, **kw) -> None:
        super().__init__(G, D, **kw)
        self.D_quality, self.lam = D_quality, lam

    def g_adversarial(self, aug_fake: torch.Tensor, n: int) -> torch.Tensor:
        adapted = super().g_adversarial(aug_fake, n)
        quality = g_nonsaturating_loss(self.D_quality(aug_fake, self.cond(n)))
        return self.lam * adapted + (1 - self.lam) * quality


class CDCTerm:
    """Cross-domain distance consistency as a generator term, weight ``weight``: 4 fresh
    anchors, anchor i compared in layer randint(1, n_layers - 1), any modulated
    convolution but the first (Ojha et al.'s train.py)."""

    def __init__(self, G, G_source, weight: float, *, generator: torch.Generator, cond) -> None:
        self.G, self.G_source, self.weight, self.g, self.cond = G, G_source, weight, generator, cond
        self.n_layers = len(synthesis_layers(G))

    def __call__(self, n: int) -> torch.Tensor:
        dev = self.g.device
        z = torch.randn(CDC_BATCH, self.G.config.z_dim, generator=self.g, device=dev)
        layers = torch.randint(1, self.n_layers, (CDC_BATCH,), generator=self.g, device=dev)
        with torch.no_grad():
            f_src = layer_features(self.G_source, z, self.cond(CDC_BATCH))
        f_tgt = layer_features(self.G, z, self.cond(CDC_BATCH))
        return self.weight * cdc_loss(f_src, f_tgt, layers)
