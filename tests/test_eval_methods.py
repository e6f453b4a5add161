"""The eval's method wiring: the paper rule's calibrated h, strengths, evaluation counting."""

import math

import pytest
import torch

from safedenoiser import NegationSet
from safedenoiser.eval.methods import count_evals, paper_bandwidth


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
