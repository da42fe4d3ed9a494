"""The scripts that record whole cold runs (the runs themselves are benchmarks, not tests): bench_speed.py's
claim-by-claim comparison of two verdicts and its count of what `auto` resolved to; record_replicate.py's
reading of a finished run and of /usr/bin/time's report; grid_readings.py's validation-only summary of a
grid."""

from __future__ import annotations

import json
import runpy
import subprocess

import pytest

SCRIPT = runpy.run_path("scripts/bench_speed.py", run_name="bench_speed")
RECORD = runpy.run_path("scripts/record_replicate.py", run_name="record_replicate")
READINGS = runpy.run_path("scripts/grid_readings.py", run_name="grid_readings")


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


TIME_REPORT = """\tCommand being timed: "make replicate"
\tUser time (seconds): 12000.50
\tElapsed (wall clock) time (h:mm:ss or m:ss): 2:03:04.5
\tMaximum resident set size (kbytes): 3145728
\tExit status: 0
"""


def test_a_cold_run_is_recorded_from_its_own_files_and_times_report(tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    results = clone / "results" / "default"
    results.mkdir(parents=True)
    chapters = [{"name": "headline", "description": "h", "wall_seconds": 3000.0, "stages": {"train": 1000.0}},
                {"name": "groundtruth", "description": "g", "wall_seconds": 200.0, "stages": {}}]
    (results / "replicate.json").write_text(json.dumps({"setup_seconds": 120.0, "chapters": chapters,
                                                        "wall_seconds": 3200.0}))
    (results / "verdict.json").write_text(json.dumps({"summary": {"REPRODUCED": 10, "NOT REPRODUCED": 2,
                                                                  "INCONCLUSIVE": 0}}))
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    (tmp_path / "time.txt").write_text(TIME_REPORT)
    out = tmp_path / "replicate.json"
    monkeypatch.setattr("sys.argv", ["record_replicate.py", "--clone", str(clone), "--time", str(tmp_path / "time.txt"),
                                     "--how-measured", "alone", "--out", str(out)])
    assert RECORD["main"]() == 0
    record = json.loads(out.read_text())
    assert record["wall_seconds"] == 2 * 3600 + 3 * 60 + 4.5 and record["max_rss_gib"] == 3.0
    assert record["chapters"] == chapters and record["setup_seconds"] == 120.0
    assert record["targets"]["headline_chapter_with_install_seconds"] == 3120.0
    assert record["targets"]["whole_within_budget"] is False  # 123 min > 120
    assert record["verdict"] == "12 claims: 10 REPRODUCED, 2 NOT REPRODUCED"
    assert len(record["code_commit"]) == 40 and record["machine"]["cores"]


def test_a_failed_run_is_not_recorded(tmp_path):
    (tmp_path / "time.txt").write_text(TIME_REPORT.replace("Exit status: 0", "Exit status: 2"))
    assert RECORD["time_report"](tmp_path / "time.txt")["exit_status"] == 2
    (tmp_path / "bad.txt").write_text("nothing")
    with pytest.raises(SystemExit, match="no wall clock"):
        RECORD["time_report"](tmp_path / "bad.txt")


def test_grid_readings_average_seeds_per_point_and_never_read_the_test_split(tmp_path):
    header = "site,layer,split,variant,arch,width,l1,seed,l0,loss_recovered,fvu,gamma\n"
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(header + "resid_post,15,validation,sweep,gated,2304,0.02,0,100,0.98,0.1,1.0\n"
                       "resid_post,15,validation,sweep,gated,2304,0.02,1,200,0.96,0.3,1.0\n"
                       "resid_post,15,test,sweep,gated,2304,0.02,0,900,0.10,0.9,0.5\n"
                       "resid_post,15,validation,all_tokens,gated,2304,0.02,0,5,0.5,0.5,0.5\n")
    row = tmp_path / "row.json"  # an evaluate-checkpoint row: its place is in its checkpoint's folders
    row.write_text(json.dumps({"checkpoint": "/d/checkpoints/m/c/resid_post/layer15/pilot/all_tokens/gated_x",
                               "split": "validation", "arch": "gated", "width": 2304, "l1": 0.002, "seed": 0,
                               "l0": 300, "loss_recovered": 0.99, "fvu": 0.05, "gamma": 1.01}))
    rows = READINGS["_rows"]([metrics], [row], ["all_tokens"])
    points = READINGS["readings"](rows)
    assert [(p["variant"], p["l1"], p["seeds"]) for p in points] == [("all_tokens", 0.002, 1), ("sweep", 0.02, 2)]
    sweep = points[1]
    assert (sweep["l0"], sweep["loss_recovered"], sweep["layer"]) == (150, 0.97, 15)
