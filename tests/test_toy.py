"""Gaussian-mixture toy: spec validation, samplers, exact safe sampling, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.toy.metrics import negated_share, noise_floor, sliced_wasserstein, sw2_to_mixture
from safedenoiser.toy.run import make_denoiser, run_toy
from safedenoiser.toy.sampling import sample
from safedenoiser.toy.spec import load_spec, parse_spec

# Test mixtures (the estimator benchmark uses others): 40% of the mass on the negated component.
SPEC_2D = {"dim": 2, "weights": [0.3, 0.4, 0.3], "means": [[-4, 0], [0, 3], [4, 0]],
           "covs": [0.5, [0.4, 0.6], [[0.6, 0.2], [0.2, 0.4]]], "negate": [1], "negation_samples": 256, "seed": 1}


def _spec_16d() -> dict:
    gen = torch.Generator().manual_seed(77)
    means = (torch.randn(3, 16, generator=gen) * 2.5).tolist()  # pairwise distance ~ 14, std ~ 0.7
    return {"dim": 16, "weights": [0.35, 0.4, 0.25], "means": means, "covs": [0.5, 0.4, 0.6],
            "negate": [1], "negation_samples": 256, "seed": 4}


def _spec_close() -> dict:
    # unit-variance components; the negated one 2.5 standard deviations from kept component 0
    return {"dim": 2, "weights": [0.3, 0.4, 0.3], "means": [[0, 0], [0, 2.5], [6, -4]], "covs": [1.0, 1.0, 1.0],
            "negate": [1], "negation_samples": 250, "seed": 8}


def test_sw2_is_zero_for_identical_sets_and_grows_with_a_shift():
    a = torch.randn(500, 3, dtype=torch.float64)
    assert sliced_wasserstein(a, a) == 0.0
    shifted = sliced_wasserstein(a, a + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    # a shift by t along e1 gives SW2 = t * sqrt(E[theta_1^2]) = t / sqrt(3) in 3-D
    assert shifted == pytest.approx(2.0 / 3 ** 0.5, rel=0.15)


def test_negated_share_counts_samples_by_most_likely_component():
    spec = parse_spec(SPEC_2D)
    points = torch.tensor([[-4.0, 0.0], [0.0, 3.0], [0.1, 2.9], [4.0, 0.0]], dtype=torch.float64)
    assert negated_share(points, spec.mixture, spec.negate) == 0.5


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "ancestral"])
def test_samplers_reproduce_the_mixture(sampler):
    spec = parse_spec(SPEC_2D)
    n = 4000
    x = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    samples = sample(sampler, spec.mixture.denoise, x, generator=torch.Generator().manual_seed(1))
    assert sw2_to_mixture(samples, spec.mixture) <= 1.5 * noise_floor(spec.mixture, n)


def test_the_noise_floor_does_not_depend_on_its_seed():
    """In 2-D the component counts make one pair's SW2 vary widely: the floor averages enough pairs that
    three seeds agree within 10% (with 8 pairs they did not)."""
    mixture = parse_spec(_spec_close()).safe_mixture()
    floors = torch.tensor([noise_floor(mixture, 4000, seed=seed) for seed in range(3)])
    assert (floors / floors.mean() - 1).abs().max() <= 0.10


@pytest.mark.parametrize("data", [SPEC_2D, _spec_close()], ids=["separated", "close"])
def test_exact_safe_denoiser_samples_the_safe_mixture(data):
    spec = parse_spec(data)
    share, sw2 = _targets(spec, "exact")
    safe_share = negated_share(spec.safe_mixture().sample(4000, torch.Generator().manual_seed(3))[0],
                               spec.mixture, spec.negate)  # > 0 where components overlap
    assert share <= max(0.01, 2 * safe_share)
    assert sw2 <= 1.5


@pytest.mark.parametrize("field,value,message", [
    ("weights", [0.3, -0.4, 0.3], "weights must all be positive"),
    ("covs", [0.5, [[1, 2], [2, 1]], 0.5], r"covs\[1\] is not a positive definite"),
    ("means", [[0, 0], [1, 1]], "means has shape"),
    ("covs", [0.5, [0.4, 0.6, 0.1], 0.5], r"covs\[1\] has 3 diagonal entries"),
    ("negate", [0, 1, 2], "negate lists every component"),
    ("negate", [5], "negate must be"),
    ("negation_samples", 0, "negation_samples must be an integer >= 1"),
    ("dim", 0, "dim must be a positive integer"),
    ("dim", True, "dim must be a positive integer"),
    ("weights", [0.3, float("nan"), 0.3], "weights must hold finite numbers"),
    ("means", [[0, 0], [float("inf"), 1], [3, 3]], "means must hold finite numbers"),
    ("covs", [0.5, float("nan"), 0.5], r"covs\[1\] must hold finite numbers"),
    ("negate", [True], "negate must be"),
])
def test_bad_specs_name_the_field(field, value, message):
    with pytest.raises(SafeDenoiserError, match=message):
        parse_spec({**SPEC_2D, field: value})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "safedenoiser.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_the_readme_example_spec_reads_every_covariance_form():
    spec = load_spec(Path(__file__).parents[1] / "examples" / "toy_2d.json")
    covs = spec.mixture.covs
    torch.testing.assert_close(covs[0], torch.eye(2, dtype=torch.float64))  # a number: isotropic
    torch.testing.assert_close(covs[1], torch.diag(torch.tensor([0.5, 1.5], dtype=torch.float64)))  # a list
    torch.testing.assert_close(covs[2], torch.tensor([[1.0, 0.4], [0.4, 0.6]], dtype=torch.float64))  # a matrix
    assert spec.negate == [1] and spec.negation_samples == 256
    assert spec.negation_set().shape == (256, 2)


def test_toy_command_writes_samples_metrics_and_plot(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC_2D))
    out, fig = tmp_path / "out.npz", tmp_path / "fig.png"
    result = _cli("toy", str(spec), "--method", "exact", "--n", "1000", "--out", str(out), "--plot", str(fig))
    assert result.returncode == 0, result.stderr
    data = np.load(out)
    assert data["samples"].shape == (1000, 2)
    assert float(data["negated_share"]) <= 0.01
    assert data["trajectories"].shape[1:] == (16, 2)
    assert fig.stat().st_size > 10_000
    assert "negated share" in result.stdout


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({**SPEC_2D, "weights": [0, 1, 1]}), "weights must all be positive"),
])
def test_toy_command_exits_2_on_bad_specs(tmp_path, content, message):
    spec = tmp_path / "spec.json"
    spec.write_text(content)
    result = _cli("toy", str(spec), "--out", str(tmp_path / "o.npz"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--out", "o"], "--out o: give a file name ending in .npz"),  # numpy would write o.npz, unchecked
    (["--out", "o.npz", "--plot", "fig.txt"], "--plot fig.txt: give a file name ending in .png or .pdf or .svg"),
    (["--out", "o.npz", "--method", "exact", "--estimator", "ratio"], "--method exact has none"),
])
def test_toy_command_refuses_bad_outputs_and_flags_before_writing(tmp_path, args, message):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC_2D))
    result = subprocess.run([sys.executable, "-m", "safedenoiser.cli", "toy", str(spec), "--n", "10", *args],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.glob("o*"))


def test_toy_command_says_a_folder_is_not_a_spec(tmp_path):
    result = _cli("toy", str(tmp_path), "--out", str(tmp_path / "o.npz"))
    assert result.returncode == 2 and "is a folder" in result.stderr


def test_toy_command_never_overwrites_without_asking(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC_2D))
    out = tmp_path / "o.npz"
    out.write_bytes(b"previous results")
    result = _cli("toy", str(spec), "--method", "vanilla", "--n", "10", "--out", str(out))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"previous results"


def _targets(spec, method: str, seeds=(0, 1), n: int = 4000) -> tuple[float, float]:
    """Worst negated share over seeds, and SW2 to the safe mixture / noise floor averaged over seeds
    (SW2 of one 4,000-sample set varies by 2x between seeds when components are far apart)."""
    runs = [run_toy(spec, method, n, seed=seed) for seed in seeds]
    share = max(negated_share(r.samples, spec.mixture, spec.negate) for r in runs)
    sw2 = sum(sw2_to_mixture(r.samples, spec.safe_mixture(), seed=i) for i, r in enumerate(runs)) / len(runs)
    return share, sw2 / noise_floor(spec.safe_mixture(), n)


CLOSE_MISS = ("known miss on this mixture: with the negated component 2.5 sd from a kept one the labelled estimator "
              "labels some of the kept component's reference samples nearest the negated one unsafe and removes "
              "their mass: SW2 2.7x the floor, negated share 2.7% (the exact safe denoiser: 5.9%). On the benchmark's "
              "close mixtures SW2 is within 2.5x on average and the share is not everywhere (2-D: 2.39% DPM++, 3.75% "
              "ancestral; 16-D: 4.99%, 7.70%; docs/results/estimators_toy_seeds12.md)")


@pytest.mark.parametrize("data", [SPEC_2D, _spec_16d(),
                                  pytest.param(_spec_close(), marks=pytest.mark.xfail(reason=CLOSE_MISS, strict=True))],
                         ids=["2-D", "16-D", "2-D close"])
def test_kernel_method_reaches_the_targets_with_the_default_estimator(data):
    """Only D and 250-300 negation samples: negated share <= 3%, SW2 <= 2.5x the floor (issue 2's kernel targets;
    the "2x what exact safe samples show" allowance is the exact method's alone)."""
    spec = parse_spec(data)
    share, sw2 = _targets(spec, "kernel")
    assert share <= 0.03
    assert sw2 <= 2.5
    vanilla_share, _ = _targets(spec, "vanilla", seeds=(0,))
    assert vanilla_share >= 0.3  # there was something to remove


def test_the_ratio_estimator_can_be_given_the_true_prior():
    spec = parse_spec(_spec_close())
    assert spec.negated_weight == pytest.approx(0.4)
    _, safe = make_denoiser(spec, "kernel", estimator="ratio", prior=spec.negated_weight)
    assert safe.beta.prior == pytest.approx(0.4)
    _, calibrated = make_denoiser(spec, "kernel", estimator="ratio")
    assert calibrated.beta.prior != pytest.approx(0.4, abs=1e-3)  # estimated from the sets
    with pytest.raises(SafeDenoiserError, match="the 'hybrid' estimator has none"):
        make_denoiser(spec, "kernel", estimator="hybrid", prior=0.4)
