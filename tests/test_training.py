"""`safe-denoiser train`: each part trains, is reproducible from its seed, and loads as the bundled ones do.

On 256 images of each split and 2 optimiser steps: the code path of the shipped weights, not their
quality (benchmarks/model_quality.py measures that)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from safedenoiser.cli import app
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.models import training
from safedenoiser.models.classifier import FashionClassifier
from safedenoiser.models.data import data_dir, load_fashion_mnist
from safedenoiser.models.registry import load_pipeline

pytestmark = pytest.mark.skipif(not data_dir().is_dir(), reason="dataset-fashion-mnist not installed")
N_IMAGES, STEPS = 256, 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every part trained by the command on the first images of each split: {part: folder}."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "load_fashion_mnist",
                      lambda split, size=32: tuple(t[:N_IMAGES] for t in load_fashion_mnist(split, size=size)))
        root = tmp_path_factory.mktemp("trained")
        folders = {part: root / part for part in ("vae", "vae-again", "classifier", "text", "class")}
        for part, folder in folders.items():
            args = ["train", part.removesuffix("-again"), "--steps", STEPS, "--out", folder]
            if part in ("text", "class"):
                args += ["--vae", folders["vae"]]
            result = CliRunner().invoke(app, [str(a) for a in args])
            assert result.exit_code == 0, result.output
    return folders


def test_each_part_records_its_settings_next_to_its_weights(trained):
    for part in ("vae", "classifier", "text", "class"):
        record = json.loads((trained[part] / "training.json").read_text())
        assert (record["seed"], record["steps"], record["device"]) == (0, STEPS, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize(("device", "says"), [("cuda", "torch sees no CUDA GPU"), ("gpu", "must be cpu or cuda")])
def test_a_device_it_cannot_use_is_refused_before_anything_is_written(tmp_path, device, says):
    result = CliRunner().invoke(app, ["train", "vae", "--steps", "1", "--device", device, "--out", str(tmp_path / "v")])
    assert isinstance(result.exception, SafeDenoiserError) and says in str(result.exception)  # main: exit 2
    assert not (tmp_path / "v").exists()


def test_the_vae_is_reproducible_from_its_seed(trained):
    weights = "diffusion_pytorch_model.safetensors"
    assert (trained["vae"] / weights).read_bytes() == (trained["vae-again"] / weights).read_bytes()


def test_trained_unets_load_and_sample_as_the_bundled_pipelines(trained):
    text = load_pipeline(str(trained["text"]))
    image = text("a pullover", num_inference_steps=1, output_type="pt").images
    assert image.shape == (1, 1, 32, 32)
    labels = load_pipeline(str(trained["class"]))
    assert labels(class_labels=[3], num_inference_steps=1, output_type="pt").images.shape == (1, 1, 32, 32)


def test_trained_classifier_loads_and_gives_ten_class_probabilities(trained):
    probs = FashionClassifier.from_pretrained(trained["classifier"]).predict_proba(torch.zeros(2, 1, 32, 32))
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert probs.shape == (2, 10)
