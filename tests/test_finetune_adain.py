"""`artgen train adain`: losses, the run folder, exact resume, fine-tuning from a base."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from artgen.cli import main
from artgen.core.errors import ArtgenError
from artgen.core.losses import mean_std
from artgen.runs.options import options_for_resume
from artgen.train import adain as T

from .conftest import edit_json, one_line_error, photo, stripes

TINY = ["--crop", "32", "--batch-size", "2", "--sample-every", "2", "--checkpoint-every", "2"]


@pytest.fixture
def data(tmp_path):
    c, s = tmp_path / "content", tmp_path / "styles"
    c.mkdir()
    s.mkdir()
    for k in range(3):
        photo(80, 64, seed=k).save(c / f"c{k}.png")
        stripes(72, seed=k).rotate(30 * k).save(s / f"s{k}.png")
    return c, s


@pytest.mark.parametrize("levels", ["deepest", "all"])
def test_losses_are_the_papers(lite0, levels):
    """L_c = MSE(f(g(t)), t) at the deepest AdaIN level (the paper) or at all of them;
    L_s = sum over layers of the MSE of means and stds."""
    from artgen.models import adain as M

    cfg = M.LITE0_CONFIG
    model = M.AdaINModel(lite0.truncate(list(cfg.style_layers)), M.build_decoder(cfg), cfg)
    torch.manual_seed(0)
    c, s = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    total, l_c, l_s, out = T.adain_losses(model, c, s, 7.0, levels)
    # Recompute by hand from the same pieces.
    sf = model.features(s, cfg.style_layers)
    t = model.stylise_features(c, [mean_std(sf[n]) for n in cfg.levels])
    gf = model.features(out, cfg.style_layers)
    used = list(zip(cfg.levels, t, strict=True))
    used = used[-1:] if levels == "deepest" else used
    assert [n for n, _ in used] == (["block3_2"] if levels == "deepest" else list(cfg.levels))
    lc = sum(((gf[n] - tt) ** 2).mean() for n, tt in used)
    ls = 0.0
    for n in cfg.style_layers:
        (gm, gs), (sm, ss) = mean_std(gf[n]), mean_std(sf[n])
        ls = ls + ((gm - sm) ** 2).mean() + ((gs - ss) ** 2).mean()
    assert l_c.item() == pytest.approx(lc.item(), rel=1e-5)
    assert l_s.item() == pytest.approx(float(ls.detach()), rel=1e-5)
    assert total.item() == pytest.approx(lc.item() + 7.0 * float(ls.detach()), rel=1e-5)


def test_train_writes_a_run_and_resumes_exactly(data, tmp_path):
    c, s = data
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["train", "adain", "--content", str(c), "--styles", str(s), *TINY, "-q"]
    assert main([*common, "--out", str(straight), "--steps", "4"]) == 0
    assert main([*common, "--out", str(split), "--steps", "2"]) == 0
    assert main(["train", "adain", "--out", str(split), "--resume", "--steps", "4", "-q"]) == 0
    a = load_file(str(straight / "model" / "decoder.safetensors"))
    b = load_file(str(split / "model" / "decoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and the weights did move from the start.
    first = load_file(str(split / "checkpoints" / "step-0000002" / "decoder.safetensors"))
    assert any(not torch.equal(first[k], a[k]) for k in a)
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["method"] == "train-adain" and cfg["options"]["steps"] == 4
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and all(v["loss"] > 0 for v in log)
    assert (straight / "samples" / "step-0000002.png").is_file()
    assert (straight / "samples" / "final.png").is_file()
    assert (straight / "README.md").read_text().count("--method adain --model") == 1


def test_resume_guards(data, tmp_path):
    c, s = data
    run = tmp_path / "run"
    with pytest.raises(ArtgenError, match="nothing to resume"):
        T.train_adain(T.AdaINTrainOptions(styles=str(s), content=str(c), out=str(run), resume=True))
    assert (
        main(
            [
                "train",
                "adain",
                "--content",
                str(c),
                "--styles",
                str(s),
                "--out",
                str(run),
                *TINY,
                "--steps",
                "2",
                "-q",
            ]
        )
        == 0
    )
    assert main(["train", "adain", "--out", str(run), "--resume", "--lr", "0.1", "-q"]) == 2
    with pytest.raises(ArtgenError, match="already holds a run; pass --resume"):
        T.train_adain(T.AdaINTrainOptions(styles=str(s), content=str(c), out=str(run), steps=2))
    # the API guards a resumed run as the CLI does
    resumed = options_for_resume(run, steps=3)
    with pytest.raises(ArtgenError, match="--lr: the run in"):
        T.train_adain(dataclasses.replace(resumed, lr=0.1))
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ArtgenError, match="no checkpoint to resume from"):
        T.train_adain(resumed)
    with pytest.raises(ArtgenError, match="--crop 30: must be a multiple of 16"):
        T.AdaINTrainOptions(crop=30)
    with pytest.raises(ArtgenError, match="--content-levels 'some': choose one of deepest, all"):
        T.AdaINTrainOptions(content_levels="some")


def test_a_run_recorded_before_the_loss_options_resumes_as_it_was_trained(data, tmp_path):
    """Runs made before --content-levels and --cov-weight took the content loss at every
    level and no covariance loss: resuming one keeps that."""
    c, s = data
    run = tmp_path / "run"
    args = ["train", "adain", "--content", str(c), "--styles", str(s), "--out", str(run)]
    assert main([*args, *TINY, "--steps", "2", "--cov-weight", "5", "-q"]) == 0
    opts = json.loads((run / "config.json").read_text())["options"]
    assert (opts["content_levels"], opts["cov_weight"]) == ("all", 5.0)
    assert options_for_resume(run, steps=3).cov_weight == 5.0

    def old(d):
        d["options"].pop("content_levels")
        d["options"].pop("cov_weight")

    edit_json(run / "config.json", old)
    resumed = options_for_resume(run, steps=3)
    assert (resumed.content_levels, resumed.cov_weight) == ("all", 0.0)


def test_the_covariance_loss_is_added_with_its_weight(lite0):
    from artgen.core.losses import covariance, covariance_loss
    from artgen.models import adain as M

    cfg = M.LITE0_CONFIG
    model = M.AdaINModel(lite0.truncate(list(cfg.style_layers)), M.build_decoder(cfg), cfg)
    torch.manual_seed(0)
    c, s = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        total0, lc0, ls0, out = T.adain_losses(model, c, s, 10.0, "all", 0.0)
        total, lc, ls, _ = T.adain_losses(model, c, s, 10.0, "all", 200.0)
        gf, sf = model.features(out, cfg.style_layers), model.features(s, cfg.style_layers)
        cov = sum(covariance_loss(gf[n], covariance(sf[n])) for n in cfg.style_layers)
    assert float(cov) > 0
    assert total.item() == pytest.approx(total0.item() + 200.0 * float(cov), rel=1e-5)
    assert ls.item() == pytest.approx(ls0.item() + 20.0 * float(cov), rel=1e-5)
    assert lc.item() == pytest.approx(lc0.item())


def test_a_wct_decoder_learns_behind_whitening_colouring(lite0, data, tmp_path):
    """--transform wct: the content loss's targets are the whitened-coloured features at the
    finest level (AdaIN below it), as stylize --transform wct feeds the decoder; the run
    records it, and runs recorded before the option resume as AdaIN ones."""
    from artgen.models import adain as M

    cfg = M.LITE0_CONFIG
    model = M.AdaINModel(lite0.truncate(list(cfg.style_layers)), M.build_decoder(cfg), cfg)
    torch.manual_seed(0)
    c, s = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        _, lc, _, out = T.adain_losses(model, c, s, 10.0, "all", 0.0, (0,))
        sf = model.features(s, cfg.style_layers)
        t = model.stylise_features(c, [M.level_stats(sf[n]) for n in cfg.levels], 1.0, (0,))
        gf = model.features(out, cfg.levels)
    want = sum(((gf[n] - tt) ** 2).mean() for n, tt in zip(cfg.levels, t, strict=True))
    assert lc.item() == pytest.approx(want.item(), rel=1e-5)
    f0 = model.features(c, cfg.levels)[cfg.levels[0]]
    sm, _, scov = M.level_stats(sf[cfg.levels[0]])
    assert torch.allclose(t[0], M.wct_blend(f0, sm, scov), atol=1e-5)  # not AdaIN's

    cdir, sdir = data
    run = tmp_path / "run"
    args = ["train", "adain", "--content", str(cdir), "--styles", str(sdir), "--out", str(run)]
    assert main([*args, *TINY, "--steps", "2", "--transform", "wct", "-q"]) == 0
    assert json.loads((run / "config.json").read_text())["options"]["transform"] == "wct"
    assert options_for_resume(run, steps=3).transform == "wct"
    edit_json(run / "config.json", lambda d: d["options"].pop("transform"))
    assert options_for_resume(run, steps=3).transform == "adain"
    with pytest.raises(ArtgenError, match="--transform 'x': choose one of wct, adain"):
        T.AdaINTrainOptions(transform="x")


@pytest.mark.heavy
def test_two_processes_average_their_gradients(data, tmp_path):
    """What accelerate launch does on several GPUs, here as two CPU processes (gloo): each
    process draws its own crops, and the first Adam step equals the step on the average of
    the two processes' gradients, recomputed here in one process."""
    c, s = data
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["--content", str(c), "--styles", str(s), "--crop", "32", "--batch-size", "2"]
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "artgen", "train", "adain"]
    cmd += args
    cmd += ["--out", str(run), "--steps", "2", "--checkpoint-every", "1", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    # The run also checks at its end that both processes hold the same decoder.
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["num_processes"] == 2 and config["global_batch"] == 4
    assert (run / "model" / "decoder.safetensors").is_file()

    opts = T.AdaINTrainOptions(
        content=str(c), styles=str(s), out=str(tmp_path / "x"), crop=32, batch_size=2
    )
    torch.manual_seed(opts.seed)
    model, _ = T._initial_model(opts, torch.device("cpu"))
    start = copy.deepcopy(model.decoder.state_dict())
    grads = []
    for rank in (0, 1):  # process r draws from seed + r
        t = T._AdaINTrainer(
            dataclasses.replace(opts, seed=opts.seed + rank),
            model,
            torch.device("cpu"),
            T.CropSource(sorted(c.iterdir()), 32, "c"),
            T.CropSource(sorted(s.iterdir()), 32, "s"),
        )
        cb = t.contents.batch(2, t.g)
        sb = t.styles.batch(2, t.g)
        model.decoder.zero_grad(set_to_none=True)
        T.adain_losses(model, cb, sb, t.style_weight)[0].backward()
        grads.append([p.grad.clone() for p in model.decoder.parameters()])
    opt = torch.optim.Adam(model.decoder.parameters(), lr=opts.lr)
    for p, g0, g1 in zip(model.decoder.parameters(), *grads, strict=True):
        p.grad = (g0 + g1) / 2
    opt.step()
    step1 = load_file(str(run / "checkpoints" / "step-0000001" / "decoder.safetensors"))

    def mismatched() -> float:
        """Share of weights more than 1e-6 from the run's first step. Adam's first step is
        about lr * sign(g), so a weight whose averaged gradient is ~0 may flip on rounding."""
        state = model.decoder.state_dict()
        bad = sum(int(((step1[n] - p).abs() > 1e-6).sum()) for n, p in state.items())
        return bad / sum(p.numel() for p in state.values())

    assert mismatched() < 1e-5  # 1 weight of ~1.2 M on this machine
    # the check can fail: one process's gradient alone gives another step
    model.decoder.load_state_dict(start)
    for p, g0 in zip(model.decoder.parameters(), grads[0], strict=True):
        p.grad = g0
    torch.optim.Adam(model.decoder.parameters(), lr=opts.lr).step()
    assert mismatched() > 0.05
    # a two-process run resumes with two processes only
    assert main(["train", "adain", "--out", str(run), "--resume", "--steps", "3", "-q"]) == 2


def test_fine_tuning_from_the_shipped_decoder_lowers_the_style_loss(data, tmp_path):
    """Transfer learning to an artist's style: a few steps on one style from the shipped
    decoder bring its outputs' statistics closer to that style on a held-out photo."""
    import artgen
    from artgen.core.images import to_tensor
    from artgen.core.losses import stats_distance
    from artgen.interop import weights

    c, s = data
    art = tmp_path / "art"
    art.mkdir()
    stripes(96, seed=11).save(art / "mine.png")
    run = tmp_path / "mine"
    rc = main(
        [
            "train",
            "adain",
            "--base",
            "shipped",
            "--content",
            str(c),
            "--styles",
            str(art),
            "--out",
            str(run),
            "--steps",
            "30",
            "--crop",
            "64",
            "--batch-size",
            "4",
            "--lr",
            "5e-4",
            "--sample-every",
            "30",
            "--checkpoint-every",
            "30",
            "-q",
        ]
    )
    assert rc == 0
    before, after = weights.load_adain("shipped"), weights.load_adain(str(run))
    held_out = photo(128, 96, seed=9)
    style = stripes(96, seed=11)
    layers = list(before.config.style_layers)

    def distance(model) -> float:
        out = artgen.stylize(held_out, style, method="adain", model=model, size=128)
        f, g = before.features(to_tensor(out), layers), before.features(to_tensor(style), layers)
        return sum(stats_distance(f[n], *mean_std(g[n])).item() for n in layers)

    assert distance(after) < distance(before)


# -- damaged runs: one line naming the file and the field, never a traceback ----------------


@pytest.fixture(scope="module")
def adain_run(tmp_path_factory) -> Path:
    """A finished tiny run with a checkpoint at step 2 (copied by each test that damages it)."""
    root = tmp_path_factory.mktemp("adain_run")
    c, s = root / "content", root / "styles"
    c.mkdir()
    s.mkdir()
    for k in range(2):
        photo(80, 64, seed=k).save(c / f"c{k}.png")
        stripes(72, seed=k).save(s / f"s{k}.png")
    run = root / "run"
    assert (
        main(
            [
                "train",
                "adain",
                "--content",
                str(c),
                "--styles",
                str(s),
                "--out",
                str(run),
                *TINY,
                "--steps",
                "2",
                "-q",
            ]
        )
        == 0
    )
    return run


@pytest.mark.parametrize(
    ("damage", "names"),
    [
        ("step is a string", ["state.json", "step"]),
        ("no optimizer in state.json", ["state.json", "optimizer"]),
        ("garbled rng state", ["rng0", "python"]),
        ("no rng0.safetensors", ["rng0.safetensors"]),
        ("truncated decoder.safetensors", ["decoder.safetensors"]),
        ("config options is a list", ["config.json", "options is []"]),
        ("config batch_size is abc", ["config.json", "options.batch_size"]),
        ("config is {", ["config.json", "not valid JSON"]),
        ("config is []", ["config.json"]),
        ("config options is {}", ["config.json", "options.out is missing"]),
    ],
)
def test_a_damaged_adain_run_resumes_to_one_line(adain_run, tmp_path, capsys, damage, names):
    run = Path(shutil.copytree(adain_run, tmp_path / "run"))
    ckpt = run / "checkpoints" / "step-0000002"
    state, config = ckpt / "state.json", run / "config.json"
    edits = {
        "step is a string": lambda: edit_json(state, lambda s: s.update(step="2")),
        "no optimizer in state.json": lambda: edit_json(state, lambda s: s.pop("optimizer")),
        "garbled rng state": lambda: edit_json(state, lambda s: s["rng0"].update(python=[1])),
        "no rng0.safetensors": lambda: (ckpt / "rng0.safetensors").unlink(),
        "truncated decoder.safetensors": lambda: (ckpt / "decoder.safetensors").write_bytes(
            (ckpt / "decoder.safetensors").read_bytes()[:100]
        ),
        "config options is a list": lambda: edit_json(config, lambda c: c.update(options=[])),
        "config batch_size is abc": lambda: edit_json(
            config, lambda c: c["options"].update(batch_size="abc")
        ),
        "config is {": lambda: config.write_text("{"),
        "config is []": lambda: config.write_text("[]"),
        "config options is {}": lambda: config.write_text(
            '{"method": "train-adain", "options": {}}'
        ),
    }
    edits[damage]()
    rc = main(["train", "adain", "--out", str(run), "--resume", "--steps", "4", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("artgen: error: "), err
    where = config if damage.startswith("config") else ckpt
    for name in (str(where), *names):
        assert name in lines[0], (name, lines[0])
    with pytest.raises(ArtgenError):
        T.train_adain(options_for_resume(run, steps=4))


@pytest.mark.parametrize("which", ["the step it will write", "the step it resumes from"])
def test_a_linked_checkpoint_is_refused_before_training(adain_run, tmp_path, capsys, which):
    """issue 34: a checkpoint folder that is a symbolic link made the run train, then fail
    to replace it (an OSError traceback, a .tmp folder left); now refused up front."""
    run = Path(shutil.copytree(adain_run, tmp_path / "run"))
    checkpoints = run / "checkpoints"
    elsewhere = tmp_path / "elsewhere"
    if which == "the step it will write":
        elsewhere.mkdir()
        link = checkpoints / "step-0000004"
    else:
        shutil.move(checkpoints / "step-0000002", elsewhere)
        link = checkpoints / "step-0000002"
    link.symlink_to(elsewhere, target_is_directory=True)
    log = (run / "log.jsonl").read_text()
    rc = main(["train", "adain", "--out", str(run), "--resume", "--steps", "4", "-q"])
    one_line_error(capsys, rc, str(link), "symbolic link")
    assert (run / "log.jsonl").read_text() == log  # not a step trained
    assert not list(checkpoints.glob(".*.tmp")) and link.is_symlink()
    with pytest.raises(ArtgenError, match="symbolic link"):
        T.train_adain(options_for_resume(run, steps=4))
