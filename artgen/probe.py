"""Attribute classifiers by transfer learning: a linear probe on frozen pretrained features.

A multinomial logistic regression on standardised features of an ImageNet network
(the linear-evaluation protocol of Kornblith, Shlens and Le, "Do Better ImageNet Models
Transfer Better?", CVPR 2019). artgen uses it to label generated images with a sensitive
attribute, so that the Fairness Discrepancy of a generator can be measured (Teo et al.,
"Fair Generative Models via Transfer Learning", AAAI 2023, who train a ResNet-18
classifier instead: with 10 to 100 labelled images a linear probe is what can be fitted).
Its held-out accuracy, by stratified k-fold cross-validation, is reported with every FD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from artgen.errors import ArtgenError


class LinearProbe(nn.Module):
    """Standardise, then one linear layer; ``classes[k]`` is the name of logit k."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, classes: Sequence[str]):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.classes = list(classes)
        self.linear = nn.Linear(mean.numel(), len(classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.float() - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> list[str]:
        return [self.classes[k] for k in self(features).argmax(1).tolist()]


def fit_linear_probe(
    features: torch.Tensor,
    labels: Sequence[str],
    *,
    weight_decay: float = 1e-2,
    max_iter: int = 200,
) -> LinearProbe:
    """Fit by full-batch L-BFGS on cross-entropy plus an L2 penalty (deterministic)."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ArtgenError(f"a classifier needs at least two classes, got {classes}")
    x = features.float()
    y = torch.tensor([classes.index(v) for v in labels])
    probe = LinearProbe(x.mean(0), x.std(0).clamp_min(1e-6), classes)
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    opt = torch.optim.LBFGS(probe.linear.parameters(), max_iter=max_iter,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe.eval()


def cross_validated_accuracy(
    features: torch.Tensor, labels: Sequence[str], *, folds: int = 5, seed: int = 0
) -> tuple[float, int]:
    """Stratified k-fold accuracy of the probe: (accuracy, folds actually used)."""
    counts = {c: labels.count(c) for c in set(labels)}
    k = min(folds, min(counts.values()))
    if k < 2:
        raise ArtgenError(
            "each attribute value needs at least 2 labelled images to measure the "
            f"classifier's accuracy (counts: {dict(sorted(counts.items()))})"
        )
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for c in counts:  # deal each class's images round-robin into the folds, shuffled
        idx = [i for i, v in enumerate(labels) if v == c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        for j, p in enumerate(perm):
            fold_of[idx[p]] = j % k
    correct = 0
    for f in range(k):
        train = (fold_of != f).nonzero().flatten()
        test = (fold_of == f).nonzero().flatten()
        probe = fit_linear_probe(features[train], [labels[i] for i in train.tolist()])
        pred = probe.predict(features[test])
        correct += sum(p == labels[i] for p, i in zip(pred, test.tolist(), strict=True))
    return correct / len(labels), k
