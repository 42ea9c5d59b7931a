"""The numbers behind the chapters' figures: Gini, top share, reliability bins; and the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from twostage import plots
from twostage.objectives import OBJECTIVES
from twostage.results import method_order, summary_table


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


# --- the report's and the sweep's figures: legends clear of the data, methods by name ---


def drawn(fig: Figure):
    """`fig` laid out and drawn; its renderer (for window extents)."""
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def legends(fig: Figure) -> list:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def report_figures() -> dict[str, tuple[Figure, list]]:
    """Each report figure and the patches its legend must not cover."""
    from fake_results import fake_results

    table = summary_table(fake_results())
    table["mean"] = 0.85 + 0.1 * table["mean"]  # every bar tall, as in the synthetic results
    methods = method_order(table["method"].unique())
    edges = np.linspace(0, 1, 51)
    counts = 8e5 * np.exp(-(((edges[:-1] - 0.45) / 0.2) ** 2))  # a peak mid-range, as ML-1M's
    hist = {"bin_edges": edges.tolist(), "counts": counts.tolist(), "cut": 0.8}
    world = plots.world_probabilities(hist, 0.08, synthetic=True)
    sweep = pd.concat([table.assign(factor="alpha", value=v) for v in ("0", "1e-3", "0.1")])
    figures = {
        "test metrics": plots.test_metrics(table, methods, synthetic=True),
        "rewards": plots.rewards(table, methods, synthetic=True),
        "world": world,
        "factor": plots.factor_figure(sweep, "alpha"),
    }
    covered = {name: [p for ax in fig.axes for p in ax.patches] for name, fig in figures.items()}
    bars = world.axes[0].patches
    covered["world"] = [max(bars, key=lambda bar: bar.get_height())]  # the histogram's peak
    return {name: (fig, covered[name]) for name, fig in figures.items()}


@pytest.mark.parametrize("name", ["test metrics", "rewards", "world", "factor"])
def test_legends_cover_no_bar_and_name_methods(name: str):
    fig, patches = report_figures()[name]
    renderer = drawn(fig)
    assert legends(fig)
    for legend in legends(fig):
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(p.get_window_extent(renderer)) for p in patches)
        assert not {text.get_text() for text in legend.get_texts()} & set(OBJECTIVES)


def test_report_titles_have_no_doubled_parentheses():
    from fake_results import fake_results

    table = summary_table(fake_results())
    fig = plots.test_metrics(table, method_order(table["method"].unique()), synthetic=True)
    title = fig.get_suptitle()
    assert title.endswith("synthetic data") and ") (" not in title and "±" in title


@pytest.mark.parametrize("seeds, note", [([0], plots.ONE_SEED), ([0, 1], plots.SPREAD)])
def test_report_titles_say_when_there_is_no_spread(seeds: list[int], note: str):
    from fake_results import fake_results

    results = fake_results(seeds=seeds)
    table = summary_table(results)
    methods = method_order(table["method"].unique())
    titles = [
        plots.validation_curves(results, methods, synthetic=False).get_suptitle(),
        plots.test_metrics(table, methods, synthetic=False).get_suptitle(),
        plots.rewards(table, methods, synthetic=False).axes[0].get_title(),
        plots.factor_figure(table.assign(factor="alpha", value="0"), "alpha").get_suptitle(),
    ]
    assert all(title.endswith(note) for title in titles), titles
