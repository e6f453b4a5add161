"""The demo runs end to end on the bundled models at a reduced size."""

import json

from safedenoiser.demo import run_demo


def test_demo_writes_grid_manifest_and_report(tmp_path):
    summary = run_demo(tmp_path, negated_class=7, n_per_prompt=1, progress=False)
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"vanilla", "safe"}
    assert all(r["negated_class"] == 7 for r in records if r["method"] == "safe")
    assert all((tmp_path / r["file"]).is_file() for r in records)
    assert (tmp_path / "grid.png").stat().st_size > 20_000
    assert "judged Sneaker" in (tmp_path / "report.md").read_text()
    assert summary[("vanilla", "direct")]["negated"] >= 0.6  # the prompts do ask for sneakers
