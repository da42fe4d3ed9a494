"""The console during a run: one line per finished job with the run's progress and an ETA from the
project's estimates, errors shown whole, everything kept in a log. Fed with Snakemake's own output of a
smoke run and of a failed job (tests/fixtures/snakemake/, recorded with the pinned Snakemake), replayed
at the times the log records."""

from __future__ import annotations

import io
import re
from datetime import datetime
from pathlib import Path

import pytest

from gatedsae.cli.progress import Progress, clock, experiment_of
from gatedsae.plan.config import load_config
from gatedsae.plan.eta import Predictor

FIXTURES = Path(__file__).parent / "fixtures" / "snakemake"
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")


def replay(name: str, experiment: str = "smoke") -> list[str]:
    """The console lines for a recorded Snakemake output, each line fed at the time it was printed."""
    out = io.StringIO()
    progress = Progress(Predictor(load_config([f"experiment={experiment}"])), out=out)
    now = None
    for line in (FIXTURES / name).read_text().splitlines():
        stamp = STAMP.match(line)
        if stamp:
            now = datetime.strptime(" ".join(stamp.group(1).split()), "%a %b %d %H:%M:%S %Y").timestamp()
            if progress.done == 0 and not progress.running:
                progress.clock_start = now
        progress.feed(line, now=now)
    return out.getvalue().splitlines()


def test_one_line_per_finished_job_with_progress_and_an_eta():
    lines = replay("smoke_run.log")
    assert lines[0].startswith("19 jobs to run, about ")
    done = [line for line in lines if line.startswith("[")]
    assert [int(re.match(r"\[\s*(\d+)/19", line).group(1)) for line in done] == list(range(1, 20))
    assert done[0].startswith("[ 1/19   5%] fetch_corpus · 0:03 · elapsed 0:03 · ETA ")
    assert "train resid_post layer1" in "\n".join(done)
    etas = [re.search(r"ETA (\S+)$", line).group(1) for line in done[:-1]]
    assert etas[-1] == "0:00" and done[-1] == "[19/19 100%] all done in 8:12"
    # Calibrated on finished jobs: half-way through, the estimate is within 40% of the time actually left.
    def seconds(text):
        return sum(int(part) * 60**i for i, part in enumerate(reversed(text.split(":"))))
    middle = done[8]
    left = seconds("8:12") - seconds(re.search(r"elapsed (\S+)", middle).group(1))
    assert abs(seconds(etas[8]) - left) <= 0.4 * left
    # nothing routine reaches the console: no job blocks, no scheduler chatter
    assert not any(line.startswith(("rule ", "localrule ", "    ", "Select jobs", "Shell command")) for line in lines)
    assert len(lines) < 30


def test_a_long_job_names_its_log_when_it_starts():
    started = [line for line in replay("smoke_run.log") if line.startswith("started ")]
    assert started and all(re.match(r"started \w+ .*\(about [\d:]+\): tail -f logs/smoke/\S+\.log$", line)
                           for line in started)


def test_a_failed_job_is_shown_whole():
    lines = replay("failed_job.log")
    text = "\n".join(lines)
    assert "Error in rule cache:" in text and "Logfile logs/smoke/cache/tiny/tiny.log:" in text
    assert "Torch not compiled with CUDA enabled" in text and "Exiting because a job execution failed" in text
    assert "[ 1/17   5%] tokenize" in text  # the jobs before it were reported as usual


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (61.4, "1:01"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert clock(seconds) == text


def test_the_experiment_comes_from_snakemakes_config_arguments():
    args = ["-m", "snakemake", "--profile", "p", "--config", "experiment=smoke", "overrides=a=1 b=2", "--cores", "2"]
    assert experiment_of(args) == ("smoke", ["a=1", "b=2"])
    assert experiment_of(["--profile", "p"]) == ("default", [])


def test_the_predictor_learns_each_stage_from_its_finished_jobs():
    predictor = Predictor(load_config(["experiment=default", "experiment.chapter=headline"]))
    before = predictor.seconds("train", "mlp_out")
    assert predictor.seconds("train") > predictor.seconds("aggregate") > 0
    predictor.observe("aggregate", None, 4.0)  # a light job: the start-up cost
    predictor.observe("train", "resid_post", 4.0 + 0.25 * predictor.compute_seconds("train", "resid_post"))
    assert predictor.seconds("aggregate") == pytest.approx(4.0)
    assert predictor.seconds("train", "mlp_out") == pytest.approx(
        4.0 + 0.25 * predictor.compute_seconds("train", "mlp_out"))
    assert predictor.seconds("train", "mlp_out") < before
    assert predictor.seconds("all") == 0


def test_a_cpu_stage_starts_from_the_last_timed_runs_ratio_until_its_own_jobs_finish(tmp_path):
    from dataclasses import replace

    from gatedsae.plan.eta import measured_ratios

    config = load_config(["experiment=default", "experiment.chapter=headline"])
    predictor = Predictor(config, prior={"train": 0.5, "evaluate": 0.25})
    startup = predictor.startup
    assert predictor.seconds("train", "mlp_out") == pytest.approx(startup + 0.5 * predictor.compute_seconds("train", "mlp_out"))
    predictor.observe("cache", None, startup + 0.1 * predictor.compute_seconds("cache"))
    assert predictor.seconds("evaluate", "attn_z") == pytest.approx(   # not the cache's ratio: its own prior
        startup + 0.25 * predictor.compute_seconds("evaluate", "attn_z"))
    predictor.observe("train", "resid_post", startup + 0.75 * predictor.compute_seconds("train", "resid_post"))
    assert predictor.seconds("train", "mlp_out") == pytest.approx(   # its own finished job replaces the prior
        startup + 0.75 * predictor.compute_seconds("train", "mlp_out"))
    gpu = replace(config, train=replace(config.train, device="cuda"), resources=replace(config.resources,
                                                                                         sustained_tflops=0.01))
    on_gpu = Predictor(gpu, prior={"train": 0.5})  # a CPU run's ratio says nothing of a GPU's
    assert on_gpu.compute_seconds("train", "mlp_out") > 1
    assert on_gpu.seconds("train", "mlp_out") == pytest.approx(Predictor(gpu).seconds("train", "mlp_out"))

    # the committed calibration prices every computing stage; a missing or foreign file prices none
    assert set(measured_ratios()) == {"cache", "train", "train-all-tokens", "rescale-shift", "evaluate"}
    assert all(ratio > 0 for ratio in measured_ratios().values())
    assert measured_ratios(tmp_path / "missing.json") == {}
    (tmp_path / "other.json").write_text('{"calibration": null}')
    assert measured_ratios(tmp_path / "other.json") == {}


def test_a_job_that_finds_its_work_done_does_not_teach_the_predictor():
    """The next chapter reruns a finished training job (its parameters differ); it resumes from complete
    outputs and ends in seconds. The remaining jobs of its stage keep their price."""
    predictor = Predictor(load_config(["experiment=default", "experiment.chapter=headline"]), prior={"train": 0.5})
    predictor.observe("aggregate", None, 4.0)
    before = predictor.seconds("train", "mlp_out")
    predictor.observe("train", "resid_post", 3.0)   # the rerun of a finished job
    assert predictor.seconds("train", "mlp_out") == pytest.approx(before)
    assert predictor.startup == pytest.approx(4.0)
    predictor.observe("train", "resid_post", 4.0 + 0.75 * predictor.compute_seconds("train", "resid_post"))
    assert predictor.seconds("train", "mlp_out") == pytest.approx(
        4.0 + 0.75 * predictor.compute_seconds("train", "mlp_out"))


def test_a_resumed_training_job_is_priced_at_the_saes_it_still_has_to_train(tmp_path):
    import json

    from gatedsae.plan.estimates import train_estimate
    from gatedsae.plan.eta import untrained_share
    from gatedsae.plan.grid import grid_dir, grid_specs
    from gatedsae.plan.identity import training_key
    from gatedsae.plan.layout import TRAINING_RECORD

    config = load_config(["experiment=smoke", f"paths.data={tmp_path}"])
    site = config.experiment.sites[0]
    layer = config.experiment.layers_at(site)[0]
    specs = grid_specs(config, config.model.site_width(site), site)

    def trained(spec, key=None, folder=None):
        directory = (folder or grid_dir(config, site, layer)) / spec.name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TRAINING_RECORD).write_text(json.dumps({"training_key": key or training_key(config, site, spec)}))

    fresh = Predictor(config)
    whole = fresh.compute_seconds("train", site)
    assert untrained_share(config, "train", site) == 1.0
    trained(specs[0])
    trained(specs[1], key="another run's settings")  # a different training key is retrained: not counted
    trained(specs[2], folder=grid_dir(config, site, layer).parent / "other_sweep")  # copied from another grid
    done = [specs[0], specs[2]]
    expected = 1 - train_estimate(config, site, done).flops / train_estimate(config, site, specs).flops
    assert untrained_share(config, "train", site) == pytest.approx(expected) and expected < 1
    resumed = Predictor(config)
    assert resumed.compute_seconds("train", site) == pytest.approx(expected * whole)
    assert fresh.compute_seconds("train", site) == pytest.approx(whole), "priced as the folders stood at first"
    for spec in specs:
        trained(spec)
    finished = Predictor(config)
    assert finished.compute_seconds("train", site) == 0.0 and finished.seconds("train", site) == finished.startup
    assert untrained_share(config, "evaluate", site) == 1.0


def test_a_site_timed_apart_in_the_last_run_is_priced_at_its_own_ratio(tmp_path):
    import json

    from gatedsae.plan.eta import measured_site_ratios

    config = load_config(["experiment=default", "experiment.chapter=headline"])
    predictor = Predictor(config, prior={"train": 0.5}, site_prior={"train": {"attn_z": 0.1}})
    startup = predictor.startup
    assert predictor.seconds("train", "attn_z") == pytest.approx(startup + 0.1 * predictor.compute_seconds("train", "attn_z"))
    assert predictor.seconds("train", "mlp_out") == pytest.approx(startup + 0.5 * predictor.compute_seconds("train", "mlp_out"))
    predictor.observe("train", "resid_post", startup + 0.75 * predictor.compute_seconds("train", "resid_post"))
    assert predictor.seconds("train", "attn_z") == pytest.approx(   # the stage's own finished job wins
        startup + 0.75 * predictor.compute_seconds("train", "attn_z"))

    calibration = tmp_path / "plan.json"
    calibration.write_text(json.dumps({"calibration": {"ratios": {"train": 0.4},
                                                       "site_ratios": {"train": {"attn_z": 0.2, "mlp_out": -1}}}}))
    assert measured_site_ratios(calibration) == {"train": {"attn_z": 0.2}, "train-all-tokens": {"attn_z": 0.2}}
    calibration.write_text(json.dumps({"calibration": {"ratios": {"train": 0.4}}}))  # a run without site_stages
    assert measured_site_ratios(calibration) == {} and measured_site_ratios(tmp_path / "missing.json") == {}
