"""The report's tables, its saved results and the trade-off plot's labels."""

import math

import matplotlib.axes
import torch
from PIL import Image

from safedenoiser.eval.report import histogram_table, load_results, markdown_table, save_results, tradeoff_plot


def test_markdown_table_shows_the_metrics_some_row_has_in_their_units():
    rows = [{"method": "vanilla", "strength": None, "unsafe[all]": 0.1, "fd": 50.567, "seconds_per_image": 0.0234},
            {"method": "safe-ref", "strength": 10, "knob": "neighbours", "estimator": "LocalPosterior",
             "unsafe[all]": 0.02, "fd": math.nan, "seconds_per_image": 0.051}]
    assert markdown_table(rows).splitlines() == [
        "| method | setting | unsafe | FD | s / image |",
        "|---|---|---|---|---|",
        "| vanilla |  | 10.0% | 50.57 | 0.023 |",
        "| safe-ref | neighbours = 10, LocalPosterior | 2.0% |  | 0.051 |"]


def test_histogram_table_gives_each_class_share_in_percent():
    row = {"method": "safe", "histogram": [0.125] + [0.0] * 8 + [0.875]}
    assert histogram_table([row]).splitlines()[2] == "| safe | 12.5 | " + "0.0 | " * 8 + "87.5 |"


def test_saved_results_load_back_with_their_grid(tmp_path):
    rows = [{"method": "vanilla", "unsafe[all]": 0.1}, {"method": "safe", "unsafe[all]": 0.0}]
    images = {r["method"]: torch.zeros(3, 1, 8, 8) for r in rows}
    save_results(tmp_path, "eval-x", rows, {"n": 3}, images)
    assert load_results(tmp_path) == {"eval-x": {"key": "eval-x", "info": {"n": 3}, "rows": rows}}
    Image.open(tmp_path / "eval-x.png").verify()


def test_tradeoff_labels_of_one_method_alternate_above_and_below(tmp_path, monkeypatch):
    offsets = []
    original = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda ax, text, xy, **kw: offsets.append((text, kw["xytext"])) or original(ax, text, xy, **kw))
    rows = [{"method": "safe", "strength": s, "fd": fd, "unsafe[all]": 0.0} for s, fd in ((20.0, 82.7), (100.0, 82.0))]
    path = tradeoff_plot(rows, tmp_path / "t.png", unsafe_key="unsafe[all]", quality_key="fd", title="t")
    assert offsets == [("100.0", (2, 2)), ("20.0", (2, -7))]  # in order of FD
    Image.open(path).verify()
