"""The scripts that record whole cold runs (the runs themselves are benchmarks, not tests): bench_speed.py's
claim-by-claim comparison of two verdicts, its count of what `auto` resolved to and the docs table of its file;
record_replicate.py's
reading of a finished run and of /usr/bin/time's report; grid_readings.py's validation-only
summary of a grid."""

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
    # a tokenizer's vocabulary has tokens "stage" and "dtype": ids, not a precision record
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"stage": 14680, "dtype": 16659}}}))
    assert SCRIPT["resolved_precisions"](tmp_path) == {"cache": {"float32": 1}, "train": {"bfloat16": 2}}


def test_the_speed_table_gives_each_stage_both_runs_their_ratio_and_the_verdicts_agreement(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, "scripts")
    import benchmark_tables

    def run(wall: float, train: float, dtype: str) -> dict:
        chapter = {"name": "headline", "stages": {"cache": 600.0, "train": train, "evaluate": 300.0, "browse": 60.0}}
        return {"setup_seconds": 180.0, "replicate_seconds": wall - 180.0, "wall_seconds": wall, "chapters": [chapter],
                "precision": {"cache": {"float32": 3}, "train": {dtype: 10}}}

    claims = [{"id": "a", "auto": 0.5, "float32": 0.52, "difference": 0.02, "auto_half_width": 0.05,
               "within_interval": True, "status_auto": "REPRODUCED", "status_float32": "REPRODUCED", "same_status": True},
              {"id": "b", "auto": 1.0, "float32": 1.1, "difference": 0.1, "auto_half_width": 0.01,
               "within_interval": False, "status_auto": "REPRODUCED", "status_float32": "INCONCLUSIVE",
               "same_status": False}]
    speed = {"command": "python scripts/bench_speed.py --chapter headline", "code_version": "abc1234",
             "experiment": "default", "chapter": "headline", "settings": ["train.seeds=1"],
             "machine": {"cpu": "CPU", "cores": 2, "threads": 2, "load_average": [2.0, 2.0, 2.0],
                         "load_average_before": [0.5, 0.4, 0.3], "load_average_after": [2.0, 1.9, 1.8]},
             "runs": {"auto": run(2400.0, 900.0, "bfloat16"), "float32": run(3000.0, 1500.0, "float32")},
             "ratio_float32_over_auto": 1.25,
             "targets": {"ratio": 1.8, "ratio_met": False, "auto_wall_seconds": 2400, "auto_wall_met": True},
             "verdicts": {"claims": claims, "compared": 2, "within_interval": 1, "same_status": 1, "of": 2}}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    monkeypatch.setattr(benchmark_tables, "BENCHMARKS", tmp_path)
    text = benchmark_tables.speed_table()
    assert "load average before 0.5, 0.4, 0.3" in text and "Load average after: 2.0, 1.9, 1.8." in text
    assert "the chapters through `headline`, settings `train.seeds=1`" in text
    assert "| auto | 3.0 | 10.0 | 15.0 | 0.0 | 5.0 | 1.0 | 40.0 | cache float32 ×3; train bfloat16 ×10 |" in text
    assert "| float32 / auto | | 1.00× | 1.67× | – | 1.00× | 1.00× | **1.25×** | |" in text
    assert "≥ 1.8×: **not met**" in text and "≤ 40 min: **met** (40.0 min)" in text
    assert "1 of 2 statistics" in text and "1 of 2 claims end with the same status" in text
    assert "`b` 1.000 → 1.100 (half-width 0.010)" in text and "`a`" not in text
    # Settings that do less work than the target's: the ratio still, the wall time not judged
    speed["settings"] = ["train.seeds=1", "experiment.sites=[resid_post]"]
    speed["targets"] |= {"auto_wall_met": None, "auto_wall_settings": ["train.seeds=1"]}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    text = benchmark_tables.speed_table()
    assert "≤ 40 min: not judged at these settings (it is set at `train.seeds=1`" in text and "**met**" not in text
    monkeypatch.setattr(benchmark_tables, "BENCHMARKS", tmp_path / "none")
    assert "has not been written yet" in benchmark_tables.speed_table()


TIME_REPORT = """\tCommand being timed: "make replicate"
\tUser time (seconds): 12000.50
\tElapsed (wall clock) time (h:mm:ss or m:ss): 2:03:04.5
\tMaximum resident set size (kbytes): 3145728
\tExit status: 0
"""


def _record(tmp_path, monkeypatch, run: dict, summary: dict) -> dict:
    """record_replicate.py on a clone (a git checkout) holding the run's replicate.json and a verdict with
    `summary`, and /usr/bin/time's TIME_REPORT: the record it writes."""
    clone = tmp_path / "clone"
    results = clone / "results" / "default"
    results.mkdir(parents=True)
    (results / "replicate.json").write_text(json.dumps(run))
    (results / "verdict.json").write_text(json.dumps({"summary": summary}))
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    (tmp_path / "time.txt").write_text(TIME_REPORT)
    out = tmp_path / "replicate.json"
    monkeypatch.setattr("sys.argv", ["record_replicate.py", "--clone", str(clone), "--time", str(tmp_path / "time.txt"),
                                     "--how-measured", "alone", "--out", str(out)])
    assert RECORD["main"]() == 0
    return json.loads(out.read_text())


def test_a_cold_run_is_recorded_from_its_own_files_and_times_report(tmp_path, monkeypatch):
    chapters = [{"name": "headline", "description": "h", "wall_seconds": 3000.0, "stages": {"train": 1000.0}},
                {"name": "groundtruth", "description": "g", "wall_seconds": 200.0, "stages": {}}]
    record = _record(tmp_path, monkeypatch, {"setup_seconds": 120.0, "chapters": chapters, "wall_seconds": 3200.0},
                     {"REPRODUCED": 10, "NOT REPRODUCED": 2, "INCONCLUSIVE": 0})
    assert record["wall_seconds"] == 2 * 3600 + 3 * 60 + 4.5 and record["max_rss_gib"] == 3.0
    assert record["chapters"] == chapters and record["setup_seconds"] == 120.0
    assert record["targets"]["headline_chapter_with_install_seconds"] == 3120.0
    assert record["targets"]["whole_within_budget"] is False  # 123 min > 120
    assert record["verdict"] == "12 claims: 10 REPRODUCED, 2 NOT REPRODUCED"
    assert len(record["code_commit"]) == 40 and record["machine"]["cores"]


def test_a_resumed_run_is_recorded_from_its_journal_not_the_last_invocations_clock(tmp_path, monkeypatch):
    """A run killed and resumed: /usr/bin/time saw only the resumed part; the record's whole time is the sum
    the run kept over its invocations (replicate.json's wall_seconds_with_setup), with the invocations."""
    invocations = [{"started": "2026-12-06T12:46:11+00:00", "code_version": "a", "setup_seconds": 200.0,
                    "wall_seconds": 8000.0, "interrupted_in": "ablations"},
                   {"started": "2026-12-07T09:00:00+00:00", "code_version": "a", "setup_seconds": 5.0,
                    "wall_seconds": 1200.0, "interrupted_in": None}]
    chapters = [{"name": "headline", "description": "h", "wall_seconds": 9200.0, "stages": {"train": 5000.0}}]
    record = _record(tmp_path, monkeypatch, {"setup_seconds": 205.0, "chapters": chapters, "wall_seconds": 9200.0,
                                             "wall_seconds_with_setup": 9405.0, "invocations": invocations},
                     {"REPRODUCED": 1})
    assert record["wall_seconds"] == 9405.0 and record["targets"]["whole_with_install_seconds"] == 9405.0
    assert record["invocations"] == invocations
    assert record["last_invocation_wall_seconds"] == 2 * 3600 + 3 * 60 + 4.5
    assert "resumed" in record["wall_seconds_note"]


def test_a_failed_run_is_not_recorded(tmp_path):
    (tmp_path / "time.txt").write_text(TIME_REPORT.replace("Exit status: 0", "Exit status: 2"))
    assert RECORD["time_report"](tmp_path / "time.txt")["exit_status"] == 2
    (tmp_path / "bad.txt").write_text("nothing")
    with pytest.raises(SystemExit, match="no wall clock"):
        RECORD["time_report"](tmp_path / "bad.txt")


def test_grid_readings_average_seeds_per_point_and_never_read_the_test_split(tmp_path):
    header = "site,layer,split,variant,arch,width,l1,k,seed,l0,loss_recovered,fvu,gamma\n"
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(header + "resid_post,15,validation,sweep,gated,2304,0.02,,0,100,0.98,0.1,1.0\n"
                       "resid_post,15,validation,sweep,gated,2304,0.02,,1,200,0.96,0.3,1.0\n"
                       "resid_post,15,test,sweep,gated,2304,0.02,,0,900,0.10,0.9,0.5\n"
                       "resid_post,15,validation,all_tokens,gated,2304,0.02,,0,5,0.5,0.5,0.5\n"
                       "resid_post,15,validation,sweep,topk,2304,,48,0,48,0.97,0.2,1.0\n")  # a knob of its own
    row = tmp_path / "row.json"  # an evaluate-checkpoint row: its place is in its checkpoint's folders
    row.write_text(json.dumps({"checkpoint": "/d/checkpoints/m/c/resid_post/layer15/pilot/all_tokens/gated_x",
                               "split": "validation", "arch": "gated", "width": 2304, "l1": 0.002, "seed": 0,
                               "l0": 300, "loss_recovered": 0.99, "fvu": 0.05, "gamma": 1.01}))
    rows = READINGS["_rows"]([metrics], [row], ["all_tokens"])
    points = READINGS["readings"](rows)
    assert [(p["variant"], p["arch"], p.get("l1", p.get("k")), p["seeds"]) for p in points] == [
        ("all_tokens", "gated", 0.002, 1), ("sweep", "gated", 0.02, 2), ("sweep", "topk", 48, 1)]
    sweep = points[1]
    assert (sweep["l0"], sweep["loss_recovered"], sweep["layer"]) == (150, 0.97, 15)


def test_the_crossover_table_gives_each_width_in_each_precision(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, "scripts")
    import benchmark_tables
    import train_benchmark_tables

    def width(cross, at_02_dense, at_02_sparse):
        return {"crossover_density": cross, "points": [
            {"density": 0.05, "sparse_s": 0.1, "dense_s": 0.3, "speedup": 3.0},
            {"density": 0.199, "sparse_s": at_02_sparse, "dense_s": at_02_dense, "speedup": at_02_sparse / at_02_dense}]}

    data = {"command": "python scripts/bench_crossover.py", "train_sparse_max_density": 0.1,
            "machine": {"cpu": "CPU", "cores": 2, "threads": 2, "load_average": [0.5, 0.5, 0.5]},
            "crossover": {"float32": {"gated_w2304": width(0.13, 0.3, 0.5), "baseline_w3456": width(None, 0.2, 0.1)},
                          "bfloat16": {"gated_w2304": width(0.12, 0.25, 0.5), "baseline_w3456": width(0.101, 0.3, 0.6)}},
            "crossover_min": {"float32": 0.13, "bfloat16": 0.101}}
    (tmp_path / "train_crossover.json").write_text(json.dumps(data))
    monkeypatch.setattr(benchmark_tables, "BENCHMARKS", tmp_path)
    text = train_benchmark_tables.crossover_by_precision_table()
    assert "| Gated, 2,304 | 0.130 | 0.120 | 0.60 | 0.50 |" in text
    assert "| baseline, 3,456 | not within them | 0.101 | 2.00 | 0.50 |" in text
    assert "Lowest crossover: float32 0.130, bfloat16 0.101" in text and "`results/benchmarks/train_crossover.json`" in text
    assert "In training" not in text
    data["training"] = {"steps": 150, "thresholds": [0.2, 0.1], "precision": "bfloat16", "groups": {"gated_w2304": {
        "saes": 12, "seconds_ratio_first_over_last": 1.25, "runs": [
            {"threshold": 0.2, "seconds": 250.0, "sparse_steps": 140, "mean_density_last_step": 0.05},
            {"threshold": 0.1, "seconds": 200.0, "sparse_steps": 120, "mean_density_last_step": 0.05}]}}}
    (tmp_path / "train_crossover.json").write_text(json.dumps(data))
    text = train_benchmark_tables.crossover_by_precision_table()
    assert ("the first 150 steps of each group from a fresh start, one run per threshold: Gated 2,304 wide, 12 SAEs: "
            "250 s at 0.2 (140 steps on the support, density 0.050 at the last); 200 s at 0.1 (120 steps on the "
            "support, density 0.050 at the last); time at 0.2 / time at 0.1: 1.25.") in text



def test_the_allocator_table_gives_each_part_both_settings_and_flags_different_bits(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, "scripts")
    import benchmark_tables

    def spread(value):
        return {"median": value, "min": value, "max": value, "each": [value]}

    def part(default_s, kept_s, default_faults, kept_faults):
        return {"seconds": {"0": spread(default_s), "1024": spread(kept_s)},
                "kernel_seconds": {"0": spread(0.5), "1024": spread(0.0)},
                "minor_faults": {"0": spread(default_faults), "1024": spread(kept_faults)},
                "speedup": spread(default_s / kept_s)}

    reason = {"0": {"reason": "defaults"}, "1024": {"reason": "glibc mmap and trim thresholds set to 1024 MiB"}}
    data = {"command": "python scripts/bench_allocator.py", "rounds": 3, "steps": 4, "windows": 8, "settings": [0, 1024],
            "machine": {"cpu": "CPU", "cores": 2, "threads": 2}, "load_average_before": [0.5, 0.5, 0.5],
            "results": {
                "train": {"parts": {"gated_w2304_dense": part(2.0, 1.25, 500000, 0)}, "saes": {"gated_w2304_saes": 12},
                          "max_rss_gib": {"0": spread(2.5), "1024": spread(3.0)}, "identical": True, "allocator": reason},
                "evaluate": {"parts": {"spliced_attn_z_layer3": part(0.14, 0.125, 12000, 0)},
                             "max_rss_gib": {"0": spread(1.9), "1024": spread(2.1)}, "identical": False,
                             "allocator": reason}}}
    (tmp_path / "allocator.json").write_text(json.dumps(data))
    monkeypatch.setattr(benchmark_tables, "BENCHMARKS", tmp_path)
    text = benchmark_tables.allocator_table()
    assert ("| train: gated, 2,304 wide, 12 SAEs: dense steps | 2.000 | 1.250 | **1.60 (1.60–1.60)×** "
            "| 500,000 → 0 | 0.500 → 0.000 |") in text
    assert "| evaluate: the per-SAE spliced path at attn_z, layer 3 | 0.140 | 0.125 | **1.12 (1.12–1.12)×**" in text
    assert "train: peak resident memory 2.50 GiB with glibc's defaults, 3.00 GiB with 1024 MiB kept" in text
    assert "computed: the same bits" in text and "computed: **different bits**" in text


def test_the_step_table_gives_both_sides_their_ratio_and_whether_they_train_to_the_same_bits(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, "scripts")
    import benchmark_tables
    import train_benchmark_tables

    def spread(*values):
        return {"median": sorted(values)[len(values) // 2], "min": min(values), "max": max(values), "each": list(values)}

    data = {"command": "python scripts/bench_step.py --before abc1234", "machine": {"cpu": "CPU", "cores": 2, "threads": 2},
            "code": {"before": "abc1234", "after": "working tree on def5678"},
            "group": {"arch": "gated", "width_ratio": 4.0, "l1": "0.02,0.09", "seeds": 3, "saes": 6, "l0": 50.0,
                      "precision": "float32", "steps": 5},
            "before": {"cpu_seconds_per_step": spread(0.9, 1.0, 1.1), "seconds_per_step": spread(0.5, 0.5, 0.6)},
            "after": {"cpu_seconds_per_step": spread(0.8, 0.85, 0.9), "seconds_per_step": spread(0.4, 0.45, 0.5)},
            "speedup_cpu_time": spread(1.1, 1.2, 1.25),
            "same_training": {"identical_bits": False, "largest_relative_difference": 2.5e-7}}
    (tmp_path / "step.json").write_text(json.dumps(data))
    monkeypatch.setattr(benchmark_tables, "BENCHMARKS", tmp_path)
    text = train_benchmark_tables.train_step_table()
    assert "One Gated group of 6 SAEs (4 × d wide, λ 0.02, 0.09, 3 seeds each), L0 ≈ 50 per row" in text
    assert "3 interleaved rounds" in text
    assert "| before: abc1234 | 1000 (900–1100) | 500 (500–600) |" in text
    assert "| after: working tree on def5678 | 850 (800–900) | 450 (400–500) |" in text
    assert "**1.20 (1.10–1.25)×**" in text and "largest relative difference in any parameter after 5 steps" in text
    data["same_training"] = {"identical_bits": True, "largest_relative_difference": 0.0}
    (tmp_path / "step.json").write_text(json.dumps(data))
    assert "the two train to the same bits." in train_benchmark_tables.train_step_table()


def test_bench_step_compares_two_sides_parameters_bit_for_bit_and_by_relative_difference(tmp_path):
    import torch

    compare = runpy.run_path("scripts/bench_step.py", run_name="bench_step")["compare"]
    params = [torch.ones(2, 3), torch.full((4,), 2.0)]
    torch.save(params, tmp_path / "a.pt")
    torch.save(params, tmp_path / "b.pt")
    assert compare(tmp_path / "a.pt", tmp_path / "b.pt") == {"identical_bits": True, "largest_relative_difference": 0.0}
    torch.save([params[0], params[1] + torch.tensor([0.0, 0.0, 0.0, 1e-3])], tmp_path / "b.pt")
    found = compare(tmp_path / "a.pt", tmp_path / "b.pt")
    assert not found["identical_bits"] and found["largest_relative_difference"] == pytest.approx(1e-3 / 2.001, rel=1e-4)


DRIFT = runpy.run_path("scripts/retrain_drift.py", run_name="retrain_drift")


def _probe(readings: dict) -> dict:
    return {"sites": {"resid_post/layer15": {"command": "probe", "budgets": [
        {"steps": 400, "saes": {name: {"validation": {"ce_windows": 16, "ce_clean": 3.8, **values}}
                                for name, values in readings.items()}}]}}}


def test_retrain_drift_pairs_each_sae_with_its_published_seed_and_scales_by_the_seeds_spread(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "training.json").write_text(json.dumps({"code_version": "abc1234"}))
    header = "split,variant,arch,sae,l0,loss_recovered,fvu,ce_windows,ce_clean,checkpoint\n"
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(header + f"validation,sweep,gated,g,100,0.98,0.2,16,3.8,{tmp_path / 'g'}\n"
                       "validation,sweep,gated,g_seed1,102,0.97,0.2,16,3.8\n"
                       "validation,sweep,gated,g_seed2,104,0.99,0.2,16,3.8\n"
                       "test,sweep,gated,g,900,0.10,0.9,64,3.9\n"              # the test split is never read
                       "validation,sweep,gated,h,50,0.95,0.3,16,3.8\n"
                       "validation,sweep,gated,h_seed1,50,0.95,0.3,16,3.8\n")
    published = DRIFT["published_rows"](metrics)
    probes = {"same": DRIFT["probe_readings"](_probe({"g": {"l0": 100.0, "loss_recovered": 0.98, "fvu": 0.2}})),
              "moved": DRIFT["probe_readings"](_probe({"g": {"l0": 106.0, "loss_recovered": 0.98, "fvu": 0.2},
                                                       "h": {"l0": 51.0, "loss_recovered": 0.95, "fvu": 0.3}}))}
    rows = {row["sae"]: row for row in DRIFT["drift"](published, probes)}
    g = rows["g"]
    assert g["seeds"] == 3 and g["published"]["l0"] == 100.0 and g["seed_sd"]["l0"] == pytest.approx(2.0)
    assert g["published_code_version"] == "abc1234" and rows["h"]["published_code_version"] is None  # no checkpoint
    assert g["retrained"]["same"]["identical"] and not g["retrained"]["moved"]["identical"]
    assert g["retrained"]["moved"]["in_seed_sds"]["l0"] == pytest.approx(3.0)
    assert rows["h"]["retrained"]["moved"]["in_seed_sds"]["l0"] is None  # its seeds agree: no spread to scale by
    assert "same" not in rows["h"]["retrained"]
    other_windows = {"g": {"ce_windows": 64, "ce_clean": 3.8, "l0": 1.0, "loss_recovered": 1.0, "fvu": 1.0}}
    with pytest.raises(SystemExit, match="--ce-windows 16"):
        DRIFT["drift"](published, {"other windows": other_windows})


def test_the_retrain_drift_table_counts_identical_saes_and_those_beyond_a_seed_sd():
    from gatedsae.reporting.probe_tables import retrain_drift

    def again(l0_sds, identical=False):
        return {"identical": identical, "difference": {"l0": 1.0, "loss_recovered": 0.001, "fvu": 0.0},
                "in_seed_sds": {"l0": l0_sds, "loss_recovered": 0.5, "fvu": 0.0}}

    measured = {"probes": {"a": [], "b": []}, "saes": [
        {"sae": "g", "seeds": 3, "published_code_version": None, "published": {"l0": 10.0, "loss_recovered": 0.9, "fvu": 0.1},
         "seed_sd": {"l0": 1.0, "loss_recovered": 0.002, "fvu": 0.01},
         "retrained": {"a": again(0.0, identical=True), "b": again(2.5)}},
        {"sae": "h", "seeds": 3, "published_code_version": "abc1234", "published": {"l0": 20.0, "loss_recovered": 0.8, "fvu": 0.2},
         "seed_sd": {"l0": 1.0, "loss_recovered": 0.002, "fvu": 0.01}, "retrained": {"b": again(0.5)}}]}
    lines = retrain_drift(measured)
    assert lines[2].startswith("| g | — | 10.0, 90.00% | 1.0, 0.20 pt (3 seeds) | identical | +1.0 (2.5 SD), +0.10 pt (0.5 SD) |")
    assert lines[3].startswith("| h | abc1234 |") and lines[3].endswith(" — | +1.0 (0.5 SD), +0.10 pt (0.5 SD) |")
    assert lines[-1] == ("a: 1 of 1 SAEs identical, 0 more than one seed SD away in L0 or loss recovered; "
                         "b: 0 of 2 SAEs identical, 1 more than one seed SD away in L0 or loss recovered.")
