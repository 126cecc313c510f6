"""The linear-probe attribute classifier."""

from __future__ import annotations

import pytest
import torch

from artgen.errors import ArtgenError
from artgen.probe import cross_validated_accuracy, fit_linear_probe


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
