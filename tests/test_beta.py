"""Beta estimators against the exact beta of a Gaussian mixture."""

import pytest
import torch

from safedenoiser import NegationSet, SafeDenoiser, SafeDenoiserError
from safedenoiser.core.beta import (HybridBeta, KernelGateBeta, KernelRatioBeta, LabelledReferenceBeta,
                                   label_reference)
from safedenoiser.core.local import LocalPosterior
from safedenoiser.core.paper_rule import PaperRule, calibrate_tau
from safedenoiser.toy.spec import parse_spec

SPEC = {"dim": 2, "weights": [0.3, 0.4, 0.3], "means": [[-5, 0], [0, 4], [5, 0]], "covs": [0.5, 0.5, 0.5],
        "negate": [1], "negation_samples": 300, "seed": 2}


@pytest.fixture(scope="module")
def setting():
    spec = parse_spec(SPEC)
    gen = torch.Generator().manual_seed(0)
    reference = spec.mixture.sample(1500, gen)[0]
    negation = NegationSet.from_latents(spec.negation_set())
    return spec, negation, reference


def _levels(ratio):
    a = torch.tensor(1 / (1 + ratio ** 2) ** 0.5, dtype=torch.float64)
    return a, a * ratio


def test_ratio_prior_recovers_the_negated_mass(setting):
    spec, negation, reference = setting
    assert KernelRatioBeta(negation, reference).prior == pytest.approx(0.4, abs=0.06)


@pytest.mark.parametrize("ratio", [50.0, 5.0, 1.0])
def test_ratio_estimate_tracks_exact_beta_at_high_and_mid_noise(setting, ratio):
    spec, shared, reference = setting
    negation = NegationSet(shared.latents.double(), bandwidth=shared.bandwidth)  # a copy: the fixture is shared
    est = KernelRatioBeta(negation, reference)
    a, s = _levels(ratio)
    x0 = spec.mixture.sample(2000, torch.Generator().manual_seed(1))[0]
    x = a * x0 + s * torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    unsafe = negation.posterior(x, a, s, smoothing=negation.bandwidth)
    beta = est(x, a, s, spec.mixture.denoise(x, a, s), unsafe)
    exact = spec.mixture.beta(x, a, s, spec.negate)
    assert float((beta - exact).abs().mean()) < 0.05


def test_reference_labels_follow_the_negated_component(setting):
    spec, negation, reference = setting
    labels = label_reference(negation, reference, width=2.0)
    truth = spec.mixture.responsibilities(reference).argmax(1) == 1
    assert (labels == truth).double().mean() > 0.99
    assert torch.equal(label_reference(negation, reference, width=2.0, block=100), labels)  # blocks change nothing


def test_labelled_beta_is_the_noised_reference_posterior_of_its_labels_bounded_by_the_set():
    """By hand: beta = min((1/K) sum_k u_k N(x; a r_k, v), (1/M) sum_n N(x; a y_n, v)) / ((1/K) sum_k N(x; a r_k, v)),
    v = s^2 + a^2 h^2."""
    y = torch.tensor([[0.0, 4.0], [0.1, 4.1], [-0.1, 3.9]], dtype=torch.float64)
    negation = NegationSet(y, bandwidth=0.3)
    reference = torch.tensor([[0.0, 4.6], [-5.0, 0.0], [-5.1, 0.1], [5.0, 0.0], [5.1, 0.2]], dtype=torch.float64)
    est = LabelledReferenceBeta(negation, reference)
    assert est.negated_reference.tolist() == [True, False, False, False, False]
    x = torch.tensor([[0.0, 3.0], [2.0, 1.0], [-4.0, 0.5], [0.0, 5.5]], dtype=torch.float64)
    bound_acted = False
    for ratio in (0.1, 1.0, 10.0):
        a, s = _levels(ratio)
        v = s ** 2 + (a * 0.3) ** 2
        k = torch.exp(-torch.cdist(x, a * reference).square() / (2 * v))
        k_set = torch.exp(-torch.cdist(x, a * y).square() / (2 * v))
        labelled, bound = k[:, 0] / 5, k_set.mean(1)
        # the estimator keeps the reference in float32, as every set
        expected = torch.minimum(labelled, bound) / k.mean(1)
        torch.testing.assert_close(est(x, a, s, x, None), expected, rtol=1e-5, atol=1e-9)
        # the posterior given by SafeDenoiser carries the same density of the set
        unsafe = negation.posterior(x, a.expand(4), s.expand(4), smoothing=0.3)
        torch.testing.assert_close(est(x, a, s, x, unsafe), est(x, a, s, x, None))
        bound_acted |= bool((bound < labelled).any())
    assert bound_acted  # x = (0, 5.5) is nearer the labelled sample than the set


@pytest.mark.parametrize("ratio", [50.0, 1.0, 0.1])
def test_labelled_beta_tracks_exact_beta(setting, ratio):
    spec, negation, reference = setting
    est = LabelledReferenceBeta(negation, reference)
    a, s = _levels(ratio)
    x0 = spec.mixture.sample(2000, torch.Generator().manual_seed(1))[0]
    x = a * x0 + s * torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = spec.mixture.beta(x, a, s, spec.negate)
    assert float((est(x, a, s, x, None) - exact).abs().mean()) < 0.01


def test_labelled_beta_refuses_a_reference_without_both_kinds(setting):
    spec, negation, reference = setting
    kept = reference[spec.mixture.responsibilities(reference).argmax(1) != 1]
    with pytest.raises(SafeDenoiserError, match="0 of .* reference samples lie in the negation set's region"):
        LabelledReferenceBeta(negation, kept)
    with pytest.raises(SafeDenoiserError, match="shape"):
        LabelledReferenceBeta(negation, reference[:, :1])


def test_gate_is_one_on_the_set_and_zero_far_away(setting):
    spec, negation, _ = setting
    gate = KernelGateBeta(negation)
    inside = negation.latents[:50].double()
    far = inside + 100
    one = torch.tensor(1.0, dtype=torch.float64)
    assert float(gate(inside, one, one, inside, None).median()) > 0.99
    assert float(gate(far, one, one, far, None).max()) < 1e-6


def test_hybrid_is_the_larger_of_ratio_and_gate(setting):
    spec, negation, reference = setting
    hybrid = HybridBeta(negation, reference)
    a, s = _levels(0.5)
    x = spec.mixture.sample(200, torch.Generator().manual_seed(3))[0] * a
    d = spec.mixture.denoise(x, a, s)
    unsafe = negation.posterior(x, a, s, smoothing=negation.bandwidth)
    expected = torch.maximum(hybrid.ratio(x, a, s, d, unsafe), hybrid.gate(x, a, s, d, unsafe))
    torch.testing.assert_close(hybrid(x, a, s, d, unsafe), expected)


def test_default_estimator_follows_the_reference(setting):
    _, negation, reference = setting
    assert isinstance(SafeDenoiser(negation).beta, KernelGateBeta)
    assert isinstance(SafeDenoiser(negation, reference=reference).beta, LocalPosterior)
    with_ref = NegationSet(negation.latents, reference=reference.float())
    assert isinstance(SafeDenoiser(with_ref).beta, LocalPosterior)
    assert isinstance(SafeDenoiser(with_ref, beta="hybrid").beta, HybridBeta)
    assert isinstance(SafeDenoiser(with_ref, beta="labelled").beta, LabelledReferenceBeta)
    with pytest.raises(SafeDenoiserError, match="needs reference samples"):
        SafeDenoiser(negation, beta="ratio")


def test_repr_names_the_estimator_and_its_settings(setting):
    _, negation, reference = setting
    assert repr(SafeDenoiser(negation, reference=reference, latch=False)) == (
        f"SafeDenoiser({negation!r}, beta=LocalPosterior, latch=False, features='auto', min_weight=0.0001, "
        "max_weight=20)")
    paper = SafeDenoiser(negation, h=1.5, s=0.3, window=2.0, tau=0.25)
    assert repr(paper) == f"SafeDenoiser({negation!r}, paper rule h=1.5 s=0.3 window=2 tau=0.25)"


def test_paper_rule_matches_the_authors_formula():
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(40, 16, generator=gen)
    neg = NegationSet.from_latents(y)
    rule = PaperRule(neg, h=1.5, s=0.3, window=2.0, tau=0.0)
    x0 = y[:3] + 0.1 * torch.randn(3, 16, generator=gen)
    ones = torch.ones(3)
    out, mass, acted = rule(x0, ones * 0.3, ones * 0.95, x0)  # sigma / alpha = 3.2 >= window
    k = torch.exp(-(x0[:, None] - y[None]).norm(dim=-1) / (2 * 1.5 ** 2))
    m = k.sum(1)
    d_neg = (k @ y) / (m[:, None] + 1e-8)
    torch.testing.assert_close(mass, m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, x0 - 0.3 * d_neg, rtol=1e-4, atol=1e-5)
    assert acted.all()


def test_paper_rule_acts_only_inside_the_window_and_above_tau():
    y = torch.randn(30, 8, generator=torch.Generator().manual_seed(5))
    neg = NegationSet.from_latents(y)
    rule = PaperRule(neg, h=1.0, s=0.5, window=4.67)
    assert rule.tau == pytest.approx(calibrate_tau(neg, 1.0, 0.05))
    x0 = torch.cat([y[:2], y[:2] + 50])
    ones = torch.ones(4)
    _, _, acted_late = rule(x0, ones, ones * 0.5, x0)  # sigma / alpha = 0.5 < 4.67: outside the window
    _, _, acted_early = rule(x0, ones * 0.1, ones * 0.995, x0)
    assert not acted_late.any()
    assert acted_early.tolist() == [True, True, False, False]


def test_weight_cap_defaults_to_the_estimators_own(setting):
    _, negation, reference = setting
    assert SafeDenoiser(negation).max_weight == KernelGateBeta.max_weight == 100.0
    assert SafeDenoiser(negation, beta="hybrid", reference=reference).max_weight == 20.0
    assert SafeDenoiser(negation, max_weight=5.0).max_weight == 5.0


@pytest.mark.parametrize("size", [1000, 6000])
def test_thresholds_keep_their_quantile_at_any_set_size(size):
    """Sets above 2,048 points calibrate on a subset, scaled to the whole set that the gates read: a
    fresh point of the set's own kind falls below either threshold 5% of the time at any size."""
    gen = torch.Generator().manual_seed(6)
    neg = NegationSet(torch.randn(size, 4, generator=gen), bandwidth=0.5)
    fresh = torch.randn(4000, 4, generator=gen).double()
    below_gate = (neg.clean_log_mass(fresh) < KernelGateBeta(neg).tau).double().mean()
    mass = torch.exp(-torch.cdist(fresh, neg.latents.double()) / (2 * 0.5 ** 2)).sum(1)
    below_paper = (mass < calibrate_tau(neg, 0.5, 0.05)).double().mean()
    assert 0.03 < float(below_gate) < 0.07 and 0.03 < float(below_paper) < 0.07


def test_a_single_image_is_refused_where_a_threshold_is_calibrated_from_pairs():
    gen = torch.Generator().manual_seed(7)
    neg = NegationSet.from_latents(torch.randn(1, 8, generator=gen))
    way_out = r"has 1: give at least 2 images, or reference images .*reference=.*--reference-images"
    with pytest.raises(SafeDenoiserError, match=way_out):
        SafeDenoiser(neg)
    with pytest.raises(SafeDenoiserError, match="has 1: give at least 2 images, or tau="):
        SafeDenoiser(neg, preset="sd14-memorization")
    assert SafeDenoiser(neg, preset="sd14-memorization", tau=0.5).paper.tau == 0.5
    local = SafeDenoiser(neg, reference=torch.randn(50, 8, generator=gen))
    x0 = neg.latents.clone()
    assert local.correct(x0, 1.0, 0.1, x0).acted.all()  # the one image still repels


def test_an_estimator_objects_smoothing_is_the_one_its_unsafe_density_gets(setting):
    spec, negation, reference = setting
    narrow = 0.5 * negation.bandwidth
    ratio = KernelRatioBeta(negation, reference, smoothing=narrow)
    safe = SafeDenoiser(negation, beta=ratio)
    assert safe.smoothing == narrow
    a, s = _levels(0.5)
    x = spec.mixture.sample(50, torch.Generator().manual_seed(8))[0] * a
    d = spec.mixture.denoise(x, a, s)
    expected = ratio(x, a, s, d, negation.posterior(x, a, s, smoothing=narrow))
    torch.testing.assert_close(safe.correct(x, a, s, d).beta, expected)
    with pytest.raises(SafeDenoiserError, match="differs from the estimator's own"):
        SafeDenoiser(negation, beta=ratio, smoothing=negation.bandwidth)


@pytest.mark.parametrize("extra", [{"beta": "local"}, {"reference": "set"}, {"max_weight": 5.0}, {"smoothing": 1.0}])
def test_the_paper_rule_refuses_the_identitys_settings(setting, extra):
    _, negation, reference = setting
    extra = {"reference": reference} if extra == {"reference": "set"} else extra
    with pytest.raises(SafeDenoiserError, match=f"{next(iter(extra))} set the identity's estimator"):
        SafeDenoiser(negation, preset="sd14-nudity", **extra)


@pytest.mark.parametrize("beta", ["local", "labelled", "ratio", "hybrid"])
def test_every_estimator_checks_its_reference_the_same_way(setting, beta):
    _, negation, reference = setting
    bad = reference.clone()
    bad[3] = float("nan")  # one NaN turned local's beta into NaN everywhere: nothing was ever corrected
    with pytest.raises(SafeDenoiserError, match="the reference set holds NaN"):
        SafeDenoiser(negation, beta=beta, reference=bad)
    with pytest.raises(SafeDenoiserError, match="reference must be a tensor"):
        SafeDenoiser(negation, beta=beta, reference=list(reference))
    as_set = SafeDenoiser(negation, beta=beta, reference=NegationSet.from_latents(reference))
    x = reference[:20]
    one = torch.tensor(1.0, dtype=torch.float64)
    as_tensor = SafeDenoiser(negation, beta=beta, reference=reference)
    torch.testing.assert_close(as_set.correct(x, one, 0.5 * one, x).beta, as_tensor.correct(x, one, 0.5 * one, x).beta)
