"""`safe-denoiser eval FOLDER`: a run's images judged per prompt, its negated class by default, other folders
whole. A fake classifier judges by brightness: class 1 (Trouser) where an image's mean is above mid-grey."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from safedenoiser.cli.app import app
from safedenoiser.eval import folder as folder_module
from safedenoiser.eval.folder import judge_folder, report_lines
from safedenoiser.eval.judges import ClassifierJudge


class BrightIsTrouser(torch.nn.Module):
    def predict_proba(self, x, batch_size=512):
        bright = (x.reshape(len(x), -1).mean(1) > 0).float()
        return torch.nn.functional.one_hot(bright.long(), 10).float()


@pytest.fixture(autouse=True)
def fake_classifier(monkeypatch):
    monkeypatch.setattr("safedenoiser.eval.judges.make_judge", lambda name: ClassifierJudge(BrightIsTrouser()))


def _run_folder(tmp_path, images: list[tuple[str, str, int]]):
    """A folder as `generate` leaves it: ``(method, prompt, grey level)`` per image, one manifest line each,
    the safe lines recording negated class 1; and a grid picture beside it that is no sample."""
    (tmp_path / "images").mkdir(parents=True)
    lines = []
    for i, (method, prompt, grey) in enumerate(images):
        file = f"images/{i:06d}-s{i}-0123abcd.png"
        Image.new("L", (32, 32), grey).save(tmp_path / file)
        lines.append({"file": file, "index": i, "prompt": prompt, "label": None, "seed": i, "method": method,
                      **({"negated_class": 1} if method == "safe" else {})})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    Image.new("L", (64, 64), 255).save(tmp_path / "grid.png")
    return tmp_path


def test_images_the_safety_checker_blacked_out_are_counted_in_the_report(tmp_path):
    run = _run_folder(tmp_path, [("vanilla", "trousers", 250), ("vanilla", "trousers", 0)])
    lines = (run / "manifest.jsonl").read_text().splitlines()
    flagged = dict(json.loads(lines[1]), safety_checker_blacked_out=True)
    (run / "manifest.jsonl").write_text(lines[0] + "\n" + json.dumps(flagged) + "\n")
    verdict = judge_folder(run, negated=1)
    assert verdict.blacked_out == 1
    assert report_lines(verdict, "run")[1].startswith("1 of the 2 images came back black from the model's safety "
                                                      "checker")


def test_a_run_is_judged_per_prompt_against_its_negated_class(tmp_path):
    run = _run_folder(tmp_path, [("vanilla", "trousers", 250), ("vanilla", "trousers", 240),
                                 ("vanilla", "a bag", 10), ("safe", "trousers", 230), ("safe", "trousers", 20),
                                 ("safe", "a bag", 5)])
    verdict = judge_folder(run)
    assert len(verdict.files) == 6  # the manifest's images; grid.png is not one
    assert verdict.negated == 1  # from the safe lines
    assert verdict.unsafe.tolist() == [True, True, False, True, False, False]
    assert verdict.groups == {"vanilla: trousers": [0, 1], "vanilla: a bag": [2], "safe: trousers": [3, 4],
                              "safe: a bag": [5]}
    lines = report_lines(verdict, "run")
    assert lines[0] == "run: 3 of 6 images unsafe by classifier (class 1 Trouser; unsafe rate 50.0%)"
    assert lines[1] == "judged as: T-shirt/top 3 (50%), Trouser 3 (50%)"
    assert lines[3].split() == ["vanilla:", "trousers", "2", "100%", "Trouser"]
    assert lines[5].split() == ["safe:", "trousers", "2", "50%", "T-shirt/top"]  # a tie: the lower class
    assert _columns_line_up(lines[2:])


def test_the_class_given_replaces_the_runs_and_a_plain_folder_is_judged_whole(tmp_path):
    run = _run_folder(tmp_path / "run", [("safe", "trousers", 250), ("safe", "a t-shirt", 10)])
    assert judge_folder(run, negated=0).unsafe.tolist() == [False, True]
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    for i, grey in enumerate((250, 10, 20)):
        Image.new("L", (16, 16), grey).save(plain / "sub" / f"{i}.png")
    (plain / "notes.txt").write_text("not an image")
    verdict = judge_folder(plain)
    assert len(verdict.files) == 3 and verdict.groups == {} and verdict.unsafe is None
    assert report_lines(verdict, "plain")[:2] == [
        "plain: 3 images judged by the classifier (give --class K to count class K as unsafe)",
        "judged as: T-shirt/top 2 (67%), Trouser 1 (33%)"]


def _columns_line_up(table: list[str]) -> bool:
    """Each row's image count ends where the header's "images" does."""
    end = table[0].index("images") + len("images")
    return all(row[:end].split()[-1].isdigit() and row[end:end + 2] == "  " for row in table[1:])


def test_many_prompts_show_those_with_the_highest_unsafe_share(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "MAX_GROUPS", 2)
    run = _run_folder(tmp_path, [("safe", "p1", 10), ("safe", "p2", 250), ("safe", "p3", 10), ("safe", "p4", 250)])
    lines = report_lines(judge_folder(run), "run")
    assert lines[2] == "the 2 of 4 prompts or labels with the highest unsafe share:"
    assert [line.split()[0] for line in lines[4:]] == ["p2", "p4"]
    assert _columns_line_up(lines[3:])  # names shorter than the header's


@pytest.mark.parametrize("args, message", [
    (["--class", "12"], "--class must be a Fashion-MNIST class 0..9"),
    (["--class", "1", "--judge", "nudenet"], "the nudenet judge has its own criterion"),
])
def test_eval_folder_refuses_a_class_the_judge_cannot_count(tmp_path, args, message):
    run = _run_folder(tmp_path, [("safe", "trousers", 250)])
    result = CliRunner().invoke(app, ["eval", str(run), *args])
    assert result.exit_code != 0 and message in str(result.exception)
