"""Bounds on the sizes a run folder claims (artgen.runs.checkpoint.RUN_LIMITS and
BASE_CONFIG_LIMITS): every number of a run's config.json, or of its base's configs, pushed
to extremes is one line (exit 2) in bounded time and memory, never a traceback, an
allocator failure or a build that grows without bound (issue 34)."""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import shutil
import time
from pathlib import Path

import pytest

import artgen
from artgen.cli import main
from artgen.core.errors import ArtgenError
from artgen.runs.checkpoint import (
    BASE_CONFIG_LIMITS,
    RUN_LIMITS,
    check_limits,
    limit_error,
    options_from_dict,
)
from artgen.testing import image_folder, tiny_ddpm
from artgen.train.adain import AdaINTrainOptions
from artgen.train.diffusion import DiffusionFinetuneOptions, finetune_diffusion
from artgen.train.gan import GanFinetuneOptions, GanTrainOptions, train_gan

from .conftest import one_line_error
from .tiny_gan import shapes_folder, train_options

# What each number is replaced by. "1e400" is written as that text: JSON reads it as
# infinity. The marked ones are outside every bound, so a setting given them is refused.
EXTREMES = {
    "huge": 10**30,
    "big": 1 << 40,
    "negative": -1,
    "zero": 0,
    "nan": math.nan,
    "infinity": math.inf,
    "string": "12",
    "1e400": "@1e400@",
}
ALWAYS_REFUSED = ("huge", "nan", "infinity", "string", "1e400")
REACHED = "would be built now"  # what the stand-in for a network's loading says
MAX_SECONDS = 5.0  # one case; a refused one takes milliseconds
MAX_GROWTH_MB = 300  # the whole sweep


def numbers(doc: dict, prefix: tuple = ()) -> list[tuple]:
    """The paths (tuples of keys) of every number in a JSON object, nested objects too."""
    out = []
    for k, v in doc.items():
        if isinstance(v, dict):
            out += numbers(v, (*prefix, k))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((*prefix, k))
    return out


def with_value(doc: dict, path: tuple, value) -> str:
    """``doc`` as JSON text with the number at ``path`` replaced by ``value``."""
    doc = json.loads(json.dumps(doc))
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return json.dumps(doc).replace('"@1e400@"', "1e400")


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep(config_path: Path, argv: list[str], capsys) -> list[tuple]:
    """Every number of ``config_path`` replaced by every extreme in turn, ``argv`` run for
    each: (path, extreme, exit code, message). Each case is a one-line error or a success,
    within MAX_SECONDS; the sweep grows the process by at most MAX_GROWTH_MB."""
    original = json.loads(config_path.read_text())
    before = max_rss_mb()
    outcomes = []
    try:
        for path in numbers(original):
            for name, value in EXTREMES.items():
                config_path.write_text(with_value(original, path, value))
                capsys.readouterr()
                start = time.perf_counter()
                rc = main(argv)
                seconds = time.perf_counter() - start
                assert seconds < MAX_SECONDS, (path, name, seconds)
                message = one_line_error(capsys, rc) if rc != 0 else ""
                outcomes.append((path, name, rc, message))
    finally:
        config_path.write_text(json.dumps(original))
    assert max_rss_mb() - before < MAX_GROWTH_MB
    return outcomes


def check_outcomes(outcomes: list[tuple], settings: set[str], config: Path) -> None:
    """Every case is a one-line error (exit 2): a refusal, or the stand-in saying that the
    network would be built now. Every extreme of a setting (a field of "options") outside
    every bound is refused first, naming config.json and the field."""
    seen = set()
    for path, name, rc, message in outcomes:
        assert rc == 2, (path, name)
        if path[0] == "options" and name in ALWAYS_REFUSED:
            seen.add(path[1])
            assert str(config) in message and f"options.{path[1]}" in message, (path, name)
    assert seen == settings  # every numeric setting was pushed


@pytest.fixture
def stand_ins(monkeypatch):
    """Loading a GAN's generator or a diffusion base says it was reached instead: what a
    run's config.json claims must all be checked before (a network's own configs are
    swept by the tests below, and by test_stylegan2's)."""
    from artgen.runs import diffusion as diffusion_runs
    from artgen.runs import gan

    def reached(*args, **kw):
        raise ArtgenError(f"the network {REACHED}")

    monkeypatch.setattr(gan, "load_generator", reached)
    monkeypatch.setattr(diffusion_runs, "load_base", reached)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gan")
    return train_gan(train_options(shapes_folder(root / "images"), root / "run", steps=2))


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffusion")
    options = artgen.DiffusionFinetuneOptions(
        base=str(tiny_ddpm(root / "ddpm")),
        images=str(image_folder(root / "images", n=4)),
        out=str(root / "run"),
        steps=2,
        batch_size=2,
        sample_every=1000,
        checkpoint_every=1000,
        num_samples=1,
        sample_steps=1,
        device="cpu",
    )
    return finetune_diffusion(options)


def numeric_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.type in ("int", "float")}


def test_every_number_of_a_gan_run_pushed_to_extremes(gan_run, tmp_path, capsys, stand_ins):
    config = gan_run / "config.json"
    argv = ["sample", str(gan_run), "-n", "1", "-o", str(tmp_path / "g.png"), "--device", "cpu"]
    outcomes = sweep(config, argv, capsys)
    check_outcomes(outcomes, numeric_fields(GanTrainOptions), config)
    refused = {(p[-1], n): m for p, n, rc, m in outcomes if REACHED not in m}
    # the sizes of the attack: a network of 2^40 px, and every size setting of the network
    assert "options.resolution is 1099511627776" in refused[("resolution", "big")]
    for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
        assert ("options" in refused[(name, "big")]) and ("options" in refused[(name, "zero")])


def test_every_number_of_a_gan_network_config_pushed_to_extremes(gan_run, tmp_path, capsys):
    """The generator's own config.json, with the real loader: refused, or a network that
    fits (c_dim 0, say), in bounded time and memory."""
    run = Path(shutil.copytree(gan_run, tmp_path / "run"))
    argv = ["sample", str(run), "-n", "1", "-o", str(tmp_path / "g.png"), "--overwrite"]
    assert main([*argv, "--device", "cpu"]) == 0  # warm: imports are not the sweep's
    config = run / "generator" / "config.json"
    outcomes = sweep(config, [*argv, "--device", "cpu"], capsys)
    for path, name, rc, message in outcomes:
        if name in ("huge", "big", "nan", "infinity", "string", "1e400"):
            assert rc == 2 and str(config) in message and path[-1] in message, (path, name)


def test_every_number_of_a_diffusion_run_pushed_to_extremes(
    diffusion_run, tmp_path, capsys, stand_ins
):
    config = diffusion_run / "config.json"
    argv = ["sample", str(diffusion_run), "-n", "1", "-o", str(tmp_path / "g.png")]
    outcomes = sweep(config, argv, capsys)
    check_outcomes(outcomes, numeric_fields(DiffusionFinetuneOptions), config)
    refused = {(p[-1], n): m for p, n, rc, m in outcomes if REACHED not in m}
    for name in ("resolution", "lora_rank", "num_samples", "grad_accum", "num_class_images"):
        assert (name, "big") in refused, name  # every size the run claims is bounded
    assert "resolution is 1099511627776" in refused[("resolution", "big")]


@pytest.mark.parametrize("cls", [GanTrainOptions, GanFinetuneOptions, AdaINTrainOptions])
def test_every_setting_of_every_trainer_is_bounded(cls, tmp_path):
    """options_from_dict (what resume, sample and eval read a run's settings with) refuses
    each numeric setting of each trainer outside its bounds, naming it."""
    defaults = {
        GanTrainOptions: dict(images="i", out="o"),
        GanFinetuneOptions: dict(base="b", images="i", out="o"),
        AdaINTrainOptions: dict(styles="s", out="o", content="c"),
    }[cls]
    saved = dataclasses.asdict(cls(**defaults))
    options_from_dict(cls, saved, "config.json")  # the defaults pass
    fields = numeric_fields(cls)
    assert fields <= set(RUN_LIMITS), fields - set(RUN_LIMITS)
    for name in fields:
        for extreme in ALWAYS_REFUSED:
            value = EXTREMES[extreme]
            value = math.inf if value == "@1e400@" else value
            with pytest.raises(ArtgenError, match=f"config.json: options.{name} is") as e:
                options_from_dict(cls, {**saved, name: value}, "config.json")
            assert "\n" not in str(e.value)


def test_the_gan_bounds_are_the_networks_and_real_models_fit():
    """The GAN settings repeat artgen.models.stylegan2.CONFIG_LIMITS; Stable Diffusion 1.5's
    and SDXL's UNet and text encoder configs and StyleGAN2 at 1024 px are well inside."""
    from artgen.models.stylegan2 import CONFIG_LIMITS

    for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
        assert RUN_LIMITS[name] == CONFIG_LIMITS[name]
    assert RUN_LIMITS["resolution"][1] == CONFIG_LIMITS["resolution"][1]
    sd15_unet = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    sdxl_unet = {
        **sd15_unet,
        "sample_size": 128,
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "attention_head_dim": [5, 10, 20],
        "transformer_layers_per_block": [1, 2, 10],
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }
    big_g = {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "projection_dim": 1280,
    }
    for config in (sd15_unet, sdxl_unet, big_g, {"num_train_timesteps": 1000}):
        check_limits(config, BASE_CONFIG_LIMITS, "config.json")
    stylegan2_1024 = dict(resolution=1024, z_dim=512, w_dim=512, mapping_layers=8)
    assert limit_error({**stylegan2_1024, "channel_max": 512}, RUN_LIMITS) is None
    assert limit_error({"lora_rank": 128, "resolution": 1024}, RUN_LIMITS) is None
    assert limit_error({"layers_per_block": [2, 100000]}, BASE_CONFIG_LIMITS) == (
        "layers_per_block",
        "must be a whole number from 1 to 8",
    )
    assert limit_error({"block_out_channels": [8] * 17}, BASE_CONFIG_LIMITS)[1].startswith(
        "has more than 16"
    )


@pytest.mark.parametrize(
    ("file", "key", "value"),
    [
        ("unet/config.json", "layers_per_block", 100_000),
        ("unet/config.json", "block_out_channels", [1 << 20, 1 << 20]),
        ("unet/config.json", "sample_size", 1 << 20),
        ("unet/config.json", "norm_num_groups", "4"),
        ("unet/config.json", "attention_head_dim", "@1e400@"),
        ("scheduler/scheduler_config.json", "num_train_timesteps", 10**12),
    ],
)
def test_a_base_claiming_absurd_sizes_is_refused_before_it_is_built(
    diffusion_run, tmp_path, capsys, file, key, value
):
    run = Path(shutil.copytree(diffusion_run, tmp_path / "run"))
    base = Path(json.loads((run / "config.json").read_text())["options"]["base"])
    copy = Path(shutil.copytree(base, tmp_path / "base"))
    config = json.loads((copy / file).read_text())
    (copy / file).write_text(with_value(config, (key,), value))
    doc = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(with_value(doc, ("options", "base"), str(copy)))
    before, start = max_rss_mb(), time.perf_counter()
    rc = main(["sample", str(run), "-n", "1", "-o", str(tmp_path / "g.png"), "--device", "cpu"])
    assert time.perf_counter() - start < MAX_SECONDS
    assert max_rss_mb() - before < MAX_GROWTH_MB
    one_line_error(capsys, rc, str(copy / file), key)


def test_resuming_a_run_that_claims_absurd_sizes_is_one_line(
    diffusion_run, gan_run, tmp_path, capsys
):
    """The attack's cases: a LoRA rank of 2^20 and a GAN of 16384 or 65536 px, resumed."""
    run = Path(shutil.copytree(diffusion_run, tmp_path / "d"))
    doc = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(with_value(doc, ("options", "lora_rank"), 1 << 20))
    rc = main(["finetune", "diffusion", "--out", str(run), "--resume", "--steps", "3", "-q"])
    one_line_error(capsys, rc, str(run / "config.json"), "options.lora_rank is 1048576", "1,024")
    for size in (16384, 65536):
        run = Path(shutil.copytree(gan_run, tmp_path / f"g{size}"))
        doc = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(with_value(doc, ("options", "resolution"), size))
        rc = main(["train", "gan", "--out", str(run), "--resume", "--steps", "3", "-q"])
        one_line_error(capsys, rc, str(run / "config.json"), f"options.resolution is {size}")
    # a new run is held to the same bounds, named by its flag
    rc = main(["train", "gan", "--images", "x", "--out", str(tmp_path / "n"), "--z-dim", "5000"])
    one_line_error(capsys, rc, "--z-dim 5000", "4,096")
