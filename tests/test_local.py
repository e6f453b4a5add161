"""The local x0-space posterior (`LocalPosterior`) and the bounded form of the identity."""

import math

import pytest
import torch

from safedenoiser import LocalPosterior, NegationSet, SafeDenoiser, SafeDenoiserError
from safedenoiser.core.beta import label_reference
from safedenoiser.core.local import DEFAULT_WIDTH
from safedenoiser.core.safe_denoiser import held_safe_denoise, local_safe_denoise, safe_denoise

DIM = 64


def _cluster(n: int, centre: float, gen: torch.Generator) -> torch.Tensor:
    return centre + torch.randn(n, DIM, dtype=torch.float64, generator=gen)


@pytest.fixture(scope="module")
def sets():
    """Unsafe images around +3, safe ones around -3 (64-d); the reference holds 30% unsafe ones."""
    gen = torch.Generator().manual_seed(0)
    negation = NegationSet.from_latents(_cluster(200, 3.0, gen))
    reference = torch.cat([_cluster(90, 3.0, gen), _cluster(210, -3.0, gen)])
    return negation, reference


def test_reference_is_split_into_negated_and_safe_samples(sets):
    negation, reference = sets
    local = LocalPosterior(negation, reference)
    assert local.prior == pytest.approx(0.3, abs=0.03)
    assert len(local.safe) == pytest.approx(210, abs=9) and float(local.safe.mean()) < -2.5
    labelled = local.negated_reference  # the first 90 reference samples are the unsafe ones
    assert labelled[:90].double().mean() > 0.9 and labelled[90:].double().mean() < 0.05
    assert int((~labelled).sum()) == len(local.safe)


def test_a_larger_label_ratio_counts_fewer_reference_samples_as_negated(sets):
    negation, reference = sets
    priors = [LocalPosterior(negation, _with_border(reference), label_ratio=r).prior for r in (0.3, 1.0, 3.0)]
    assert priors[0] > priors[1] > priors[2] > 0.15


def _direct_ratio(negation: NegationSet, reference: torch.Tensor, k: int,
                  width: float = DEFAULT_WIDTH) -> torch.Tensor:
    """The set's density over the reference's own at each reference sample (itself left out), both with the
    kernel of width ``width`` x the distance to the ``k``-th nearest point of both sets."""
    y = negation.latents.reshape(len(negation), -1).double()
    sq = torch.cdist(reference, torch.cat([y, reference])).square()
    sq[torch.arange(len(reference)), len(y) + torch.arange(len(reference))] = math.inf
    log_k = -sq / (2 * width ** 2 * sq.sort(1).values[:, k - 1:k])
    log_u = torch.logsumexp(log_k[:, :len(y)], 1) - math.log(len(y))
    log_r = torch.logsumexp(log_k[:, len(y):], 1) - math.log(len(reference) - 1)
    return (log_u - log_r).exp()


def _with_border(reference: torch.Tensor) -> torch.Tensor:
    """``reference`` and 60 samples on the line from its safe cluster to its unsafe one."""
    t = torch.linspace(0, 1, 60, dtype=torch.float64)[:, None]
    return torch.cat([reference, t * reference[:60] + (1 - t) * reference[-60:]])


def test_labels_adapt_their_kernel_to_the_label_neighbours_th_nearest_point(sets):
    """The labels' kernel width is ``width`` x the distance to the ``label_neighbours``-th nearest point of
    both sets (the sample itself left out), whatever beta's ``neighbours``; by default the same count."""
    negation, reference = sets
    reference = _with_border(reference)

    def labels(k: int) -> torch.Tensor:
        return _direct_ratio(negation, reference, k) >= 1

    assert not torch.equal(labels(2), labels(20))  # the count matters on these sets
    for k in (2, 20):
        assert torch.equal(LocalPosterior(negation, reference, label_neighbours=k).negated_reference, labels(k))
    assert torch.equal(LocalPosterior(negation, reference, neighbours=20).negated_reference, labels(20))


def test_sets_with_fewer_points_than_neighbours_label_with_all_the_others():
    """3 unsafe and 6 reference samples leave each reference sample 8 other points, fewer than the default 10
    neighbours: its labels' kernel adapts to the farthest of them, not to itself (left out at distance inf,
    which made the ratios, the safe means and so the samples NaN)."""
    gen = torch.Generator().manual_seed(3)
    negation = NegationSet.from_latents(_cluster(3, 3.0, gen))
    reference = torch.cat([_cluster(1, 3.0, gen), _cluster(5, -3.0, gen)])
    local = LocalPosterior(negation, reference)
    assert torch.equal(local.negated_reference, _direct_ratio(negation, reference, 8) >= 1)
    assert local.negated_reference.tolist() == [True] + [False] * 5
    assert local.safe_log_weight.isfinite().all()
    beta, d_unsafe, d_safe = local(torch.cat([_cluster(2, 3.0, gen), _cluster(2, -3.0, gen)]))
    assert all(t.isfinite().all() for t in (beta, d_unsafe, d_safe))
    assert (beta[:2] > 0.9).all() and (beta[2:] < 0.01).all()  # a prior of 1/6 holds the first below 0.99


def test_each_concept_of_a_union_labels_the_reference_as_its_own_set_would():
    """Concepts of 200 and 10 examples in one set: without ``concepts`` the small one's density is diluted
    21 times, so the reference samples of its kind count as safe; with them each concept labels as alone."""
    gen = torch.Generator().manual_seed(5)
    big, small = NegationSet.from_latents(_cluster(200, 3.0, gen)), NegationSet.from_latents(_cluster(10, 0.0, gen))
    reference = torch.cat([_cluster(30, 3.0, gen), _cluster(30, 0.0, gen), _cluster(150, -3.0, gen)])
    alone = [LocalPosterior(s, reference).negated_reference for s in (big, small)]
    assert alone[0][:30].all() and alone[1][30:60].all() and not (alone[0] | alone[1])[60:].any()
    union = NegationSet.union([big, small])
    assert torch.equal(LocalPosterior(union, reference).negated_reference, alone[0] | alone[1])
    diluted = LocalPosterior(NegationSet.from_latents(union.latents), reference).negated_reference
    assert diluted[:30].all() and diluted[30:60].double().mean() < 0.5
    # the toys' labelled estimator (its default label width 2) reads the concepts the same way
    assert label_reference(union, reference, 2.0)[30:60].all()
    assert not label_reference(NegationSet.from_latents(union.latents), reference, 2.0)[30:60].any()


def test_beta_and_local_means_pick_the_right_side(sets):
    negation, reference = sets
    local = LocalPosterior(negation, reference)
    gen = torch.Generator().manual_seed(1)
    d = torch.cat([_cluster(5, 3.0, gen), _cluster(5, -3.0, gen)])
    beta, d_unsafe, d_safe = local(d)
    assert (beta[:5] > 0.99).all() and (beta[5:] < 0.01).all()
    assert (d_unsafe.mean(1) > 2.5).all() and (d_safe.mean(1) < -2.5).all()
    corrected = local_safe_denoise(d, d_unsafe, d_safe, beta)
    assert (corrected[:5].mean(1) < -2.0).all()  # unsafe estimates move to the safe side
    torch.testing.assert_close(corrected[5:], d[5:], atol=0.2, rtol=0)  # safe ones barely move


@pytest.mark.parametrize("power", [0.0, 2.0, 5.0])
def test_local_posterior_matches_a_direct_computation(sets, power):
    negation, reference = sets
    reference = _with_border(reference)
    local = LocalPosterior(negation, reference, neighbours=7, width=0.5, mean_width=0.2, label_ratio=0.8,
                           boundary_power=power)
    d = torch.cat([reference[-40:-20],  # estimates on the border, where the weights matter
                   torch.randn(6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))])
    beta, d_unsafe, d_safe = local(d)
    y, r = local.unsafe.double(), local.safe.double()
    q = _direct_ratio(negation, reference, 7, width=0.5)[~local.negated_reference] / 0.8  # below 1: safe
    c = (1 - q) ** power
    sq = torch.cdist(d, torch.cat([y, r])).square()
    log_prior = torch.cat([torch.full((len(y),), math.log(local.prior / len(y))),
                           torch.full((len(r),), math.log((1 - local.prior) / len(r)))])

    def pi(width: float) -> torch.Tensor:
        return torch.softmax(-sq / (2 * width ** 2 * sq.sort(1).values[:, 6:7]) + log_prior, 1)

    torch.testing.assert_close(beta, pi(0.5)[:, :len(y)].sum(1))
    narrow = pi(0.2)
    torch.testing.assert_close(d_unsafe, narrow[:, :len(y)] @ y / narrow[:, :len(y)].sum(1, keepdim=True))
    safe = narrow[:, len(y):] * c
    torch.testing.assert_close(d_safe, safe @ r / safe.sum(1, keepdim=True))
    assert q.max() > 0.4  # some safe samples lie near the border, where the weights matter


def test_safe_mean_weighs_a_sample_on_the_border_of_the_labelling_down(sets):
    """Halfway between the safe sample nearest the labelling threshold and its nearest safe neighbour, the
    safe mean lies halfway with ``boundary_power=0`` and, by default, at the share ``c_b / (c_a + c_b)``
    of the way to the neighbour, ``c = (1 - q)^2``: the sample that looks most like the concept counts less."""
    negation, reference = sets
    reference = _with_border(reference)
    q = _direct_ratio(negation, reference, 10)
    local = LocalPosterior(negation, reference)
    safe = (~local.negated_reference).nonzero().flatten()
    a = safe[q[safe].argmax()]
    b = safe[(reference[safe] - reference[a]).norm(dim=1).argsort()[1]]
    assert q[a] > 0.85 and q[a] - q[b] > 0.5
    d = (reference[a] + reference[b])[None] / 2
    ab = reference[b] - reference[a]

    def share_to_b(local: LocalPosterior) -> float:
        return float((local(d)[2][0] - reference[a]) @ ab / ab.square().sum())

    c_a, c_b = (1 - q[a]) ** 2, (1 - q[b]) ** 2
    assert share_to_b(LocalPosterior(negation, reference, boundary_power=0)) == pytest.approx(0.5, abs=1e-6)
    assert share_to_b(local) == pytest.approx(float(c_b / (c_a + c_b)), abs=1e-4)
    assert share_to_b(local) > 0.95


def test_far_from_every_image_the_safe_mean_stays_near_the_closest_safe_image():
    """An estimate far from all images (early steps under strong guidance) must not be answered with a
    blend of unlike safe images: the narrow kernel of the means keeps ``D_safe`` at the nearest one."""
    gen = torch.Generator().manual_seed(5)
    negation = NegationSet.from_latents(_cluster(100, 3.0, gen))
    shift = 12.0 * torch.eye(DIM, dtype=torch.float64)[0]  # two unlike kinds of safe images
    reference = torch.cat([_cluster(100, -3.0, gen), _cluster(100, -3.0, gen) + shift])
    d = torch.full((1, DIM), 7.0, dtype=torch.float64)
    d[0, 0] = -3.0  # 10 away from every image in all but one coordinate
    wide = LocalPosterior(negation, reference, mean_width=DEFAULT_WIDTH)
    narrow = LocalPosterior(negation, reference)
    assert narrow.mean_width < narrow.width
    torch.testing.assert_close(narrow(d)[0], wide(d)[0])  # beta does not depend on the means' width
    to_nearest_image = [float(torch.cdist(local(d)[2], reference).min()) for local in (wide, narrow)]
    assert to_nearest_image[0] > 5.0 and to_nearest_image[1] < 1.0, to_nearest_image


def test_bounded_form_equals_the_identity_where_the_decomposition_holds():
    gen = torch.Generator().manual_seed(3)
    d_unsafe = torch.randn(4, 8, dtype=torch.float64, generator=gen)
    d_safe = torch.randn(4, 8, dtype=torch.float64, generator=gen)
    beta = torch.tensor([0.0, 0.3, 0.9, 0.999], dtype=torch.float64)
    d = beta[:, None] * d_unsafe + (1 - beta[:, None]) * d_safe
    torch.testing.assert_close(local_safe_denoise(d, d_unsafe, d_safe, beta), d_safe)
    torch.testing.assert_close(held_safe_denoise(d, d_unsafe, d_safe, beta), d_safe)
    torch.testing.assert_close(safe_denoise(d, d_unsafe, beta / (1 - beta)), d_safe)


def test_held_form_keeps_only_the_safe_share_of_what_the_posterior_does_not_explain():
    gen = torch.Generator().manual_seed(7)
    d_unsafe, d_safe, extra = (torch.randn(3, 8, dtype=torch.float64, generator=gen) for _ in range(3))
    beta = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    d = beta[:, None] * d_unsafe + (1 - beta[:, None]) * d_safe + extra  # e.g. guidance's extrapolation
    torch.testing.assert_close(local_safe_denoise(d, d_unsafe, d_safe, beta), d_safe + extra)
    torch.testing.assert_close(held_safe_denoise(d, d_unsafe, d_safe, beta), d_safe + (1 - beta[:, None]) * extra)
    torch.testing.assert_close(held_safe_denoise(d, d_unsafe, d_safe, beta)[0], d[0])  # beta = 0: untouched


def test_far_set_leaves_the_estimate_bit_identical(sets):
    negation, reference = sets
    far = NegationSet.from_latents(negation.latents + 40.0)
    safe = SafeDenoiser(far, reference=reference)
    d = _cluster(4, -3.0, torch.Generator().manual_seed(4))
    out = safe.correct(d, 1.0, 0.1, d)
    assert torch.equal(out.x0, d) and not out.acted.any()


def test_refuses_a_reference_that_is_all_negated_or_misshaped(sets):
    negation, _ = sets
    with pytest.raises(SafeDenoiserError, match="reference samples lie in the negation set's region.*of the same "
                                                "sort as the set's"):
        LocalPosterior(negation, negation.latents[:50] + 0.01)
    with pytest.raises(SafeDenoiserError, match="reference samples have shape"):
        LocalPosterior(negation, torch.zeros(10, DIM + 1))
    with pytest.raises(SafeDenoiserError, match="at least 2 reference samples"):
        LocalPosterior(negation, torch.zeros(1, DIM))
    with pytest.raises(SafeDenoiserError, match="kernel widths must be positive"):
        LocalPosterior(negation, negation.latents[:50] - 6.0, mean_width=0.0)
    for power in (-1.0, float("inf"), float("nan")):
        with pytest.raises(SafeDenoiserError, match="boundary_power must be a finite number >= 0"):
            LocalPosterior(negation, negation.latents[:50] - 6.0, boundary_power=power)


def test_latch_holds_the_highest_beta_of_the_trajectory_and_resets_with_a_new_one(sets):
    negation, reference = sets
    gen = torch.Generator().manual_seed(5)
    unsafe_d, safe_d = _cluster(2, 3.0, gen), _cluster(2, -3.0, gen)
    latched, plain = (SafeDenoiser(negation, reference=reference, latch=True),
                      SafeDenoiser(negation, reference=reference, latch=False))
    # step 1 (noisy): estimates in the unsafe cluster; step 2 (less noisy): in the safe one
    for safe in (latched, plain):
        safe.correct(unsafe_d, 0.5, 0.8, unsafe_d)
    held, fresh = latched.correct(safe_d, 0.9, 0.3, safe_d), plain.correct(safe_d, 0.9, 0.3, safe_d)
    assert (held.beta > 0.99).all() and (fresh.beta < 0.01).all()
    _, d_unsafe, d_safe = latched.beta(safe_d)
    # the correction stays on, in the held form
    torch.testing.assert_close(held.x0, held_safe_denoise(safe_d, d_unsafe, d_safe, held.beta))
    assert torch.equal(fresh.x0, safe_d)
    # a new trajectory (the noise level rises again) or a new batch starts from its own beta
    assert (latched.correct(safe_d, 0.5, 0.8, safe_d).beta < 0.01).all()
    latched.correct(unsafe_d, 0.5, 0.8, unsafe_d)
    assert (latched.correct(safe_d[:1], 0.9, 0.3, safe_d[:1]).beta < 0.01).all()


def test_samples_record_each_rows_highest_beta_and_how_many_steps_changed_it(sets):
    negation, reference = sets
    gen = torch.Generator().manual_seed(6)
    unsafe_d, safe_d = _cluster(1, 3.0, gen), _cluster(1, -3.0, gen)
    safe = SafeDenoiser(negation, reference=reference, latch=False)
    betas = [safe.correct(d, 0.9, 0.3, d).beta for d in (torch.cat([unsafe_d, safe_d]),
                                                        torch.cat([unsafe_d, unsafe_d]),
                                                        torch.cat([safe_d, safe_d]))]
    torch.testing.assert_close(safe.samples.beta_max, torch.stack(betas).max(0).values.double())
    assert safe.samples.steps_corrected.tolist() == [2, 1]  # row 0 unsafe at steps 1-2, row 1 at step 2
    assert safe.samples.beta_max.max() == max(r.beta_max for r in safe.trace)
    safe.reset()
    assert safe.samples is None
    safe.correct(safe_d, 0.9, 0.3, safe_d)
    assert safe.samples.steps_corrected.tolist() == [0]


def test_with_the_latch_min_weight_leaves_a_sample_alone_until_its_held_beta_passes_it(sets):
    negation, reference = sets

    class Fixed(LocalPosterior):
        """The local estimator's means with betas 0.6 and 0.9."""

        def __call__(self, d):
            _, d_unsafe, d_safe = super().__call__(d)
            return torch.tensor([0.6, 0.9]).to(d), d_unsafe, d_safe

    d = _cluster(2, 0.0, torch.Generator().manual_seed(7))
    picky = SafeDenoiser(negation, beta=Fixed(negation, reference), latch=True, min_weight=3.0)  # beta > 0.75
    out = picky.correct(d, 0.9, 0.3, d)
    assert out.acted.tolist() == [False, True]
    assert torch.equal(out.x0[0], d[0]) and not torch.equal(out.x0[1], d[1])
    every = SafeDenoiser(negation, beta=Fixed(negation, reference), latch=True)
    assert every.correct(d, 0.9, 0.3, d).acted.tolist() == [True, True]
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(SafeDenoiserError, match="min_weight must be a finite number >= 0"):
            SafeDenoiser(negation, reference=reference, min_weight=bad)


def test_latch_by_default_only_under_guidance(sets):
    negation, reference = sets
    gen = torch.Generator().manual_seed(6)
    unsafe_d, safe_d = _cluster(2, 3.0, gen), _cluster(2, -3.0, gen)
    safe = SafeDenoiser(negation, reference=reference)
    assert safe.latch == "auto"
    safe.correct(unsafe_d, 0.5, 0.8, unsafe_d)
    unguided = safe.correct(safe_d, 0.9, 0.3, safe_d)
    assert (unguided.beta < 0.01).all() and not safe.trace[-1].latched
    safe.correct(unsafe_d, 0.5, 0.8, unsafe_d, guided=True)
    guided = safe.correct(safe_d, 0.9, 0.3, safe_d, guided=True)
    assert (guided.beta > 0.99).all() and safe.trace[-1].latched
    _, d_unsafe, d_safe = safe.beta(safe_d)
    torch.testing.assert_close(guided.x0, held_safe_denoise(safe_d, d_unsafe, d_safe, guided.beta))
    off = SafeDenoiser(negation, reference=reference, latch=False)
    off.correct(unsafe_d, 0.5, 0.8, unsafe_d, guided=True)
    assert (off.correct(safe_d, 0.9, 0.3, safe_d, guided=True).beta < 0.01).all() and not off.trace[-1].latched


def test_latch_and_unet_features_are_refused_where_there_is_no_local_beta(sets):
    negation, _ = sets
    with pytest.raises(SafeDenoiserError, match="latch holds the local estimator's beta"):
        SafeDenoiser(negation, latch=True)
    with pytest.raises(SafeDenoiserError, match="the paper rule has none"):
        SafeDenoiser(negation, preset="sd14-nudity", latch=True)
    # so are the UNet features, which only the local estimator reads; "latent" is what the others do anyway
    with pytest.raises(SafeDenoiserError, match="features='unet' is for the local estimator"):
        SafeDenoiser(negation, features="unet")
    with pytest.raises(SafeDenoiserError, match="features='unet' is for the local estimator"):
        SafeDenoiser(negation, preset="sd14-nudity", features="unet")
    assert SafeDenoiser(negation, features="latent").features == "latent"
    for bad in ("on", 1):
        with pytest.raises(SafeDenoiserError, match="latch must be True, False or 'auto'"):
            SafeDenoiser(negation, latch=bad)
    # "auto" does nothing there, and says so in the trace
    for safe in (SafeDenoiser(negation), SafeDenoiser(negation, preset="sd14-nudity")):
        d = negation.latents[:2].reshape(2, -1)
        safe.correct(d, 0.9, 0.3, d, guided=True)
        assert not safe.trace[-1].latched
