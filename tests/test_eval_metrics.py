"""Every evaluation metric against hand-computed cases."""

import math

import pytest
import torch

from safedenoiser.eval.metrics import (accuracy, class_histogram, cut, frechet_distance, near_copies, near_copy_share,
                                       nearest_distance, tv_distance, unsafe_rate)


def test_unsafe_rate_is_the_share_of_flagged_samples():
    assert unsafe_rate(torch.tensor([True, False, False, True])) == 0.5
    assert unsafe_rate(torch.tensor([], dtype=torch.bool)) == 0.0


def test_accuracy_is_the_share_of_samples_on_the_requested_class():
    assert accuracy(torch.tensor([1, 2, 3, 3]), torch.tensor([1, 2, 0, 0])) == 0.5
    with pytest.raises(ValueError):
        accuracy(torch.tensor([1, 2]), torch.tensor([1]))


def test_class_histogram_counts_proportions_including_empty_classes():
    hist = class_histogram(torch.tensor([0, 0, 1, 3]), 4)
    assert hist.tolist() == [0.5, 0.25, 0.0, 0.25]


def test_tv_distance_is_half_the_l1_distance():
    assert tv_distance(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])) == pytest.approx(0.5)


def test_tv_distance_excluding_the_negated_class_renormalises_the_others():
    # class 0 drops from 50% to 10%, the others keep their 1:1 ratio: distance 0
    p, q = torch.tensor([0.1, 0.45, 0.45]), torch.tensor([0.5, 0.25, 0.25])
    assert tv_distance(p, q, exclude=0) == pytest.approx(0.0, abs=1e-12)
    # others 0.6:0.3 vs 0.25:0.25 -> 2/3:1/3 vs 1/2:1/2 -> TV 1/6
    assert tv_distance(torch.tensor([0.1, 0.6, 0.3]), q, exclude=0) == pytest.approx(1 / 6)


def _cross(c1: float, c2: float, shift=(0.0, 0.0)) -> torch.Tensor:
    """Four points with mean ``shift`` and unbiased covariance diag(2 c1^2 / 3, 2 c2^2 / 3)."""
    pts = torch.tensor([[c1, 0.0], [-c1, 0.0], [0.0, c2], [0.0, -c2]], dtype=torch.float64)
    return pts + torch.tensor(shift, dtype=torch.float64)


def test_frechet_distance_of_shifted_scaled_gaussians_matches_the_formula():
    # a: mean 0, cov diag(2/3, 2/3); b = 2a + (3, 4): mean (3, 4), cov diag(8/3, 8/3)
    # FD = 25 + sum_d (sqrt(2/3) - sqrt(8/3))^2 = 25 + 2 * 2/3
    a, b = _cross(1, 1), _cross(2, 2, (3, 4))
    assert frechet_distance(a, b) == pytest.approx(25 + 4 / 3, rel=1e-9)


def test_frechet_distance_of_swapped_covariances():
    # cov diag(4, 1) against diag(1, 4): tr = 5 + 5 - 2 tr(diag(2, 2)) = 2
    a, b = _cross(math.sqrt(6), math.sqrt(1.5)), _cross(math.sqrt(1.5), math.sqrt(6))
    assert frechet_distance(a, b) == pytest.approx(2.0, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_refuses_mismatched_features():
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


def test_near_copy_share_uses_rms_distance_to_the_nearest_protected_image():
    protected = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])  # D = 4
    x = torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.7), torch.full((1, 2, 2), 0.5)])
    assert nearest_distance(x, protected).tolist() == pytest.approx([0.1, 0.3, 0.5])
    assert near_copy_share(x, protected, threshold=0.2) == pytest.approx(1 / 3)
    flags, index = near_copies(x, (protected, 0.4))
    assert flags.tolist() == [True, True, False] and index[:2].tolist() == [0, 1]  # 0.5 is equally near both


def test_near_copies_of_no_samples_are_empty():
    flags, index = near_copies(torch.zeros(0, 1, 2, 2), (torch.ones(3, 1, 2, 2), 0.4))
    assert flags.shape == index.shape == (0,)


def test_cut_is_the_relative_reduction():
    assert cut(0.4, 0.02) == pytest.approx(0.95)
    assert cut(0.0, 0.0) == 0.0
