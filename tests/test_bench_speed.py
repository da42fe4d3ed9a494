"""scripts/bench_speed.py: the two cold runs' verdicts compared claim by claim, and what `auto` resolved to read
back from the run's records (the runs themselves are the benchmark, not a test)."""

from __future__ import annotations

import json
import runpy

SCRIPT = runpy.run_path("scripts/bench_speed.py", run_name="bench_speed")


def _claim(id_: str, value, low, high, status="REPRODUCED") -> dict:
    return {"id": id_, "claim": id_, "site": "resid_post", "layer": 1, "statistic": "s", "value": value,
            "ci_low": low, "ci_high": high, "threshold": "< 0.75", "paper": "", "status": status}


def test_a_statistic_agrees_within_the_auto_runs_half_width_and_status():
    auto = {"claims": [_claim("a", 0.40, 0.36, 0.44), _claim("b", 0.40, 0.38, 0.42), _claim("c", 1.0, "-inf", "inf"),
                       _claim("d", 0.5, 0.4, 0.6)]}
    float32 = {"claims": [_claim("a", 0.43, 0.39, 0.47), _claim("b", 0.43, 0.41, 0.45, "NOT REPRODUCED"),
                          _claim("c", 1.0, "-inf", "inf")]}
    result = SCRIPT["agreement"](auto, float32)
    rows = {row["id"]: row for row in result["claims"]}
    assert rows["a"]["within_interval"] and rows["a"]["same_status"]
    assert abs(rows["a"]["difference"] - 0.03) < 1e-12 and abs(rows["a"]["auto_half_width"] - 0.04) < 1e-12
    assert not rows["b"]["within_interval"] and not rows["b"]["same_status"]
    assert rows["c"]["auto_half_width"] is None and not rows["c"]["within_interval"]  # an infinite interval decides nothing
    assert rows["d"]["float32"] is None and not rows["d"]["same_status"]              # a claim only one run made
    assert (result["compared"], result["within_interval"], result["same_status"], result["of"]) == (2, 1, 2, 4)


def test_resolved_precisions_are_counted_per_stage_from_every_record(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({"precision": {"stage": "cache", "dtype": "float32"}}))
    (tmp_path / "a" / "sae.json").write_text(json.dumps({"x": [{"precision": {"stage": "train", "dtype": "bfloat16"}}]}))
    (tmp_path / "b.json").write_text(json.dumps({"precision": {"stage": "train", "dtype": "bfloat16"}}))
    (tmp_path / "broken.json").write_text("{")
    assert SCRIPT["resolved_precisions"](tmp_path) == {"cache": {"float32": 1}, "train": {"bfloat16": 2}}
