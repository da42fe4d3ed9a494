"""From metrics rows to the paper's tables: `metrics.csv` (one row per SAE, with 95% intervals), Markdown
and LaTeX tables in the layout of the paper's Tables 1–8 with Pareto-optimal rows marked, a summary for
`dvc metrics`, the headline (L0_gated / L0_baseline at matched loss recovered, per site) and the
comparisons of Figs. 8 and 9 (loss recovered at matched L0), each with its interval (`intervals`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from gatedsae.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from gatedsae.core.sealed import REEVALUATE, read_json
from gatedsae.evaluation.frontiers import pareto_optimal
from gatedsae.evaluation.intervals import Bootstrap
from gatedsae.plan import architectures
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import IntervalsConfig, VerdictConfig
from gatedsae.plan.layout import AGGREGATE_OUTPUTS
from gatedsae.plan.sites import SITES
from gatedsae.plan.sites import label as site_label

SAE_INTERVALS = ("loss_recovered", "delta_lm_loss", "gamma")  # per-SAE metrics with an interval
# metrics.csv columns, in order: the paper's tables first, then the later papers' metrics, the intervals,
# the massive-activation treatment, and provenance.
COLUMNS = [
    "model", "site", "layer", "split", "arch", "variant", *architectures.KNOBS, "lr", "width", "seed", "l0", "loss_recovered",
    "ce_clean", "ce_sae", "ce_zero", "alive_fraction", "gamma", "fvu", "nmse", "delta_lm_loss",
    *(f"{metric}_ci_{end}" for metric in SAE_INTERVALS for end in ("low", "high")),
    "train_tokens", "eval_tokens", "ce_tokens", "ce_windows",
    "massive_norm_threshold", "massive_rows", "massive_windows",
    "corpus", "sweep", "sae", "checkpoint_id", "checkpoint",
]


def collect(metrics_files: Iterable[Path]) -> pd.DataFrame:
    """Every evaluated SAE as one row, in a stable order (site, layer, architecture, λ)."""
    rows = [row for path in metrics_files for row in read_json(path, REEVALUATE)["rows"]]
    if not rows:
        raise ValueError("no metrics rows to aggregate: evaluate at least one grid first")
    frame = pd.DataFrame(rows)
    frame["site_order"] = frame["site"].map(SITES.index)
    knobs = [knob for knob in architectures.KNOBS if knob in frame]  # each architecture's own knob
    order = ["model", "site_order", "layer", *[c for c in ("split",) if c in frame], "arch", *knobs,
             *[c for c in ("seed",) if c in frame]]
    frame = frame.sort_values(order).drop(columns="site_order")
    frame["pareto"] = pareto_mask(frame)
    return frame.reset_index(drop=True)


def metrics_columns(frame: pd.DataFrame) -> list[str]:
    """metrics.csv's columns: the known ones in their order, then any other the rows carry (a metric added
    to evaluation appears in the table without being listed here first), then the Pareto mark."""
    def scalar(column: str) -> bool:  # nested values (a density histogram) have their own files
        return not frame[column].map(lambda value: isinstance(value, (dict, list))).any()

    extra = sorted(column for column in set(frame.columns) - set(COLUMNS) - {"pareto"} if scalar(column))
    return [*COLUMNS, *extra, "pareto"]


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per SAE configuration: its metrics averaged over its training seeds (figures draw these);
    the other columns from its first seed. Per-SAE intervals are dropped where a configuration has several
    seeds (they cover one training only); a frame of one seed per configuration comes back unchanged."""
    from gatedsae.evaluation.seeds import IDENTITY, SEED

    if SEED not in frame or frame.groupby(_configuration(frame), dropna=False)[SEED].nunique().max() <= 1:
        return frame
    keep = set(IDENTITY) | {"model", "site", "layer", "split", SEED, "pareto"}
    metrics = [c for c in frame.columns if c not in keep and pd.api.types.is_numeric_dtype(frame[c])
               and "_ci_" not in c]
    grouped = frame.groupby(_configuration(frame), dropna=False, sort=False)
    means = grouped[metrics].transform("mean")
    first = frame.drop(columns=[c for c in frame.columns if "_ci_" in c]).assign(**means)
    first = first[~grouped.cumcount().astype(bool)].drop(columns=SEED).reset_index(drop=True)
    first["pareto"] = pareto_mask(first)
    return first


def _configuration(frame: pd.DataFrame) -> list[str]:
    from gatedsae.evaluation.seeds import IDENTITY

    return [c for c in ("model", "site", "layer", "split", *IDENTITY) if c in frame]


def pareto_mask(frame: pd.DataFrame, x: str = "l0", y: str = "loss_recovered") -> pd.Series:
    """True where no SAE of the same (model, site, layer, architecture, split, seed) has lower-or-equal `x`
    and higher-or-equal `y`, one of them strictly (low L0 and high loss recovered are both better)."""
    mask = pd.Series(False, index=frame.index)
    for _, group in frame.groupby(["model", "site", "layer", "arch", *[c for c in ("split", "seed") if c in frame]]):
        mask[group.index] = pareto_optimal(group[x].to_numpy(), group[y].to_numpy())
    return mask


def frontier(frame: pd.DataFrame, x: str = "l0", y: str = "loss_recovered") -> pd.DataFrame:
    """The Pareto-optimal points of one architecture's sweep, sorted by x."""
    return frame[pareto_mask(frame, x, y)].sort_values(x)


def matched_pairs(frame: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """Per (site, layer) of the main sweep: the Gated SAE nearest the middle of its sweep's L0 range (in
    log L0) and the baseline SAE with the closest L0 (for the density figure and the rater study)."""
    pairs = []
    main = frame[frame["variant"] == "sweep"]
    for _, cell in main.groupby(["site", "layer"], sort=False):
        gated, baseline = cell[cell["arch"] == PROPOSED], cell[cell["arch"] == BASELINE]
        if gated.empty or baseline.empty:
            continue
        log_l0 = np.log(gated["l0"].clip(lower=1e-3))
        g = gated.loc[(log_l0 - log_l0.median()).abs().idxmin()]
        b = baseline.loc[(np.log(baseline["l0"].clip(lower=1e-3)) - np.log(g["l0"])).abs().idxmin()]
        pairs.append((g, b))
    return pairs


# ---------------------------------------------------------------------------------------------------
# Rendering.


def with_interval(row, metric: str, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    """`value [low, high]`, or the value alone where the row has no interval."""
    text = format(scale * row[metric], fmt) + unit
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return text
    return f"{text} [{format(scale * low, fmt)}, {format(scale * high, fmt)}]"


def _table_rows(group: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, r in group.iterrows():
        rows.append([("★ " if r["pareto"] else "") + architectures.label(r["arch"]), architectures.knob_text(r["arch"], r),
                     f"{r['lr']:g}", f"{int(r['width'])}", f"{r['l0']:.1f}",
                     with_interval(r, "loss_recovered", ".2f", 100, "%"),
                     f"{r['ce_clean']:.3f}", f"{r['ce_sae']:.3f}", f"{r['ce_zero']:.3f}",
                     f"{100 * r['alive_fraction']:.1f}%", f"{r['gamma']:.3f}", f"{r['fvu']:.3f}",
                     with_interval(r, "delta_lm_loss", ".3f")])
    return rows


TABLE_HEADER = ["SAE", "λ or k", "lr", "width", "L0", "% CE recovered", "clean CE", "SAE CE", "zero-abl. CE",
                "% alive", "γ", "FVU", "Δ LM loss"]


def _groups(frame: pd.DataFrame):
    return frame.groupby(["model", "layer", "site"], sort=False)


def markdown_tables(frame: pd.DataFrame) -> str:
    parts = ["<!-- generated by gatedsae.reporting.tables; ★ marks Pareto-optimal SAEs (L0 vs loss recovered); "
             "[low, high]: 95% interval (paired bootstrap over held-out windows) -->\n"]
    for (model, layer, site), group in _groups(frame):
        parts.append(f"### {model}, layer {layer}, {site_label(site)}\n")
        parts.append("| " + " | ".join(TABLE_HEADER) + " |")
        parts.append("|" + "---|" * len(TABLE_HEADER))
        parts += ["| " + " | ".join(row) + " |" for row in _table_rows(group)]
        parts.append("")
    return "\n".join(parts)


def _latex_escape(text: str) -> str:
    return (text.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_")
            .replace("★ ", r"$\star$ ").replace("λ", r"$\lambda$").replace("γ", r"$\gamma$")
            .replace("Δ", r"$\Delta$"))


def latex_tables(frame: pd.DataFrame) -> str:
    parts = ["% generated by gatedsae.reporting.tables; $\\star$ marks Pareto-optimal SAEs (L0 vs loss recovered); "
             "[low, high]: 95% interval (paired bootstrap over held-out windows)"]
    for (model, layer, site), group in _groups(frame):
        parts += [r"\begin{table}[h]", r"\centering", r"\small",
                  r"\begin{tabular}{l" + "r" * (len(TABLE_HEADER) - 1) + "}", r"\toprule",
                  " & ".join(_latex_escape(h) for h in TABLE_HEADER) + r" \\", r"\midrule"]
        parts += [" & ".join(_latex_escape(cell) for cell in row) + r" \\" for row in _table_rows(group)]
        parts += [r"\bottomrule", r"\end{tabular}",
                  r"\caption{" + _latex_escape(f"{model}, layer {layer}, {site_label(site)}") + "}",
                  r"\end{table}", ""]
    return "\n".join(parts)


def summary(frame: pd.DataFrame, head: pd.DataFrame) -> dict:
    """Per grid and architecture, the numbers `dvc metrics show` compares across commits."""
    result: dict = {}
    for (model, site, layer, arch), group in frame.groupby(["model", "site", "layer", "arch"]):
        best = group[group["pareto"]]
        result.setdefault(f"{model}/{site}/layer{layer}", {})[arch] = {
            "saes": int(len(group)), "pareto_saes": int(len(best)),
            "best_loss_recovered": round(float(group["loss_recovered"].max()), 5),
            "min_l0": round(float(group["l0"].min()), 3), "mean_gamma": round(float(group["gamma"].mean()), 4),
        }
    main = head.drop_duplicates(["model", "site", "layer"]) if len(head) else head  # main sweep, compute-matched
    for _, row in main.iterrows():
        if not math.isnan(row["l0_ratio"]):
            grid = result[f"{row['model']}/{row['site']}/layer{row['layer']}"]
            grid["l0_ratio"] = round(float(row["l0_ratio"]), 4)
            if not pd.isna(row.get("l0_ratio_ci_low", math.nan)):
                grid["l0_ratio_ci"] = [round(float(row["l0_ratio_ci_low"]), 4), round(float(row["l0_ratio_ci_high"]), 4)]
    return result


def write_csv_atomic(frame: pd.DataFrame, path: Path, columns: Sequence[str] | None = None) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, columns=columns, float_format="%.6g")


def on_split(frame: pd.DataFrame, split: Optional[str]) -> pd.DataFrame:
    """The rows evaluated on a held-out split (None, or rows that name no split: every row)."""
    if split is None or "split" not in frame or frame["split"].isna().all():
        return frame
    found = frame[frame["split"] == split].reset_index(drop=True)
    if found.empty:
        raise ValueError(f"no SAE was evaluated on the held-out split {split!r} (the rows hold "
                         f"{sorted(set(frame['split'].dropna()))}): re-run the evaluate stage")
    return found


def aggregate(metrics_files: Iterable[Path], results: Path, intervals: Optional[IntervalsConfig] = None,
              protocol: Optional[VerdictConfig] = None, split: Optional[str] = None,
              only: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Write metrics.csv, tables/, the readings at the pre-registered levels (headline.csv, levels.csv,
    comparisons.csv, ratio_curve.csv) and summary.json under `results`, from the rows of the held-out
    `split` (None: every row); `only`: just these of AGGREGATE_OUTPUTS (the test split's: SPLIT_OUTPUTS)."""
    from gatedsae.reporting.statistics import Readings

    frame = on_split(collect(metrics_files), split)
    bootstrap = Bootstrap(frame, intervals or IntervalsConfig())
    frame = bootstrap.sae_intervals(frame, SAE_INTERVALS)
    readings = Readings(frame, bootstrap, protocol or VerdictConfig())
    head, per_level = readings.headline()
    outputs = {key: results / name for key, name in AGGREGATE_OUTPUTS.items() if only is None or key in only}
    write_csv_atomic(frame.reindex(columns=metrics_columns(frame)), outputs["metrics"])
    write_csv_atomic(head, outputs["headline"])
    write_csv_atomic(per_level, outputs["levels"])
    write_csv_atomic(readings.comparisons(), outputs["comparisons"])
    if only is not None:
        return outputs
    pareto_columns = ["model", "site", "layer", "arch", "seed", *architectures.KNOBS, "l0", "loss_recovered",
                      "loss_recovered_ci_low",
                      "loss_recovered_ci_high", "delta_lm_loss", "delta_lm_loss_ci_low", "delta_lm_loss_ci_high",
                      "fvu", "gamma"]
    write_csv_atomic(frame[frame["pareto"]].reindex(columns=pareto_columns), outputs["pareto"])
    write_csv_atomic(readings.ratio_curve(), outputs["ratio_curve"])
    write_text_atomic(outputs["markdown"], markdown_tables(frame))
    write_text_atomic(outputs["latex"], latex_tables(frame))
    write_json_atomic(outputs["summary"], summary(frame, head))
    write_json_atomic(outputs["densities"], {density_key(row): row["density_histogram"] for _, row in frame.iterrows()})
    return outputs


def density_key(row) -> str:
    """How a feature-density histogram is found in densities.json (one per evaluated SAE)."""
    return f"{row['site']}/layer{row['layer']}/{row['variant']}/{row['sae']}"
