"""Colour preservation for style transfer (pure functions on (1, 3, H, W) tensors in [0, 1]).

Gatys, Bethge, Hertzmann & Shechtman, "Preserving Color in Neural Artistic Style
Transfer", arXiv:1606.05897 (2016), offers two methods:
- luminance-only transfer: stylise the luminance channel, keep the content's
  colour channels (YIQ), after matching the style's luminance mean and
  standard deviation to the content's;
- colour histogram matching: recolour the style image so that its mean and
  covariance match the content's, with the symmetric matrix square root
  ("image analogies" variant, which the paper found to look best).
"""

from __future__ import annotations

import torch

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YIQ.to(x), x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YIQ).to(x), x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) RGB -> (1, 3, H, W) grey (Y replicated), for luminance-only transfer."""
    y = rgb_to_yiq(x)[:, :1]
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Shift and scale the style's luminance to the content's mean and std."""
    s_mu, s_sd = style_y.mean(), style_y.std().clamp_min(1e-6)
    c_mu, c_sd = content_y.mean(), content_y.std()
    return ((style_y - s_mu) * (c_sd / s_sd) + c_mu).clamp(0, 1)


def combine_luminance(stylised_y: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Take Y from the stylised grey image and I, Q from the content."""
    yiq = rgb_to_yiq(content)
    yiq = torch.cat([stylised_y[:, :1], yiq[:, 1:]], dim=1)
    return yiq_to_rgb(yiq).clamp(0, 1)


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = x.reshape(3, -1).double()
    mu = p.mean(dim=1, keepdim=True)
    d = p - mu
    cov = d @ d.T / max(1, d.shape[1] - 1) + torch.eye(3, dtype=p.dtype) * 1e-5
    return mu, cov


def _sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    vals = vals.clamp_min(1e-10)
    vals = vals.rsqrt() if inverse else vals.sqrt()
    return vecs @ torch.diag(vals) @ vecs.T


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Recolour ``style`` so its colour mean and covariance equal ``content``'s."""
    s_mu, s_cov = _mean_cov(style)
    c_mu, c_cov = _mean_cov(content)
    a = _sqrtm(c_cov) @ _sqrtm(s_cov, inverse=True)
    p = style.reshape(3, -1).double()
    out = a @ (p - s_mu) + c_mu
    return out.reshape(style.shape).to(style.dtype).clamp(0, 1)
