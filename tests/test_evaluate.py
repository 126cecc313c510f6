"""artgen eval: FID/KID, diversity and attribute proportions, with images handed in."""

from __future__ import annotations

import json

import pytest

from artgen.errors import ArtgenError
from artgen.evaluate import EvalOptions, evaluate

from .conftest import photo, stripes


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
        return [stripes(48, seed=100 + seed + i) if i % 10 else photo(48, 48, seed=100 + i)
                for i in range(n)]  # fmt: skip

    opts = EvalOptions(images=str(folder), num_samples=20, labels=str(labels), attribute="kind",
                       lpips="stand-in", kid_subsets=20, device="cpu")  # fmt: skip
    r = evaluate(run, opts, generate=mostly_paintings)
    a = r["attribute"]
    assert a["classifier_accuracy"] == 1.0 and a["classifier_folds"] == 5
    assert a["generated_proportions"] == {"painting": 0.9, "photo": 0.1}
    assert a["fairness_discrepancy"] == pytest.approx(0.5657, abs=1e-3)
    assert a["reference_proportions"] == {"painting": 0.5, "photo": 0.5}
    assert "efficientnet-lite0" in r["fid"]["network"]
    assert "stand-in" in r["diversity"]["distance"]
    assert json.loads((run / "eval.json").read_text())["fid"] == r["fid"]

    # A balanced generator is closer to the reference set than the biased one.
    def balanced(n, seed):
        return [stripes(48, seed=200 + i) if i % 2 else photo(48, 48, seed=200 + i)
                for i in range(n)]  # fmt: skip

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
