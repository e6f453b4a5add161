"""The toy SPEC.json: a Gaussian mixture, which components to negate, and the negation set's size.

    {"dim": 2, "weights": [...], "means": [[...], ...], "covs": [0.1, [0.1, 0.2], [[...]], ...],
     "negate": [1], "negation_samples": 256, "seed": 0}

A covariance is a number (isotropic variance), a list (diagonal) or a matrix. Every error names
the field that is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.toy.mixture import GaussianMixture


@dataclass
class ToySpec:
    mixture: GaussianMixture
    negate: list[int]
    negation_samples: int
    seed: int

    @property
    def kept(self) -> list[int]:
        return [k for k in range(len(self.mixture)) if k not in self.negate]

    @property
    def negated_weight(self) -> float:
        """The true prior ``b``: the mixture's mass on the negated components."""
        return float(self.mixture.weights[self.negate].sum())

    def safe_mixture(self) -> GaussianMixture:
        """The exact target: the mixture restricted to the kept components."""
        return self.mixture.subset(self.kept)

    def negation_set(self) -> torch.Tensor:
        """``negation_samples`` points drawn (with the spec's seed) from the negated components."""
        gen = torch.Generator().manual_seed(self.seed)
        return self.mixture.subset(self.negate).sample(self.negation_samples, gen)[0]


def _covariance(value, dim: int, k: int) -> torch.Tensor:
    field = f"covs[{k}]"
    try:
        cov = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise SafeDenoiserError(f"{field} must be a number, a list of {dim} numbers or a {dim}x{dim} matrix") from err
    if cov.ndim == 0:
        cov = cov * torch.eye(dim, dtype=torch.float64)
    elif cov.ndim == 1:
        if cov.shape[0] != dim:
            raise SafeDenoiserError(f"{field} has {cov.shape[0]} diagonal entries but dim is {dim}")
        cov = torch.diag(cov)
    elif cov.shape != (dim, dim):
        raise SafeDenoiserError(f"{field} has shape {tuple(cov.shape)}, expected ({dim}, {dim})")
    if not bool(torch.isfinite(cov).all()):
        raise SafeDenoiserError(f"{field} must hold finite numbers (no NaN or Infinity)")
    if not torch.allclose(cov, cov.T, atol=1e-10) or bool((torch.linalg.eigvalsh(cov) <= 0).any()):
        raise SafeDenoiserError(f"{field} is not a positive definite covariance")
    return cov


def _is_int(value) -> bool:
    """A JSON integer (``true`` and ``false`` are not, though Python counts them as ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_spec(data: dict) -> ToySpec:
    """Validate a spec dictionary; raise `SafeDenoiserError` naming the offending field."""
    if not isinstance(data, dict):
        raise SafeDenoiserError("the spec must be a JSON object with dim, weights, means, covs, negate, "
                                "negation_samples")
    missing = [f for f in ("dim", "weights", "means", "covs", "negate") if f not in data]
    if missing:
        raise SafeDenoiserError(f"the spec is missing field(s): {', '.join(missing)}")
    dim = data["dim"]
    if not _is_int(dim) or dim < 1:
        raise SafeDenoiserError(f"dim must be a positive integer, got {dim!r}")
    try:
        weights = torch.as_tensor(data["weights"], dtype=torch.float64)
        means = torch.as_tensor(data["means"], dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise SafeDenoiserError(f"weights and means must be numbers: {err}") from err
    if weights.ndim != 1 or len(weights) == 0:
        raise SafeDenoiserError("weights must be a non-empty list of numbers")
    for field, values in (("weights", weights), ("means", means)):
        if not bool(torch.isfinite(values).all()):
            raise SafeDenoiserError(f"{field} must hold finite numbers (no NaN or Infinity)")
    if bool((weights <= 0).any()):
        raise SafeDenoiserError(f"weights must all be positive, got {weights.tolist()}")
    k = len(weights)
    if means.shape != (k, dim):
        raise SafeDenoiserError(f"means has shape {tuple(means.shape)}, expected ({k}, {dim}): one mean of "
                                "dimension dim per weight")
    covs = data["covs"]
    if not isinstance(covs, list) or len(covs) != k:
        raise SafeDenoiserError(f"covs must be a list of {k} covariances, one per weight")
    cov = torch.stack([_covariance(c, dim, i) for i, c in enumerate(covs)])
    negate = data["negate"]
    if not isinstance(negate, list) or not all(_is_int(i) and 0 <= i < k for i in negate) or not negate:
        raise SafeDenoiserError(f"negate must be a non-empty list of component indices in 0..{k - 1}, got {negate!r}")
    if len(set(negate)) == k:
        raise SafeDenoiserError("negate lists every component: nothing would be left to sample")
    n_neg = data.get("negation_samples", 256)
    if not _is_int(n_neg) or n_neg < 1:
        raise SafeDenoiserError(f"negation_samples must be an integer >= 1, got {n_neg!r}")
    seed = data.get("seed", 0)
    if not _is_int(seed):
        raise SafeDenoiserError(f"seed must be an integer, got {seed!r}")
    return ToySpec(GaussianMixture(weights, means, cov), sorted(set(negate)), n_neg, seed)


def load_spec(path: str | Path) -> ToySpec:
    """Read and validate SPEC.json."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise SafeDenoiserError(f"spec file {path} does not exist") from err
    except IsADirectoryError as err:
        raise SafeDenoiserError(f"{path} is a folder; give the spec's JSON file") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SafeDenoiserError(f"spec file {path} is not valid JSON: {err}") from err
    return parse_spec(data)
