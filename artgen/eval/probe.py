"""Attribute classifiers by transfer learning: a linear probe on frozen pretrained features.

A multinomial logistic regression on standardised features of an ImageNet network
(the linear-evaluation protocol of Kornblith, Shlens and Le, "Do Better ImageNet Models
Transfer Better?", CVPR 2019). artgen uses it to label generated images with a sensitive
attribute, so that the Fairness Discrepancy of a generator can be measured (Teo et al.,
"Fair Generative Models via Transfer Learning", AAAI 2023, who train a ResNet-18
classifier instead: with 10 to 100 labelled images a linear probe is what can be fitted).
Its held-out accuracy, by stratified k-fold cross-validation, is reported with every FD.

A probe that is accurate on real images can still misread a small generator's samples
(blurry, noisy, colour-shifted, with banding). :func:`degrade` imitates those artefacts;
:func:`calibrate_probe` trains the probe on clean and degraded references and measures
its confusion matrix on degraded held-out references (cross-validated), which
artgen.eval.metrics.fairness_discrepancy_interval then uses to correct the generated shares.
This is the calibration of a classifier on "generated-like" images of known class; it
covers the artefacts :func:`degrade` imitates and not, for instance, a face that a
generator draws half-way between two attribute values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from artgen.core.errors import ArtgenError


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
    opt = torch.optim.LBFGS(
        probe.linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe.eval()


def stratified_folds(
    labels: Sequence[str], folds: int = 5, seed: int = 0
) -> tuple[torch.Tensor, int]:
    """Fold index (N,) of each item, each class dealt round-robin (shuffled) into
    min(folds, smallest class) folds; and that number of folds."""
    labels = list(labels)
    counts = {c: labels.count(c) for c in set(labels)}
    k = min(folds, min(counts.values()))
    if k < 2:
        raise ArtgenError(
            "each attribute value needs at least 2 labelled images to measure the "
            f"classifier's accuracy (counts: {dict(sorted(counts.items()))})"
        )
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for c in sorted(counts):  # deal each class's images round-robin into the folds, shuffled
        idx = [i for i, v in enumerate(labels) if v == c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        for j, p in enumerate(perm):
            fold_of[idx[p]] = j % k
    return fold_of, k


def cross_validated_accuracy(
    features: torch.Tensor, labels: Sequence[str], *, folds: int = 5, seed: int = 0
) -> tuple[float, int]:
    """Stratified k-fold accuracy of the probe: (accuracy, folds actually used)."""
    fold_of, k = stratified_folds(labels, folds, seed)
    correct = 0
    for f in range(k):
        train = (fold_of != f).nonzero().flatten()
        test = (fold_of == f).nonzero().flatten()
        probe = fit_linear_probe(features[train], [labels[i] for i in train.tolist()])
        pred = probe.predict(features[test])
        correct += sum(p == labels[i] for p, i in zip(pred, test.tolist(), strict=True))
    return correct / len(labels), k


# ---------------------------------------------------------------------------------------------
# Generated-like images and calibration


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.05:
        return x
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect" if min(x.shape[-2:]) > r else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def degrade(
    images: torch.Tensor, *, generator: torch.Generator | None = None, strength: float = 1.0
) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] with artefacts like a small GAN's, drawn per image.

    In order, each with a random amount up to ``strength`` times its maximum:
    down-up sampling (bilinear, antialiased, by a factor up to 2.5, loses detail), Gaussian
    blur (sigma up to 1 px), colour shifts (brightness +-0.08, contrast x[0.75, 1.25],
    saturation x[0.6, 1.3], per-channel gain x[0.9, 1.1]), horizontal banding on half of
    the images (amplitude up to 0.04, period 2 to 6 px, the stripes StyleGAN2 draws when
    over-fitted) and Gaussian pixel noise (sd up to 0.05); clipped to [0, 1]. Pure: the
    randomness comes from ``generator``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ArtgenError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    n, _, h, w = x.shape
    s = float(strength)

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    out = []
    for i in range(n):
        y = x[i : i + 1]
        f = u(1.0, 1.0 + 1.5 * s)
        if f > 1.05:
            small = (max(2, round(h / f)), max(2, round(w / f)))
            y = F.interpolate(y, size=small, mode="bilinear", antialias=True, align_corners=False)
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        y = _gaussian_blur(y, u(0.0, 1.0 * s))
        gray = y.mean(1, keepdim=True)
        y = gray + (y - gray) * u(1 - 0.4 * s, 1 + 0.3 * s)  # saturation
        y = (y - y.mean()) * u(1 - 0.25 * s, 1 + 0.25 * s) + y.mean()  # contrast
        gain = torch.tensor([u(1 - 0.1 * s, 1 + 0.1 * s) for _ in range(3)]).view(1, 3, 1, 1)
        y = y * gain + u(-0.08 * s, 0.08 * s)
        if u(0, 1) < 0.5:
            rows = torch.arange(h, dtype=y.dtype).view(1, 1, h, 1)
            period, phase = u(2.0, 6.0), u(0.0, 6.2832)
            y = y + u(0.0, 0.04 * s) * torch.sin(2 * torch.pi * rows / period + phase)
        noise = torch.randn(y.shape, generator=generator)
        y = y + u(0.0, 0.05 * s) * noise
        out.append(y.clamp(0, 1))
    return torch.cat(out)


@dataclass(frozen=True)
class ProbeCalibration:
    """A probe trained on clean and degraded references, with its errors on degraded
    held-out references: ``true[i]`` and ``predicted[i]`` are class indices (into
    ``probe.classes``) of held-out reference i, each predicted by a probe that did not
    train on it; ``accuracy`` is their agreement."""

    probe: LinearProbe
    true: list[int]
    predicted: list[int]
    accuracy: float
    folds: int


def calibrate_probe(
    clean: torch.Tensor,
    train_degraded: torch.Tensor,
    test_degraded: torch.Tensor,
    labels: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
) -> ProbeCalibration:
    """Fit the probe on ``clean`` plus ``train_degraded`` features of the labelled images,
    and estimate its confusion on ``test_degraded`` features (other draws of
    :func:`degrade` of the same images) by stratified k-fold cross-validation: fold f's
    images are predicted by a probe fitted on the other folds' clean and degraded
    features. The returned probe is fitted on all images' clean and degraded features."""
    labels = list(labels)
    n = len(labels)
    if not clean.shape[0] == train_degraded.shape[0] == test_degraded.shape[0] == n:
        raise ArtgenError(f"need features of each of the {n} labelled images in all three sets")
    fold_of, k = stratified_folds(labels, folds, seed)
    classes = sorted(set(labels))
    true, predicted = [0] * n, [0] * n
    for f in range(k):
        tr = (fold_of != f).nonzero().flatten()
        te = (fold_of == f).nonzero().flatten()
        y = [labels[i] for i in tr.tolist()]
        probe = fit_linear_probe(torch.cat([clean[tr], train_degraded[tr]]), y + y)
        for i, p in zip(te.tolist(), probe.predict(test_degraded[te]), strict=True):
            true[i], predicted[i] = classes.index(labels[i]), classes.index(p)
    probe = fit_linear_probe(torch.cat([clean, train_degraded]), labels + labels)
    accuracy = sum(t == p for t, p in zip(true, predicted, strict=True)) / n
    return ProbeCalibration(probe, true, predicted, accuracy, k)
