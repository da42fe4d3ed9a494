"""Tables, the headline interpolation, the figure scripts and the report, on hand-made metrics tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gatedsae.reporting.figures import FAMILIES, ablations, density, pareto, ratio, shrinkage, training_curves
from gatedsae.evaluation.intervals import Bootstrap
from gatedsae.plan.config import IntervalsConfig
from gatedsae.reporting.statistics import Readings
from gatedsae.reporting.tables import aggregate, latex_tables, markdown_tables, pareto_mask

SITES = ["resid_post", "mlp_out", "attn_z"]


def sweep_rows(arch: str, site: str, l0s, recovered, gammas=None, variant: str = "sweep", layer: int = 6) -> list[dict]:
    gammas = gammas if gammas is not None else [1.0] * len(l0s)
    return [{"model": "m", "corpus": "c", "sweep": "s", "site": site, "layer": layer, "arch": arch, "variant": variant,
             "l1": 0.01 * (i + 1), "lr": 1e-3, "width": 64, "d": 16, "train_tokens": 1000, "l0": l0,
             "loss_recovered": lr, "ce_clean": 3.0, "ce_zero": 6.0, "ce_sae": 6.0 - 3.0 * lr,
             "delta_lm_loss": 3.0 * (1 - lr), "alive_fraction": 0.9, "gamma": g, "fvu": 1 - lr, "nmse": 1 - lr,
             "eval_tokens": 500, "ce_tokens": 400, "sae": f"{arch}_{i}", "checkpoint_id": f"{arch}{i}",
             "checkpoint": f"ckpt/{arch}_{i}",
             "density_histogram": {"log10_edges": [-3.0, -2.0, -1.0, 0.0], "counts": [1, 2, 3], "dead": i}}
            for i, (l0, lr, g) in enumerate(zip(l0s, recovered, gammas))]


def fixture_frame() -> pd.DataFrame:
    """Gated needs exactly half the baseline's L0 for any loss recovered, at every site; plus the
    ablations and rescale-shift at the residual stream; one dominated baseline point per site."""
    rows = []
    recovered = [0.80, 0.85, 0.90, 0.95]
    for site in SITES:
        rows += sweep_rows("gated", site, [5, 10, 20, 40], recovered, [1.0, 1.0, 0.99, 1.01])
        rows += sweep_rows("baseline", site, [10, 20, 40, 80, 90], recovered + [0.7], [0.95, 0.9, 0.85, 0.8, 0.78])
    for arch in ("gated_unfrozen_decoder", "gated_no_rmag", "gated_untied"):
        rows += sweep_rows(arch, "resid_post", [6, 12, 24], [0.8, 0.85, 0.9])
    rows += sweep_rows("baseline_rescale_shift", "resid_post", [10, 20, 40], [0.82, 0.87, 0.91], variant="rescale_shift")
    frame = pd.DataFrame(rows)
    frame["pareto"] = pareto_mask(frame)
    return frame


def test_pareto_mask_marks_only_undominated_points():
    frame = fixture_frame()
    baseline = frame[(frame["arch"] == "baseline") & (frame["site"] == "mlp_out")]
    assert baseline["pareto"].tolist() == [True, True, True, True, False]  # L0 90 at 70% is dominated
    assert frame[frame["arch"] == "gated"]["pareto"].all()


def readings(frame: pd.DataFrame, levels: dict) -> Readings:
    from dataclasses import replace

    from gatedsae.plan.config import load_config

    protocol = replace(load_config(["experiment=smoke"]).verdict, levels=levels)
    return Readings(frame, Bootstrap(frame, IntervalsConfig()), protocol)


def test_the_ratio_is_read_at_the_pre_registered_levels_of_known_frontiers():
    # Gated: log L0 linear from (0.8, log 4) to (0.9, log 16); baseline from (0.8, log 4) to (0.9, log 64):
    # the ratio runs log-linearly from 1 at 80% to 1/4 at 90%: 1/2 at 85%, whatever lies elsewhere.
    rows = sweep_rows("gated", "mlp_out", [4, 16], [0.8, 0.9], [1.0, 1.0]) + \
        sweep_rows("baseline", "mlp_out", [4, 64], [0.8, 0.9], [0.9, 0.7])
    head, per_level = readings(pd.DataFrame(rows), {"mlp_out": [0.85, 0.9]}).headline()
    assert per_level["l0_ratio"].tolist() == pytest.approx([0.5, 0.25])
    assert head["l0_ratio"].iloc[0] == pytest.approx(math.sqrt(0.5 * 0.25))  # geometric mean over the levels
    assert per_level["gamma_baseline"].tolist() == pytest.approx([0.8, 0.7])
    assert head["gamma_baseline"].iloc[0] == pytest.approx(0.75) and head["levels"].iloc[0] == "0.85;0.9"
    assert head["loss_recovered_max_baseline"].iloc[0] == pytest.approx(0.9)


def test_a_level_a_frontier_does_not_reach_is_not_read():
    rows = sweep_rows("gated", "attn_z", [4, 8], [0.85, 0.97]) + sweep_rows("baseline", "attn_z", [4, 8], [0.5, 0.9])
    head, per_level = readings(pd.DataFrame(rows), {"attn_z": [0.88, 0.95]}).headline()
    assert per_level["l0_ratio"].notna().tolist() == [True, False]  # 95%: the baseline stops at 90%
    assert math.isnan(head["l0_ratio"].iloc[0]) and math.isnan(head["gamma_baseline"].iloc[0])


def test_matched_l0_comparisons_are_read_where_gated_reaches_the_levels():
    frame = fixture_frame()  # Gated: L0 5, 10, 20, 40 at 80, 85, 90, 95%
    compared = readings(frame, {"resid_post": [0.85, 0.9], "mlp_out": [0.85], "attn_z": [0.85]}).comparisons()
    compared = compared.set_index("arch")
    assert compared.loc["gated_untied", "l0_at"] == "10;20"
    # ablations: (6, 80%), (12, 85%), (24, 90%), Gated's loss recovered at 1.2× its L0: read at L0 10 and 20
    expected = np.mean([np.interp(np.log(x), np.log([6, 12, 24]), [0.8, 0.85, 0.9]) for x in (10, 20)]) - 0.875
    assert compared.loc["gated_untied", "loss_recovered_difference"] == pytest.approx(expected)
    # rescale-and-shift (10, 82%), (20, 87%), (40, 91%) over the baseline (10, 80%), (20, 85%), (40, 90%):
    # at L0 10 and 20 it closes (2 + 2) / (5 + 5) of the gap to Gated (85%, 90%)
    assert compared.loc["baseline_rescale_shift", "gap_fraction"] == pytest.approx(0.4)
    assert compared.loc["baseline_rescale_shift", "loss_recovered_difference"] == pytest.approx(0.02)


def test_tables_have_one_row_per_sae_and_mark_the_frontier():
    frame = fixture_frame()
    markdown = markdown_tables(frame)
    assert markdown.count("### m, layer 6") == 3
    assert markdown.count("| ★ Baseline | ") == 3 * 4 and markdown.count("| Baseline | ") == 3
    latex = latex_tables(frame)
    assert latex.count(r"\begin{table}") == 3 and latex.count(r"$\star$ Gated &") == 3 * 4


def _series(ax):
    """(label, points) per drawn series: lines are frontiers, scatters are dominated points."""
    return [(line.get_label(), len(line.get_xdata())) for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_pareto_figures_have_a_panel_per_site_and_a_series_per_architecture():
    frame = fixture_frame()
    stems = []
    for stem, fig in pareto.figures(frame):
        stems.append(stem)
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert len(axes) == 3
        for ax in axes:
            series = dict(_series(ax))
            assert set(series) == {"Gated", "Baseline"}
            assert ax.get_xscale() == "log" and ax.get_xlabel()
        assert axes[0].get_ylabel(), "the y label, on the first panel of the row"
        if stem == "fig1_loss_recovered_vs_l0":
            assert dict(_series(axes[0])) == {"Gated": 4, "Baseline": 4}  # the frontier only
            assert sum(len(c.get_offsets()) for c in axes[0].collections) == 1  # one faint dominated point
    assert stems == list(pareto.FIGURES)


def test_shrinkage_figure_draws_every_sae():
    (stem, fig), = shrinkage.figures(fixture_frame())
    first = [ax for ax in fig.axes if ax.get_title()][0]
    series = dict(_series(first))
    assert series == {"Gated": 4, "Baseline": 5}
    assert any(line.get_ydata()[0] == 1.0 for line in first.get_lines() if line.get_label().startswith("_"))


def test_ablation_figures_only_where_the_ablations_exist():
    figures = dict(ablations.figures(fixture_frame()))
    assert set(figures) == {"fig8_ablations", "fig9_rescale_shift"}
    (ax8,) = figures["fig8_ablations"].axes
    assert len(_series(ax8)) == 5 and "Residual" in ax8.get_title()
    assert "Baseline" in dict(_series(ax8)), "Fig. 8 draws the baseline for scale"
    (ax9,) = figures["fig9_rescale_shift"].axes
    assert {label for label, _ in _series(ax9)} == {"Baseline", "Baseline + rescale & shift", "Gated"}


def test_density_figure_pairs_gated_with_the_nearest_baseline(tmp_path):
    frame = fixture_frame()
    pairs = density.matched_pairs(frame)
    assert len(pairs) == 3
    for gated, baseline in pairs:
        assert gated["arch"] == "gated" and baseline["arch"] == "baseline"
        assert baseline["l0"] == 10 or baseline["l0"] == 20
    densities = {f"{r['site']}/layer{r['layer']}/{r['variant']}/{r['sae']}": r["density_histogram"]
                 for _, r in frame.iterrows()}
    (stem, fig), = density.figures(frame, densities)
    assert len(fig.axes) == 3 and all(len(ax.patches) == 2 for ax in fig.axes)


def test_aggregate_figures_and_report_from_metrics_files(tmp_path):
    from dataclasses import replace

    from gatedsae.plan.config import load_config
    from gatedsae.reporting.figures import render_all
    from gatedsae.reporting.report import build_report

    frame = fixture_frame().drop(columns="pareto")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rows": frame.to_dict("records")}))
    protocol = replace(load_config(["experiment=smoke"]).verdict,
                       levels={"resid_post": [0.85, 0.9], "mlp_out": [0.9], "attn_z": [0.82]})
    outputs = aggregate([metrics], tmp_path / "results", protocol=protocol)
    written = pd.read_csv(outputs["metrics"])
    assert len(written) == len(frame) and written["pareto"].sum() == len(frame) - 3
    assert pd.read_csv(outputs["headline"])["l0_ratio"].round(6).tolist() == [0.5, 0.5, 0.5]
    assert len(pd.read_csv(outputs["levels"])) == 4
    curve = pd.read_csv(outputs["ratio_curve"])
    assert np.allclose(curve["l0_ratio"], 0.5) and curve["loss_recovered"].min() == pytest.approx(0.8)
    summary = json.loads(outputs["summary"].read_text())
    assert summary["m/resid_post/layer6"]["l0_ratio"] == 0.5
    # no per-window samples in these rows: the interval columns exist, empty
    for column in ("loss_recovered_ci_low", "loss_recovered_ci_high", "delta_lm_loss_ci_low", "delta_lm_loss_ci_high"):
        assert column in written and written[column].isna().all()
    assert {"l0_ratio_ci_low", "l0_ratio_ci_high"} <= set(pd.read_csv(outputs["headline"]))
    compared = pd.read_csv(outputs["comparisons"])
    assert sorted(zip(compared["arch"], compared["versus"])) == sorted(
        [("baseline_rescale_shift", "baseline"), ("gated", "baseline_rescale_shift"),
         ("gated_unfrozen_decoder", "gated"), ("gated_no_rmag", "gated"), ("gated_untied", "gated")])
    # the ablations recover the same loss as Gated at 1.2× its L0: below Gated's frontier at matched L0
    assert (compared[compared["versus"] == "gated"]["loss_recovered_difference"] < 0).all()

    index = render_all(tmp_path / "results", tmp_path / "figures")
    files = json.loads(index.read_text())["files"]
    stems = {p.rsplit("/", 1)[1].rsplit(".", 1)[0] for p in files}
    drawn = {stem for stem in ablations.FIGURES if stem != "successors_pareto"}  # no JumpReLU or TopK here
    expected = {*pareto.FIGURES, ratio.STEM, shrinkage.STEM, *drawn, density.STEM}
    assert stems == expected and len(files) == 2 * len(expected)
    assert all((tmp_path / "figures" / f"{stem}.pdf").stat().st_size > 0 for stem in expected)
    assert set(FAMILIES) == {"pareto", "ratio", "shrinkage", "ablations", "density", "training_curves"}

    captions = json.loads(index.read_text())["captions"]
    pngs = [Path(f) for f in files if f.endswith(".png")]
    assert [p.stem for p in pngs][:4] == ["fig1_loss_recovered_vs_l0", "gamma_vs_l0", "fig8_ablations",
                                          "fig9_rescale_shift"]  # the paper's order, in the index and the report
    html = build_report(load_config(["experiment=smoke"]), tmp_path / "results", pngs, captions, "v0")
    assert html.count("<img") == len(expected) and "0.500" in html and "Gemma-7B L20" in html
    assert "No verdict yet" in html
    assert html.index('alt="fig1_loss_recovered_vs_l0"') < html.index('alt="gamma_vs_l0"') < html.index('alt="fig8_ablations"')

    # Without the ablations' SAEs, their figure goes, and so does its file from the earlier render.
    smaller = fixture_frame().drop(columns="pareto")
    smaller = smaller[~smaller["arch"].isin(ablations.ABLATIONS)]
    metrics.write_text(json.dumps({"rows": smaller.to_dict("records")}))
    aggregate([metrics], tmp_path / "results")
    kept = json.loads(render_all(tmp_path / "results", tmp_path / "figures").read_text())["files"]
    assert not any("fig8_ablations" in f for f in kept)
    assert not (tmp_path / "figures" / "fig8_ablations.png").exists()
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == sorted(Path(f).name for f in kept
                                                                                    if f.endswith(".png"))


def test_metrics_csv_keeps_a_metric_it_does_not_know(tmp_path):
    rows = sweep_rows("gated", "resid_post", [5, 10], [0.8, 0.9]) + sweep_rows("baseline", "resid_post", [10, 20], [0.8, 0.9])
    for i, row in enumerate(rows):
        row["new_metric"] = 0.5 + i
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rows": rows}))
    written = pd.read_csv(aggregate([metrics], tmp_path / "results")["metrics"])
    assert sorted(written["new_metric"]) == sorted(row["new_metric"] for row in rows)
    assert "density_histogram" not in written.columns and written.columns[-1] == "pareto"


def test_tables_show_intervals_where_they_exist():
    frame = fixture_frame()
    frame["loss_recovered_ci_low"], frame["loss_recovered_ci_high"] = frame["loss_recovered"] - 0.01, frame["loss_recovered"] + 0.02
    markdown = markdown_tables(frame)
    assert "80.00% [79.00, 82.00]" in markdown and "[low, high]: 95% interval" in markdown
    assert "0.600 [" not in markdown  # Δ LM loss has no interval here: the value alone


# --- paper-ready: sizes, fonts, one legend, reference lines, shared axes, intervals ------------------------


def _densities(frame: pd.DataFrame) -> dict:
    return {f"{r['site']}/layer{r['layer']}/{r['variant']}/{r['sae']}": r["density_histogram"] for _, r in frame.iterrows()}


def curves_frame() -> pd.DataFrame:
    rows = [{"model": "m", "site": site, "layer": 6, "variant": "sweep", "sae": f"{arch}_{l1}", "arch": arch, "l1": l1,
             "step": step, "tokens": step * 8, "total": 1.0 / step, "reconstruction": 0.5 / step, "sparsity": 0.1,
             "auxiliary": 0.0, "l0": 10.0 + step, "dead_fraction": 0.01, "lr": 1e-3}
            for site in SITES for arch in ("gated", "baseline") for l1 in (0.1, 0.2) for step in (10, 20, 30)]
    return pd.DataFrame(rows)


def all_figures(frame: pd.DataFrame):
    yield from pareto.figures(frame)
    yield from shrinkage.figures(frame)
    yield from ablations.figures(frame)
    yield from density.figures(frame, _densities(frame))
    yield from training_curves.figures(curves_frame())
    levels = {"resid_post": [0.85, 0.9], "mlp_out": [0.85], "attn_z": [0.85]}
    yield from ratio.figures(readings(frame, levels).ratio_curve(), readings(frame, levels).headline()[0])


def test_every_figure_is_paper_sized_with_readable_fonts_no_title_and_one_legend():
    import matplotlib.pyplot as plt
    import matplotlib.text

    from gatedsae.reporting.figures.style import FULL_WIDTH, MIN_FONT_PT, SINGLE_COLUMN

    stems = []
    for stem, fig in all_figures(fixture_frame()):
        stems.append(stem)
        assert fig.get_figwidth() in (SINGLE_COLUMN, FULL_WIDTH), stem
        assert fig._suptitle is None, f"{stem}: no title baked in"
        legends = len(fig.legends) + sum(ax.get_legend() is not None for ax in fig.axes)
        assert legends == 1, f"{stem}: {legends} legends"
        small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(matplotlib.text.Text)
                 if t.get_visible() and t.get_text() and t.get_fontsize() < MIN_FONT_PT]
        assert not small, f"{stem}: text under {MIN_FONT_PT} pt: {small[:3]}"
        plt.close(fig)
    assert {"fig1_loss_recovered_vs_l0", "gamma_vs_l0", "fig8_ablations", "feature_density", "training_curves",
            ratio.STEM} <= set(stems)


def _hlines(ax) -> set[float]:
    return {float(line.get_ydata()[0]) for line in ax.get_lines()
            if line.get_label().startswith("_") and len(set(line.get_ydata())) == 1}


def test_reference_lines_shared_axes_and_lambda_labels():
    from gatedsae.reporting.figures.style import finish

    figures = dict(pareto.figures(fixture_frame()))
    fig1 = figures["fig1_loss_recovered_vs_l0"]
    finish(fig1)  # labels are placed once the figure is laid out
    assert all(100.0 in _hlines(ax) for ax in fig1.axes)
    assert any(t.get_text().startswith("λ=") for ax in fig1.axes for t in ax.texts), "λ labels on the sweeps"
    assert not fig1.axes[0].get_shared_y_axes().joined(fig1.axes[0], fig1.axes[1]), "loss recovered: own y per site"
    fvu = figures["fvu_vs_l0"]
    assert fvu.axes[0].get_shared_y_axes().joined(fvu.axes[0], fvu.axes[2])
    (_, gamma), = shrinkage.figures(fixture_frame())
    assert all(1.0 in _hlines(ax) for ax in gamma.axes)
    assert gamma.axes[0].get_shared_y_axes().joined(gamma.axes[0], gamma.axes[2]), "γ panels compare: one y axis"
    assert [ax.get_ylabel() != "" for ax in gamma.axes] == [True, False, False], "y label on the first panel only"


def test_density_axis_is_fitted_to_the_filled_bins():
    frame = fixture_frame()
    for _, row in frame.iterrows():
        row["density_histogram"]["counts"] = [0, 2, 3]  # nothing below 10^-2
    (_, fig), = density.figures(frame, _densities(frame))
    for ax in fig.axes:
        assert ax.get_xlim() == pytest.approx((-2.25, 0.25))
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])


def test_error_bars_come_from_interval_columns_when_present():
    from matplotlib.container import ErrorbarContainer

    plain = dict(pareto.figures(fixture_frame()))["fig1_loss_recovered_vs_l0"]
    assert not any(isinstance(c, ErrorbarContainer) for ax in plain.axes for c in ax.containers)
    frame = fixture_frame()
    frame["loss_recovered_ci_low"], frame["loss_recovered_ci_high"] = frame["loss_recovered"] - 0.01, frame["loss_recovered"] + 0.02
    figures = dict(pareto.figures(frame))
    bars = [c for c in figures["fig1_loss_recovered_vs_l0"].axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert bars, "intervals drawn as error bars"
    segments = np.concatenate([np.asarray(c.lines[2][0].get_segments()) for c in bars])
    lengths = sorted({round(float(s[1, 1] - s[0, 1]), 6) for s in segments})
    assert lengths == [3.0], "the bar spans ci_low..ci_high, in percent"
    delta = figures["delta_lm_loss_vs_l0"]
    assert not any(isinstance(c, ErrorbarContainer) for ax in delta.axes for c in ax.containers), "no Δ interval given"


def _hidden(ax, box) -> list[str]:
    """What a text box in display coordinates covers: solid data lines, markers, error bars, histogram
    outlines (dashed reference lines may be crossed)."""
    from matplotlib.collections import LineCollection, PathCollection

    found = []
    for line in ax.lines:
        path = line.get_transform().transform_path(line.get_path())
        if line.get_linestyle() == "-" and len(path.vertices) > 1 and path.intersects_bbox(box, filled=False):
            found.append(f"line {line.get_label()}")
        if line.get_marker() not in (None, "None", "none", ""):
            found += [f"marker {line.get_label()}" for x, y in path.vertices if box.contains(x, y)]
    for collection in ax.collections:
        if isinstance(collection, LineCollection):
            found += ["error bar" for path in collection.get_paths()
                      if collection.get_transform().transform_path(path).intersects_bbox(box, filled=False)]
        elif isinstance(collection, PathCollection):
            offsets = collection.get_offset_transform().transform(collection.get_offsets())
            found += ["point" for x, y in offsets if box.contains(x, y)]
    found += ["bar" for patch in ax.patches
              if patch.get_transform().transform_path(patch.get_path()).intersects_bbox(box, filled=False)]
    return found


def _text_box(text, renderer):
    """The extent of the text itself (an annotation's own extent includes its leader line)."""
    import matplotlib.text

    if isinstance(text, matplotlib.text.Annotation):
        text.update_positions(renderer)
    return matplotlib.text.Text.get_window_extent(text, renderer)


def test_labels_and_notes_hide_no_data_on_the_reference_run():
    """The published run's crowded panels (Fig. 1, γ, the density pairs): every λ label and density note,
    placed at the final layout, covers no line, marker, error bar or bar, stays inside its panel, and no
    two labels overlap."""
    import json

    import matplotlib.pyplot as plt

    from gatedsae.plan.config import REPO_ROOT
    from gatedsae.reporting.figures.style import finish

    reference = REPO_ROOT / "reference" / "default"
    frame = pd.read_csv(reference / "metrics.csv")
    drawn = [*pareto.figures(frame), *shrinkage.figures(frame),
             *density.figures(frame, json.loads((reference / "densities.json").read_text()))]
    checked = 0
    for stem, fig in drawn:
        finish(fig)
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = [_text_box(t, renderer) for t in ax.texts if t.get_text()]
            panel = ax.get_window_extent(renderer)
            for box in boxes:
                assert not _hidden(ax, box), (stem, _hidden(ax, box))
                assert panel.x0 <= box.x0 and box.x1 <= panel.x1 and panel.y0 <= box.y0 and box.y1 <= panel.y1, stem
                assert sum(box.overlaps(other) for other in boxes) == 1, f"{stem}: labels overlap"
            checked += len(boxes)
        plt.close(fig)
    assert checked >= 12


def test_figures_draw_each_configuration_at_the_mean_of_its_seeds():
    from gatedsae.reporting.tables import seed_means

    frame = fixture_frame()
    assert seed_means(frame) is frame, "one seed per configuration: unchanged"
    seeded = pd.concat([frame.assign(seed=0), frame.assign(seed=1, l0=frame["l0"] * 3, loss_recovered_ci_low=0.0)])
    means = seed_means(seeded.reset_index(drop=True))
    assert len(means) == len(frame) and "seed" not in means and "loss_recovered_ci_low" not in means
    assert np.allclose(means["l0"], frame["l0"] * 2) and np.allclose(means["loss_recovered"], frame["loss_recovered"])
    assert means["sae"].tolist() == frame["sae"].tolist() and means["pareto"].tolist() == frame["pareto"].tolist()


def test_sites_at_different_layers_get_one_panel_each_not_an_empty_grid():
    """The default reads the attention output at layer 1 and the other sites at 15: three panels in a row,
    each titled with its layer, not a 2 × 3 grid with three empty panels; a full grid stays a grid."""
    import matplotlib.pyplot as plt

    from gatedsae.reporting.figures.style import label_grid, site_grid

    mixed = pd.DataFrame({"site": ["resid_post", "mlp_out", "attn_z"], "layer": [15, 15, 1]})
    fig, cells = site_grid(mixed)
    assert list(cells) == [("resid_post", 15), ("mlp_out", 15), ("attn_z", 1)] and len(fig.axes) == 3
    assert [ax.get_title() for ax in cells.values()] == ["Residual stream, layer 15", "MLP output, layer 15",
                                                         "Attention output, layer 1"]
    label_grid(cells, "loss_recovered")
    assert all(ax.get_xlabel() for ax in cells.values())  # one row: every panel is the bottom row
    assert cells[("resid_post", 15)].get_ylabel() and not cells[("attn_z", 1)].get_ylabel()
    plt.close(fig)
    full = pd.DataFrame({"site": ["resid_post", "mlp_out"] * 2, "layer": [3, 3, 5, 5]})
    fig, cells = site_grid(full)
    assert len(fig.axes) == 4 and cells[("mlp_out", 3)].get_subplotspec().rowspan.start == 0
    label_grid(cells, "loss_recovered")
    assert not cells[("resid_post", 3)].get_xlabel() and cells[("resid_post", 5)].get_xlabel()
    assert not cells[("mlp_out", 5)].get_ylabel()
    plt.close(fig)
