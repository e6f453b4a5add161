"""Every parametrisation converts to x0 and back, for VP, VE and rectified-flow noise levels."""

import pytest
import torch

from safedenoiser.core.parametrization import (PREDICTIONS, edm_from_x0, edm_to_x0, flow_levels, from_x0, to_x0,
                                               ve_levels, vp_levels)
from safedenoiser.errors import SafeDenoiserError


def _levels(kind: str, batch: int, dtype):
    t = torch.linspace(0.05, 0.95, batch, dtype=dtype)
    if kind == "vp":
        return vp_levels(torch.cos(t * torch.pi / 2) ** 2)
    if kind == "ve":
        return ve_levels(t * 10)
    return flow_levels(t)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("kind", ["vp", "ve", "flow"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_conversion_round_trips(prediction, kind, dtype, tol):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=gen, dtype=dtype)
    eps = torch.randn(6, 3, 4, 4, generator=gen, dtype=dtype)
    alpha, sigma = _levels(kind, 6, dtype)
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    output = from_x0(x0, x_t, alpha, sigma, prediction)
    torch.testing.assert_close(to_x0(output, x_t, alpha, sigma, prediction), x0, rtol=tol, atol=tol)


def test_outputs_match_their_definitions():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    a, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    x_t = a * x0 + s * eps
    torch.testing.assert_close(from_x0(x0, x_t, a, s, "epsilon"), eps)
    torch.testing.assert_close(from_x0(x0, x_t, a, s, "v_prediction"), a * eps - s * x0)
    t = torch.tensor(0.3, dtype=torch.float64)
    x_flow = (1 - t) * x0 + t * eps
    torch.testing.assert_close(from_x0(x0, x_flow, 1 - t, t, "flow"), eps - x0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_output_reads_as_diffusers_edm_schedulers_read_it_and_round_trips(prediction):
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_data=0.5, prediction_type=prediction)
    gen = torch.Generator().manual_seed(2)
    x_t, output = torch.randn(2, 3, 4, 2, 2, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.01, 1.0, 40.0], dtype=torch.float64)
    x0 = edm_to_x0(output, x_t, sigma, 0.5, prediction)
    torch.testing.assert_close(x0, scheduler.precondition_outputs(x_t, output, sigma[:, None, None, None]))
    torch.testing.assert_close(edm_from_x0(x0, x_t, sigma, 0.5, prediction), output)


def test_unknown_prediction_is_refused():
    x = torch.zeros(1, 2)
    with pytest.raises(SafeDenoiserError, match="unknown prediction type"):
        to_x0(x, x, 1.0, 1.0, "score")
