"""The chunked kernel mean matches a direct float64 computation, including across chunks."""

import math

import pytest
import torch

from safedenoiser.core.kernels import gaussian_log_density, kernel_mean


def _direct(x, y, scale, bandwidth, power):
    d = (x[:, None, :] - scale[:, None, None] * y[None]).norm(dim=-1)
    logits = -(d ** power) / bandwidth[:, None]
    return torch.softmax(logits, 1) @ y, torch.logsumexp(logits, 1)


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_kernel_mean_matches_direct_computation(power, chunk_size):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64) * 2
    y = torch.randn(50, 12, generator=gen, dtype=torch.float64)  # 50 > 7: several chunks
    scale = torch.rand(5, generator=gen, dtype=torch.float64) + 0.2
    bandwidth = torch.rand(5, generator=gen, dtype=torch.float64) * 3 + 0.1
    mean, log_mass = kernel_mean(x, y, scale=scale, bandwidth=bandwidth, power=power, chunk_size=chunk_size)
    ref_mean, ref_log = _direct(x, y, scale, bandwidth, power)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_mass, ref_log, rtol=1e-9, atol=1e-9)


def test_float32_kernel_mean_is_close_to_float64():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 256, generator=gen), torch.randn(300, 256, generator=gen)
    scale, bw = torch.full((4,), 0.9), torch.full((4,), 200.0)
    mean32, log32 = kernel_mean(x, y, scale=scale, bandwidth=bw, chunk_size=64)
    mean64, log64 = _direct(x.double(), y.double(), scale.double(), bw.double(), 2)
    torch.testing.assert_close(mean32.double(), mean64, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(log32.double(), log64, rtol=1e-4, atol=1e-3)


def test_far_points_do_not_underflow():
    """Log-sum-exp keeps the softmax defined when every kernel value underflows."""
    x = torch.full((2, 3), 1e3, dtype=torch.float32)
    y = torch.randn(10, 3)
    mean, log_mass = kernel_mean(x, y, scale=torch.ones(2), bandwidth=torch.full((2,), 1e-2))
    assert torch.isfinite(mean).all() and torch.isfinite(log_mass).all()


def test_gaussian_log_density_is_the_noised_empirical_density():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    alpha, var = torch.full((6,), 0.7, dtype=torch.float64), torch.full((6,), 0.51, dtype=torch.float64)
    _, log_p = gaussian_log_density(x, y, alpha=alpha, variance=var)
    comp = torch.distributions.MultivariateNormal(0.7 * y, covariance_matrix=0.51 * torch.eye(3, dtype=torch.float64))
    expected = torch.logsumexp(comp.log_prob(x[:, None, :]), 1) - math.log(20)
    torch.testing.assert_close(log_p, expected)


def test_memory_stays_batch_by_chunk(monkeypatch):
    """No intermediate of batch x set x dimension elements is ever created."""
    batch, m, dim, chunk = 3, 64, 40, 16
    seen = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        out = original(a, b)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    kernel_mean(torch.randn(batch, dim), torch.randn(m, dim), scale=torch.ones(batch),
                bandwidth=torch.ones(batch), chunk_size=chunk)
    assert max(seen) <= max(batch * chunk, batch * dim) < batch * m * dim
