"""Run identity as one contract (plan/identity.py): every setting of every section is changed in turn, and
exactly the identities that read it must change: the activation store's, an SAE's training key, a saved
training state's, a saved evaluation's and every Snakemake job's params. A placement setting changes none."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing

import pytest

from gatedsae.plan.config import Config, load_config
from gatedsae.plan.grid import grid_specs
from gatedsae.plan.identity import (
    EXPERIMENT_NOT_IDENTITY,
    GRID_ONLY,
    JOBS,
    NEUTRAL_DEFAULTS,
    NOT_READ_BY,
    OUTSIDE_IDENTITY,
    PLACEMENT_ONLY,
    STORE_CHOICE,
    STORE_JOBS,
    STUDY_ANALYSIS_ONLY,
    evaluation_identity,
    job_params,
    section_params,
    store_identity,
    training_key,
    training_precision,
    training_state_identity,
)

SITE = "resid_post"
STORE = ("model", "corpus", "seed", "experiment.context_length", "cache.dtype", "cache.shard_sequences")
SPEC = tuple(f"sweep.groups.0.{key}" for key in ("arch", "width_ratio", "lr", "l1", "l1_units"))
# What each identity reads: a section, or one key of it ("a.b" also covers "a.b.c").
READS: dict[str, tuple[str, ...]] = {
    "store": STORE,
    "training_key": (*STORE, "train", *SPEC, "precision.train"),
    "training_state": (*STORE, "train", "sweep.groups", "precision.train"),
    "evaluation": (*STORE, "evaluate"),
    **{f"job {job}": sections for job, (sections, _) in JOBS.items() if job not in ("train_streamed", "study")},
    "job study": ("study", "browser", "evaluate"),
}
NEVER = {f"experiment.{key}" for key in EXPERIMENT_NOT_IDENTITY}


def identities(config: Config) -> dict[str, str]:
    d = config.model.site_width(SITE)
    store = store_identity(config)
    found = {"store": store, "training_key": training_key(config, SITE, grid_specs(config, d, SITE)[0]),
             "training_state": training_state_identity(config.sweep.groups_at(SITE), config.train, store, d,
                                                       precision=training_precision(config).dtype),
             "evaluation": evaluation_identity(config, SITE, "weights", 1.0, store, metrics_code="code")}
    return found | {f"job {job}": job_params(config, job) for job in JOBS if job != "train_streamed"}


# Settings whose value is resolved before it enters an identity: a valid value that resolves differently
# (smoke trains in float32; forced bf16 resolves to bf16 on any machine).
RESOLVED = {"precision.train": "bfloat16"}


def _changed(value, hint):
    """A different value of the field's type (validation is not the point here, only the hashes)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [_changed(value[0], None), *value[1:]] if value else ["resid_post"]
    if isinstance(value, dict):
        return {**value, "resid_post": [0.5]}
    args = [a for a in typing.get_args(hint) if a is not type(None)]  # an Optional at None
    if typing.get_origin(args[0]) is dict:
        return {"resid_post": [0.5]}
    return args[0]() if dataclasses.is_dataclass(args[0]) else {int: 7, float: 0.5, str: "x"}[args[0]]


def settings(obj, prefix=""):
    """(dotted key, owner, field, its type) of every leaf setting, into nested dataclasses and their lists."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        key, value = f"{prefix}{field.name}", getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            yield from settings(value, f"{key}.")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            yield from settings(value[0], f"{key}.0.")
        else:
            yield key, obj, field.name, hints[field.name]


def _reads(patterns, key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


def expected(key: str) -> set[str]:
    section, _, name = key.partition(".")
    if name in PLACEMENT_ONLY.get(section, ()) or _reads(NEVER, key):
        return set()
    if name in GRID_ONLY.get(section, ()):  # which SAEs a grid holds: its jobs, never one SAE's key
        return {identity for identity in expected(section) if identity.startswith("job ")}
    if section == "experiment" and name in STORE_CHOICE:  # which stores: the store jobs' outputs, not params
        return expected(section) - {f"job {job}" for job in STORE_JOBS}
    return {identity for identity, patterns in READS.items()
            if _reads(patterns, key) and not (identity == "job study" and key.startswith("study.") and
                                               key.removeprefix("study.") in STUDY_ANALYSIS_ONLY)
            and not (identity.startswith("job ") and name in NOT_READ_BY.get(identity[4:], {}).get(section, ()))}


BASE = load_config(["experiment=smoke", "study.enabled=true"])
KEYS = [key for key, *_ in settings(BASE)]


@pytest.fixture(scope="module", autouse=True)
def fixed_code():
    """The code's fingerprint is not a setting (tests/test_evaluate.py checks that it enters); fixed here,
    the contract runs in seconds instead of parsing the package for every setting."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gatedsae.plan.identity.code_fingerprint", lambda modules: "code")
        yield


@pytest.fixture(scope="module")
def base_identities(fixed_code):
    return identities(BASE)


@pytest.mark.parametrize("key", KEYS)
def test_a_setting_changes_exactly_the_identities_that_read_it(key, base_identities):
    config = copy.deepcopy(BASE)
    owner, name, hint = next((o, n, h) for k, o, n, h in settings(config) if k == key)
    setattr(owner, name, RESOLVED[key] if key in RESOLVED else _changed(getattr(owner, name), hint))
    after = identities(config)
    changed = {identity for identity in after if after[identity] != base_identities[identity]}
    assert changed == expected(key), f"{key}: changed {sorted(changed)}, expected {sorted(expected(key))}"


def test_every_section_is_read_by_an_identity_or_declared_outside_them():
    """A new section of conf/ must be placed on purpose: read by the identities of the results it changes,
    or listed in OUTSIDE_IDENTITY with the reason it changes none."""
    read = {pattern.split(".")[0] for patterns in READS.values() for pattern in patterns}
    sections = {field.name for field in dataclasses.fields(Config)}
    unplaced = sections - read - set(OUTSIDE_IDENTITY)
    assert not unplaced, f"place {sorted(unplaced)} in plan/identity.py (an identity's sections, or OUTSIDE_IDENTITY)"
    assert not read & set(OUTSIDE_IDENTITY)


def test_the_contract_covers_every_job_and_every_placement_setting():
    assert {f"{s}.{k}" for s, keys in PLACEMENT_ONLY.items() for k in keys} <= set(KEYS)
    assert all(identity in identities(BASE) for identity in READS)


def test_settings_at_their_neutral_default_stay_out_of_params():
    base = load_config(["experiment=smoke", "train.seeds=1", "corpus.test_fraction=null"])  # smoke: two seeds, a split
    params = json.loads(section_params(base, *NEUTRAL_DEFAULTS))
    for section, neutral in NEUTRAL_DEFAULTS.items():
        assert getattr(base, section).__dict__.items() >= neutral.items(), "the defaults are the neutral values"
        assert not set(neutral) & set(params[section]), "neutral settings stay out of the job params"
    assert "mode" in json.loads(job_params(load_config(["experiment=smoke", "cache.mode=stream"]), "cache"))["cache"]


def test_stream_mode_training_depends_on_what_makes_the_activations():
    streamed = load_config(["experiment=smoke", "cache.mode=stream"])
    assert set(json.loads(job_params(streamed, "train"))) == {*JOBS["train_streamed"][0]}
    assert set(json.loads(job_params(BASE, "train"))) == {"sweep", "train"}


def test_the_numbers_jobs_carry_the_code_that_computes_them():
    for job in ("evaluate", "aggregate", "verdict"):
        assert json.loads(job_params(BASE, job))["code"] == "code"


def test_experiments_sharing_a_store_share_its_jobs():
    """Successors reads the default's activation store: its tokenize and cache jobs are the default's (their
    params agree), so running it after the default reruns neither; the context length still tells them apart."""
    default, successors = load_config(["experiment=default"]), load_config(["experiment=successors"])
    assert default.experiment.sites != successors.experiment.sites
    for job in ("tokenize", "cache"):
        assert job_params(default, job) == job_params(successors, job)
    longer = load_config(["experiment=successors", "experiment.context_length=256"])
    assert job_params(longer, "tokenize") != job_params(default, "tokenize")


def test_a_sites_own_budget_changes_only_that_sites_training_keys():
    """train.site_tokens: an attention-output budget retrains the attention output's SAEs only; the
    residual stream's keep their keys, and a site's own budget keys its SAEs as train.tokens at that value
    would (the same SAE, however its budget was written)."""
    config = load_config(["experiment=smoke", "experiment.sites=[resid_post,attn_z]"])
    longer = load_config(["experiment=smoke", "experiment.sites=[resid_post,attn_z]", "train.site_tokens={attn_z: 40960}"])
    spelled = load_config(["experiment=smoke", "experiment.sites=[resid_post,attn_z]", "train.tokens=40960"])

    def key(c, site):
        return training_key(c, site, grid_specs(c, c.model.site_width(site), site)[0])

    assert key(longer, "resid_post") == key(config, "resid_post")
    assert key(longer, "attn_z") != key(config, "attn_z")
    assert key(longer, "attn_z") == key(spelled, "attn_z")
    assert longer.train.at_site("attn_z").steps == 40960 // config.train.batch_size
    assert longer.train.at_site("resid_post").tokens == longer.train.tokens  # no budget of its own there
    assert longer.train.every_site(8192).at_site("attn_z").tokens == 8192  # how probes set one budget for all
