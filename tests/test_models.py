"""The bundled Fashion-MNIST models: data loader, shipped weights, both pipelines, registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.models.class_pipeline import FashionClassPipeline
from safedenoiser.models.data import CLASS_NAMES, ENV_VAR, data_dir, load_fashion_mnist
from safedenoiser.models.prompts import CLASS_NAME_PROMPTS, HELDOUT_PROMPTS, TRAIN_CAPTIONS
from safedenoiser.models.registry import (BUNDLED, WEIGHTS_DIR, load_classifier, load_pipeline,
                                          sampling_defaults)

needs_data = pytest.mark.skipif(not data_dir().is_dir(), reason="dataset-fashion-mnist not installed")


# ---------------------------------------------------------------------------------------- loader

@needs_data
def test_loader_gives_28px_images_in_minus_one_one_and_ten_balanced_labels():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert y.dtype == torch.int64 and torch.equal(torch.bincount(y), torch.full((10,), 1000))


@needs_data
def test_loader_pads_to_32px_with_background():
    x28, _ = load_fashion_mnist("test")
    x32, _ = load_fashion_mnist("test", size=32)
    assert x32.shape == (10000, 1, 32, 32)
    assert torch.equal(x32[:, :, 2:30, 2:30], x28)
    assert (x32[:, :, :2] == -1).all() and (x32[:, :, :, -2:] == -1).all()


def test_class_names_are_the_ten_fashion_mnist_classes():
    assert CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"
    assert len(CLASS_NAMES) == 10


def test_missing_data_directory_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(SafeDenoiserError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")


def test_directory_without_idx_files_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(SafeDenoiserError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test")


def test_unknown_split_is_refused():
    with pytest.raises(SafeDenoiserError, match="split"):
        load_fashion_mnist("validation")


# ------------------------------------------------------------------------------------ classifier

@needs_data
def test_classifier_is_at_least_90_percent_right_on_500_test_images():
    x, y = load_fashion_mnist("test", size=32)
    judge = load_classifier()
    accuracy = (judge.predict(x[:500]) == y[:500]).float().mean().item()
    assert accuracy >= 0.90


def test_classifier_features_and_probabilities_have_the_documented_shapes():
    judge = load_classifier()
    x = torch.rand(3, 1, 28, 28) * 2 - 1  # 28x28 input is padded to 32x32
    with torch.no_grad():
        assert judge.features(x).shape == (3, 128)
    p = judge.predict_proba(x)
    assert p.shape == (3, 10) and torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5)


# ---------------------------------------------------------------------------------- the weights

def test_shipped_weights_are_safetensors_under_30_mb_with_training_records():
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert sum(p.stat().st_size for p in files) < 30e6
    for name in ("fashion-vae", "classifier", *BUNDLED):
        record = json.loads((WEIGHTS_DIR / name / "training.json").read_text())
        assert {"seed", "steps", "metrics"} <= set(record)


def test_vae_maps_32px_images_to_4x8x8_latents_with_unit_scaled_variance():
    pipe = load_pipeline("fashion-class")
    record = json.loads((WEIGHTS_DIR / "fashion-vae" / "training.json").read_text())
    assert pipe.vae.config.scaling_factor == pytest.approx(record["metrics"]["scaling_factor"])
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(2, 1, 32, 32) - 1).latent_dist.mean
    assert z.shape == (2, 4, 8, 8)
    assert pipe.vae_scale_factor == 4
    images, _ = load_fashion_mnist("test", size=32)
    with torch.no_grad():
        scaled = pipe.vae.encode(images[:256]).latent_dist.mean * pipe.vae.config.scaling_factor
    assert 0.8 < float(scaled.std()) < 1.2  # what the scaling factor is for


# ------------------------------------------------------------------------------------ pipelines

@pytest.fixture(scope="module")
def class_pipe():
    return load_pipeline("fashion-class")


@pytest.fixture(scope="module")
def text_pipe():
    return load_pipeline("fashion-text")


def test_fashion_class_samples_labels_and_unconditional_as_32px_images(class_pipe):
    gen = torch.Generator().manual_seed(0)
    images = class_pipe([7, None], num_inference_steps=3, guidance_scale=4.0, generator=gen,
                        output_type="pt").images
    assert isinstance(class_pipe, FashionClassPipeline)
    assert images.shape == (2, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_fashion_class_is_reproducible_from_the_generator(class_pipe):
    a = class_pipe([3], num_inference_steps=3, generator=torch.Generator().manual_seed(5),
                   output_type="pt").images
    b = class_pipe([3], num_inference_steps=3, generator=torch.Generator().manual_seed(5),
                   output_type="pt").images
    assert torch.equal(a, b)


def test_fashion_class_loop_steps_through_the_scheduler(class_pipe, monkeypatch):
    calls = []
    original = class_pipe.scheduler.step

    def counting_step(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(class_pipe.scheduler, "step", counting_step)
    class_pipe([1], num_inference_steps=4, output_type="latent")
    assert len(calls) == 4


def test_fashion_class_says_whether_it_applies_guidance(class_pipe):
    for labels, guidance, guided in (([3], 4.0, True), ([None], 4.0, False), ([3], 1.0, False)):
        class_pipe(labels, num_inference_steps=1, guidance_scale=guidance, output_type="latent")
        assert class_pipe.do_classifier_free_guidance is guided


def test_fashion_class_refuses_labels_outside_0_to_9(class_pipe):
    with pytest.raises(SafeDenoiserError, match="0..9"):
        class_pipe([10], num_inference_steps=2)


def test_fashion_text_is_a_stable_diffusion_pipeline_giving_32px_images(text_pipe):
    assert isinstance(text_pipe, StableDiffusionPipeline)
    assert text_pipe.unet.config.sample_size * text_pipe.vae_scale_factor == 32
    assert text_pipe.tokenizer.model_max_length == 24
    images = text_pipe(["a pair of trousers", "footwear for running"], num_inference_steps=3,
                       guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                       output_type="pt").images
    assert images.shape == (2, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_fashion_text_round_trips_through_save_pretrained(text_pipe, tmp_path):
    text_pipe.save_pretrained(tmp_path / "copy")
    again = load_pipeline(str(tmp_path / "copy"))
    assert isinstance(again, StableDiffusionPipeline)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.unet.config) == public(text_pipe.unet.config)
    assert torch.equal(again.unet.conv_in.weight, text_pipe.unet.conv_in.weight)


# ------------------------------------------------------------------------------------- registry

@pytest.mark.parametrize("model, request_args", [("fashion-text", ["--prompt", "a bag"]),
                                                   ("fashion-class", ["--label", "8"])])
def test_a_quiet_command_line_run_on_a_bundled_model_prints_no_library_warnings(model, request_args, tmp_path):
    """Without accelerate and torchvision, diffusers and transformers warned at every model load."""
    done = subprocess.run([sys.executable, "-m", "safedenoiser.cli", "generate", "--model", model, *request_args,
                           "--n", "1", "--steps", "2", "--out", str(tmp_path / "run"), "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_unknown_model_name_lists_the_bundled_models():
    with pytest.raises(SafeDenoiserError, match="fashion-text, fashion-class"):
        load_pipeline("fashion-nonsense")


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(SafeDenoiserError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_a_single_checkpoint_file_is_refused_with_how_to_convert_it(tmp_path):
    checkpoint = tmp_path / "v1-5-pruned.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(SafeDenoiserError, match="single checkpoint file.*from_single_file"):
        load_pipeline(str(checkpoint))


def test_bundled_sampling_defaults_are_the_settings_their_quality_was_measured_with():
    measured = (Path(__file__).parents[1] / "docs" / "results" / "model_quality.md").read_text()
    for name in BUNDLED:
        defaults = sampling_defaults(name)
        steps, guidance = defaults["num_inference_steps"], defaults["guidance_scale"]
        assert f"{name}: DDIM {steps} steps, guidance {guidance}" in measured


# -------------------------------------------------------------------------------------- prompts

def test_heldout_prompts_were_never_trained_on():
    trained = {c for captions in TRAIN_CAPTIONS.values() for c in captions}
    heldout = [p for kinds in HELDOUT_PROMPTS.values() for ps in kinds.values() for p in ps]
    assert not trained & set(heldout)
    assert set(HELDOUT_PROMPTS) == set(range(10))


def test_plain_class_name_prompts_are_training_captions_of_their_class():
    for c, prompt in CLASS_NAME_PROMPTS.items():
        assert prompt in TRAIN_CAPTIONS[c]


@pytest.mark.parametrize("args,message", [
    (["train", "classifier"], "already holds"),  # the bundled weights, before any training
    (["train", "vae", "--vae", "x"], "vae takes none"),
])
def test_train_refuses_before_training(args, message):
    from typer.testing import CliRunner

    from safedenoiser.cli import app

    folder = WEIGHTS_DIR / {"classifier": "classifier", "vae": "fashion-vae"}[args[1]]
    before = sorted(p.stat().st_mtime_ns for p in folder.iterdir())
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SafeDenoiserError) and message in str(result.exception)
    assert sorted(p.stat().st_mtime_ns for p in folder.iterdir()) == before
