# Entry points. Each target installs what it needs first (scripts/setup.sh, idempotent).
#   make replicate              the default replication (dvc repro → its chapters through Snakemake), versioned by DVC, then its verdict
#   make test                   the test suite (but the cluster tests)
#   make test-cluster           the cluster tests: a real local SLURM cluster and S3 server (root; Debian packages)
#   make run EXPERIMENT=smoke   Snakemake alone, any experiment in conf/experiment/ (one line per job, ETA; all of
#                               Snakemake's output in logs/<experiment>/snakemake.log)
#   make verify EXPERIMENT=…    every activation shard and SAE checkpoint against its recorded sha256
# Snakemake runs through `python -m gatedsae.cli.runlock`: a run killed mid-way leaves no lock that blocks
# the next, and a second run is refused while one is alive (docs/reliability.md).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
EXPERIMENT ?= default
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup replicate run dry-run unlock verify test test-fast test-cluster sync push bench lock clean

setup:
	@bash scripts/setup.sh

# The environment install is timed too: the run's replicate.json reports it with the chapters.
replicate:
	@[ -n "$$(git rev-parse --git-dir 2>/dev/null)" ] || { echo "make replicate needs a git checkout (DVC versions the artifacts); use 'make run' otherwise"; exit 1; }
	@start=$$(date +%s); bash scripts/setup.sh; \
	export GATEDSAE_SETUP_SECONDS=$$(( $$(date +%s) - start )); \
	$(BIN)/dvc repro
	@echo; cat results/$$($(BIN)/python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['experiment'])")/verdict.md 2>/dev/null || true

run: setup
	$(BIN)/python -m gatedsae.cli.runlock --progress-log=logs/$(EXPERIMENT)/snakemake.log --profile profiles/local --config experiment=$(EXPERIMENT)

dry-run: setup
	snakemake -n --profile profiles/local --config experiment=$(EXPERIMENT)

# Remove the lock a killed run left, after checking that no run is alive here (never while one is).
unlock: setup
	$(BIN)/python -m gatedsae.cli.runlock --unlock-only

verify: setup
	$(BIN)/python -m gatedsae verify experiment=$(EXPERIMENT)

# The slowest tests are listed at the end, to keep the suite's time in view.
test: setup
	$(BIN)/python -m pytest -m "not cluster" --durations=20

test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not slow and not cluster"

# Brings up a single-node SLURM cluster and an S3 server on loopback (scripts/local_cluster.py): needs root
# and `apt-get install slurmctld slurmd slurm-client munge`; skipped with the reason otherwise.
test-cluster: setup
	$(BIN)/python -m pytest -m cluster

# After `dvc pull`, `dvc checkout` or `git checkout`: make Snakemake's metadata agree with the files.
sync: setup
	$(BIN)/python -m gatedsae.cli.runlock --profile profiles/local --config experiment=$(EXPERIMENT) --touch --forceall --quiet

push: setup
	dvc push

bench: setup
	$(BIN)/python scripts/bench_cache.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_eval.py

# Re-pin every dependency from the current environment (torch is installed apart, first).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' | sed '1i # Exact versions of every dependency (pip freeze of a working environment, torch excluded:\n# scripts/setup.sh installs torch==2.13.0 first so nothing pulls a CUDA build). Regenerate with `make lock`.' > requirements.lock

clean:
	rm -rf .snakemake logs benchmarks
