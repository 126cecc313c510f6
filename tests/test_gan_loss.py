"""The StyleGAN2 objective as loss objects (artgen.train.gan_loss), against the pure
functions it is made of."""

from __future__ import annotations

import copy

import pytest
import torch

from artgen.models.stylegan2 import Discriminator, Generator
from artgen.train.gan_loss import (
    CDC_BATCH,
    CDCTerm,
    FeedbackLoss,
    StyleGAN2Loss,
    cdc_loss,
    d_logistic_loss,
    g_nonsaturating_loss,
    layer_features,
    r1_penalty,
)

from .tiny_gan import tiny_config


def _nets():
    torch.manual_seed(0)
    G, D = Generator(tiny_config()), Discriminator(tiny_config())
    D0 = copy.deepcopy(D)
    with torch.no_grad():
        for p in D0.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return G, D, D0


def _loss(cls=StyleGAN2Loss, *args, seed=5, **kw):
    G, D, D0 = _nets()
    g = torch.Generator().manual_seed(seed)
    common = dict(generator=g, augment=lambda x: x, cond=lambda n: None, r1_gamma=2.0, r1_every=4)
    if cls is FeedbackLoss:
        return FeedbackLoss(G, D, D0, *args, **common, **kw), G, D, D0
    return cls(G, D, **common, **kw), G, D, D0


def test_phases_are_the_pure_losses_on_the_same_draws():
    loss, G, D, _ = _loss()
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        fake = G(torch.randn(4, G.config.z_dim, generator=g), None, update_w_avg=True, generator=g)
    expected = d_logistic_loss(D(real), D(fake))
    torch.testing.assert_close(loss.d_main(real), expected)
    # lazy R1: only every r1_every steps, weighted gamma / 2 * interval
    assert loss.d_reg(real, 1) is None
    x = real.clone().requires_grad_(True)
    torch.testing.assert_close(loss.d_reg(real, 8), r1_penalty(D(x), x) * (2.0 / 2) * 4)


def test_feedback_weights_the_adapted_and_the_pretrained_critic():
    outs = {}
    for lam in (0.0, 0.3, 1.0):
        loss, G, D, D0 = _loss(FeedbackLoss, lam)
        outs[lam] = float(loss.g_main(4))
    g = torch.Generator().manual_seed(5)
    G, D, D0 = _nets()
    fake = G(torch.randn(4, G.config.z_dim, generator=g), None, update_w_avg=True, generator=g)
    adapted, pretrained = (
        float(g_nonsaturating_loss(D(fake))),
        float(g_nonsaturating_loss(D0(fake))),
    )
    assert outs[1.0] == pytest.approx(adapted, rel=1e-5)
    assert outs[0.0] == pytest.approx(pretrained, rel=1e-5)
    assert outs[0.3] == pytest.approx(0.3 * adapted + 0.7 * pretrained, rel=1e-5)
    assert abs(adapted - pretrained) > 1e-3  # the two critics do differ


def test_cdc_term_is_ojhas_loss_on_four_fresh_anchors():
    G, D, _ = _nets()
    G_src = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    term = CDCTerm(
        G, G_src, 1000.0, generator=torch.Generator().manual_seed(9), cond=lambda n: None
    )
    got = float(term(8))
    g = torch.Generator().manual_seed(9)
    z = torch.randn(CDC_BATCH, G.config.z_dim, generator=g)
    layers = torch.randint(1, term.n_layers, (CDC_BATCH,), generator=g)
    with torch.no_grad():
        expected = 1000.0 * cdc_loss(
            layer_features(G_src, z, None), layer_features(G, z, None), layers
        )
    assert got == pytest.approx(float(expected), rel=1e-5) and got > 0
    loss, *_ = _loss()
    loss.terms.append(lambda n: torch.tensor(2.5))
    base, *_ = _loss()
    assert float(loss.g_main(4)) == pytest.approx(float(base.g_main(4)) + 2.5, rel=1e-6)
