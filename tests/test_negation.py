"""NegationSet: construction, refusals, persistence and the (smoothed) unsafe posterior."""

import math

import pytest
import torch
from safetensors.torch import save_file

from safedenoiser import NegationSet, SafeDenoiserError


def test_empty_set_is_refused():
    with pytest.raises(SafeDenoiserError, match="empty"):
        NegationSet.from_latents(torch.zeros(0, 4, 8, 8))


def test_nan_values_are_refused():
    latents = torch.randn(5, 4, 2, 2)
    latents[2, 0, 0, 0] = float("nan")
    with pytest.raises(SafeDenoiserError, match="NaN or infinite values in 1 of 5"):
        NegationSet.from_latents(latents)


def test_save_and_load_round_trip(tmp_path):
    neg = NegationSet.from_latents(torch.randn(7, 4, 3, 3), encoder="abc123", scaling_factor="0.18215")
    neg.save(tmp_path / "set.safetensors")
    back = NegationSet.load(tmp_path / "set.safetensors")
    assert torch.equal(back.latents, neg.latents)
    assert back.metadata == {"encoder": "abc123", "scaling_factor": "0.18215"}
    assert back.bandwidth == pytest.approx(neg.bandwidth)
    assert back.fingerprint == neg.fingerprint


def test_repr_summarises_the_set_without_its_tensors():
    neg = NegationSet(torch.randn(6, 2, 2), bandwidth=0.25, reference=torch.randn(9, 2, 2))
    assert repr(neg) == ("NegationSet(6 samples of shape [2, 2], reference 9, bandwidth 0.25, "
                         f"fingerprint {neg.fingerprint})")
    assert "reference none" in repr(NegationSet.from_latents(torch.randn(3, 4)))


def test_sets_compare_and_hash_by_identity_like_modules():
    neg = NegationSet.from_latents(torch.randn(3, 4))
    assert neg == neg and neg != NegationSet(neg.latents.clone())  # no elementwise tensor comparison to raise
    assert len({neg, neg}) == 1


def test_loading_a_foreign_file_gives_a_clear_error(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SafeDenoiserError, match="not a negation set"):
        NegationSet.load(tmp_path / "x.safetensors")
    save_file({"weights": torch.zeros(2)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(SafeDenoiserError, match="not a negation set"):
        NegationSet.load(tmp_path / "y.safetensors")
    with pytest.raises(SafeDenoiserError, match="does not exist"):
        NegationSet.load(tmp_path / "missing.safetensors")
    with pytest.raises(SafeDenoiserError, match="is a folder"):
        NegationSet.load(tmp_path)


def test_a_union_numbers_each_sets_concepts_after_the_previous_ones_and_keeps_them_on_disk(tmp_path):
    one = NegationSet.from_latents(torch.randn(3, 4, 2, 2), encoder="vae-a", image_size="16",
                                   sources_sha256='["a", "b", "c"]')
    two = NegationSet.union([NegationSet.from_latents(torch.randn(2, 4, 2, 2), encoder="vae-a",
                                                      sources_sha256='["d", "e"]'),
                             NegationSet.from_latents(torch.randn(1, 4, 2, 2), sources_sha256='["f"]')])
    union = NegationSet.union([one, two], reference=torch.randn(5, 4, 2, 2))
    assert union.concepts.tolist() == [0, 0, 0, 1, 1, 2] and union.concept_count == 3
    assert torch.equal(union.latents, torch.cat([one.latents, two.latents]))
    assert union.metadata == {"encoder": "vae-a", "sources_sha256": '["a", "b", "c", "d", "e", "f"]'}
    assert union.reference.shape == (5, 4, 2, 2)
    assert "sources_sha256" not in NegationSet.union([one, NegationSet.from_latents(torch.randn(1, 4, 2, 2))]).metadata
    assert "6 samples of shape [4, 2, 2], 3 concepts, reference 5" in repr(union)
    union.save(tmp_path / "set.safetensors")
    back = NegationSet.load(tmp_path / "set.safetensors")
    assert torch.equal(back.concepts, union.concepts) and back.fingerprint == union.fingerprint
    # the same examples as one concept are another set: runs tell them apart
    assert NegationSet(union.latents).fingerprint != union.fingerprint


@pytest.mark.parametrize("sets, message", [
    ([NegationSet.from_latents(torch.randn(2, 4))], "at least 2 negation sets"),
    ([NegationSet.from_latents(torch.randn(2, 4)), NegationSet.from_latents(torch.randn(2, 5))], "different shapes"),
    ([NegationSet.from_latents(torch.randn(2, 4), encoder="vae-a"),
      NegationSet.from_latents(torch.randn(2, 4), encoder="vae-b")], "different VAEs"),
])
def test_a_union_refuses_sets_that_do_not_share_a_space(sets, message):
    with pytest.raises(SafeDenoiserError, match=message):
        NegationSet.union(sets)


@pytest.mark.parametrize("concepts, message", [
    (torch.tensor([0, 1]), "one integer per example"),
    (torch.tensor([0.0, 1.0, 1.0]), "one integer per example"),
    (torch.tensor([0, 2, 2]), "0..n-1"),
    (torch.tensor([-1, 0, 0]), "0..n-1"),
])
def test_concepts_that_do_not_number_the_examples_are_refused(concepts, message):
    with pytest.raises(SafeDenoiserError, match=message):
        NegationSet(torch.randn(3, 4), concepts=concepts)


def test_shape_and_encoder_mismatch_are_refused():
    neg = NegationSet.from_latents(torch.randn(3, 4, 8, 8), encoder="vae-a")
    with pytest.raises(SafeDenoiserError, match="shape"):
        neg.check_compatible((4, 16, 16))
    with pytest.raises(SafeDenoiserError, match="different VAE"):
        neg.check_compatible((4, 8, 8), fingerprint="vae-b")
    neg.check_compatible((4, 8, 8), fingerprint="vae-a")


def test_posterior_is_the_empirical_posterior_mean():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    neg = NegationSet.from_latents(y)
    neg.latents = y  # keep float64 for an exact comparison
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    a, s = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    post = neg.posterior(x, a, s)
    w = torch.softmax(-((x[:, None] - a * y[None]) ** 2).sum(-1) / (2 * s * s), 1)
    torch.testing.assert_close(post.mean, w @ y)


def test_smoothed_posterior_matches_the_kernel_density_posterior():
    """With smoothing h, D_unsafe is E[x0 | x_t] for p_unsafe = mean_n N(y_n, h^2 I)."""
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    neg = NegationSet(y, bandwidth=0.3)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    a, s, h = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), 0.3
    post = neg.posterior(x, a, s, smoothing=h)
    var = s * s + a * a * h * h
    w = torch.softmax(-((x[:, None] - a * y[None]) ** 2).sum(-1) / (2 * var), 1)
    per_component = y[None] + (a * h * h / var) * (x[:, None] - a * y[None])  # Gaussian posterior mean
    torch.testing.assert_close(post.mean, (w[..., None] * per_component).sum(1))
    expected_log = torch.logsumexp(-((x[:, None] - a * y[None]) ** 2).sum(-1) / (2 * var), 1) \
        - math.log(12) - math.log(2 * math.pi * var)
    torch.testing.assert_close(post.log_density, expected_log)


def test_bandwidth_is_calibrated_from_the_set():
    gen = torch.Generator().manual_seed(2)
    wide = NegationSet.from_latents(torch.randn(200, 2, generator=gen) * 3)
    narrow = NegationSet.from_latents(torch.randn(200, 2, generator=gen) * 0.3)
    assert 5 < wide.bandwidth / narrow.bandwidth < 20


def test_the_bandwidth_maximises_the_leave_one_out_likelihood_on_its_grid():
    from safedenoiser.core.bandwidth import distances_to_others, loo_log_likelihood

    y = torch.randn(300, 3, generator=torch.Generator().manual_seed(3)).double()
    h = NegationSet.from_latents(y).bandwidth
    step = 10 ** (2.5 / 23)  # the ratio between neighbouring grid points
    distances = distances_to_others(y, "the bandwidth", "bandwidth=")
    scores = loo_log_likelihood(distances, 3, torch.tensor([h / step, h, h * step], dtype=torch.float64)).mean(1)
    assert scores[1] >= scores[0] and scores[1] >= scores[2]


def test_reference_samples_travel_with_the_set(tmp_path):
    neg = NegationSet(torch.randn(6, 2, 2), reference=torch.randn(9, 2, 2))
    neg.save(tmp_path / "set.safetensors")
    back = NegationSet.load(tmp_path / "set.safetensors")
    assert torch.equal(back.reference, neg.reference)
    with pytest.raises(SafeDenoiserError, match="reference samples have shape"):
        NegationSet(torch.randn(6, 2, 2), reference=torch.randn(9, 4))


def test_posterior_given_x0_hat_adds_its_clean_mass_from_the_same_pass():
    gen = torch.Generator().manual_seed(6)
    neg = NegationSet(torch.randn(25, 4, generator=gen, dtype=torch.float64))
    x, d = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)
    a, s = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    alone, stacked = neg.posterior(x, a, s, smoothing=0.2), neg.posterior(x, a, s, smoothing=0.2, x0_hat=d)
    assert alone.clean_log_mass is None
    torch.testing.assert_close(stacked.clean_log_mass, neg.clean_log_mass(d), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stacked.log_density, alone.log_density, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stacked.mean, alone.mean, rtol=1e-12, atol=1e-12)
    expected = torch.logsumexp(-torch.cdist(d, neg.latents).square() / (2 * neg.bandwidth ** 2), 1)
    torch.testing.assert_close(neg.clean_log_mass(d), expected)
