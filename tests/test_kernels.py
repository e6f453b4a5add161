"""The kernel mean matches a direct float64 computation; stacked rows and layouts change nothing."""

import math

import pytest
import torch

from safedenoiser.core.kernels import (FlatSet, gaussian_log_density, kernel_logits, kernel_mean,
                                       leave_one_out_log_ratios, softmax_weights, weighted_mean)


def _direct(x, y, scale, bandwidth, power):
    d = (x[:, None, :] - scale[:, None, None] * y[None]).norm(dim=-1)
    logits = -(d ** power) / bandwidth[:, None]
    return torch.softmax(logits, 1) @ y, torch.logsumexp(logits, 1)


@pytest.mark.parametrize("block", [4, 1024])
@pytest.mark.parametrize("concepts", [None, [0, 1, 1, 0, 2, 1, 0]])
def test_leave_one_out_log_ratios_match_direct_computation(block, concepts):
    gen = torch.Generator().manual_seed(2)
    unsafe = torch.randn(7, 3, generator=gen, dtype=torch.float64) + 1
    reference = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    h = 0.8
    labels = [0] * 7 if concepts is None else concepts
    ratios = leave_one_out_log_ratios(reference, unsafe, lambda sq: -sq / (2 * h * h), block,
                                      None if concepts is None else torch.tensor(concepts))
    assert ratios.shape == (max(labels) + 1, 10)
    for c in range(max(labels) + 1):
        own = [y for y, label in zip(unsafe, labels) if label == c]
        for k, r in enumerate(reference):  # the densities summed point by point, r_k left out of its own
            p_unsafe = sum(math.exp(-float((r - y).square().sum()) / (2 * h * h)) for y in own) / len(own)
            p_ref = sum(math.exp(-float((r - other).square().sum()) / (2 * h * h))
                        for j, other in enumerate(reference) if j != k) / 9
            assert float(ratios[c, k]) == pytest.approx(math.log(p_unsafe / p_ref), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("power", [1, 2])
def test_kernel_mean_matches_direct_computation(power):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64) * 2
    y = torch.randn(50, 12, generator=gen, dtype=torch.float64)
    scale = torch.rand(5, generator=gen, dtype=torch.float64) + 0.2
    bandwidth = torch.rand(5, generator=gen, dtype=torch.float64) * 3 + 0.1
    mean, log_mass = kernel_mean(x, FlatSet.of(y), scale=scale, bandwidth=bandwidth, power=power)
    ref_mean, ref_log = _direct(x, y, scale, bandwidth, power)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_mass, ref_log, rtol=1e-9, atol=1e-9)


def test_float32_kernel_mean_is_close_to_float64():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 256, generator=gen), torch.randn(300, 256, generator=gen)
    scale, bw = torch.full((4,), 0.9), torch.full((4,), 200.0)
    mean32, log32 = kernel_mean(x, FlatSet.of(y), scale=scale, bandwidth=bw)
    mean64, log64 = _direct(x.double(), y.double(), scale.double(), bw.double(), 2)
    torch.testing.assert_close(mean32.double(), mean64, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(log32.double(), log64, rtol=1e-4, atol=1e-3)


def test_far_points_do_not_underflow():
    """Log-sum-exp keeps the softmax defined when every kernel value underflows."""
    x = torch.full((2, 3), 1e3, dtype=torch.float32)
    y = torch.randn(10, 3)
    mean, log_mass = kernel_mean(x, FlatSet.of(y), scale=torch.ones(2), bandwidth=torch.full((2,), 1e-2))
    assert torch.isfinite(mean).all() and torch.isfinite(log_mass).all()
    nearest = y[torch.cdist(x, y).argmin(1)]  # the narrow kernel's mean is the nearest point, not 0
    torch.testing.assert_close(mean, nearest)


def test_gaussian_log_density_is_the_noised_empirical_density():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    alpha, var = torch.full((6,), 0.7, dtype=torch.float64), torch.full((6,), 0.51, dtype=torch.float64)
    logits = kernel_logits(x, FlatSet.of(y), scale=alpha, bandwidth=2 * var)
    log_p = gaussian_log_density(torch.logsumexp(logits, 1), set_size=20, dim=3, variance=var)
    comp = torch.distributions.MultivariateNormal(0.7 * y, covariance_matrix=0.51 * torch.eye(3, dtype=torch.float64))
    expected = torch.logsumexp(comp.log_prob(x[:, None, :]), 1) - math.log(20)
    torch.testing.assert_close(log_p, expected)


def test_no_batch_by_set_by_dimension_intermediate(monkeypatch):
    """Only products of size batch x set or batch x dimension are ever created."""
    batch, m, dim = 3, 64, 40
    seen = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        out = original(a, b)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    kernel_mean(torch.randn(batch, dim), FlatSet.of(torch.randn(m, dim)), scale=torch.ones(batch),
                bandwidth=torch.ones(batch))
    assert len(seen) == 2 and max(seen) <= max(batch * m, batch * dim) < batch * m * dim


def test_stacked_rows_equal_separate_calls():
    """Rows with their own scale and bandwidth share one product without changing each other's logits."""
    gen = torch.Generator().manual_seed(3)
    y = FlatSet.of(torch.randn(40, 16, generator=gen, dtype=torch.float64))
    x1, x2 = (torch.randn(3, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    s1, b1 = torch.full((3,), 0.6, dtype=torch.float64), torch.full((3,), 2.5, dtype=torch.float64)
    s2, b2 = torch.ones(3, dtype=torch.float64), torch.full((3,), 7.0, dtype=torch.float64)
    stacked = kernel_logits(torch.cat([x1, x2]), y, scale=torch.cat([s1, s2]), bandwidth=torch.cat([b1, b2]))
    torch.testing.assert_close(stacked[:3], kernel_logits(x1, y, scale=s1, bandwidth=b1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stacked[3:], kernel_logits(x2, y, scale=s2, bandwidth=b2), rtol=1e-12, atol=1e-12)


def test_negligible_weights_are_dropped_without_changing_the_mean():
    """Weights below eps^2 of the largest (whose products would be subnormal) are zero; the mean is exact."""
    y = FlatSet.of(torch.randn(30, 8, generator=torch.Generator().manual_seed(4)))
    logits = torch.zeros(2, 30)
    logits[:, 1:] = -40.0  # exp(-40) ~ 4e-18 < eps^2 ~ 1.4e-14 in float32
    weights = softmax_weights(logits)
    assert torch.equal(weights[:, 1:], torch.zeros(2, 29))
    torch.testing.assert_close(weights @ y.rows, y.rows[:1].expand(2, -1), rtol=0, atol=0)


@pytest.mark.parametrize("used", [3, 40])  # few points with weight (gathered) and most of them (dense)
def test_weighted_mean_equals_the_dense_product(used):
    gen = torch.Generator().manual_seed(5)
    y = FlatSet.of(torch.randn(40, 16, generator=gen, dtype=torch.float64))
    weights = torch.zeros(3, 40, dtype=torch.float64)
    weights[:, torch.randperm(40, generator=gen)[:used]] = torch.rand(3, used, generator=gen, dtype=torch.float64)
    shift = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(weighted_mean(weights, y), weights @ y.rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weighted_mean(weights, y, shift), shift + weights @ y.rows, rtol=1e-12, atol=1e-12)
