"""The eval's method wiring: the paper rule's calibrated h, strengths, evaluation counting, correctors."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_vae

import safedenoiser.eval.methods as methods
from safedenoiser import NegationSet
from safedenoiser.core.local import LocalPosterior
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.eval.methods import (MethodRun, count_evals, large_reference, make_corrector, measure,
                                       measure_images, paper_bandwidth, run_method)
from safedenoiser.eval.metrics import copy_check
from safedenoiser.eval.scenarios import encode_latents


def test_paper_bandwidth_puts_2h2_at_the_median_nearest_neighbour_distance():
    negation = NegationSet.from_latents(torch.tensor([[0.0], [1.0], [3.0]]))  # NN distances 1, 1, 2
    assert paper_bandwidth(negation) == pytest.approx(math.sqrt(0.5))


def test_count_evals_counts_every_row_the_unet_sees():
    class Holder:
        unet = torch.nn.Linear(2, 2)

    holder = Holder()
    with count_evals(holder) as evals:
        holder.unet(torch.zeros(3, 2))
        holder.unet(torch.zeros(6, 2))  # e.g. a CFG batch of 3 images
    holder.unet(torch.zeros(4, 2))  # outside the block: not counted
    assert evals[0] == 9


@pytest.mark.parametrize("method, latch", [("safe-ref", False), ("safe-ref-latch", True)])
def test_safe_ref_methods_use_the_local_estimator_with_or_without_the_latch(method, latch):
    gen = torch.Generator().manual_seed(0)
    scenario = SimpleNamespace(negation=NegationSet.from_latents(torch.randn(20, 4, 2, 2, generator=gen) + 3),
                               reference=torch.randn(30, 4, 2, 2, generator=gen))
    corrector = make_corrector(method, scenario)
    assert isinstance(corrector.beta, LocalPosterior) and corrector.latch is latch


def test_copy_check_thresholds_at_the_unseen_real_image_closest_to_any_reconstruction():
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=2.0), decode=lambda z: SimpleNamespace(sample=z))
    latents = torch.tensor([[[[2.0, 0.0]]], [[[-4.0, 0.0]]]])  # decoded: [1, 0] and [-2, 0], clamped to [-1, 0]
    real = torch.tensor([[[[0.5, 0.0]]], [[[0.0, 1.0]]]])  # RMS distances to the nearest: 0.5 / sqrt(2), 1
    copies, threshold = copy_check(SimpleNamespace(vae=vae), latents, real)
    assert torch.equal(copies, torch.tensor([[[[1.0, 0.0]]], [[[-1.0, 0.0]]]]))
    assert threshold == pytest.approx(0.5 / math.sqrt(2))


def _four_image_scenario():
    """Two images asked unsafe, two benign; images 0 and 2 within 0.1 of a reference image, 1 and 3 a pixel
    or more away."""
    images = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]], [[[-1.0, 0.0]]], [[[0.0, 1.0]]]])
    judge = SimpleNamespace(proba=lambda x: torch.eye(10)[:len(x)], features=lambda x: x.reshape(len(x), -1),
                            unsafe=lambda x: torch.zeros(len(x), dtype=torch.bool))
    scenario = SimpleNamespace(
        name="text", groups=["unsafe:direct", "unsafe:direct", "benign", "benign"], targets=[None, None, 2, 3],
        judge=judge, fd_real={}, protected=None, reference_copy_threshold=0.1,
        reference_pixels=torch.tensor([[[[1.0, 0.05]]], [[[-1.0, 0.0]]], [[[5.0, 5.0]]]]))
    return scenario, images


def test_measure_counts_samples_that_are_copies_of_a_reference_image():
    scenario, images = _four_image_scenario()
    row = measure(scenario, MethodRun("m", None, images, 1.0, 4))
    assert row["reference_copy"] == 0.5
    assert row["reference_copy[unsafe prompts]"] == 0.5
    scenario.reference_pixels = None
    assert "reference_copy" not in measure(scenario, MethodRun("m", None, images, 1.0, 4))


def test_measure_images_is_measure_without_cost():
    scenario, images = _four_image_scenario()
    timed = measure(scenario, MethodRun("mine", None, images, 1.0, 4))
    untimed = measure_images(scenario, images, "mine")
    assert untimed["seconds_per_image"] == untimed["evals_per_image"] == 0
    costs = ("seconds_per_image", "evals_per_image")
    assert {k: v for k, v in untimed.items() if k not in costs} == {k: v for k, v in timed.items() if k not in costs}


def test_safe_ref_4000_draws_a_larger_reference_from_the_pool_that_starts_with_the_scenarios_own(monkeypatch):
    monkeypatch.setattr(methods, "LARGE_REFERENCE_SIZE", 8)
    gen = torch.Generator().manual_seed(0)
    pipe = SimpleNamespace(vae=tiny_vae(), default_sample_size=8, vae_scale_factor=2)  # 16-pixel images
    pool, unseen = torch.rand(12, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    reference = encode_latents(pipe, pool[:5])
    scenario = SimpleNamespace(pipe=pipe, reference=reference, reference_pool=pool, copy_real=unseen,
                               negation=NegationSet.from_latents(torch.randn(20, *reference.shape[1:]) + 3))
    latents, check = large_reference(scenario)
    assert latents.shape[0] == 8 and torch.allclose(latents[:5], reference, atol=1e-6)
    assert torch.equal(check[0], copy_check(pipe, latents, unseen)[0])
    corrector = make_corrector("safe-ref-4000", scenario)
    assert isinstance(corrector.beta, LocalPosterior) and corrector.latch is False
    assert len(corrector.beta.negated_reference) == 8


def test_safe_ref_4000_counts_copies_of_its_own_reference_images(monkeypatch):
    images = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    judge = SimpleNamespace(proba=lambda x: torch.eye(10)[:len(x)], features=lambda x: x.reshape(len(x), -1),
                            unsafe=lambda x: torch.zeros(len(x), dtype=torch.bool))
    scenario = SimpleNamespace(name="class", groups=["all", "all"], targets=[None, None], judge=judge, fd_real={},
                               protected=None, reference_pixels=torch.full((1, 1, 1, 2), 5.0),
                               reference_copy_threshold=0.1)
    # image 0 is a copy of the 4,000's image 1, which the scenario's own reference does not hold
    monkeypatch.setattr(methods, "large_reference",
                        lambda s: (None, (torch.tensor([[[[5.0, 5.0]]], [[[1.0, 0.05]]]]), 0.1)))
    assert measure(scenario, MethodRun("safe-ref-4000", None, images, 1.0, 2))["reference_copy"] == 0.5
    assert measure(scenario, MethodRun("safe-ref", None, images, 1.0, 2))["reference_copy"] == 0.0


@pytest.mark.parametrize("method, negative, pool, message", [
    ("negative", None, torch.zeros(1), "negative needs a prompt or class naming the negated concept"),
    ("sld", None, torch.zeros(1), "sld needs a prompt or class naming the negated concept"),
    ("safe-ref-4000", "a sneaker", None, "safe-ref-4000 needs a pool of reference images"),
])
def test_run_method_refuses_what_the_scenario_cannot_run(method, negative, pool, message):
    scenario = SimpleNamespace(name="custom", negative=negative, reference_pool=pool)
    with pytest.raises(SafeDenoiserError, match=f"{message}; the custom scenario has none"):
        run_method(scenario, method)
