"""Whether each SAE had converged when its training stopped, from its training curve (curves.csv) and
the rule in conf/verdict (`ConvergenceConfig`): each watched metric changes by less than a stated
fraction over the last part of training, each end of that part the mean of the logged steps near it.

Beside each change, its noise: the standard error the two means' scatter gives it, the logged rows'
noise estimated from their successive differences over the last part (SD / √2: a trend that moves
little from one row to the next adds almost nothing). A change that exceeds the rule's fraction by
more than twice its noise is a curve still moving; one within it is a curve the logged rows cannot
tell from converged. The rule itself reads the change only."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import pandas as pd

from gatedsae.plan.config import ConvergenceConfig

KEY = ["site", "layer", "variant", "sae"]  # how a curve is matched with its metrics rows


def assess(curves: Optional[pd.DataFrame], rule: ConvergenceConfig) -> pd.DataFrame:
    """One row per SAE with a curve: each metric's relative change over the last `rule.last_fraction` of
    training (`<metric>_change`), `converged` (True / False; None when the curve is too short to tell)
    and a note."""
    columns = [*KEY, "last_step", *(f"{m}_{what}" for m in rule.metrics for what in ("change", "noise")),
               "converged", "note"]
    if curves is None or curves.empty:
        return pd.DataFrame(columns=columns)
    records = []
    for key, curve in curves.groupby(KEY, sort=False):
        curve = curve.sort_values("step")
        last = float(curve["step"].max())
        start_at, width = (1 - rule.last_fraction) * last, rule.window * last
        start = curve[(curve["step"] >= start_at - width) & (curve["step"] <= start_at)]
        end = curve[curve["step"] >= last - width]
        record = dict(zip(KEY, key)) | {"last_step": int(last)}
        moved, unknown = [], []
        for metric in rule.metrics:
            change = _relative_change(start, end, metric)
            record[f"{metric}_change"] = change
            record[f"{metric}_noise"] = _change_noise(curve[curve["step"] >= start_at - width], start, end, metric)
            if change is None:
                unknown.append(metric)
            elif change >= rule.max_relative_change:
                moved.append(f"{metric} {100 * change:.0f}%")
        record["converged"] = None if unknown else not moved
        record["note"] = (f"too few logged steps to read {', '.join(unknown)}" if unknown else
                          f"still moving over the last {100 * rule.last_fraction:.0f}% of training: {', '.join(moved)}"
                          if moved else "")
        records.append(record)
    return pd.DataFrame(records, columns=columns)


def _relative_change(start: pd.DataFrame, end: pd.DataFrame, metric: str) -> Optional[float]:
    if metric not in start or start.empty or end.empty or start["step"].max() >= end["step"].min():
        return None
    before, after = pd.to_numeric(start[metric]).mean(), pd.to_numeric(end[metric]).mean()
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return None
    return abs(after - before) / abs(before)


def _change_noise(last_part: pd.DataFrame, start: pd.DataFrame, end: pd.DataFrame, metric: str) -> Optional[float]:
    """The standard error of `_relative_change` from the rows' scatter over the rule's last part."""
    if metric not in last_part or len(start) < 2 or len(end) < 2:
        return None
    values = pd.to_numeric(last_part[metric])
    before = pd.to_numeric(start[metric]).mean()
    if not math.isfinite(before) or before == 0:
        return None
    row_noise = values.diff().dropna().std() / math.sqrt(2)
    noise = row_noise * math.sqrt(1 / len(start) + 1 / len(end)) / abs(before)
    return float(noise) if math.isfinite(noise) else None


def still_moving(change: Optional[float], noise: Optional[float], threshold: float) -> Optional[bool]:
    """True: the change exceeds `threshold` by more than twice its noise; False: it is below the threshold
    by more than that; None: within twice its noise of it, or unknown."""
    if change is None or noise is None:
        return None
    if change > threshold + 2 * noise:
        return True
    if change < threshold - 2 * noise:
        return False
    return None


def behind(status: pd.DataFrame, rows: pd.DataFrame, rule: Optional[ConvergenceConfig] = None) -> dict:
    """The convergence of the SAEs in `rows` (metrics rows): how many are, are not, cannot be told; the
    names of those not converged and, given the rule, how many of them are still moving beyond the noise
    of their curves (`still_moving`)."""
    if rows.empty:
        return {"saes": 0, "converged": 0, "not_converged": [], "unknown": 0}
    keyed = rows[KEY].merge(status, on=KEY, how="left") if not status.empty else rows[KEY].assign(converged=None)
    converged = keyed["converged"]
    known = converged.notna()
    not_converged = keyed[known & (converged == False)]  # noqa: E712 (a column of True / False / None)
    summary = {"saes": int(len(keyed)), "converged": int((known & (converged == True)).sum()),  # noqa: E712
               "not_converged": [f"{r.variant}/{r.sae}" for r in not_converged.itertuples()],
               "unknown": int((~known).sum())}
    if rule is not None and not not_converged.empty and all(f"{m}_noise" in keyed for m in rule.metrics):
        summary["still_moving"] = int(sum(moving_beyond_noise(row, rule.metrics, rule.max_relative_change)
                                          for _, row in not_converged.iterrows()))
    return summary


def moving_beyond_noise(sae: Mapping, metrics: Sequence[str], threshold: float) -> bool:
    """Whether some metric of an SAE's `<metric>_change` / `<metric>_noise` (a row of `assess`, or a probe's
    record of it) is still moving: above `threshold` by more than twice its noise."""
    return any(still_moving(_number(sae.get(f"{m}_change")), _number(sae.get(f"{m}_noise")), threshold) for m in metrics)


def _number(value) -> Optional[float]:
    return None if value is None or pd.isna(value) else float(value)


def describe(summary: dict) -> str:
    """'12 of 14 converged (2 not: …)', or why it cannot be said."""
    if not summary["saes"]:
        return "n/a"
    if summary["unknown"] == summary["saes"]:
        return "not assessed (no training curves)"
    text = f"{summary['converged']} of {summary['saes']} converged"
    if summary["not_converged"]:
        shown = ", ".join(summary["not_converged"][:3]) + (" …" if len(summary["not_converged"]) > 3 else "")
        moving = summary.get("still_moving")
        text += f" (not: {shown}" + ("" if moving is None else f"; {moving} of them still moving beyond the noise "
                                                                  "of their curves") + ")"
    if summary["unknown"]:
        text += f", {summary['unknown']} not assessed"
    return text
