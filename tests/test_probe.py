"""The linear-probe attribute classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artgen.core.errors import ArtgenError
from artgen.eval.probe import cross_validated_accuracy, fit_linear_probe


def blobs(n: int = 40, d: int = 16, gap: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    labels = ["a" if i % 2 else "b" for i in range(n)]
    x[::2, 0] += gap  # class "b" is shifted along one feature
    return x, labels


def test_probe_separates_classes_and_names_them():
    x, labels = blobs()
    probe = fit_linear_probe(x, labels)
    assert probe.classes == ["a", "b"]
    assert sum(p == v for p, v in zip(probe.predict(x), labels, strict=True)) / len(x) > 0.9
    acc, folds = cross_validated_accuracy(x, labels)
    assert folds == 5 and acc > 0.75  # Bayes rate 0.93; 32 training points in 16-d


def test_probe_is_at_chance_on_random_labels():
    x, _ = blobs(n=200, gap=0.0)
    g = torch.Generator().manual_seed(1)
    labels = ["a" if v else "b" for v in (torch.rand(200, generator=g) > 0.5).tolist()]
    acc, _ = cross_validated_accuracy(x, labels)
    assert 0.3 < acc < 0.7


def test_probe_errors():
    x, labels = blobs(n=6)
    with pytest.raises(ArtgenError, match="at least two classes"):
        fit_linear_probe(x, ["a"] * 6)
    with pytest.raises(ArtgenError, match="at least 2 labelled images"):
        cross_validated_accuracy(x, ["a"] * 5 + ["b"])


def test_degrade_keeps_shape_and_range_is_seeded_and_is_the_identity_at_strength_zero():
    from artgen.eval.probe import degrade

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 16, 16, generator=g)
    same = degrade(x, generator=torch.Generator().manual_seed(1), strength=0.0)
    assert torch.allclose(same, x, atol=1e-6)  # every amount is 0 (up to rounding)
    a = degrade(x, generator=torch.Generator().manual_seed(1))
    b = degrade(x, generator=torch.Generator().manual_seed(1))
    c = degrade(x, generator=torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and (a - x).abs().mean() > 0.02
    # Down-up sampling and blur remove detail: a checkerboard loses most of its contrast.
    board = ((torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2).float()
    board = board.expand(8, 3, 16, 16)
    soft = degrade(board, generator=torch.Generator().manual_seed(3))
    assert soft.std() < board.std()
    with pytest.raises(ArtgenError, match="expected images"):
        degrade(torch.rand(3, 16, 16))


def test_calibrate_probe_measures_the_errors_on_degraded_held_out_features():
    from artgen.eval.metrics import confusion_matrix
    from artgen.eval.probe import calibrate_probe

    x, labels = blobs(n=40, gap=30.0)  # "b" (even rows) shifted by 30 sd: far apart
    # Degraded copies for testing: every other "a" item (rows 1, 5, 9, ...; 10 of 20) is
    # moved onto class "b": a probe trained on clean features calls exactly those wrong.
    test = x.clone()
    moved = list(range(1, 40, 4))
    test[moved, 0] += 30.0
    cal = calibrate_probe(x, x.clone(), test, labels)
    assert cal.folds == 5 and cal.probe.classes == ["a", "b"]
    assert cal.true == [0 if v == "a" else 1 for v in labels]
    assert [
        i for i, (t, p) in enumerate(zip(cal.true, cal.predicted, strict=True)) if t != p
    ] == moved
    assert cal.accuracy == pytest.approx(30 / 40)
    c = confusion_matrix(cal.true, cal.predicted, 2)
    assert c == pytest.approx(np.array([[0.5, 0.5], [0.0, 1.0]]))
    with pytest.raises(ArtgenError, match="all three sets"):
        calibrate_probe(x, x[:5], test, labels)
