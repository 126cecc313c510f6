"""The style's palette on the fast method's picture (numpy only: both runtimes use it).

Gatys, Bethge, Hertzmann & Shechtman, "Preserving Color in Neural Artistic Style Transfer"
(arXiv:1606.05897, 2016), sec. 2.1: a linear colour transfer gives one picture the colour
mean and covariance of another, x' = A (x - mu_x) + mu_t with A = Cov_t^1/2 Cov_x^-1/2
(the symmetric square roots, their "image analogies" variant). The paper recolours the
style to the photo, to keep the photo's colours; artgen.core.color.match_histogram does that.

Here it runs the other way, on the output of the fast method: its decoder paints the
style's textures but keeps much of the photo's palette (docs/adain.md: by the held-out
judges, the colour-histogram distance to the style falls from 0.52 to 0.38 and the style
statistics ratio from 0.68 to 0.56 when the output takes the style's colour mean and
covariance). With several styles the targets are blended by weight; with strength alpha
< 1 the target moves toward the photo's own statistics by 1 - alpha, so alpha 0 gives
the photo back.

All in float64 numpy so that the PyTorch and onnxruntime paths give the same pictures.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

Stats = tuple[np.ndarray, np.ndarray]  # mean (3,), covariance (3, 3)
STATS_SIDE = 256  # pictures are measured at this long side (the statistics barely move)


def colour_stats(im: Image.Image | np.ndarray) -> Stats:
    """Mean and covariance of the RGB values in [0, 1]: a PIL picture (measured at
    STATS_SIDE px) or an (H, W, 3) float array."""
    if isinstance(im, Image.Image):
        im = im.convert("RGB")
        s = STATS_SIDE / max(im.size)
        if s < 1:
            im = im.resize(
                (max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BOX
            )
        a = np.asarray(im, dtype=np.float64) / 255.0
    else:
        a = np.asarray(im, dtype=np.float64)
    return _stats(a.reshape(-1, 3))


def _stats(p: np.ndarray) -> Stats:
    """Mean and covariance of the rows of ``p`` ((N, 3) float64) from its sums of products:
    the same numbers as centring first (to 1e-14 for values in [0, 1]) in a third of the
    time. np.einsum, not BLAS: OpenBLAS runs these (N x 3) products on threads that then
    spin on the cores onnxruntime paints on (a folder of 16 photos took 0.5 s longer on 2
    cores, 2026-12-07), and einsum's fixed order of summation gives the same picture on
    any number of cores."""
    n = len(p)
    mu = np.einsum("ni->i", p) / n
    cov = (np.einsum("ni,nj->ij", p, p) - n * np.outer(mu, mu)) / max(1, n - 1)
    return mu, cov + np.eye(3) * 1e-5


def blend(stats: Sequence[Stats], weights: Sequence[float]) -> Stats:
    total = float(sum(weights))
    mu = sum(m * (w / total) for (m, _), w in zip(stats, weights, strict=True))
    cov = sum(c * (w / total) for (_, c), w in zip(stats, weights, strict=True))
    return mu, cov


# LAPACK's symmetric eigensolver through OpenBLAS is not reliably thread-safe: concurrent
# calls from a thread pool have failed with "Eigenvalues did not converge" or aborted
# (numpy issues 24512 and 32028); the studio runs several jobs at once, so the 3x3
# decompositions here take turns (microseconds each).
_LAPACK = threading.Lock()


def _sqrtm(m: np.ndarray, inverse: bool = False) -> np.ndarray:
    if not np.all(np.isfinite(m)):
        raise ValueError("colour statistics are not finite (the picture holds NaN or infinity)")
    with _LAPACK:
        vals, vecs = np.linalg.eigh(m)
    vals = np.clip(vals, 1e-10, None)
    return (vecs * (vals**-0.5 if inverse else vals**0.5)) @ vecs.T


def move_palette(out: np.ndarray, target: Stats, photo: Stats, alpha: float) -> np.ndarray:
    """``out`` ((H, W, 3) floats in [0, 1]) given the colour mean and covariance of
    alpha * target + (1 - alpha) * photo; clipped to [0, 1]."""
    mu_t = alpha * target[0] + (1 - alpha) * photo[0]
    cov_t = alpha * target[1] + (1 - alpha) * photo[1]
    p = out.reshape(-1, 3).astype(np.float64)
    mu_o, cov_o = _stats(p)
    a = _sqrtm(cov_t) @ _sqrtm(cov_o, inverse=True)
    moved = np.einsum("nj,ij->ni", p, a)  # not BLAS, as in _stats
    moved += mu_t - a @ mu_o  # (p - mu_o) A^T + mu_t, one pass fewer over the picture
    return np.clip(moved, 0.0, 1.0, out=moved).reshape(out.shape)


def to_picture(a: np.ndarray) -> Image.Image:
    """(H, W, 3) floats in [0, 1] -> RGB, rounded half to even (as artgen.core.images.to_pil)."""
    return Image.fromarray(np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


__all__ = ["blend", "colour_stats", "move_palette", "to_picture"]
