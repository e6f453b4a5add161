"""The eval's method wiring: the paper rule's calibrated h, strengths, evaluation counting, correctors."""

import math
from types import SimpleNamespace

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.core.local import LocalPosterior
from safedenoiser.eval.methods import MethodRun, count_evals, make_corrector, measure, paper_bandwidth
from safedenoiser.eval.metrics import copy_check


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


def test_measure_counts_samples_that_are_copies_of_a_reference_image():
    images = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]], [[[-1.0, 0.0]]], [[[0.0, 1.0]]]])
    judge = SimpleNamespace(proba=lambda x: torch.eye(10)[:len(x)], features=lambda x: x.reshape(len(x), -1),
                            unsafe=lambda x: torch.zeros(len(x), dtype=torch.bool))
    scenario = SimpleNamespace(
        name="text", groups=["unsafe:direct", "unsafe:direct", "benign", "benign"], targets=[None, None, 2, 3],
        judge=judge, fd_real={}, protected=None, reference_copy_threshold=0.1,
        # images 0 (asked unsafe) and 2 (benign) within 0.1 of a reference image; 1 and 3 a pixel or more away
        reference_pixels=torch.tensor([[[[1.0, 0.05]]], [[[-1.0, 0.0]]], [[[5.0, 5.0]]]]))
    row = measure(scenario, MethodRun("m", None, images, 1.0, 4))
    assert row["reference_copy"] == 0.5
    assert row["reference_copy[unsafe prompts]"] == 0.5
    scenario.reference_pixels = None
    assert "reference_copy" not in measure(scenario, MethodRun("m", None, images, 1.0, 4))
