"""The numbers behind the chapters' figures: Gini, top share, reliability bins; and the figures."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from twostage import plots


def test_gini_is_zero_for_an_even_log_and_near_one_for_a_single_item():
    even = torch.arange(10).repeat(3)
    assert plots.gini(even, 10) == pytest.approx(0.0, abs=1e-12)
    single = torch.zeros(50, dtype=torch.long)
    assert plots.gini(single, 10) == pytest.approx(1 - 1 / 10)


def test_top_share_counts_the_most_shown_items():
    items = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 5, 6])
    assert plots.top_share(items, 2) == pytest.approx(0.5)


def test_reliability_bins_match_a_per_row_reference():
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(500, generator=generator)
    y = (torch.rand(500, generator=generator) < p).float()
    table = plots.reliability_bins(p, y, bins=5).set_index("bin")
    for b in range(5):
        rows = [i for i in range(500) if min(int(p[i] * 5), 4) == b]
        assert table.loc[b, "count"] == len(rows)
        assert table.loc[b, "observed"] == pytest.approx(sum(float(y[i]) for i in rows) / len(rows))
    assert plots.expected_calibration_error(table) < 0.1  # y was drawn from p


def test_every_chapter_figure_is_a_figure_with_axes():
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(200, generator=generator)
    figures = [
        plots.reliability(p, (p > 0.5).float()),
        plots.importance_weights(p + 0.01, p + 0.02, cap=10.0, floor=0.01),
        plots.inclusion_ratio(p + 0.01, 3 * (p + 0.01), 5),
        plots.lorenz_curve(torch.randint(0, 20, (100,), generator=generator), 20),
    ]
    assert all(isinstance(f, Figure) and f.axes for f in figures)
