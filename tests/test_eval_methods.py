"""The eval's method wiring: the paper rule's calibrated h, strengths, evaluation counting, correctors."""

import math
from types import SimpleNamespace

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.core.local import LocalPosterior
from safedenoiser.eval.methods import count_evals, make_corrector, paper_bandwidth


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
