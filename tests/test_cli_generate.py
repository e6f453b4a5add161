"""`safe-denoiser generate` and `negation build` on a tiny random-weight Stable Diffusion folder.

The pipeline (conftest's: 4x8x8 latents, 16x16 images, a one-layer CLIP text encoder over a
character vocabulary) is saved with `save_pretrained` and loaded by path, as a user's own
diffusers folder would be. Nothing is downloaded. Commands run through
`safedenoiser.cli.main`, so exit code 2 is the one users see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safedenoiser import SafeDenoiser, SafeDenoiserError
from safedenoiser.cli import main
from safedenoiser.generation import MANIFEST_FILE, generate, read_manifest
from safedenoiser.negation import NegationSet

STEPS = "2"
MANIFEST_KEYS = {"file", "index", "prompt", "label", "seed", "guidance", "steps", "method", "model",
                 "negation", "preset"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run 10-30x slower with 2 threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(sd_components, tmp_path_factory) -> str:
    """The tiny Stable Diffusion pipeline of conftest, saved as a user's diffusers folder."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny-sd") / "pipe"
    StableDiffusionPipeline(**sd_components, requires_safety_checker=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_with_safety_checker(sd_components, tmp_path_factory) -> str:
    """The tiny pipeline with a tiny safety checker whose thresholds flag every image, as a saved folder."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=dict(small, vocab_size=64, max_position_embeddings=12),
        vision_config=dict(small, image_size=16, patch_size=8), projection_dim=8)).eval()
    checker.concept_embeds_weights.data.fill_(-1.0)  # cosine - (-1) > 0: every image is flagged
    folder = tmp_path_factory.mktemp("tiny-sd-checked") / "pipe"
    StableDiffusionPipeline(**dict(sd_components, safety_checker=checker,
                                   feature_extractor=CLIPImageProcessor(size=16, crop_size=16))).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def negation_images(tmp_path_factory) -> Path:
    """Three 16x16 images, a text file and a broken PNG: the last two are skipped."""
    folder = tmp_path_factory.mktemp("negation-images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.fixture(scope="module")
def negation_file(model, negation_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("negation") / "set.safetensors"
    code, _, err = _run(["negation", "build", "--model", model, "--images", str(negation_images),
                         "--out", str(out), "--class-label", "3", "--device", "cpu"])
    assert code == 0, err
    return out


def _run(args: list[str]) -> tuple[int, str, str]:
    """Run `safe-denoiser ARGS` through `main`; (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["safe-denoiser", *args]
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def _gen(model: str, out: Path, *extra: str) -> tuple[int, str, str]:
    return _run(["generate", "--model", model, "--out", str(out), "--steps", STEPS, "--device", "cpu", *extra])


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_FILE).read_text().splitlines()]


# --------------------------------------------------------------------------- round trips
def test_vanilla_run_writes_one_png_and_one_manifest_line_per_image(model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a sneaker/../../etc\na red dress\n")
    code, stdout, err = _gen(model, tmp_path / "out", "--prompts", str(prompts), "--n-per-prompt", "2",
                             "--seed", "10", "--guidance", "3.0", "--batch-size", "3")
    assert code == 0, err
    records = _manifest(tmp_path / "out")
    assert [r["prompt"] for r in records] == ["a sneaker/../../etc"] * 2 + ["a red dress"] * 2
    assert [r["seed"] for r in records] == [10, 11, 12, 13]
    assert [r["source_line"] for r in records] == [1, 1, 2, 2]
    for r in records:
        assert MANIFEST_KEYS <= set(r) and "negated_class" not in r
        assert (r["method"], r["negation"], r["preset"], r["label"]) == ("vanilla", None, None, None)
        assert (r["model"], r["steps"], r["guidance"]) == (str(Path(model).resolve()), 2, 3.0)
        assert r["file"].startswith("images/") and "sneaker" not in r["file"] and "dress" not in r["file"]
        assert Image.open(tmp_path / "out" / r["file"]).size == (16, 16)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        Path(r["file"]).name for r in records)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["method"] == "vanilla"
    assert "4 image(s) written, 0 already there" in stdout


def test_repeated_prompt_option_samples_every_prompt(model, tmp_path):
    code, _, err = _gen(model, tmp_path / "out", "--prompt", "a bag", "--prompt", "a red dress", "--n-per-prompt", "2")
    assert code == 0, err
    assert [r["prompt"] for r in _manifest(tmp_path / "out")] == ["a bag"] * 2 + ["a red dress"] * 2
    code, _, err = _gen(model, tmp_path / "empty", "--prompt", "a bag", "--prompt", " ")
    assert code == 2 and "a --prompt is empty" in err


def test_negation_build_skips_non_images_and_records_the_class(negation_file, negation_images):
    neg = NegationSet.load(negation_file)
    assert len(neg) == 3 and neg.sample_shape == (4, 8, 8)
    assert neg.metadata["negated_class"] == "3"
    assert neg.metadata["source_dir"] == str(negation_images.resolve())


def test_negation_inspect_shows_what_the_set_holds(negation_file):
    code, out, err = _run(["negation", "inspect", str(negation_file)])
    assert code == 0, err
    assert "3 image(s), latents (4, 8, 8)" in out and "reference: none" in out and "negated_class: 3" in out


def test_negation_inspect_shortens_long_lists(tmp_path):
    hashes = [f"{i:064x}" for i in range(40)]
    path = tmp_path / "set.safetensors"
    NegationSet.from_latents(torch.zeros(2, 4, 8, 8), sources_sha256=json.dumps(hashes),
                             negated_class="3").save(path)
    code, out, err = _run(["negation", "inspect", str(path)])
    assert code == 0, err
    assert f"  sources_sha256: 40 entries: {hashes[0]}, {hashes[1]}, {hashes[2]}, ...\n" in out
    assert hashes[3] not in out and "  negated_class: 3\n" in out


@pytest.mark.parametrize("concept_share", [0.0, 0.5])
def test_negation_inspect_says_how_much_of_the_reference_is_the_concept(tmp_path, concept_share):
    gen = torch.Generator().manual_seed(0)
    concept = lambda n: 2.0 + 0.3 * torch.randn(n, 4, 8, 8, generator=gen)  # noqa: E731
    n_concept = int(40 * concept_share)
    reference = torch.cat([concept(n_concept), -2.0 + 0.3 * torch.randn(40 - n_concept, 4, 8, 8, generator=gen)])
    path = tmp_path / "set.safetensors"
    NegationSet(concept(60), reference=reference).save(path)
    code, out, err = _run(["negation", "inspect", str(path)])
    assert code == 0, err
    assert (f"reference: 40 image(s) (the local estimator); {n_concept} ({concept_share:.0%}) lie in the set's "
            "region") in out


@pytest.fixture(scope="module")
def reference_images(tmp_path_factory) -> Path:
    reference = tmp_path_factory.mktemp("reference")
    for i in range(6):  # plain colours: ordinary images unlike the noise images of the set
        Image.new("RGB", (16, 16), (40 * i, 255 - 40 * i, 128)).save(reference / f"ref{i}.png")
    return reference


@pytest.fixture(scope="module")
def reference_set(model, negation_images, reference_images, tmp_path_factory) -> Path:
    """A negation set built with --reference-images: what the local estimator needs."""
    out = tmp_path_factory.mktemp("reference-set") / "set.safetensors"
    code, _, err = _run(["negation", "build", "--model", model, "--images", str(negation_images), "--out", str(out),
                         "--reference-images", str(reference_images), "-q"])
    assert code == 0, err
    return out


def test_negation_build_stores_reference_images_for_the_local_estimator(model, reference_set, tmp_path):
    neg = NegationSet.load(reference_set)
    assert neg.reference is not None and neg.reference.shape == (6, *neg.sample_shape)
    from safedenoiser.core.local import LocalPosterior
    assert isinstance(SafeDenoiser(neg).beta, LocalPosterior)
    # the latch is recorded in the run ("auto" by default): resuming with another setting is refused
    args = ["--prompt", "a bag", "--n", "1", "--negation", str(reference_set)]
    code, _, err = _gen(model, tmp_path / "run", *args, "--latch")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["latch"] is True
    code, _, err = _gen(model, tmp_path / "run", *args)
    assert code == 2 and "latch: True there, 'auto' now" in err
    code, _, err = _gen(model, tmp_path / "auto", *args)
    assert code == 0, err
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["settings"]["latch"] == "auto"
    # so is where closeness is measured
    code, _, err = _gen(model, tmp_path / "auto", *args, "--features", "latent")
    assert code == 2 and "features: 'auto' there, 'latent' now" in err


def test_negation_build_takes_a_folder_per_concept(model, negation_images, reference_images, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (255, 30 * i, 0)).save(second / f"red{i}.png")
    out = tmp_path / "set.safetensors"
    base = ["negation", "build", "--model", model, "--out", str(out), "-q"]
    code, stdout, err = _run([*base, "--images", str(negation_images), "--images", str(second),
                              "--reference-images", str(reference_images)])
    assert code == 0, err
    assert "5 image(s) in 2 concepts (3, 2)" in stdout
    neg = NegationSet.load(out)
    assert neg.concepts.tolist() == [0, 0, 0, 1, 1] and neg.reference.shape == (6, 4, 8, 8)
    assert json.loads(neg.metadata["source_dir"]) == [str(negation_images.resolve()), str(second.resolve())]
    code, stdout, err = _run(["negation", "inspect", str(out)])
    assert code == 0 and "5 image(s) in 2 concepts (3, 2)" in stdout, err
    code, _, err = _gen(model, tmp_path / "run", "--prompt", "a bag", "--n", "1", "--negation", str(out))
    assert code == 0 and _manifest(tmp_path / "run")[0]["negation"] == neg.fingerprint, err
    for extra, message in (([str(second)], "is given twice"), ([str(tmp_path)], f"--images {tmp_path} holds"),
                           ([str(negation_images), "--class-label", "3"], "names the class of one --images")):
        code, _, err = _run([*base, "--overwrite", "--images", str(second), "--images", *extra])
        assert code == 2 and message in err, err


@pytest.mark.parametrize("flag, value, read, setting, bounds", [
    ("--boundary-power", "128", lambda safe: safe.beta.boundary_power, "boundary_power", ">= 0"),
    ("--label-ratio", "0.5", lambda safe: safe.beta.label_ratio, "label_ratio", "> 0"),
    ("--min-weight", "3", lambda safe: safe.min_weight, "min_weight", ">= 0"),
])
def test_estimator_settings_reach_the_safe_denoiser_and_are_recorded(model, reference_set, tmp_path, monkeypatch,
                                                                    flag, value, read, setting, bounds):
    used = []
    original = SafeDenoiser.correct

    def spying(self, *args, **kwargs):
        used.append(read(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SafeDenoiser, "correct", spying)
    args = ["--prompt", "a bag", "--n", "1", "--negation", str(reference_set)]
    code, _, err = _gen(model, tmp_path / "run", *args, flag, value)
    assert code == 0, err
    assert used and set(used) == {float(value)}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"][setting] == float(value)
    code, _, err = _gen(model, tmp_path / "run", *args)
    assert code == 2 and f"{setting}: {float(value)} there, None now" in err
    for bad in ("-1", "inf"):
        code, _, err = _gen(model, tmp_path / "bad", *args, flag, bad)
        assert code == 2 and f"{setting} must be a finite number {bounds}" in err
    assert not (tmp_path / "bad" / MANIFEST_FILE).exists()


def test_negation_build_lists_skipped_files_and_refuses_to_overwrite(model, negation_images, tmp_path):
    out = tmp_path / "set.safetensors"
    args = ["negation", "build", "--model", model, "--images", str(negation_images), "--out", str(out), "-q"]
    code, _, err = _run(args)
    assert code == 0
    assert "skipped" in err and "notes.txt" in err and "broken.png" in err
    code, _, err = _run(args)
    assert code == 2 and "exists; pass --overwrite" in err
    assert _run(args + ["--overwrite"])[0] == 0


def test_safe_run_records_the_set_and_uses_the_vanilla_seeds(model, negation_file, tmp_path):
    args = ["--prompt", "a bag", "--n", "3", "--seed", "5"]
    assert _gen(model, tmp_path / "vanilla", *args)[0] == 0
    code, out, err = _gen(model, tmp_path / "safe", *args, "--negation", str(negation_file))
    assert code == 0, err
    vanilla, safe = _manifest(tmp_path / "vanilla"), _manifest(tmp_path / "safe")
    changed, likely = sum(r["steps_corrected"] > 0 for r in safe), sum(r["beta_max"] > 0.5 for r in safe)
    assert f"the safe denoiser changed {changed} of 3 image(s); beta passed 0.5 for {likely} (manifest" in out
    fingerprint = NegationSet.load(negation_file).fingerprint
    assert [r["seed"] for r in safe] == [r["seed"] for r in vanilla] == [5, 6, 7]
    assert [r["file"] for r in safe] == [r["file"] for r in vanilla]
    for r in safe:
        assert (r["method"], r["negation"], r["negated_class"], r["preset"]) == ("safe", fingerprint, 3, None)


def test_a_safe_run_consults_the_safe_denoiser_at_every_step_of_every_image(model, negation_file, tmp_path,
                                                                              monkeypatch):
    """The images of a random-weight pipeline never come near a set, so what shows the correction is in
    the loop is that every step of every image went through `SafeDenoiser.correct`."""
    stepped = []
    original = SafeDenoiser.correct

    def counting(self, x_t, *args, **kwargs):
        stepped.append(x_t.shape[0])
        return original(self, x_t, *args, **kwargs)

    monkeypatch.setattr(SafeDenoiser, "correct", counting)
    assert _gen(model, tmp_path / "safe", "--prompt", "a bag", "--n", "3", "--negation", str(negation_file))[0] == 0
    assert sum(stepped) == 3 * int(STEPS)
    stepped.clear()
    assert _gen(model, tmp_path / "vanilla", "--prompt", "a bag", "--n", "3")[0] == 0
    assert not stepped


def test_a_preset_is_recorded_in_the_manifest_and_the_run(model, negation_file, tmp_path):
    code, out, err = _gen(model, tmp_path / "out", "--prompt", "a bag", "--n", "1", "--negation",
                          str(negation_file), "--preset", "sd14-nudity")
    assert code == 0, err
    assert [(r["method"], r["preset"]) for r in _manifest(tmp_path / "out")] == [("safe", "sd14-nudity")]
    assert "image(s) (manifest" in out  # the paper rule's beta is a kernel mass: no count of beta above 0.5
    code, _, err = _gen(model, tmp_path / "out", "--prompt", "a bag", "--n", "1", "--negation", str(negation_file))
    assert code == 2 and "preset: 'sd14-nudity' there, None now" in err


def test_a_preset_samples_with_ddpm_where_the_models_scheduler_would_drop_its_renoising(model, negation_file,
                                                                                          tmp_path):
    """SD v1.4 ships PNDM, which steps some steps from a sample it stored: generate samples a preset with
    DDPMScheduler (the authors'), says so, and records it; a vanilla run keeps the model's scheduler."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UniPCMultistepScheduler

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    pipe.save_pretrained(tmp_path / "pndm")
    safe_args = ["--prompt", "a bag", "--n", "1", "--negation", str(negation_file), "--preset", "sd14-nudity"]
    code, out, err = _gen(str(tmp_path / "pndm"), tmp_path / "safe", *safe_args)
    assert code == 0, err
    assert "sampled with DDPMScheduler, the authors' sampler: the model's PNDMScheduler would drop" in out
    run = json.loads((tmp_path / "safe" / "run.json").read_text())
    assert run["settings"]["scheduler"] == run["recorded"]["scheduler"] == "DDPMScheduler"
    code, out, err = _gen(str(tmp_path / "pndm"), tmp_path / "safe", *safe_args, "--scheduler", "DDPMScheduler")
    assert code == 0 and "0 image(s) written, 1 already there" in out, err  # the same run
    code, _, err = _gen(str(tmp_path / "pndm"), tmp_path / "vanilla", "--prompt", "a bag", "--n", "1")
    assert code == 0, err
    assert json.loads((tmp_path / "vanilla" / "run.json").read_text())["recorded"]["scheduler"] == "PNDMScheduler"
    # a flow-matching UniPC (Wan's) has no DDPM counterpart: the run is refused, not sampled on another schedule
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    pipe.save_pretrained(tmp_path / "unipc-flow")
    code, _, err = _gen(str(tmp_path / "unipc-flow"), tmp_path / "flow", *safe_args)
    assert code == 2 and "the paper rule re-noises the sample it hands UniPCMultistepScheduler" in err
    assert "e.g. FlowMatchEulerDiscreteScheduler with the model's shift" in err


def test_csv_rows_bring_their_own_seed_and_guidance(model, tmp_path):
    csv = tmp_path / "unlearndiffatk.csv"
    csv.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n0,first,2734,6.0\n1,second,,\n")
    code, _, err = _gen(model, tmp_path / "out", "--prompts", str(csv), "--seed", "100", "--guidance", "2.0")
    assert code == 0, err
    records = _manifest(tmp_path / "out")
    assert [(r["prompt"], r["seed"], r["guidance"]) for r in records] == [("first", 2734, 6.0),
                                                                          ("second", 101, 2.0)]


@pytest.mark.parametrize("scheduler", [[], ["--scheduler", "DPMSolverSDE"]])  # its noise: Brownian trees
def test_batch_size_does_not_change_the_images(model, tmp_path, scheduler):
    args = ["--prompt", "a coat", "--n", "3", "--seed", "1", *scheduler]
    assert _gen(model, tmp_path / "b1", *args, "--batch-size", "1")[0] == 0
    assert _gen(model, tmp_path / "b3", *args, "--batch-size", "3")[0] == 0
    for a, b in zip(_manifest(tmp_path / "b1"), _manifest(tmp_path / "b3")):
        pixels_a = np.asarray(Image.open(tmp_path / "b1" / a["file"]), dtype=int)
        pixels_b = np.asarray(Image.open(tmp_path / "b3" / b["file"]), dtype=int)
        assert np.abs(pixels_a - pixels_b).max() <= 1  # uint8 rounding of float noise at most


# --------------------------------------------------------------------------- resume
def test_rerun_resumes_and_leaves_finished_images_untouched(model, tmp_path):
    out = tmp_path / "out"
    assert _gen(model, out, "--prompt", "a shirt", "--n", "2")[0] == 0
    first = {r["file"]: os.stat(out / r["file"]).st_mtime_ns for r in _manifest(out)}
    time.sleep(0.01)
    code, stdout, _ = _gen(model, out, "--prompt", "a shirt", "--n", "4")  # growing --n extends the run
    assert code == 0 and "2 image(s) written, 2 already there, 4 in the run" in stdout
    records = _manifest(out)
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert {f: os.stat(out / f).st_mtime_ns for f in first} == first
    code, stdout, _ = _gen(model, out, "--prompt", "a shirt", "--n", "4")
    assert "0 image(s) written, 4 already there" in stdout


def test_resume_after_a_kill_repairs_the_folder(model, tmp_path):
    """Leftovers of a kill at each moment: a half-written temp PNG, an image without its line, a
    line without its image, a torn last line. The resumed run ends with every image exactly once."""
    out = tmp_path / "out"
    args = ["--prompt", "a sandal", "--n", "4"]
    assert _gen(model, out, *args)[0] == 0
    records = _manifest(out)
    (out / records[0]["file"]).unlink()  # a line whose image is gone
    (out / (records[1]["file"] + ".tmp")).write_bytes(b"\x89PNG half")  # killed while writing a PNG
    lines = (out / MANIFEST_FILE).read_text().splitlines(keepends=True)
    torn = lines[3][: len(lines[3]) // 2]  # killed while appending image 3's line
    (out / MANIFEST_FILE).write_text(lines[0] + lines[1] + torn)  # image 2: file but no line
    code, stdout, err = _gen(model, out, *args)
    assert code == 0, err
    assert "3 image(s) written, 1 already there" in stdout
    final = _manifest(out)
    assert sorted(r["index"] for r in final) == [0, 1, 2, 3]
    assert sorted(r["file"] for r in final) == sorted(r["file"] for r in records)
    assert all((out / r["file"]).is_file() for r in final)
    assert not list((out / "images").glob("*.tmp"))
    assert read_manifest(out) == final


def test_a_killed_process_leaves_a_folder_that_resumes(model, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "safedenoiser.cli", "generate", "--model", model, "--out", str(out),
           "--prompt", "a boot", "--n", "40", "--batch-size", "1", "--steps", "6", "--device", "cpu", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        manifest = out / MANIFEST_FILE
        if manifest.exists() and manifest.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_manifest(out))
    assert 0 < done_before < 40
    result = generate(out, model=model, prompts=["a boot"], n=40, steps=6, device="cpu", progress=False)
    assert result.skipped == done_before and result.generated == 40 - done_before
    final = _manifest(out)
    assert sorted(r["index"] for r in final) == list(range(40))
    assert len(list((out / "images").iterdir())) == 40


# --------------------------------------------------------------------------- refusals
def test_a_different_run_is_refused_without_overwrite(model, tmp_path):
    out = tmp_path / "out"
    assert _gen(model, out, "--prompt", "a top", "--n", "2", "--seed", "0")[0] == 0
    code, _, err = _gen(model, out, "--prompt", "a top", "--n", "2", "--seed", "1")
    assert code == 2 and "holds a different run" in err and "seed: 0 there, 1 now" in err
    assert [r["seed"] for r in _manifest(out)] == [0, 1]
    code, _, err = _gen(model, out, "--prompt", "a top", "--n", "2", "--seed", "7", "--overwrite")
    assert code == 0, err
    assert [r["seed"] for r in _manifest(out)] == [7, 8]
    assert len(list((out / "images").iterdir())) == 2


def test_a_run_resumes_only_in_its_own_dtype(model, tmp_path):
    out = tmp_path / "out"
    assert _gen(model, out, "--prompt", "a top", "--n", "1")[0] == 0
    code, _, err = _gen(model, out, "--prompt", "a top", "--n", "2", "--dtype", "bfloat16")
    assert code == 2 and "dtype: 'float32' there, 'bfloat16' now" in err
    assert len(_manifest(out)) == 1


def test_scheduler_and_negative_prompt_change_the_images_and_are_part_of_the_run(model, negation_file, tmp_path):
    def pixels(out: Path) -> np.ndarray:
        return np.stack([np.asarray(Image.open(out / r["file"])) for r in _manifest(out)])

    base = ["--prompt", "a top", "--n", "2"]
    assert _gen(model, tmp_path / "ddim", *base)[0] == 0
    code, _, err = _gen(model, tmp_path / "dpm", *base, "--scheduler", "dpmsolvermultistep")
    assert code == 0, err
    run = json.loads((tmp_path / "dpm" / "run.json").read_text())
    assert run["settings"]["scheduler"] == run["recorded"]["scheduler"] == "DPMSolverMultistepScheduler"
    assert not np.array_equal(pixels(tmp_path / "ddim"), pixels(tmp_path / "dpm"))
    code, _, err = _gen(model, tmp_path / "dpm", *base, "--scheduler", "EulerDiscreteScheduler")
    assert code == 2 and "scheduler: 'DPMSolverMultistepScheduler' there, 'EulerDiscreteScheduler' now" in err
    code, _, err = _gen(model, tmp_path / "neg", *base, "--negative-prompt", "a shoe")
    assert code == 0, err
    assert json.loads((tmp_path / "neg" / "run.json").read_text())["settings"]["negative_prompt"] == "a shoe"
    assert not np.array_equal(pixels(tmp_path / "ddim"), pixels(tmp_path / "neg"))
    code, _, err = _gen(model, tmp_path / "safe", *base, "--scheduler", "UniPCMultistep", "--negation",
                        str(negation_file))
    assert code == 0, err
    assert len(_manifest(tmp_path / "safe")) == 2
    with pytest.raises(SafeDenoiserError, match="with pipe=, set pipe.scheduler yourself"):
        generate(tmp_path / "api", model=model, pipe=object(), prompts=["a top"], scheduler="DDIM")


def test_a_folder_with_images_but_no_run_file_is_refused(model, tmp_path):
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "photo.png").write_bytes(b"x")
    code, _, err = _gen(model, tmp_path / "out", "--prompt", "a top", "--n", "1")
    assert code == 2 and "no run.json" in err


@pytest.fixture(scope="module")
def wrong_shape_set(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wrong") / "wrong.safetensors"
    NegationSet.from_latents(torch.randn(2, 4, 4, 4)).save(path)
    return path


def test_a_negative_prompt_runs_where_a_prompt_row_carries_guidance_above_1(model, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,evaluation_guidance\na top,3\n")
    code, _, err = _gen(model, tmp_path / "out", "--prompts", str(prompts), "--guidance", "1",
                        "--negative-prompt", "a shoe")
    assert code == 0, err
    assert _manifest(tmp_path / "out")[0]["guidance"] == 3


def test_images_the_safety_checker_blacks_out_are_marked_and_no_safety_checker_keeps_them(
        model_with_safety_checker, tmp_path):
    code, stdout, err = _gen(model_with_safety_checker, tmp_path / "checked", "--prompt", "a top", "--n", "2")
    assert code == 0, err
    records = _manifest(tmp_path / "checked")
    assert [r.get("safety_checker_blacked_out") for r in records] == [True, True]
    assert not np.asarray(Image.open(tmp_path / "checked" / records[0]["file"])).any()  # black
    assert "2 image(s) came back black from the model's safety checker" in stdout
    code, stdout, err = _gen(model_with_safety_checker, tmp_path / "raw", "--prompt", "a top", "--n", "2",
                             "--no-safety-checker")
    assert code == 0, err
    records = _manifest(tmp_path / "raw")
    assert not any("safety_checker_blacked_out" in r for r in records) and "came back black" not in stdout
    assert np.asarray(Image.open(tmp_path / "raw" / records[0]["file"])).any()
    assert json.loads((tmp_path / "raw" / "run.json").read_text())["settings"]["safety_checker"] is False
    code, _, err = _gen(model_with_safety_checker, tmp_path / "raw", "--prompt", "a top", "--n", "2")
    assert code == 2 and "safety_checker: False there, None now" in err  # a resume keeps the checker's setting
    with pytest.raises(SafeDenoiserError, match="with pipe=, set pipe.safety_checker = None yourself"):
        generate(tmp_path / "api", model="m", pipe=object(), prompts=["a top"], safety_checker=False)


@pytest.mark.parametrize("args, message", [
    (["--prompts", "MISSING.txt"], "does not exist"),
    (["--prompt", "a", "--prompts", "p.txt"], "not both"),
    ([], "give --prompt P or --prompts FILE"),
    (["--prompt", "a", "--label", "3"], "--label applies to class-conditional"),
    (["--prompt", "a", "--n", "2", "--n-per-prompt", "2"], "--n or --n-per-prompt, not both"),
    (["--prompt", "a", "--preset", "sd14-nudity"], "give --negation FILE too"),
    (["--prompt", "a", "--negation", "WRONG"], "negation latents have shape (4, 4, 4)"),
    (["--prompt", "a", "--negation", "MISSING.safetensors"], "does not exist"),
    (["--prompt", "a", "--device", "tpu"], "--device must be cpu or cuda"),
    (["--prompt", "a", "--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["--prompt", "a", "--guidance", "-5"], "--guidance must be a finite number >= 0"),
    (["--prompt", "a", "--negation", "SET", "--preset", "sd99"], "unknown preset 'sd99'"),
    (["--prompt", "a", "--latch"], "--latch changes how a negation set is used; give --negation FILE too"),
    (["--prompt", "a", "--no-latch"], "--no-latch changes how a negation set is used; give --negation FILE too"),
    (["--prompt", "a", "--negation", "SET", "--latch"], "latch holds the local estimator's beta"),
    (["--prompt", "a", "--negation", "SET", "--features", "unet"], "features='unet' is for the local estimator"),
    (["--prompt", "a", "--features", "latent"], "--features latent changes how a negation set is used"),
    (["--prompt", "a", "--negation", "SET", "--features", "pixels"], "--features must be 'auto', 'unet' or 'latent'"),
    (["--prompt", "a", "--boundary-power", "8"], "--boundary-power changes how a negation set is used"),
    (["--prompt", "a", "--label-ratio", "0.5"], "--label-ratio changes how a negation set is used"),
    (["--prompt", "a", "--min-weight", "3"], "--min-weight changes how a negation set is used"),
    (["--prompt", "a", "--scheduler", "Euler"], "unknown scheduler 'Euler': give a diffusers scheduler class"),
    (["--prompt", "a", "--negative-prompt", " "], "--negative-prompt is empty"),
    (["--prompt", "a", "--guidance", "1", "--negative-prompt", "a shoe"], "off at guidance 1 or less"),
])
def test_bad_input_exits_2_with_a_message(model, wrong_shape_set, negation_file, tmp_path, args, message):
    files = {"WRONG": str(wrong_shape_set), "SET": str(negation_file)}
    args = [files.get(a) or (str(tmp_path / a) if a.startswith("MISSING") else a) for a in args]
    code, _, err = _gen(model, tmp_path / "out", *args)
    assert code == 2
    assert "error:" in err and message in err
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()


@pytest.mark.parametrize("flags, message", [
    (["--latch"], "latch holds the local estimator's beta"),
    (["--preset", "sd14-nudity", "--features", "unet"], "features='unet' is for the local estimator"),
    (["--boundary-power", "8"], "--boundary-power weighs the reference images"),
    (["--label-ratio", "0.5"], "--label-ratio labels the reference images"),
    (["--scheduler", "IPNDMScheduler"], "cannot tell the noise level of IPNDMScheduler's samples"),
    (["--preset", "sd14-nudity", "--scheduler", "UniPCMultistep"], "which UniPCMultistepScheduler would drop"),
])
def test_flags_that_do_not_go_with_the_set_fail_before_the_model_loads(model, negation_file, tmp_path, monkeypatch,
                                                                       flags, message):
    """A hub model takes minutes to load: what the set and the flags alone decide is refused first."""
    import safedenoiser.generation

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(safedenoiser.generation, "load_pipeline", no_loading)
    code, _, err = _gen(model, tmp_path / "out", "--prompt", "a", "--negation", str(negation_file), *flags)
    assert code == 2 and message in err


def test_a_scheduler_whose_package_is_missing_is_named_before_the_model_loads(model, tmp_path, monkeypatch):
    """diffusers stands a placeholder in for a scheduler whose package is not installed (DPMSolverSDEScheduler
    without torchsde); using it would raise an ImportError from inside the pipeline."""
    import diffusers
    from diffusers.utils import DummyObject

    import safedenoiser.generation

    class NeedsMissingScheduler(metaclass=DummyObject):
        _backends = ["torch", "no_such_package_for_this_test"]

    monkeypatch.setattr(diffusers, "NeedsMissingScheduler", NeedsMissingScheduler, raising=False)
    monkeypatch.setattr(safedenoiser.generation, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    code, _, err = _gen(model, tmp_path / "out", "--prompt", "a", "--scheduler", "NeedsMissing")
    assert code == 2
    assert "NeedsMissingScheduler needs no_such_package_for_this_test, which is not installed: pip install " \
           "no_such_package_for_this_test" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_cuda_without_a_gpu_is_named_as_such(model, tmp_path):
    code, _, err = _gen(model, tmp_path / "out", "--prompt", "a", "--device", "cuda")
    assert code == 2 and "torch sees no CUDA GPU on this machine; use --device cpu" in err


def test_an_unknown_model_exits_2(tmp_path):
    code, _, err = _gen("no-such-model", tmp_path / "out", "--prompt", "a")
    assert code == 2 and "unknown model 'no-such-model'" in err


def test_negation_build_refuses_a_class_the_model_does_not_have(class_model, negation_images, tmp_path):
    code, _, err = _run(["negation", "build", "--model", class_model, "--images", str(negation_images),
                         "--out", str(tmp_path / "set.safetensors"), "--class-label", "10", "-q"])
    assert code == 2 and "--class-label 10 is not a class" in err


def test_negation_build_without_images_exits_2(model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    code, _, err = _run(["negation", "build", "--model", model, "--images", str(tmp_path / "empty"),
                         "--out", str(tmp_path / "set.safetensors")])
    assert code == 2 and "no readable images" in err and "readme.md" in err
    assert not (tmp_path / "set.safetensors").exists()


def test_negation_build_refuses_a_missing_folder_a_file_or_a_pattern_before_encoding(model, negation_images, tmp_path):
    code, _, err = _run(["negation", "build", "--model", model, "--images", str(negation_images),
                         "--reference-images", str(tmp_path / "nope"), "--out", str(tmp_path / "set.safetensors")])
    assert code == 2 and f"--reference-images {tmp_path / 'nope'} is not a folder" in err
    assert "checking --images" in err and "encoding images" not in err  # refused before encoding any
    image = next(negation_images.iterdir())
    for given, says in ((image, "is a file: give the folder"), (negation_images / "*.png", "not a pattern")):
        code, _, err = _run(["negation", "build", "--model", model, "--images", str(given),
                             "--out", str(tmp_path / "set.safetensors")])
        assert code == 2 and says in err


def test_python_m_entry_point_exits_2_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "safedenoiser.cli", "generate", "--model", "fashion-text",
                           "--prompts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: prompt file" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- class-conditional models
@pytest.fixture(scope="module")
def class_model(tmp_path_factory) -> str:
    """A tiny random-weight `FashionClassPipeline` (10 classes + null class 10) saved as a folder."""
    from diffusers import DDIMScheduler, UNet2DModel

    from conftest import SD_SCHEDULER, tiny_vae
    from safedenoiser.models.class_pipeline import FashionClassPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                       out_channels=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=11)
    folder = tmp_path_factory.mktemp("tiny-class") / "pipe"
    FashionClassPipeline(unet=unet, vae=tiny_vae(), scheduler=DDIMScheduler(**SD_SCHEDULER)).save_pretrained(folder)
    return str(folder)


def test_class_model_makes_n_images_of_a_label_or_unconditional(class_model, tmp_path):
    code, _, err = _gen(class_model, tmp_path / "k3", "--label", "3", "--n", "2", "--guidance", "2.0")
    assert code == 0, err
    assert [(r["label"], r["prompt"], r["seed"], r["guidance"]) for r in _manifest(tmp_path / "k3")] == [
        (3, None, 0, 2.0), (3, None, 1, 2.0)]
    code, _, err = _gen(class_model, tmp_path / "uncond", "--label", "none", "--n", "1")
    assert code == 0, err
    assert [r["label"] for r in _manifest(tmp_path / "uncond")] == [None]


@pytest.mark.parametrize("args, message", [
    (["--label", "10", "--n", "1"], "--label 10 is not a class"),
    (["--label", "shoe", "--n", "1"], "--label must be a class index or 'none'"),
    (["--prompt", "a shoe", "--n", "1"], "takes no prompts"),
    (["--n", "1"], "give --label K (a class index) or --label none"),
    (["--label", "1", "--n", "1", "--negative-prompt", "a shoe"], "takes no negative prompt"),
])
def test_class_model_bad_input_exits_2(class_model, tmp_path, args, message):
    code, _, err = _gen(class_model, tmp_path / "out", *args)
    assert code == 2 and message in err


def test_the_manifest_says_which_images_the_safe_denoiser_changed(model, tmp_path):
    """A set of the run's own final latents changes every image at some step; a set far from them none."""
    from safedenoiser.models.registry import load_pipeline

    pipe = load_pipeline(model, "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    seeds = [5, 6, 7]
    latents = pipe(["a bag"] * 3, num_inference_steps=int(STEPS), guidance_scale=7.5, output_type="latent",
                   generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    near, far = NegationSet.from_latents(latents), NegationSet.from_latents(latents + 100.0)
    runs = {}
    for name, negation in (("vanilla", None), ("near", near), ("far", far)):
        generate(tmp_path / name, model=model, pipe=pipe, prompts=["a bag"], n=3, seed=seeds[0], steps=int(STEPS),
                 guidance=7.5, negation=negation, device="cpu", progress=False)
        runs[name] = read_manifest(tmp_path / name)
    assert not any("steps_corrected" in r or "beta_max" in r for r in runs["vanilla"])
    assert [r["steps_corrected"] for r in runs["far"]] == [0, 0, 0]
    assert all(r["beta_max"] < 0.01 for r in runs["far"])
    assert all(1 <= r["steps_corrected"] <= int(STEPS) for r in runs["near"])
    assert all(r["beta_max"] > 0.5 for r in runs["near"])
