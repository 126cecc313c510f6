"""artgen eval: FID/KID, diversity and attribute proportions, with images handed in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artgen.core.errors import ArtgenError
from artgen.eval.evaluate import EvalOptions, evaluate

from .conftest import one_line_error, photo, stripes

# eval.json's keys besides the metrics'.
BASE_KEYS = {"run", "reference", "samples", "options"}


@pytest.fixture
def reference(tmp_path):
    """10 photos and 10 striped paintings, labelled by kind."""
    folder = tmp_path / "ref"
    folder.mkdir()
    rows = ["file,kind"]
    for i in range(10):
        photo(48, 48, seed=i).save(folder / f"p{i}.png")
        stripes(48, seed=i).save(folder / f"s{i}.png")
        rows += [f"p{i}.png,photo", f"s{i}.png,painting"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder, tmp_path / "labels.csv"


def test_fid_diversity_and_fairness_discrepancy(reference, tmp_path):
    folder, labels = reference
    run = tmp_path / "run"
    run.mkdir()

    def mostly_paintings(n, seed):  # a generator biased 9:1 towards paintings
        return [
            stripes(48, seed=100 + seed + i) if i % 10 else photo(48, 48, seed=100 + i)
            for i in range(n)
        ]

    opts = EvalOptions(
        images=str(folder),
        num_samples=20,
        labels=str(labels),
        attribute="kind",
        lpips="stand-in",
        kid_subsets=20,
        device="cpu",
    )
    r = evaluate(run, opts, generate=mostly_paintings)
    # The default set, under the keys eval.json has always had.
    assert set(r) == BASE_KEYS | {"fid", "kid", "diversity", "attribute"}
    a = r["attribute"]
    assert a["classifier_accuracy"] == 1.0 and a["classifier_folds"] == 5
    assert a["generated_proportions"] == {"painting": 0.9, "photo": 0.1}
    assert a["fairness_discrepancy"] == pytest.approx(0.5657, abs=1e-3)
    assert a["reference_proportions"] == {"painting": 0.5, "photo": 0.5}
    # Photos and stripes stay apart through the degradations: the confusion is the identity,
    # so the correction changes nothing; the interval comes from the 20 samples.
    assert a["corrected"] and a["calibration"]["accuracy"] == 1.0
    assert a["calibration"]["confusion"] == {
        "painting": {"painting": 1.0, "photo": 0.0},
        "photo": {"painting": 0.0, "photo": 1.0},
    }
    assert a["observed_proportions"] == a["generated_proportions"]
    assert a["fairness_discrepancy_raw"] == pytest.approx(a["fairness_discrepancy"])
    low, high = a["fairness_discrepancy_interval"]
    assert low < a["fairness_discrepancy"] < high and 0.3 < low and high <= 0.7072
    assert a["fairness_discrepancy_std"] > 0.03  # sd of the share over 20 draws: 0.067 * sqrt 2
    k = r["kid"]
    assert k["std"] > 0 and k["std_is"] == "bootstrap standard error" and k["subset_size"] == 20
    assert "efficientnet-lite0" in r["fid"]["network"]
    assert "stand-in" in r["diversity"]["distance"]
    assert json.loads((run / "eval.json").read_text())["fid"] == r["fid"]

    # A balanced generator is closer to the reference set than the biased one.
    def balanced(n, seed):
        return [
            stripes(48, seed=200 + i) if i % 2 else photo(48, 48, seed=200 + i) for i in range(n)
        ]

    b = evaluate(run, opts, generate=balanced)
    assert b["fid"]["value"] < 0.7 * r["fid"]["value"], (b["fid"], r["fid"])
    assert b["attribute"]["fairness_discrepancy"] < 0.05

    # Copies of a single image: no diversity at all.
    c = evaluate(run, opts, generate=lambda n, s: [stripes(48, seed=1)] * n)
    assert c["diversity"]["intra_cluster"] < 1e-6 < b["diversity"]["intra_cluster"]


def test_eval_errors(reference, tmp_path):
    folder, labels = reference
    with pytest.raises(ArtgenError, match="--labels and --attribute go together"):
        evaluate(tmp_path, EvalOptions(images=str(folder), labels=str(labels)))
    with pytest.raises(ArtgenError, match="unknown attribute|colour"):
        evaluate(tmp_path, EvalOptions(images=str(folder), labels=str(labels), attribute="colour"))
    with pytest.raises(ArtgenError, match="--images"):
        evaluate(tmp_path, EvalOptions())


def test_eval_corrects_a_probe_that_misreads_degraded_images(reference, tmp_path):
    """A probe trained on clean images only, on "generated" images degraded the way
    artgen.eval.probe.degrade does: the calibrated evaluation is no further from the truth."""
    from artgen.core.images import to_pil, to_tensor
    from artgen.eval.probe import degrade

    folder, labels = reference

    def degraded_balanced(n, seed):
        g = torch.Generator().manual_seed(seed)
        clean = [
            stripes(48, seed=300 + i) if i % 2 else photo(48, 48, seed=300 + i) for i in range(n)
        ]
        x = degrade(torch.cat([to_tensor(im) for im in clean]), generator=g, strength=1.5)
        return [to_pil(im) for im in x]

    base = dict(
        images=str(folder),
        num_samples=20,
        labels=str(labels),
        attribute="kind",
        lpips="stand-in",
        kid_subsets=5,
        device="cpu",
        bootstrap=200,
    )
    plain = evaluate(tmp_path, EvalOptions(**base, uncorrected=True), generate=degraded_balanced)[
        "attribute"
    ]
    fixed = evaluate(tmp_path, EvalOptions(**base), generate=degraded_balanced)["attribute"]
    assert not plain["corrected"] and plain["calibration"] is None
    assert fixed["fairness_discrepancy"] <= plain["fairness_discrepancy"] + 1e-9
    assert fixed["fairness_discrepancy_interval"][0] <= 0.25
    with pytest.raises(ArtgenError, match="--bootstrap"):
        evaluate(tmp_path, EvalOptions(**{**base, "bootstrap": 0}), generate=degraded_balanced)


def test_cli_prints_fd_with_its_interval_and_kid_with_its_error(
    reference, tmp_path, monkeypatch, capsys
):
    import artgen.eval.evaluate as ev
    from artgen.cli import main

    folder, labels = reference
    run = tmp_path / "run"
    run.mkdir()
    real = ev.evaluate

    def biased(n, seed):
        return [
            stripes(48, seed=100 + seed + i) if i % 10 else photo(48, 48, seed=100 + i)
            for i in range(n)
        ]

    monkeypatch.setattr(ev, "evaluate", lambda r, o: real(r, o, generate=biased))
    assert (
        main(
            [
                "eval",
                str(run),
                "--images",
                str(folder),
                "--labels",
                str(labels),
                "--attribute",
                "kind",
                "--num-samples",
                "20",
                "--lpips",
                "stand-in",
                "--kid-subsets",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    a, k = saved["attribute"], saved["kid"]
    lo, hi = a["fairness_discrepancy_interval"]
    assert f"FD         {a['fairness_discrepancy']:10.4f}   [{lo:.4f}, {hi:.4f}]" in out
    assert f"uncorrected {a['fairness_discrepancy_raw']:.4f}" in out
    assert f"+- {k['std']:.4f}   (bootstrap standard error, subsets of 20)" in out
    assert "probe's calls painting 0.90, photo 0.10" in out


def _balanced(n, seed):
    return [
        stripes(48, seed=200 + seed + i) if i % 2 else photo(48, 48, seed=200 + seed + i)
        for i in range(n)
    ]


def test_metrics_computes_only_the_metrics_asked_for(reference, tmp_path, monkeypatch):
    import artgen.eval.metrics as M

    folder, labels = reference
    base = dict(images=str(folder), num_samples=12, kid_subsets=5, lpips="stand-in", device="cpu")
    everything = evaluate(tmp_path, EvalOptions(**base), generate=_balanced)
    assert set(everything) == BASE_KEYS | {"fid", "kid", "diversity"}  # no labels: no FD

    real_lpips = M.load_lpips

    def not_asked(*args, **kw):
        raise AssertionError("a metric that was not asked for ran")

    monkeypatch.setattr(M, "load_lpips", not_asked)
    r = evaluate(tmp_path, EvalOptions(**base, metrics="kid, fid"), generate=_balanced)
    assert set(r) == BASE_KEYS | {"fid", "kid"}
    assert r["fid"] == everything["fid"] and r["kid"] == everything["kid"]  # the same numbers
    assert json.loads((tmp_path / "eval.json").read_text())["options"]["metrics"] == "kid, fid"

    # Diversity alone never loads the FID network; a tuple of names is recorded as a string.
    monkeypatch.setattr(M, "load_lpips", real_lpips)
    monkeypatch.setattr(M, "load_fid_network", not_asked)
    opts = EvalOptions(**base, metrics=("diversity",))
    assert opts.metrics == "diversity"
    d = evaluate(tmp_path, opts, generate=_balanced)
    assert set(d) == BASE_KEYS | {"diversity"} and d["diversity"] == everything["diversity"]


def test_unknown_metrics_and_unmet_needs_are_one_line_errors(reference, tmp_path, capsys):
    from artgen.cli import main

    folder, labels = reference
    known = "known: fid, kid, diversity, fd"
    with pytest.raises(ArtgenError, match=rf"--metrics nope: unknown metric \({known}\)"):
        evaluate(tmp_path, EvalOptions(images=str(folder), metrics="fid,nope"))
    with pytest.raises(ArtgenError, match="--metrics fd: needs --labels"):
        evaluate(tmp_path, EvalOptions(images=str(folder), metrics="fd"))
    with pytest.raises(ArtgenError, match="--images"):
        evaluate(tmp_path, EvalOptions(metrics="fid"))
    rc = main(["eval", str(tmp_path), "--images", str(folder), "--metrics", "fid,nope"])
    one_line_error(capsys, rc, "--metrics nope", known)


def test_a_registered_metric_is_computed_and_printed_by_name(tmp_path, monkeypatch, capsys):
    import artgen.eval.evaluate as ev
    import artgen.eval.registry as registry
    from artgen.cli import main

    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))  # registered for this test

    @registry.register_metric("toy", needs=("samples",), help="mean brightness")
    def toy(ctx):
        mean = float(np.mean([np.asarray(im, dtype=np.float64) for im in ctx.samples])) / 255
        return {"value": mean, "of": len(ctx.samples)}

    @registry.register_metric("toy2", needs=("samples",), format=lambda v: [f"  two {v}"])
    def toy2(ctx):
        return 2

    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda r, o: real(r, o, generate=_balanced))
    run = tmp_path / "run"
    run.mkdir()
    # Needs no reference images, so none are asked for; the FID network is never loaded.
    assert (
        main(["eval", str(run), "--metrics", "toy,toy2", "--num-samples", "4", "--device", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    assert set(saved) == {"run", "samples", "options", "toy", "toy2"}
    assert f"  toy        {saved['toy']['value']:10.4f}   (of 4)" in out
    assert "  two 2" in out and "FID" not in out and "against" not in out
    assert out.index("toy ") < out.index("two")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_metric("toy", toy)
