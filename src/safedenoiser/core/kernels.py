"""Kernel weights over a negation set (DESIGN §1).

Everything here reduces to one matrix of logits: for query rows ``x_b`` and set rows ``y_n``

    logit_bn   = -||x_b - c_b y_n||^power / bandwidth_b
    log_mass_b = logsumexp_n(logit_bn),      mean_b = sum_n softmax_n(logit_bn) y_n

with distances from one matrix product (``||x||^2 - 2 c x.y + c^2 ||y||^2``) and the mean from a
second one over the points that carry weight, so memory is O(set + batch x set), never batch x set
x dimension. Rows with different ``c`` and ``bandwidth`` share the product: one pass over the set
serves several kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class FlatSet:
    """A set of ``M`` points in ``D`` dimensions, laid out for the two matrix products.

    ``columns`` is ``Y^T`` [D, M], contiguous: the distances ``X @ Y^T`` (on CPU twice as fast as
    against the transposed view of ``Y``) and dense weighted means read it, so a step streams one
    matrix per set, which stays in cache between the two products. ``rows`` is ``Y`` [M, D], from
    which sparse weighted means gather the few rows that carry weight. ``sqnorm`` holds ``||y_n||^2`` [M].
    """

    rows: Tensor
    columns: Tensor
    sqnorm: Tensor

    @classmethod
    def of(cls, y: Tensor) -> FlatSet:
        """Lay out ``y`` [M, ...], flattened to [M, D]; ``rows`` is a view when ``y`` is contiguous."""
        rows = y.reshape(y.shape[0], -1)
        return cls(rows, rows.T.contiguous(), (rows * rows).sum(1))

    def part(self, start: int, stop: int | None = None) -> FlatSet:
        """Points ``start:stop`` as a set of their own (views, nothing copied)."""
        return FlatSet(self.rows[start:stop], self.columns[:, start:stop], self.sqnorm[start:stop])


def laid_out(cache: dict[tuple[torch.device, torch.dtype], FlatSet], y: Tensor, device: torch.device | str,
             dtype: torch.dtype) -> FlatSet:
    """`FlatSet.of(y)` on ``device`` in ``dtype``, laid out on the first call per pair and kept in ``cache``."""
    key = (torch.device(device), dtype)
    if key not in cache:
        cache[key] = FlatSet.of(y.to(device=device, dtype=dtype))
    return cache[key]


def squared_distances(x: Tensor, y: FlatSet, scale: Tensor | None = None) -> Tensor:
    """``||x_b - c_b y_n||^2`` [B, M] for rows of ``x`` [B, D] (``scale`` ``c`` [B], 1 by default):
    ``||x||^2 + c^2 ||y||^2 - 2 c (x . y)``, one matrix product."""
    scale = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device) if scale is None else scale.reshape(-1, 1)
    offset = (x * x).sum(1, keepdim=True) + scale * scale * y.sqnorm
    return (x @ y.columns).mul_(-2 * scale).add_(offset).clamp_min_(0)


def kernel_logits(x: Tensor, y: FlatSet, *, scale: Tensor, bandwidth: Tensor, power: int = 2) -> Tensor:
    """``logit_bn = -||x_b - c_b y_n||^power / bandwidth_b`` [B, M] for rows of ``x`` [B, D].

    ``scale`` (``c``) and ``bandwidth`` are per-row tensors [B]; ``power`` is 2 (Gaussian kernel,
    squared distance) or 1 (plain distance, as in the authors' code).
    """
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power}")
    sq = squared_distances(x, y, scale)
    return (sq if power == 2 else sq.sqrt_()).div_(-bandwidth.reshape(-1, 1))


def softmax_weights(logits: Tensor, total: Tensor | None = None) -> Tensor:
    """``total_b softmax_n(logit_bn)`` [B, M] (``total`` [B], 1 by default).

    Points whose weight is below ``eps^2`` times the row's largest are dropped (weight 0): all of them
    together cannot move a mean at this precision, and their products would underflow to subnormal
    numbers, which slow a CPU matrix product several-fold.
    """
    weights = (logits - logits.amax(1, keepdim=True)).exp_()
    weights.masked_fill_(weights < torch.finfo(weights.dtype).eps ** 2, 0.0)
    scale = 1 / weights.sum(1, keepdim=True)
    return weights.mul_(scale if total is None else total.reshape(-1, 1) * scale)


def weighted_mean(weights: Tensor, y: FlatSet, shift: Tensor | None = None) -> Tensor:
    """``shift_b + sum_n w_bn y_n`` [B, D] for weights [B, M] (``shift`` [B, D], 0 by default).

    When at most a quarter of the set carries any weight (the concentrated posteriors of high
    dimensions, once `softmax_weights` drops the negligible ones), only those rows are gathered and
    read; otherwise the product reads `FlatSet.columns`, the matrix the distances just read.
    """
    used = weights.any(0).nonzero().squeeze(1)
    if 4 * used.numel() <= weights.shape[1]:
        weights, rows = weights[:, used], y.rows[used]
    else:
        rows = y.columns.T
    return weights @ rows if shift is None else torch.addmm(shift, weights, rows)


def kernel_mean(x: Tensor, y: FlatSet, *, scale: Tensor, bandwidth: Tensor,
                power: int = 2) -> tuple[Tensor, Tensor]:
    """Softmax-weighted mean of the set for each row of ``x`` [B, D], and its log-sum-exp:
    ``(mean [B, D], log_mass [B])`` of `kernel_logits`."""
    logits = kernel_logits(x, y, scale=scale, bandwidth=bandwidth, power=power)
    return weighted_mean(softmax_weights(logits), y), torch.logsumexp(logits, 1)


def gaussian_log_density(log_mass: Tensor, *, set_size: int, dim: int, variance: Tensor) -> Tensor:
    """``log p_t(x)`` [B] of the empirical distribution of ``M`` points noised to
    ``x_t = alpha y + N(0, variance I)``, from ``log_mass`` of the logits ``-||x - alpha y_n||^2 / (2 variance)``:

        log p_t(x) = log_mass - log M - (D / 2) log(2 pi variance)
    """
    return log_mass - math.log(set_size) - 0.5 * dim * torch.log(2 * math.pi * variance)


def leave_one_out_log_ratios(reference: Tensor, unsafe: Tensor, logits: Callable[[Tensor], Tensor],
                             block: int = 1024, concepts: Tensor | None = None) -> Tensor:
    """``log p_c(r_k) - log p_ref(r_k)`` [C, K] at each row ``r_k`` of ``reference`` [K, D]: kernel densities of
    each concept's rows of ``unsafe`` [M, D] and of the reference itself, each normalised by its size, ``r_k``
    left out of its own,

        p_c(r_k) = (1/M_c) sum_{n in c} k(r_k, y_n),    p_ref(r_k) = (1/(K-1)) sum_{j != k} k(r_k, r_j).

    ``concepts`` ([M] indices 0..C-1, `NegationSet.concepts`; ``None``: all rows one concept, C = 1) keeps a
    concept with few examples from being diluted by the others' (benchmarks/cli_two_classes.py). ``logits``
    turns a block's squared distances [B, M_c + K] to a concept and the reference (the concept's columns first;
    the left-out entry +inf) into ``log k``: a fixed or an adaptive kernel. ``block`` reference rows at a time;
    the distances are computed once for all concepts."""
    both, m = FlatSet.of(torch.cat([unsafe, reference])), len(unsafe)
    columns = (None if concepts is None else
               [(concepts.to(unsafe.device) == c).nonzero().squeeze(1) for c in range(int(concepts.max()) + 1)])
    ratios = []
    for start in range(0, len(reference), block):
        rows = reference[start:start + block]
        sq = squared_distances(rows, both)
        sq[torch.arange(len(rows)), m + torch.arange(start, start + len(rows))] = math.inf
        parts = [sq] if columns is None else [torch.cat([sq[:, cols], sq[:, m:]], 1) for cols in columns]
        block_ratios = []
        for part in parts:
            log_k, m_c = logits(part), part.shape[1] - len(reference)
            log_u = torch.logsumexp(log_k[:, :m_c], 1) - math.log(m_c)
            log_r = torch.logsumexp(log_k[:, m_c:], 1) - math.log(len(reference) - 1)
            block_ratios.append(log_u - log_r)
        ratios.append(torch.stack(block_ratios))
    return torch.cat(ratios, 1)
