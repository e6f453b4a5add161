"""The key identity D_safe = (D - beta D_unsafe) / (1 - beta) against the closed-form restricted mixture."""

import pytest
import torch

from safedenoiser import NegationSet, SafeDenoiser
from safedenoiser.core.beta import ConstantBeta, ExactBeta
from safedenoiser.core.safe_denoiser import safe_denoise, safe_weight
from safedenoiser.toy.mixture import GaussianMixture


def random_mixture(seed: int, dim: int, k: int, kind: str) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=gen, dtype=torch.float64) * 3
    if kind == "isotropic":
        variances = 0.2 + torch.rand(k, generator=gen, dtype=torch.float64)
        covs = torch.stack([torch.eye(dim, dtype=torch.float64) * v for v in variances])
    elif kind == "diagonal":
        covs = torch.diag_embed(0.1 + torch.rand(k, dim, generator=gen, dtype=torch.float64))
    else:
        a = torch.randn(k, dim, dim, generator=gen, dtype=torch.float64)
        covs = a @ a.transpose(1, 2) / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixture(torch.rand(k, generator=gen, dtype=torch.float64) + 0.2, means, covs)


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "full"])
@pytest.mark.parametrize("seed", range(4))
def test_identity_is_exact_on_random_mixtures(seed, kind):
    """Relative error < 1e-8 wherever the identity is well conditioned (w = beta/(1-beta) < 1e6).

    D + w (D - D_unsafe) amplifies float64 rounding of D - D_unsafe by w, so points deep inside a
    negated component (beta = 1 - 1e-20) are left out; they are at most a few percent here.
    """
    dim, k = 2 + seed, 3 + seed % 2
    mixture = random_mixture(seed, dim, k, kind)
    negate = [0] if seed % 2 else [0, k - 1]
    kept = [i for i in range(k) if i not in negate]
    safe = SafeDenoiser(mixture.subset(negate), beta=ExactBeta(lambda x, a, s: mixture.beta(x, a, s, negate)),
                        min_weight=0.0, max_weight=1e300)
    gen = torch.Generator().manual_seed(100 + seed)
    for alpha in (0.999, 0.9, 0.6, 0.3, 0.05):
        a = torch.tensor(alpha, dtype=torch.float64)
        s = (1 - a * a).sqrt()
        x0 = torch.cat([mixture.sample(64, gen)[0], mixture.subset(kept).sample(64, gen)[0]])
        x_t = a * x0 + s * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        conditioned = mixture.beta(x_t, a, s, negate) < 1 - 1e-6
        assert conditioned.sum() >= 64
        x_t = x_t[conditioned]
        d_safe = safe(x_t, a, s, mixture.denoise(x_t, a, s))
        expected = mixture.subset(kept).denoise(x_t, a, s)
        rel = ((d_safe - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-12)).max()
        assert rel < 1e-8, f"relative error {rel:.2e} at alpha={alpha}"


def test_weight_is_capped_as_beta_tends_to_one():
    beta = torch.tensor([0.0, 0.5, 0.9, 1 - 1e-9, 1.0])
    w = safe_weight(beta, max_weight=20.0)
    torch.testing.assert_close(w[:3], torch.tensor([0.0, 1.0, 9.0]))
    assert w[3] == 20.0 and w[4] == 20.0


def test_safe_denoise_extrapolates_away_from_the_unsafe_denoiser():
    d, d_u = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    torch.testing.assert_close(safe_denoise(d, d_u, torch.tensor([3.0])), torch.tensor([[4.0, 0.0]]))


def test_below_min_weight_the_output_is_untouched_bit_for_bit():
    neg = NegationSet.from_latents(torch.randn(10, 4) + 100)
    safe = SafeDenoiser(neg, beta=ConstantBeta(1e-6))
    x0 = torch.randn(3, 4)
    out = safe(torch.randn(3, 4), torch.tensor(0.5), torch.tensor(0.8), x0)
    assert torch.equal(out, x0)
    assert safe.trace[-1].acted == 0


def test_trace_records_every_call():
    neg = NegationSet.from_latents(torch.zeros(5, 2))
    safe = SafeDenoiser(neg, beta=ConstantBeta(0.5))
    for alpha in (0.2, 0.5):
        safe(torch.zeros(4, 2), torch.tensor(alpha), torch.tensor(0.9), torch.ones(4, 2))
    assert [round(r.alpha, 3) for r in safe.trace] == [0.2, 0.5]
    assert all(r.acted == 4 and r.batch == 4 and r.beta_mean == pytest.approx(0.5) for r in safe.trace)


class ScriptedBeta:
    """Hands out the given betas, one tensor a call."""

    def __init__(self, *betas: list[float]):
        self.betas = iter(torch.tensor(b) for b in betas)

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        return next(self.betas)


def test_a_second_evaluation_within_a_step_keeps_the_steps_first_beta():
    """`step_beta`: a call ``within_step`` takes each sample's beta as at least the previous call's, for the same
    batch only; a call that is not within the step, another batch and a new run start afresh."""
    safe = SafeDenoiser(NegationSet.from_latents(torch.zeros(5, 2)),
                        beta=ScriptedBeta([0.9, 0.0], [0.0, 0.1], [0.0, 0.1], [0.0], [0.9, 0.9], [0.0, 0.0]))

    def beta(batch: int = 2, within_step: bool = True) -> list[float]:
        x = torch.ones(batch, 2)
        return safe.correct(x, 0.5, 0.8, x, within_step=within_step).beta.tolist()

    assert beta(within_step=False) == pytest.approx([0.9, 0.0])
    held = safe.correct(torch.ones(2, 2), 0.5, 0.8, torch.ones(2, 2), within_step=True)
    assert held.beta.tolist() == pytest.approx([0.9, 0.1]) and held.acted.tolist() == [True, True]
    assert beta(within_step=False) == pytest.approx([0.0, 0.1])
    assert beta(batch=1) == pytest.approx([0.0])
    beta(within_step=False)
    safe.reset()
    assert beta() == pytest.approx([0.0, 0.0])


def test_when_no_sample_acts_the_unsafe_mean_is_never_computed(monkeypatch):
    """The gate decides first: far from the set the output is x0_hat itself, with no weighted mean."""
    import safedenoiser.negation as negation_module

    def forbidden(*args, **kwargs):
        raise AssertionError("the weighted mean was computed although no sample acts")

    monkeypatch.setattr(negation_module, "softmax_weights", forbidden)
    safe = SafeDenoiser(NegationSet.from_latents(torch.randn(20, 4, 3, 3) + 100))
    x0 = torch.randn(3, 4, 3, 3)
    out = safe(torch.randn(3, 4, 3, 3), torch.tensor(0.5), torch.tensor(0.8), x0)
    assert torch.equal(out, x0) and safe.trace[-1].acted == 0


@pytest.mark.parametrize("reference", [False, True])
def test_one_pass_over_the_set_equals_separate_passes(reference):
    """The gate's clean mass from the posterior's pass gives the output of computing it separately;
    samples that do not act pass through bit for bit."""
    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    neg = NegationSet(latents)
    ref = torch.randn(60, 6, generator=gen, dtype=torch.float64) * 2 if reference else None
    safe = SafeDenoiser(neg, reference=ref, beta="hybrid" if reference else "gate")
    x0 = torch.cat([latents[:2] + 0.05 * torch.randn(2, 6, generator=gen, dtype=torch.float64),
                    latents[2:4] + 50])  # two near the set, two far from it
    a, s = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    x_t = a * x0 + s * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    corr = safe.correct(x_t, a, s, x0)
    unsafe = neg.posterior(x_t, a, s, smoothing=neg.bandwidth)  # no clean mass: the gate computes its own
    beta = safe.beta(x_t, a.expand(4), s.expand(4), x0, unsafe)
    w = safe_weight(beta, safe.max_weight)
    torch.testing.assert_close(corr.beta, beta, rtol=1e-12, atol=1e-12)
    assert corr.acted.tolist() == [True, True, False, False]
    torch.testing.assert_close(corr.x0[:2], safe_denoise(x0, unsafe.mean, w)[:2], rtol=1e-10, atol=1e-10)
    assert torch.equal(corr.x0[2:], x0[2:])
