"""From metrics rows to the paper's tables: `metrics.csv` (one row per SAE), Markdown and LaTeX tables
in the layout of the paper's Tables 1–8 with Pareto-optimal rows marked, a summary for `dvc metrics`,
and the headline: L0_gated / L0_baseline at matched loss recovered, per site.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_json_atomic

# metrics.csv columns, in order: the paper's tables first, then the later papers' metrics and provenance.
COLUMNS = [
    "model", "site", "layer", "arch", "variant", "l1", "lr", "width", "l0", "loss_recovered",
    "ce_clean", "ce_sae", "ce_zero", "alive_fraction", "gamma", "fvu", "nmse", "delta_lm_loss",
    "train_tokens", "eval_tokens", "ce_tokens", "corpus", "sweep", "sae", "checkpoint_id", "checkpoint",
]
SITE_ORDER = ["resid_post", "mlp_out", "attn_z"]
SITE_LABELS = {"resid_post": "Residual stream", "mlp_out": "MLP output", "attn_z": "Attention output (pre W_O)"}
ARCH_LABELS = {
    "gated": "Gated", "baseline": "Baseline", "gated_unfrozen_decoder": "Gated, unfrozen decoder",
    "gated_no_rmag": "Gated, no r_mag", "gated_untied": "Gated, untied encoders",
    "baseline_rescale_shift": "Baseline + rescale & shift",
}


def collect(metrics_files: Iterable[Path]) -> pd.DataFrame:
    """Every evaluated SAE as one row, in a stable order (site, layer, architecture, λ)."""
    rows = [row for path in metrics_files for row in json.loads(Path(path).read_text())["rows"]]
    if not rows:
        raise ValueError("no metrics rows to aggregate: evaluate at least one grid first")
    frame = pd.DataFrame(rows)
    frame["site_order"] = frame["site"].map(SITE_ORDER.index)
    frame = frame.sort_values(["model", "site_order", "layer", "arch", "l1"]).drop(columns="site_order")
    frame["pareto"] = pareto_mask(frame)
    return frame.reset_index(drop=True)


def pareto_mask(frame: pd.DataFrame, x: str = "l0", y: str = "loss_recovered") -> pd.Series:
    """True where no SAE of the same (model, site, layer, architecture) has lower-or-equal `x` and
    higher-or-equal `y`, one of them strictly (low L0 and high loss recovered are both better)."""
    mask = pd.Series(False, index=frame.index)
    for _, group in frame.groupby(["model", "site", "layer", "arch"]):
        xs, ys = group[x].to_numpy(), group[y].to_numpy()
        for position, index in enumerate(group.index):
            dominated = ((xs <= xs[position]) & (ys >= ys[position]) & ((xs < xs[position]) | (ys > ys[position])))
            mask[index] = not dominated.any()
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
        gated, baseline = cell[cell["arch"] == "gated"], cell[cell["arch"] == "baseline"]
        if gated.empty or baseline.empty:
            continue
        log_l0 = np.log(gated["l0"].clip(lower=1e-3))
        g = gated.loc[(log_l0 - log_l0.median()).abs().idxmin()]
        b = baseline.loc[(np.log(baseline["l0"].clip(lower=1e-3)) - np.log(g["l0"])).abs().idxmin()]
        pairs.append((g, b))
    return pairs


# ---------------------------------------------------------------------------------------------------
# The headline: at matched loss recovered, how much lower is Gated's L0?


def interpolate_log_l0(front: pd.DataFrame, levels: np.ndarray) -> np.ndarray:
    """log L0 on a frontier at the given loss-recovered levels, linear in (loss recovered, log L0)."""
    ordered = front.sort_values("loss_recovered")
    return np.interp(levels, ordered["loss_recovered"], np.log(ordered["l0"]))


def headline(frame: pd.DataFrame, levels: int = 21) -> pd.DataFrame:
    """Per (model, site, layer): L0_gated / L0_baseline at matched loss recovered over the range both
    frontiers cover (geometric mean over evenly spaced levels, and its extremes), with γ of each
    architecture interpolated at the same levels."""
    records = []
    for (model, site, layer), group in frame[frame["arch"].isin(["gated", "baseline"])].groupby(
            ["model", "site", "layer"], sort=False):
        fronts = {arch: frontier(group[group["arch"] == arch]) for arch in ("gated", "baseline")}
        record = {"model": model, "site": site, "layer": layer}
        low = max(f["loss_recovered"].min() for f in fronts.values() if len(f))
        high = min(f["loss_recovered"].max() for f in fronts.values() if len(f))
        if any(len(f) < 2 for f in fronts.values()) or not low < high:
            records.append({**record, "l0_ratio": math.nan, "note": "frontiers do not overlap in loss recovered"})
            continue
        grid = np.linspace(low, high, levels)
        log_ratio = interpolate_log_l0(fronts["gated"], grid) - interpolate_log_l0(fronts["baseline"], grid)
        gammas = {arch: np.interp(grid, f.sort_values("loss_recovered")["loss_recovered"],
                                  f.sort_values("loss_recovered")["gamma"]) for arch, f in fronts.items()}
        records.append({**record, "l0_ratio": float(np.exp(log_ratio.mean())),
                        "l0_ratio_min": float(np.exp(log_ratio.min())), "l0_ratio_max": float(np.exp(log_ratio.max())),
                        "loss_recovered_low": float(low), "loss_recovered_high": float(high),
                        "gamma_gated": float(gammas["gated"].mean()), "gamma_baseline": float(gammas["baseline"].mean()),
                        "note": ""})
    return pd.DataFrame(records)


# ---------------------------------------------------------------------------------------------------
# Rendering.


def _table_rows(group: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, r in group.iterrows():
        rows.append([("★ " if r["pareto"] else "") + ARCH_LABELS.get(r["arch"], r["arch"]), f"{r['l1']:g}",
                     f"{r['lr']:g}", f"{int(r['width'])}", f"{r['l0']:.1f}", f"{100 * r['loss_recovered']:.2f}%",
                     f"{r['ce_clean']:.3f}", f"{r['ce_sae']:.3f}", f"{r['ce_zero']:.3f}",
                     f"{100 * r['alive_fraction']:.1f}%", f"{r['gamma']:.3f}", f"{r['fvu']:.3f}",
                     f"{r['delta_lm_loss']:.3f}"])
    return rows


TABLE_HEADER = ["SAE", "λ", "lr", "width", "L0", "% CE recovered", "clean CE", "SAE CE", "zero-abl. CE",
                "% alive", "γ", "FVU", "Δ LM loss"]


def _groups(frame: pd.DataFrame):
    return frame.groupby(["model", "layer", "site"], sort=False)


def markdown_tables(frame: pd.DataFrame) -> str:
    parts = ["<!-- generated by gatedsae.tables; ★ marks Pareto-optimal SAEs (L0 vs loss recovered) -->\n"]
    for (model, layer, site), group in _groups(frame):
        parts.append(f"### {model}, layer {layer}, {SITE_LABELS[site]}\n")
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
    parts = ["% generated by gatedsae.tables; $\\star$ marks Pareto-optimal SAEs (L0 vs loss recovered)"]
    for (model, layer, site), group in _groups(frame):
        parts += [r"\begin{table}[h]", r"\centering", r"\small",
                  r"\begin{tabular}{l" + "r" * (len(TABLE_HEADER) - 1) + "}", r"\toprule",
                  " & ".join(_latex_escape(h) for h in TABLE_HEADER) + r" \\", r"\midrule"]
        parts += [" & ".join(_latex_escape(cell) for cell in row) + r" \\" for row in _table_rows(group)]
        parts += [r"\bottomrule", r"\end{tabular}",
                  r"\caption{" + _latex_escape(f"{model}, layer {layer}, {SITE_LABELS[site]}") + "}",
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
    for _, row in head.iterrows():
        if not math.isnan(row["l0_ratio"]):
            result[f"{row['model']}/{row['site']}/layer{row['layer']}"]["l0_ratio"] = round(float(row["l0_ratio"]), 4)
    return result


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_csv_atomic(frame: pd.DataFrame, path: Path, columns: Sequence[str] | None = None) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, columns=columns, float_format="%.6g")


def aggregate(metrics_files: Iterable[Path], results: Path) -> dict[str, Path]:
    """Write metrics.csv, tables/, headline.csv and summary.json under `results`."""
    frame = collect(metrics_files)
    head = headline(frame)
    outputs = {
        "metrics": results / "metrics.csv", "pareto": results / "pareto.csv", "headline": results / "headline.csv",
        "markdown": results / "tables" / "metrics.md", "latex": results / "tables" / "metrics.tex",
        "summary": results / "summary.json", "densities": results / "densities.json",
    }
    write_csv_atomic(frame, outputs["metrics"], COLUMNS + ["pareto"])
    write_csv_atomic(frame[frame["pareto"]], outputs["pareto"], ["model", "site", "layer", "arch", "l1", "l0",
                                                                  "loss_recovered", "delta_lm_loss", "fvu", "gamma"])
    write_csv_atomic(head, outputs["headline"])
    write_text_atomic(outputs["markdown"], markdown_tables(frame))
    write_text_atomic(outputs["latex"], latex_tables(frame))
    write_json_atomic(outputs["summary"], summary(frame, head))
    write_json_atomic(outputs["densities"], {density_key(row): row["density_histogram"] for _, row in frame.iterrows()})
    return outputs


def density_key(row) -> str:
    """How a feature-density histogram is found in densities.json (one per evaluated SAE)."""
    return f"{row['site']}/layer{row['layer']}/{row['variant']}/{row['sae']}"
