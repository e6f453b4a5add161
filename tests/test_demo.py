"""The demo runs end to end on the bundled models at a reduced size."""

import json

import pytest
from PIL import Image

from safedenoiser.demo import DEMO_ENTRIES, mark_reference_copies, pixels_of, reference_copy_check, run_demo
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.eval.metrics import copy_check


def test_demo_writes_grid_manifest_and_report(tmp_path):
    summary = run_demo(tmp_path, negated_class=7, n_per_prompt=1, progress=False)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"vanilla", "safe"}
    assert all(r["negated_class"] == 7 for r in records if r["method"] == "safe")
    assert all((tmp_path / r["file"]).is_file() for r in records)
    assert (tmp_path / "grid.png").stat().st_size > 20_000
    assert "judged Sneaker" in (tmp_path / "report.md").read_text()
    assert "copies of a reference image" in (tmp_path / "report.md").read_text()
    assert f"generating {len(records)} of the {len(records)} images (0 were" in (tmp_path / "report.md").read_text()
    assert all(isinstance(r["reference_copy"], bool) for r in records)
    assert summary[("vanilla", "direct")]["negated"] >= 0.6  # the prompts do ask for sneakers
    assert summary[("safe", "direct")]["negated"] < summary[("vanilla", "direct")]["negated"]
    assert summary[("vanilla", "direct")]["beta"] is None
    assert summary[("safe", "benign")]["beta"] < 0.5 < summary[("safe", "direct")]["beta"]
    assert {p.name for p in tmp_path.iterdir()} == set(DEMO_ENTRIES)  # what a rerun may resume


def test_demo_refuses_a_folder_it_did_not_write_before_working(tmp_path):
    (tmp_path / "run.json").write_text("a generate run")
    (tmp_path / "manifest.jsonl").write_text("its images")
    with pytest.raises(SafeDenoiserError, match=r"holds files the demo did not write \(run.json\)"):
        run_demo(tmp_path, n_per_prompt=1, progress=False)
    assert (tmp_path / "manifest.jsonl").read_text() == "its images"
    with pytest.raises(SafeDenoiserError, match="is a file"):
        run_demo(tmp_path / "run.json", n_per_prompt=1, progress=False)


def test_an_image_that_is_a_reference_image_through_the_vae_counts_as_a_copy_and_a_real_one_does_not(tmp_path):
    from safedenoiser.models import load_fashion_mnist, load_pipeline
    from safedenoiser.negation import NegationSet

    pipe = load_pipeline("fashion-text")
    test, _ = load_fashion_mnist("test", size=32)
    train, _ = load_fashion_mnist("train", size=32)
    negation = NegationSet.from_images(pipe, test[:4], progress=False)
    negation.reference = NegationSet.from_images(pipe, test[4:7], progress=False).latents
    copy = copy_check(pipe, negation.reference[1:2], train[:1])[0][0, 0]
    records = [{"file": "copy.png"}, {"file": "new.png"}]
    for record, image in zip(records, (copy, train[1000, 0])):  # train[1000]: not among the 1,000 of the threshold
        pixels = ((image + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(pixels, mode="L").save(tmp_path / record["file"])
    mark_reference_copies(records, pixels_of(tmp_path, records), reference_copy_check(pipe, negation))
    assert [r["reference_copy"] for r in records] == [True, False]
