"""memcell.plot's figures that compare runs: what each draws, read back from the figure itself."""

import matplotlib.colors
import matplotlib.figure
import numpy as np
import pytest

from memcell import _comparison_plots, plot


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept for inspection (nothing is written)."""
    figs = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    return figs


def _rgba(line):
    return tuple(np.round(matplotlib.colors.to_rgba(line.get_color()), 4))


@pytest.mark.parametrize("n", [0, 1, 10, 11, 12, 20, 21, 40])
def test_distinct_colors_are_distinct(n):
    colors = [tuple(np.round(matplotlib.colors.to_rgba(c), 4)) for c in plot.distinct_colors(n)]
    assert len(colors) == n == len(set(colors))
    with pytest.raises(ValueError, match="n must be a non-negative int, got -1"):
        plot.distinct_colors(-1)
    if 0 < n <= 20:  # and far apart: no two within 0.25 in RGB (a light shade of a hue is not a colour of its own)
        rgb = np.array([matplotlib.colors.to_rgb(c) for c in plot.distinct_colors(n)])
        gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 9 * np.eye(n)
        assert gaps.min() > 0.25


def test_evaluation_curves_draw_the_mean_over_seeds_and_the_baselines(drawn, tmp_path):
    history = [{"step": s, "mse": [1.0 / s, 3.0 / s]} for s in (10, 20, 40)]
    plot.evaluation_curves(tmp_path / "c.png", {"T=10": {"lstm": history, "gru": history[:2]}}, "mse",
                           baselines={"T=10": {"mean": 0.17}}, threshold=0.01)
    ax = drawn[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["lstm"].get_ydata(), [0.2, 0.1, 0.05])
    assert _rgba(lines["lstm"]) != _rgba(lines["gru"])
    assert sorted(float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_label().startswith("_")) == [0.01, 0.17]


def test_evaluation_curves_put_many_series_in_one_legend_beside_the_panels(drawn, tmp_path):
    """The selectivity study's 15 series: a legend in each panel covered the curves; one beside the
    last panel names them all. A few series keep a legend in each panel, as do panels that differ."""
    history = [{"step": s, "acc": [0.5, 0.6]} for s in (10, 20)]
    many = {f"cell{i}": history for i in range(_comparison_plots.LEGEND_INSIDE + 1)}
    plot.evaluation_curves(tmp_path / "c.png", {"a": many, "b": many}, "acc")
    legends = [ax.get_legend() for ax in drawn[-1].axes]
    assert legends[0] is None and len(legends[1].get_texts()) == len(many)
    assert legends[1].get_bbox_to_anchor().x0 > drawn[-1].axes[1].get_window_extent().x1  # right of the panel
    plot.evaluation_curves(tmp_path / "c.png", {"a": many, "b": {"lstm": history}}, "acc")
    assert all(ax.get_legend() is not None for ax in drawn[-1].axes)
    plot.evaluation_curves(tmp_path / "c.png", {"a": {"lstm": history}, "b": {"lstm": history}}, "acc")
    assert all(ax.get_legend() is not None for ax in drawn[-1].axes)


def test_norms_by_lag_draws_phases_in_one_colour_and_scales_as_asked(drawn, tmp_path):
    k = np.arange(5.0)
    flows = {"rnn": {"initial": 0.5 ** k, "trained": np.array([2.0, 1.0, 0.0, 0.5, 0.25])}, "lstm": 0.9 ** k}
    plot.norms_by_lag(tmp_path / "f.png", {"adding": flows}, relative_to="max")
    ax = drawn[-1].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"rnn, initial", "rnn, trained", "lstm"}
    assert _rgba(lines["rnn, initial"]) == _rgba(lines["rnn, trained"]) != _rgba(lines["lstm"])
    assert (lines["rnn, initial"].get_linestyle(), lines["rnn, trained"].get_linestyle()) == ("--", "-")
    # divided by the largest value; an underflowed 0 is left out of the log axis
    np.testing.assert_allclose(lines["rnn, trained"].get_ydata(), [1.0, 0.5, np.nan, 0.25, 0.125])
    assert ax.get_yscale() == "log"
    # natural-log norms: log10 on a linear axis, relative to lag 0
    plot.norms_by_lag(tmp_path / "g.png", {"p": {"a": np.log(10.0) * np.array([1.0, -2.0, -5.0])}}, log_norms=True,
                      relative_to="first", linestyles={"a": ":"})
    line = drawn[-1].axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), [0.0, -3.0, -6.0])
    assert line.get_linestyle() == ":" and drawn[-1].axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="relative_to must be None, 'first' or 'max', got 'peak'"):
        plot.norms_by_lag(tmp_path / "h.png", {"p": {"a": k}}, relative_to="peak")


def test_seed_values_draw_each_variant_mean_and_every_seed(drawn, tmp_path):
    plot.seed_values(tmp_path / "v.png", {"adding": {"vanilla": [1.0, 3.0], "NFG": [5.0]}}, ylabel="mse")
    ax = drawn[0].axes[0]
    means = [line.get_ydata()[0] for line in ax.get_lines() if line.get_marker() == "o"]
    assert means == [2.0, 5.0]
    assert sum(len(c.get_offsets()) for c in ax.collections if c.get_offsets().shape[-1] == 2) >= 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["vanilla", "NFG"]
