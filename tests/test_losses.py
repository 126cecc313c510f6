import pytest
import torch

from artgen.core.color import combine_luminance, luminance, match_histogram, rgb_to_yiq
from artgen.core.losses import blend_grams, gram, scaled_mse, tv_loss


def test_gram_is_symmetric_normalised_and_fp32():
    f = torch.randn(2, 4, 5, 6, dtype=torch.bfloat16)
    g = gram(f)
    assert g.shape == (2, 4, 4) and g.dtype == torch.float32
    assert torch.allclose(g, g.transpose(1, 2))
    ones = torch.ones(1, 3, 8, 8)
    assert torch.allclose(gram(ones), torch.ones(1, 3, 3))  # divided by H*W


def test_scaled_mse_is_zero_at_target_and_scale_free():
    t = torch.randn(10)
    assert scaled_mse(t, t) == 0
    d = torch.randn(10)
    # Scaling both by k scales the loss by k (not k^2): layers of any magnitude weigh alike.
    assert torch.allclose(scaled_mse(3 * (t + d), 3 * t), 3 * scaled_mse(t + d, t))


def test_tv_loss_zero_on_flat_positive_on_noise():
    assert tv_loss(torch.full((1, 3, 8, 8), 0.5)) == 0
    assert tv_loss(torch.rand(1, 3, 8, 8)) > 0.05


def test_blend_grams_weighted_mean():
    a, b = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    assert torch.allclose(blend_grams([a, b], [0.7, 0.3]), torch.full((1, 2, 2), 0.3))
    assert torch.allclose(blend_grams([a, b], [7, 3]), torch.full((1, 2, 2), 0.3))


def test_histogram_matching_takes_content_mean_and_covariance():
    torch.manual_seed(0)
    style = torch.rand(1, 3, 32, 32) * torch.tensor([1.0, 0.2, 0.2]).view(1, 3, 1, 1)  # reddish
    content = (
        torch.rand(1, 3, 32, 32) * 0.3 + torch.tensor([0.1, 0.3, 0.6]).view(1, 3, 1, 1)
    ).clamp(0, 1)
    out = match_histogram(style, content)
    assert torch.allclose(out.mean(dim=(2, 3)), content.mean(dim=(2, 3)), atol=0.02)
    cov = lambda x: torch.cov(x.reshape(3, -1))  # noqa: E731
    assert torch.allclose(cov(out), cov(content), atol=0.01)


def test_luminance_transfer_keeps_content_chroma():
    content = torch.rand(1, 3, 16, 16) * 0.2 + 0.4
    grey = luminance(content) + 0.05 * torch.randn(1, 1, 16, 16)  # in gamut: no clamping
    out = combine_luminance(grey, content)
    assert torch.allclose(rgb_to_yiq(out)[:, 1:], rgb_to_yiq(content)[:, 1:], atol=1e-4)
    assert torch.allclose(rgb_to_yiq(out)[:, :1], grey[:, :1], atol=1e-4)


def test_covariance_is_the_centred_gram_and_its_loss_is_relative():
    from artgen.core.losses import covariance, covariance_loss

    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 5, 7, generator=g) * 2 + 1
    x = f.reshape(2, 3, 35)
    x = x - x.mean(2, keepdim=True)
    assert torch.allclose(covariance(f), x @ x.transpose(1, 2) / 35, atol=1e-5)
    # per channel the diagonal is the variance (population, as mean_std's)
    assert torch.allclose(covariance(f).diagonal(dim1=1, dim2=2), f.var(dim=(2, 3), correction=0))
    t = covariance(f)
    assert float(covariance_loss(f, t)) == pytest.approx(0.0, abs=1e-10)
    assert float(covariance_loss(f + 3.0, t)) == pytest.approx(0.0, abs=1e-6)  # means do not count
    # twice the features: four times the covariance, a relative error of 3^2 = 9
    assert float(covariance_loss(2 * f, t)) == pytest.approx(9.0, rel=1e-5)
    assert float(covariance_loss(torch.zeros_like(f), t)) == pytest.approx(1.0)
    # weighted: all-ones weights give the same; a 0/1 mask the covariance of its pixels
    assert torch.allclose(covariance(f, torch.ones(1, 1, 5, 7)), t, atol=1e-5)
    m = torch.zeros(1, 1, 5, 7)
    m[..., :, :3] = 1
    assert torch.allclose(covariance(f, m), covariance(f[..., :3]), atol=1e-5)
    assert covariance(f, m, torch.float64).dtype == torch.float64
