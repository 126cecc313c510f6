"""artgen.train.gan: losses, training steps, runs, resume, FreezeD, fairTL++, the CLI.

Every network is a tiny StyleGAN2 built in the test (16 px, 16 channels at most)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from artgen.core.errors import ArtgenError, Cancelled
from artgen.models.stylegan2 import Discriminator, Generator
from artgen.runs.gan import is_gan_run
from artgen.runs.options import options_for_resume
from artgen.runs.record import load_run
from artgen.train.gan import (
    cdc_loss,
    d_logistic_loss,
    finetune_gan,
    g_nonsaturating_loss,
    generate_gan,
    layer_features,
    load_gan,
    r1_penalty,
    synthesis_layers,
    train_gan,
)

from .conftest import edit_json, one_line_error
from .tiny_gan import TINY, ft_options, shapes_folder, tiny_config, train_options


@pytest.fixture
def images(tmp_path) -> Path:
    return shapes_folder(tmp_path / "images")


@pytest.fixture
def base_run(tmp_path, images) -> Path:
    return train_gan(train_options(images, tmp_path / "base", steps=2))


# -- losses ---------------------------------------------------------------------------


def test_logistic_losses_have_their_textbook_values():
    zero = torch.zeros(5, 1)
    assert d_logistic_loss(zero, zero).item() == pytest.approx(2 * np.log(2))
    assert g_nonsaturating_loss(zero).item() == pytest.approx(np.log(2))
    # A discriminator that is sure and right has almost no loss; sure and wrong, a lot.
    assert d_logistic_loss(torch.full((3, 1), 20.0), torch.full((3, 1), -20.0)) < 1e-6
    assert d_logistic_loss(torch.full((3, 1), -20.0), torch.full((3, 1), 20.0)) > 39


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3])
    assert r1_penalty(logits, x).item() == pytest.approx(w.square().sum().item(), rel=1e-5)


def _official_cdc(source, target, feat_ind):
    """Ojha et al.'s train.py, loop for loop: nn.CosineSimilarity per pair, nn.Softmax(dim=1)
    per row, nn.KLDivLoss() (reduction "mean") of log(target) against source."""
    n = source[0].shape[0]
    sim, sfm, kl = torch.nn.CosineSimilarity(), torch.nn.Softmax(dim=1), torch.nn.KLDivLoss()

    def dist(feats):
        d = torch.zeros(n, n - 1)
        for p1 in range(n):
            c = 0
            for p2 in range(n):
                if p1 != p2:
                    a = feats[feat_ind[p1]][p1].reshape(-1).unsqueeze(0)
                    b = feats[feat_ind[p1]][p2].reshape(-1).unsqueeze(0)
                    d[p1, c] = sim(a, b)
                    c += 1
        return sfm(d)

    with warnings.catch_warnings():  # torch: "'mean' ... will be changed"
        warnings.simplefilter("ignore", UserWarning)
        return kl(torch.log(dist(target)), dist(source))


def test_cdc_loss_of_a_fixed_four_sample_batch_matches_a_hand_computation():
    # Four 2-d features at 0, 90, 180 and 270 degrees: cosine similarities 0, -1, 0 from
    # each anchor; the target collapses them all onto one direction (similarities 1, 1, 1).
    src = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    tgt = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    # Every row's source softmax holds 1/(2+e), 1/(2+e) and e/(2+e) (e = exp(-1)); the
    # target's is uniform. KL per row, then nn.KLDivLoss's mean over the 4 x 3 entries:
    e = math.exp(-1)
    a, b = 1 / (2 + e), e / (2 + e)
    row = 2 * a * math.log(3 * a) + b * math.log(3 * b)
    hand = 4 * row / 12
    assert hand == pytest.approx(0.02709, abs=1e-5)
    layers = [0, 0, 0, 0]
    assert cdc_loss([src], [tgt], layers).item() == pytest.approx(hand, rel=1e-5)
    assert _official_cdc([src], [tgt], layers).item() == pytest.approx(hand, rel=1e-5)


def test_cdc_loss_matches_the_official_loop_with_one_layer_per_anchor():
    g = torch.Generator().manual_seed(0)
    src = [
        torch.randn(4, 3, 4, 4, generator=g),
        torch.randn(4, 5, 2, 2, generator=g),
        torch.randn(4, 7, generator=g),
    ]
    tgt = [torch.randn(s.shape, generator=g, requires_grad=True) for s in src]
    for layers in ([0, 1, 2, 1], [2, 2, 0, 0], [1, 1, 1, 1]):
        ours = cdc_loss(src, tgt, layers)
        assert ours.item() == pytest.approx(_official_cdc(src, tgt, layers).item(), rel=1e-5)
    # The earlier form ("batchmean": sum over rows / N) is N - 1 times the official mean.
    for n in (4, 8, 16):
        s, t = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
        mean = cdc_loss([s], [t], [0] * n).item()
        from artgen.train.gan import _similarity_distribution as dist

        batchmean = F.kl_div(dist(t, log=True), dist(s, log=False), reduction="batchmean")
        assert batchmean.item() / mean == pytest.approx(n - 1, rel=1e-5)
    ours.backward()
    assert tgt[1].grad is not None and src[1].grad is None


def test_cdc_loss_is_zero_for_identical_features_and_gradient_descent_lowers_it():
    src = [torch.randn(6, 4, 5, 5), torch.randn(6, 8)]
    layers = [0, 1, 0, 1, 1, 0]
    assert cdc_loss(src, [s.clone() for s in src], layers).item() == pytest.approx(0.0, abs=1e-6)
    tgt = [torch.randn_like(s, requires_grad=True) for s in src]
    first = cdc_loss(src, tgt, layers).item()
    assert first > 0.002
    opt = torch.optim.SGD(tgt, lr=50.0)
    for _ in range(50):
        opt.zero_grad()
        cdc_loss(src, tgt, layers).backward()
        opt.step()
    assert cdc_loss(src, tgt, layers).item() < 0.3 * first
    with pytest.raises(ValueError):
        cdc_loss([torch.randn(2, 3)], [torch.randn(2, 3)], [0, 0])
    with pytest.raises(ValueError, match="one layer index per anchor"):
        cdc_loss(src, tgt, [0, 1, 2, 0, 0, 0])


def test_cdc_layers_are_the_modulated_convolutions_in_order():
    G = Generator(tiny_config())  # 16 px: b4.conv1, b8.conv0, b8.conv1, b16.conv0, b16.conv1
    layers = synthesis_layers(G)
    assert len(layers) == 2 * 4 - 3
    assert layers[0] is G.synthesis.b4.conv1 and layers[-1] is G.synthesis.b16.conv1
    feats = layer_features(G, torch.randn(4, 16), None)
    assert [tuple(f.shape[2:]) for f in feats] == [(4, 4), (8, 8), (8, 8), (16, 16), (16, 16)]
    assert not any(m._forward_hooks for m in layers)  # the hooks are removed


# -- training steps lower their losses ------------------------------------------------------


def test_discriminator_steps_lower_its_loss_on_a_fixed_batch(images):
    torch.manual_seed(0)
    G, D = Generator(tiny_config()), Discriminator(tiny_config())
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        fake = G(torch.randn(8, 16), noise_mode="const")
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    losses = []
    for _ in range(30):
        loss = d_logistic_loss(D(real), D(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_generator_steps_lower_its_loss_against_a_fixed_discriminator():
    torch.manual_seed(0)
    G, D = Generator(tiny_config()), Discriminator(tiny_config())
    D.requires_grad_(False)
    z = torch.randn(8, 16)
    opt = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    losses = []
    for _ in range(30):
        loss = g_nonsaturating_loss(D(G(z, noise_mode="const")))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# -- runs -------------------------------------------------------------------------------


def test_train_gan_writes_a_complete_run_that_loads_and_samples(tmp_path, images):
    run = train_gan(train_options(images, tmp_path / "run"))
    for name in (
        "config.json",
        "README.md",
        "log.jsonl",
        "samples/final.png",
        "generator/config.json",
        "generator/model.safetensors",
        "discriminator/model.safetensors",
    ):
        assert (run / name).is_file(), name
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [
        "step-0000002",
        "step-0000004",
    ]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert is_gan_run(run) and not is_gan_run(images)
    G, D = load_gan(run)
    assert G.config == tiny_config()
    assert G.mapping.w_avg.abs().sum() > 0  # the running mean of W was tracked
    a = generate_gan(G, 3, seed=5)
    b = generate_gan(G, 3, seed=5)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    # Image i depends on seed + i only, not on how many are made with it.
    c = generate_gan(G, 1, seed=6)
    assert np.array_equal(np.asarray(a[1]), np.asarray(c[0]))
    assert a[0].size == (16, 16)
    card = (run / "README.md").read_text()
    assert "trained from scratch on 8 images" in card


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path, images):
    straight = train_gan(train_options(images, tmp_path / "a", steps=4))
    train_gan(train_options(images, tmp_path / "b", steps=2))
    resumed = train_gan(options_for_resume(tmp_path / "b", steps=4))
    for part in ("generator", "discriminator"):
        sa = load_file(str(straight / part / "model.safetensors"))
        sb = load_file(str(resumed / part / "model.safetensors"))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{part}: {k} differs after resume"
    log = [json.loads(line)["step"] for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]  # no silent restart from step 0
    with pytest.raises(ArtgenError, match="already at step 4"):
        train_gan(options_for_resume(tmp_path / "b", steps=4))


def test_freezed_and_frozen_generator_parts_stay_bit_identical(tmp_path, base_run, images):
    G0, D0 = load_gan(base_run)
    run = finetune_gan(
        ft_options(base_run, images, tmp_path / "ft", freeze_d=2, freeze_g="mapping,b4")
    )
    G1, D1 = load_gan(run)
    frozen_d = D0.block_names()[:2]
    d0, d1 = D0.state_dict(), D1.state_dict()
    changed = 0
    for k in d0:
        if k.split(".")[0] in frozen_d:
            assert torch.equal(d0[k], d1[k]), k
        elif not torch.equal(d0[k], d1[k]):
            changed += 1
    assert changed > 0
    g0, g1 = dict(G0.named_parameters()), dict(G1.named_parameters())
    for k in g0:
        if k.startswith(("mapping.", "synthesis.b4.")):
            assert torch.equal(g0[k], g1[k]), k
    assert any(not torch.equal(g0[k], g1[k]) for k in g0 if k.startswith("synthesis.b16."))
    config = json.loads((run / "config.json").read_text())
    assert config["frozen_d_blocks"] == frozen_d
    assert "FreezeD" in (run / "README.md").read_text()


def test_fairtl_plus_plus_linear_probing_as_the_authors_code_trains_all_of_g(
    tmp_path, base_run, images
):
    G0, D0 = load_gan(base_run)
    # After linear probing, everything trains; the frozen critic changes what G learns.
    lpft = load_gan(
        finetune_gan(ft_options(base_run, images, tmp_path / "lpft", method="fairtl++", lp_steps=1))
    )[0]
    alone = load_gan(
        finetune_gan(
            ft_options(
                base_run,
                images,
                tmp_path / "lam1",
                method="fairtl++",
                lp_steps=1,
                feedback_lambda=1.0,
            )
        )
    )[0]
    assert not torch.equal(lpft.synthesis.b16.conv1.weight, alone.synthesis.b16.conv1.weight)
    # Linear probing only (3 of 3 steps): all of G trains; D's 8 and 16 px blocks (here every
    # block but the 4x4 output block) stay frozen, as train_fairTL++.py's freezeLayers.
    run = finetune_gan(
        ft_options(
            base_run, images, tmp_path / "lp", method="fairtl++", lp_steps=3, feedback_lambda=0.5
        )
    )
    G1, D1 = load_gan(run)
    g0, g1 = dict(G0.named_parameters()), dict(G1.named_parameters())
    for part in ("mapping.", "synthesis.b4.", "synthesis.b8.", "synthesis.b16."):
        assert any(not torch.equal(g0[k], g1[k]) for k in g0 if k.startswith(part)), part
    d0, d1 = dict(D0.named_parameters()), dict(D1.named_parameters())
    assert D0.block_names() == ["b16", "b8", "b4"]
    assert all(torch.equal(d0[k], d1[k]) for k in d0 if k.startswith(("b16.", "b8.")))
    assert any(not torch.equal(d0[k], d1[k]) for k in d0 if k.startswith("b4."))
    config = json.loads((run / "config.json").read_text())
    assert config["lp_steps"] == 3 and config["lp_frozen_d_blocks"] == ["b16", "b8"]
    assert "authors split" in (run / "README.md").read_text()


def test_fairtl_plus_plus_mapping_split_trains_only_the_mapping_and_the_last_block(
    tmp_path, base_run, images
):
    G0, D0 = load_gan(base_run)
    run = finetune_gan(
        ft_options(
            base_run, images, tmp_path / "lp", method="fairtl++", lp_steps=3, lp_split="mapping"
        )
    )
    G1, D1 = load_gan(run)
    g0, g1 = dict(G0.named_parameters()), dict(G1.named_parameters())
    assert any(not torch.equal(g0[k], g1[k]) for k in g0 if k.startswith("mapping."))
    assert all(torch.equal(g0[k], g1[k]) for k in g0 if k.startswith("synthesis."))
    last = D0.block_names()[-1]
    d0, d1 = dict(D0.named_parameters()), dict(D1.named_parameters())
    assert any(not torch.equal(d0[k], d1[k]) for k in d0 if k.startswith(last + "."))
    assert all(torch.equal(d0[k], d1[k]) for k in d0 if not k.startswith(last + "."))
    with pytest.raises(ArtgenError, match="--lp-split"):
        ft_options(base_run, images, tmp_path / "x", lp_split="all")


def test_a_run_recorded_before_lp_split_loads_and_resumes_with_the_old_split(
    tmp_path, base_run, images
):
    run = finetune_gan(
        ft_options(
            base_run,
            images,
            tmp_path / "old",
            method="fairtl++",
            lp_steps=2,
            steps=2,
            checkpoint_every=1,
        )
    )
    edit_json(run / "config.json", lambda c: c["options"].pop("lp_split"))
    assert len(load_run(run).generate(2)) == 2  # reading it (sample, eval) still works
    resumed = options_for_resume(run, steps=3)
    assert resumed.lp_split == "mapping"  # what such a run did
    finetune_gan(resumed)  # and the resumed run records it
    assert json.loads((run / "config.json").read_text())["options"]["lp_split"] == "mapping"


def test_optimisers_and_ema_follow_stylegan2_ada(tmp_path, base_run, images):
    # G: lr and betas scaled by c = 4/5 (G_reg_interval 4); D: by 16/17 (R1 every 16).
    run = finetune_gan(
        ft_options(
            base_run, images, tmp_path / "ft", steps=1, lr=0.002, checkpoint_every=1, ema_kimg=0.01
        )
    )
    ckpt = run / "checkpoints" / "step-0000001"
    state = json.loads((ckpt / "state.json").read_text())
    (g_group,), (d_group,) = state["opt_g"]["param_groups"], state["opt_d"]["param_groups"]
    assert g_group["lr"] == pytest.approx(0.002 * 4 / 5) and g_group["betas"][0] == 0.0
    assert g_group["betas"][1] == pytest.approx(0.99 ** (4 / 5))
    assert d_group["lr"] == pytest.approx(0.002 * 16 / 17)
    assert d_group["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    # Fine-tuning: no EMA ramp-up, so after one step of batch 4 with a half-life of 10 images
    # G_ema = G.lerp(G_base, 0.5 ** (4 / 10)) (the ramp-up would make it 0.5 ** (4 / 0.2)).
    beta = 0.5 ** (4 / 10)
    G0 = dict(load_gan(base_run)[0].named_parameters())
    raw, ema = load_file(str(ckpt / "G.safetensors")), load_file(str(ckpt / "G_ema.safetensors"))
    moved = 0
    for k, p0 in G0.items():
        expected = raw[k].lerp(p0.detach(), beta)
        assert torch.allclose(ema[k], expected, atol=1e-6), k
        moved += not torch.equal(raw[k], p0.detach())
    assert moved > 0
    # From scratch the ramp-up stays: after one step G_ema is almost the raw G.
    scratch = train_gan(
        train_options(images, tmp_path / "s", steps=1, checkpoint_every=1, ema_kimg=0.01)
    )
    ckpt = scratch / "checkpoints" / "step-0000001"
    raw, ema = load_file(str(ckpt / "G.safetensors")), load_file(str(ckpt / "G_ema.safetensors"))
    assert all(torch.allclose(ema[k], raw[k], atol=1e-5) for k in raw)
    config = json.loads((run / "config.json").read_text())
    assert config["ema_rampup"] is None and config["g_lr"] == pytest.approx(0.0016)


def test_cdc_adaptation_runs_and_balanced_draws_are_even(tmp_path, base_run, images):
    # 2 of 8 images are round: balanced draws take each shape about half the time.
    run = finetune_gan(
        ft_options(
            base_run,
            images,
            tmp_path / "cdc",
            cdc=10.0,
            steps=20,
            labels=str(images / "labels.csv"),
            balance="shape",
        )
    )
    b = json.loads((run / "balance.json").read_text())
    assert b["dataset"] == {"round": 0.25, "square": 0.75}
    assert abs(b["realised"]["round"] - 0.5) < 0.15  # 80 draws: sd 0.056, so about 2.7 sd
    # The CDC term changes the training: the same run without it ends elsewhere.
    plain = finetune_gan(
        ft_options(
            base_run,
            images,
            tmp_path / "plain",
            steps=20,
            labels=str(images / "labels.csv"),
            balance="shape",
        )
    )
    a, b = load_gan(run)[0], load_gan(plain)[0]
    assert not torch.equal(a.synthesis.b16.conv1.weight, b.synthesis.b16.conv1.weight)
    assert "cross-domain distance consistency" in (run / "README.md").read_text()


def test_bad_inputs_give_one_line_errors(tmp_path, base_run, images):
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: ft_options(base_run, images, tmp_path / "x", freeze_d=99), "--freeze-d 99"),
        (
            lambda: ft_options(base_run, images, tmp_path / "x", freeze_g="b1024"),
            "--freeze-g b1024",
        ),
        (lambda: ft_options(tmp_path / "nope", images, tmp_path / "x"), "no such folder"),
        (lambda: ft_options(images, images, tmp_path / "x"), "needs generator/"),
        (lambda: ft_options(base_run, tmp_path / "empty", tmp_path / "x"), "no images"),
        (lambda: ft_options(base_run, images, base_run), "already holds a run"),
        (lambda: ft_options(base_run, images, tmp_path / "x", balance="shape"), "--balance needs"),
        (lambda: ft_options(base_run, images, tmp_path / "x", method="magic"), "--method 'magic'"),
        (lambda: ft_options(base_run, images, tmp_path / "x", augment="blur"), "blur"),
    ]
    # Options check their own ranges when built (__post_init__), the files when a run
    # starts: both are one-line errors.
    for make, message in cases:
        with pytest.raises(ArtgenError, match=message.replace("/", ".")) as e:
            finetune_gan(make())
        assert "\n" not in str(e.value)
    with pytest.raises(ArtgenError, match="--batch-size 6"):
        finetune_gan(ft_options(base_run, images, tmp_path / "x", batch_size=6))
    with pytest.raises(ArtgenError, match="whole generator"):
        finetune_gan(ft_options(base_run, images, tmp_path / "x", freeze_g="mapping,synthesis"))
    with pytest.raises(ArtgenError, match="--lr cannot change when resuming"):
        options_for_resume(base_run, lr=0.1)
    with pytest.raises(ArtgenError, match="power of two"):
        train_gan(train_options(images, tmp_path / "y", resolution=24))
    with pytest.raises(ArtgenError, match="nothing to resume"):
        train_gan(replace(train_options(images, tmp_path / "z"), resume=True))
    assert not (tmp_path / "x").exists()


def test_a_conditional_base_adapts_one_class_and_samples_it_by_default(tmp_path, base_run, images):
    conditional = replace(tiny_config(), c_dim=3)
    torch.manual_seed(0)
    base = tmp_path / "cond"
    G0 = Generator(conditional)
    G0.save_pretrained(base / "generator")
    Discriminator(conditional).save_pretrained(base / "discriminator")
    a, b = (np.asarray(generate_gan(G0, 2, class_index=k)[0], float) for k in (0, 2))
    assert np.abs(a - b).mean() > 1.0  # the label matters: same latent, another class

    for kw, message in [
        ({}, r"class-conditional \(3 classes\): pass --class-index K"),
        ({"class_index": 3}, "--class-index 3: .* from 0 to 2"),
    ]:
        with pytest.raises(ArtgenError, match=message):
            finetune_gan(ft_options(base, images, tmp_path / "x", **kw))
    with pytest.raises(ArtgenError, match="--class-index 1: this network is unconditional"):
        finetune_gan(ft_options(base_run, images, tmp_path / "x", class_index=1))
    unconditional_d = Discriminator(tiny_config())
    with pytest.raises(ArtgenError, match="generator has 3 classes but the discriminator 0"):
        finetune_gan(
            ft_options("", images, tmp_path / "x", class_index=1), networks=(G0, unconditional_d)
        )
    assert not (tmp_path / "x").exists()

    # Fine-tuning has no EMA ramp-up: a half-life of 4 images lets the saved (EMA) G move.
    run = finetune_gan(
        ft_options(base, images, tmp_path / "run", class_index=1, steps=4, ema_kimg=0.004)
    )
    # Only class 1's label was ever shown, so only its column of the label embeddings moved.
    G, D = load_gan(run)
    for before, after in [
        (G0.mapping.embed.weight, G.mapping.embed.weight),
        (
            Discriminator.from_pretrained(base / "discriminator").mapping.embed.weight,
            D.mapping.embed.weight,
        ),
    ]:
        assert torch.equal(before[:, [0, 2]], after[:, [0, 2]])
        assert (before[:, 1] - after[:, 1]).abs().max() > 1e-4
    assert "class 1 of 3" in (run / "README.md").read_text()
    # Sampling a conditional run draws the class it adapted unless told otherwise.
    default = load_run(run).generate(2)
    for k, same in [(1, True), (0, False)]:
        other = generate_gan(G, 2, class_index=k)
        assert all(np.array_equal(x, y) for x, y in zip(default, other, strict=True)) == same
    with pytest.raises(ArtgenError, match="pass --class-index"):
        load_run(base / "generator").generate(2)
    from artgen.cli import main

    out = tmp_path / "class0.png"
    assert (
        main(
            ["sample", str(run), "-n", "2", "-o", str(out), "--class-index", "0", "--device", "cpu"]
        )
        == 0
    )
    assert np.array_equal(
        np.asarray(Image.open(out).convert("RGB"))[:16, :16], np.asarray(other[0])
    )
    assert (
        main(
            [
                "eval",
                str(run),
                "--images",
                str(images),
                "--num-samples",
                "4",
                "--class-index",
                "0",
                "--kid-subsets",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )


def test_cli_train_finetune_sample(tmp_path, images, capsys):
    from artgen.cli import main

    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    base = tmp_path / "base"
    assert (
        main(
            [
                "train",
                "gan",
                "--images",
                str(images),
                "--out",
                str(base),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "-q",
                *tiny,
            ]
        )
        == 0
    )
    run = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "gan",
                "--base",
                str(base),
                "--images",
                str(images),
                "--out",
                str(run),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--freeze-d",
                "1",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    assert "done:" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "4",
                "-o",
                str(grid),
                "--truncation",
                "0.5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(grid).size[0] > 16
    # A second finetune into the same folder is refused, with the folder left alone.
    before = sorted(p.name for p in run.iterdir())
    assert (
        main(
            [
                "finetune",
                "gan",
                "--base",
                str(base),
                "--images",
                str(images),
                "--out",
                str(run),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 2
    )
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_cancelled_run_saves_a_checkpoint_and_resumes_from_it(tmp_path, images):
    def stop_at_3(p):
        if p.step == 3:
            raise Cancelled

    options = train_options(images, tmp_path / "run", steps=6, checkpoint_every=100)
    with pytest.raises(Cancelled):
        train_gan(options, callback=stop_at_3)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000003"]
    run = train_gan(options_for_resume(tmp_path / "run"))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.heavy
def test_two_processes_through_torchrun(tmp_path, images):
    """What accelerate launch does on several GPUs, here as two CPU processes (gloo)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    cmd = [
        str(torchrun),
        "--standalone",  # a free port, not the fixed 29500 another run may hold
        "--nproc_per_node",
        "2",
        "-m",
        "artgen",
        "train",
        "gan",
        "--images",
        str(images),
        "--out",
        str(run),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "-q",
        *tiny,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    # The run checks at the end that both processes hold identical weights (averaged
    # gradients), and fails if they diverged.
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done:") == 1
    config = json.loads((run / "config.json").read_text())
    assert config["num_processes"] == 2
    assert config["r1_gamma"] == pytest.approx(2e-4 * 16 * 16 / 8)  # the global batch is 8


# -- damaged runs: one line naming the file and the field, never a traceback ----------------


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    """A finished tiny run with a checkpoint at step 2 (copied by each test that damages it)."""
    root = tmp_path_factory.mktemp("gan_run")
    images = shapes_folder(root / "images")
    return train_gan(train_options(images, root / "run", steps=2))


@pytest.fixture
def run_copy(gan_run, tmp_path) -> Path:
    return Path(shutil.copytree(gan_run, tmp_path / "run", symlinks=True))


def _resume(run: Path) -> list[str]:
    return ["train", "gan", "--out", str(run), "--resume", "--steps", "4", "-q"]


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("step is a string", ["state.json", "step"]),
        ("no opt_g in state.json", ["state.json", "opt_g"]),
        ("no opt_g.safetensors", ["opt_g.safetensors"]),
        ("garbled rng state", ["rng0", "python"]),
        ("garbled rng tensor", ["rng0", "torch"]),
        ("no rng0.safetensors", ["rng0.safetensors"]),
        ("truncated G.safetensors", ["G.safetensors"]),
        ("truncated opt_g.safetensors", ["opt_g.safetensors"]),
        ("num_processes is a string", ["state.json", "num_processes"]),
        ("betas out of range", ["opt_g.param_groups[0].betas", "[0, 1)"]),
        ("negative lr", ["opt_g.param_groups[0].lr", ">= 0"]),
    ],
)
def test_a_damaged_gan_checkpoint_is_one_line_naming_its_file(run_copy, capsys, damage, names):
    from artgen.cli import main

    ckpt = run_copy / "checkpoints" / "step-0000002"
    state = ckpt / "state.json"
    if damage == "step is a string":
        edit_json(state, lambda s: s.update(step="2"))
    elif damage == "no opt_g in state.json":
        edit_json(state, lambda s: s.pop("opt_g"))
    elif damage.startswith("no ") and damage.endswith(".safetensors"):
        (ckpt / damage.split()[1]).unlink()
    elif damage == "garbled rng state":
        edit_json(state, lambda s: s["rng0"].update(python="garbled"))
    elif damage == "garbled rng tensor":
        save_file({"torch": torch.zeros(7, dtype=torch.uint8)}, str(ckpt / "rng0.safetensors"))
    elif damage.startswith("truncated"):
        f = ckpt / damage.split()[1]
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    elif damage == "num_processes is a string":
        edit_json(state, lambda s: s.update(num_processes="1"))
    elif damage == "betas out of range":
        edit_json(state, lambda s: s["opt_g"]["param_groups"][0].update(betas=[5.0, 9.0]))
    elif damage == "negative lr":
        edit_json(state, lambda s: s["opt_g"]["param_groups"][0].update(lr=-1e9))
    one_line_error(capsys, main(_resume(run_copy)), str(ckpt), *names)
    with pytest.raises(ArtgenError):
        train_gan(options_for_resume(run_copy, steps=4))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"method": "train-gan", "options": []}', "options is [], not an object"),
        ("BATCH", 'options.batch_size is "abc", not a whole number'),
        ("{", "not valid JSON"),
        ("[]", "not a run config object"),
        ('{"options": {}}', "method is null"),
        ('{"method": "train-gan", "options": {}}', "options.out is missing"),
        ("NEGATIVE", "options.steps is -3: must be a whole number from 1 to"),
        ("HUGE", "options.batch_size is 1000000000: must be a whole number from 1 to 4,096"),
    ],
)
def test_a_damaged_gan_run_config_is_one_line_naming_it(run_copy, capsys, content, message):
    from artgen.cli import main

    config = run_copy / "config.json"
    if content == "BATCH":
        edit_json(config, lambda c: c["options"].update(batch_size="abc"))
    elif content == "NEGATIVE":
        edit_json(config, lambda c: c["options"].update(steps=-3))
    elif content == "HUGE":
        edit_json(config, lambda c: c["options"].update(batch_size=10**9))
    else:
        config.write_text(content)
    one_line_error(capsys, main(_resume(run_copy)), str(config), message)
    with pytest.raises(ArtgenError, match=str(config)):
        options_for_resume(run_copy)
    # Sampling reads the run config too (the class a run adapted): the same verdict.
    rc = main(
        ["sample", str(run_copy), "-n", "1", "-o", str(run_copy / "s.png"), "--device", "cpu"]
    )
    one_line_error(capsys, rc, str(config))


def test_a_corrupt_or_linked_generator_is_reported_as_such(run_copy, tmp_path, capsys):
    from artgen.cli import main

    out = ["-n", "1", "-o", str(tmp_path / "s.png"), "--device", "cpu"]
    (run_copy / "generator" / "config.json").write_text("{")
    assert is_gan_run(run_copy)  # a damaged GAN run is still a GAN run
    line = one_line_error(
        capsys, main(["sample", str(run_copy), *out]), str(run_copy / "generator" / "config.json")
    )
    assert "diffusers" not in line
    # A generator/ that links to a folder elsewhere: still a GAN run, whose generator is bad.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("secret\n")
    shutil.rmtree(run_copy / "generator")
    (run_copy / "generator").symlink_to(elsewhere, target_is_directory=True)
    line = one_line_error(capsys, main(["sample", str(run_copy), *out]), "generator")
    assert "diffusers" not in line and "secret" not in line
    rc = main(
        [
            "eval",
            str(run_copy),
            "--images",
            str(run_copy / "samples"),
            "--num-samples",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert "diffusers" not in one_line_error(capsys, rc, "generator")


def test_non_finite_generator_weights_are_refused_when_sampling(run_copy, tmp_path, capsys):
    from artgen.cli import main
    from artgen.runs.gan import load_generator

    weights = run_copy / "generator" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, str(weights), metadata={"format": "artgen-stylegan2"})
    rc = main(
        ["sample", str(run_copy), "-n", "1", "-o", str(tmp_path / "s.png"), "--device", "cpu"]
    )
    one_line_error(capsys, rc, str(weights), name, "non-finite")
    with pytest.raises(ArtgenError, match="non-finite"):
        load_generator(run_copy)
    with pytest.raises(ArtgenError, match="non-finite"):
        load_gan(run_copy)


def test_run_config_paths_resolve_in_the_run_and_files_are_never_quoted(run_copy, capsys):
    from artgen.cli import main

    # A relative path in a run's config.json means a folder inside the run.
    shutil.copytree(
        Path(json.loads((run_copy / "config.json").read_text())["options"]["images"]),
        run_copy / "data",
    )
    edit_json(run_copy / "config.json", lambda c: c["options"].update(images="data"))
    assert options_for_resume(run_copy).images == str(run_copy / "data")
    assert main(_resume(run_copy)) == 0, capsys.readouterr().err
    saved = json.loads((run_copy / "config.json").read_text())["options"]
    assert saved["images"] == str(run_copy / "data")  # recorded absolute from then on
    # Labels pointing at a file that is not a labels CSV: its text never reaches the message.
    secret = run_copy.parent / "passwd"
    secret.write_text("root:x:0:0:SECRET-LINE:/root:/bin/bash\ndaemon:x:1:1\n")
    edit_json(
        run_copy / "config.json", lambda c: c["options"].update(labels=str(secret), balance="shape")
    )
    line = one_line_error(
        capsys, main(_resume(run_copy)[:-3] + ["--steps", "6", "-q"]), str(secret)
    )
    assert "SECRET" not in line and "root:x" not in line


def test_fuzzed_gan_checkpoints_restore_or_give_an_artgen_error(gan_run, tmp_path):
    from artgen.train.gan import restore

    from .fuzz import fuzz_checkpoint

    ckpt = Path(
        shutil.copytree(gan_run / "checkpoints" / "step-0000002", tmp_path / "step-0000002")
    )
    G, D = Generator(tiny_config()), Discriminator(tiny_config())
    G_ema = Generator(tiny_config())
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    c = 16 / 17  # as the trainer builds them (lazy R1 every 16 steps)
    opt_d = torch.optim.Adam(D.parameters(), lr=0.0025 * c, betas=(0.0, 0.99**c), eps=1e-8)
    gens = {"device": torch.Generator(), "data": torch.Generator()}

    def restore_and_step(path: Path) -> None:
        restore(path, G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d, generators=gens)
        loss = g_nonsaturating_loss(D(G(torch.randn(2, 16, generator=gens["device"]))))
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()  # a wrong optimizer state would surface here

    restore_and_step(ckpt)  # intact
    outcomes = fuzz_checkpoint(ckpt, restore_and_step, cases=200, seed=1)
    assert outcomes["refused"] > 30 and outcomes["ok"] > 5, outcomes
