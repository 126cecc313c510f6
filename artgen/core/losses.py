"""Loss functions for neural style transfer (pure functions; the Gram matrix, its masked
form for regional styles, the channel statistics of AdaIN and the resampling of region
masks to feature maps live here only).

Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
Networks", CVPR 2016: content loss on feature maps, style loss on Gram
matrices, plus a total-variation smoothness term (Mahendran & Vedaldi 2015).

Departure from the paper: each squared error is divided by the matching sum of
absolute errors (the "scaled MSE" of crowsonkb's style-transfer-pytorch), which
puts every layer on the same scale, so one set of weights works on any
backbone and any image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (N, C, H, W) features, normalised by H*W, computed in fp32."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def masked_gram(features: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Gram matrix of one region of (N, C, H, W) features, in fp32: the mean of f f^T
    over the pixels, each weighted by ``mask`` (N or 1, 1, h, w), values in [0, 1], resized
    to the features by :func:`resize_mask`. An all-ones mask gives :func:`gram`.

    Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer", sec. 4
    (spatial control): a region's Gram is computed from the features multiplied by the
    region's guidance channel. Departure: each pixel is weighted by the mask once (the paper
    multiplies the features by it, a weight of m^2), and the sum is divided by the mask's
    sum instead of H*W, so a region's Gram is an average over that region whatever its size,
    comparable with the style image's plain Gram, and a soft edge counts in proportion.
    """
    h, w = features.shape[-2:]
    m = resize_mask(mask, (h, w)).float()
    total = m.reshape(m.shape[0], 1, -1).sum(dim=2, keepdim=True).clamp_min(eps)
    return weighted_gram(features, m, total)


def weighted_gram(
    features: torch.Tensor, weight: torch.Tensor, norm: float | torch.Tensor
) -> torch.Tensor:
    """sum over pixels of ``weight`` * f f^T, divided by ``norm``, in fp32. ``weight``:
    (N or 1, 1, H, W) at the features' size. :func:`masked_gram` divides by the weights'
    sum; a tile of a picture too large to go through whole divides by the whole picture's
    pixel count, so the tiles' parts add up to the picture's Gram (artgen.style.gatys)."""
    n, c = features.shape[:2]
    f = features.float().reshape(n, c, -1)
    w = weight.float().reshape(weight.shape[0], 1, -1)
    return torch.bmm(f * w, f.transpose(1, 2)) / norm


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """A soft mask (N, R, h, w) at ``size`` (H, W): averaged over each target cell when it
    shrinks (area resampling, so each cell holds the share of its pixels that the mask
    covers, and the mean is kept), bilinear when it grows. The paper's simpler option (it
    also propagates guides through the network); a feature cell of stride s stands for the
    s x s pixels it starts at, which is where area resampling puts it."""
    size = (int(size[0]), int(size[1]))
    if tuple(mask.shape[-2:]) == size:
        return mask
    if mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(mask.float(), size)
    return F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)


def scaled_mse(x: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum((x - t)^2) / sum(|x - t|): an MSE whose scale does not depend on the layer."""
    diff = x.float() - target.float()
    return diff.pow(2).sum() / (diff.abs().sum() + eps)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return scaled_mse(features, target)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (replicate-padded)."""
    x = F.pad(image, (0, 1, 0, 1), mode="replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).mean()


def mean_std(features: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std over space, (N, C, 1, 1) each, in fp32.

    The statistics AdaIN transfers (Huang & Belongie 2017, eq. 5-6); eps inside the square
    root as in their code, so flat regions do not divide by zero.
    """
    var, mean = torch.var_mean(features.float(), dim=(2, 3), keepdim=True, correction=0)
    return mean, (var + eps).sqrt()


def masked_mean_std(
    features: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mean_std` of one region: each pixel weighted by ``mask`` (N or 1, 1, h, w) in
    [0, 1], resized to the features by :func:`resize_mask`. An all-ones mask gives
    :func:`mean_std`; a region the mask does not reach gives mean 0, std sqrt(eps)."""
    x = features.float()
    m = resize_mask(mask, x.shape[-2:]).float()
    total = m.sum(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    mean = (x * m).sum(dim=(2, 3), keepdim=True) / total
    var = ((x - mean).pow(2) * m).sum(dim=(2, 3), keepdim=True) / total
    return mean, (var + eps).sqrt()


def stats_loss(features: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor):
    """The AdaIN style loss at one layer: ||mu(f) - mu_t||^2 + ||sigma(f) - sigma_t||^2 (eq. 13),
    as mean squared errors over channels and batch (pytorch-AdaIN's nn.MSELoss)."""
    m, s = mean_std(features)
    return F.mse_loss(m, target_mean.float()) + F.mse_loss(s, target_std.float())


def covariance(
    features: torch.Tensor,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Channel covariance of (N, C, h, w) features over space, (N, C, C), in ``dtype``: the
    Gram matrix of the centred features. With ``weights`` (N or 1, 1, h, w) in [0, 1] each
    pixel counts by its weight (one region's covariance, as :func:`masked_gram` is one
    region's Gram matrix)."""
    f = features.to(dtype).flatten(2)
    if weights is None:
        f = f - f.mean(2, keepdim=True)
        return f @ f.transpose(1, 2) / f.shape[2]
    w = weights.to(dtype).flatten(2)
    total = w.sum(2, keepdim=True).clamp_min(1e-8)
    f = f - (f * w).sum(2, keepdim=True) / total
    return (f * w) @ f.transpose(1, 2) / total


def covariance_loss(features: torch.Tensor, target: torch.Tensor, eps: float = 1e-8):
    """||Cov(f) - Cov_t||_F^2 / ||Cov_t||_F^2 per sample, averaged over the batch: how far the
    channel correlations (at shallow layers, the palette: which colours go together) are
    from the style's, on one scale at every layer. ``target`` from :func:`covariance`."""
    t = target.float()
    d = (covariance(features) - t).pow(2).sum(dim=(1, 2))
    return (d / t.pow(2).sum(dim=(1, 2)).clamp_min(eps)).mean()


def stats_distance(features: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor):
    """sqrt of the summed squared distance of channel means and stds (a metric, not a loss)."""
    m, s = mean_std(features)
    d = (m - target_mean.float()).pow(2).sum(dim=(1, 2, 3)) + (s - target_std.float()).pow(2).sum(
        dim=(1, 2, 3)
    )
    return d.sqrt()


def blend_grams(grams: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Weighted mean of style Gram matrices: several styles become one target (as neural-style does)."""
    total = float(sum(weights))
    out = torch.zeros_like(grams[0])
    for g, w in zip(grams, weights, strict=True):
        out = out + g * (w / total)
    return out
