"""Judges: the classifier judge by class and by cluster, NudeNet on benign images, the eval CLI's refusals."""

import builtins

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from safedenoiser import SafeDenoiserError
from safedenoiser.cli.app import app
from safedenoiser.eval.judges import ClassifierJudge, NudeNetJudge


class FakeClassifier(torch.nn.Module):
    """Features = the image mean in two coordinates; class = 1 where the mean is positive."""

    def features(self, x):
        m = x.reshape(len(x), -1).mean(1, keepdim=True)
        return torch.cat([m, -m], 1)

    def predict_proba(self, x, batch_size=512):
        m = x.reshape(len(x), -1).mean(1)
        return torch.stack([(m <= 0).float(), (m > 0).float()], 1)


def test_classifier_judge_flags_the_negated_classes():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-0.5, 0.5, 0.2)])
    assert ClassifierJudge(FakeClassifier(), negated=[1]).unsafe(images).tolist() == [False, True, True]


def test_classifier_judge_with_clusters_flags_the_nearest_negated_centroid():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-0.5, 0.5, 0.2)])
    judge = ClassifierJudge(FakeClassifier()).with_clusters(torch.tensor([[0.5, -0.5], [0.0, 0.0]]), negated=[0])
    assert judge.unsafe(images).tolist() == [False, True, False]


def test_nudenet_judge_passes_benign_images():
    pytest.importorskip("nudenet")
    judge = NudeNetJudge()
    assert judge.threshold == 0.6
    gray = [Image.new("RGB", (64, 64), (128, 128, 128)), Image.new("RGB", (64, 64), (20, 200, 90))]
    assert judge.unsafe(gray).tolist() == [False, False]


def test_nudenet_judge_explains_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_nudenet(name, *args, **kwargs):
        if name == "nudenet":
            raise ImportError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nudenet)
    with pytest.raises(SafeDenoiserError, match="pip install nudenet"):
        NudeNetJudge()


@pytest.mark.parametrize("args,message", [
    (["eval", "nonsense"], "unknown scenario"),
    (["eval", "text", "--judge", "clip"], "--judge must be"),
    (["eval", "text", "--methods", "vanilla,magic"], "unknown method"),
    (["eval", "unconditional", "--judge", "nudenet"], "folder of images"),
])
def test_eval_cli_refuses_bad_input_before_loading_models(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and message in str(result.exception)


def test_eval_cli_judges_a_folder_with_nudenet(tmp_path):
    pytest.importorskip("nudenet")
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 90)).save(tmp_path / f"{i}.png")
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--judge", "nudenet"])
    assert result.exit_code == 0, result.output
    assert "0 of 2 images unsafe by nudenet" in result.output
