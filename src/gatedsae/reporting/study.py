"""The paper's blinded interpretability study, as a tool (the study itself needs human raters).

1. `build_study`: at each site, the Gated SAE nearest the middle of its sweep's L0 range and the baseline
   SAE of the closest L0 (`tables.matched_pairs`); `features_per_sae` features sampled from each among
   those that fire on held-out text; the i-th Gated and the i-th baseline feature of a site form pair i.
   Every feature is shuffled and renamed F001, F002, ...; `rating.html` shows each with the browser's
   view and nothing that tells its SAE (not its index, which would betray the wider baseline), with the
   paper's scale, No / Maybe / Yes. `key.json` says which is which: keep it from the raters.
2. Raters open the page (a browser is all it needs; ratings survive a reload) and download their
   ratings as JSON.
3. `analyse_study`: unblinds the files with the key and reports, per architecture, the ratings' counts
   and mean score (No 0, Maybe ½, Yes 1), and over pairs the mean Gated − baseline difference with a
   bootstrap interval and a two-sided paired sign-flip test (each feature's score averaged over raters).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from gatedsae.core.atomic import write_json_atomic, write_text_atomic
from gatedsae.core.errors import InputError, IntegrityError
from gatedsae.plan.architectures import BASELINE, PROPOSED, knob_fields
from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.identity import config_hash
from gatedsae.plan.layout import ANALYSIS_FILE, ANALYSIS_MARKDOWN, KEY_FILE, PAGE_FILE, study_dir

SCALE = ("no", "maybe", "yes")
SCORES = {"no": 0.0, "maybe": 0.5, "yes": 1.0}


def study_pairs(config: Config) -> list[tuple[pd.Series, pd.Series]]:
    """The matched (Gated, baseline) SAEs of the study's sites, from the experiment's metrics.csv."""
    from gatedsae.reporting.tables import matched_pairs

    metrics = config.experiment.results / "metrics.csv"
    if not metrics.exists():
        raise FileNotFoundError(f"{metrics} does not exist; run the experiment through `aggregate` first")
    frame = pd.read_csv(metrics)
    pairs = {pair[0]["site"]: pair for pair in matched_pairs(frame)
             if int(pair[0]["layer"]) == config.study_layer_at(pair[0]["site"])}
    missing = [site for site in config.study_sites if site not in pairs]
    if missing:
        raise ConfigError(f"config key 'study.sites': no Gated and baseline SAEs evaluated at {missing} (layers "
                          f"{[config.study_layer_at(site) for site in missing]}) in {metrics}; choose among "
                          f"{sorted(pairs)}")
    return [pairs[site] for site in config.study_sites]


def build_study(config: Config, loaded=None) -> Path:
    """Write `<results>/study/rating.html` and `key.json`; return the page's path."""
    from gatedsae.evaluation.evaluate import CheckpointSAE
    from gatedsae.reporting.browser import load_context, sae_features
    from gatedsae.reporting.feature_html import rating_page

    study = config.study
    browser = replace(config.browser, seed=study.seed)
    items = []
    for gated, baseline in study_pairs(config):
        site, layer = gated["site"], int(gated["layer"])
        store, text, loaded = load_context(config, site, layer, loaded)
        sampled = {}
        for row in (gated, baseline):
            sae = CheckpointSAE.load(row["checkpoint"])
            sampled[row["arch"]] = (row, sae_features(sae, store, text, loaded.model, browser, config,
                                                      count=study.features_per_sae))
        for i in range(min(len(data["features"]) for _, data in sampled.values())):
            for arch, (row, data) in sampled.items():
                items.append({"feature": data["features"][i], "key": {
                    "arch": arch, "site": site, "layer": layer, "sae": data["sae"], **knob_fields(arch, data),
                    "l0": data["l0"], "checkpoint_id": data["checkpoint_id"], "feature": data["features"][i]["index"],
                    "pair": f"{site}/layer{layer}/{i}"}})
    order = np.random.default_rng(study.seed).permutation(len(items))
    items = [items[i] for i in order]
    ids = [f"F{n + 1:03d}" for n in range(len(items))]
    key = {identifier: item["key"] for identifier, item in zip(ids, items)}
    study_id = config_hash({"key": key, "browser": browser.__dict__})
    out = study_dir(config)
    write_json_atomic(out / KEY_FILE, {"study": study_id, "scale": list(SCALE), "scores": SCORES, "features": key})
    write_text_atomic(out / PAGE_FILE, rating_page(study_id, [(identifier, item["feature"])
                                                              for identifier, item in zip(ids, items)]))
    print(f"wrote {len(ids)} features to rate ({len(ids) // 2} pairs) to {out / PAGE_FILE}; the key is {out / KEY_FILE}")
    return out / PAGE_FILE


# ---------------------------------------------------------------------------------------------------
# The analysis.


def read_ratings(paths: Iterable[str | Path], key: dict) -> pd.DataFrame:
    """One row per (rater, feature, rating) from raters' files, checked against the key; a file that is
    not what the rating page downloads is refused naming it (InputError)."""
    rows, raters = [], set()
    for path in map(Path, paths):
        data = _rating_file(path)
        if data.get("study") != key["study"]:
            raise InputError(f"{path} rates study {data.get('study')!r}, not this key's {key['study']!r}: "
                             "a rating page from another build of the study")
        rater = data.get("rater")
        if rater is not None and not isinstance(rater, str):
            raise InputError(f"{path}: 'rater' is {rater!r}; it must be the rater's name (text) or absent")
        rater = (rater or "").strip() or path.stem
        if rater in raters:
            raise InputError(f"{path}: rater {rater!r} appears in two files; give each rater one file")
        raters.add(rater)
        ratings = data.get("ratings", {})
        if not isinstance(ratings, dict):
            raise InputError(f"{path}: 'ratings' is a JSON {type(ratings).__name__}; it must map feature ids (F001, "
                             "...) to no / maybe / yes, as the rating page writes it")
        for identifier, rating in ratings.items():
            if identifier not in key["features"]:
                raise InputError(f"{path}: {identifier!r} is not a feature of this study")
            if not isinstance(rating, str) or rating not in SCORES:
                raise InputError(f"{path}: rating {rating!r} for {identifier}; the scale is {', '.join(SCALE)}")
            rows.append({"rater": rater, "id": identifier, "rating": rating, "score": SCORES[rating]})
    if not rows:
        raise InputError(f"no ratings in {', '.join(map(str, paths))}: the raters' files hold no rated feature")
    return pd.DataFrame(rows)


def _rating_file(path: Path) -> dict:
    """A rater's downloaded file as a JSON object, or InputError naming what is wrong with it."""
    what = "give the file the rating page downloaded, unedited"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; list the raters' downloaded files in study.ratings") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; list the raters' files themselves in study.ratings") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file (not UTF-8): {what}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        where = f" ({error.msg}, line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise InputError(f"{path} is not valid JSON{where}: {what}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a JSON {type(data).__name__}, not the rating page's object with 'study', "
                         f"'rater' and 'ratings': {what}")
    return data


def paired_comparison(differences: np.ndarray, resamples: int, confidence: float, seed: int) -> dict:
    """Mean of paired differences, its percentile-bootstrap interval, and a two-sided sign-flip test."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    if n == 0:
        return {"pairs": 0}
    mean = float(differences.mean())
    boot = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    flips = rng.choice([-1.0, 1.0], size=(resamples, n))
    null = np.abs((flips * differences).mean(axis=1))
    p_value = (1 + int((null >= abs(mean) - 1e-12).sum())) / (1 + resamples)
    return {"pairs": n, "mean_difference": mean, "ci_low": float(np.quantile(boot, alpha)),
            "ci_high": float(np.quantile(boot, 1 - alpha)), "confidence": confidence, "p_value": p_value,
            "test": "paired sign-flip permutation test, two-sided", "resamples": resamples}


def analyse(key: dict, ratings: pd.DataFrame, resamples: int, confidence: float, seed: int) -> dict:
    features = pd.DataFrame([{"id": identifier, **entry} for identifier, entry in key["features"].items()])
    scored = ratings.groupby("id")["score"].mean().rename("score").reset_index()
    features = features.merge(scored, on="id", how="left")
    rated = ratings.merge(features[["id", "arch", "site"]], on="id")
    per_arch = {}
    for arch, group in rated.groupby("arch"):
        counts = {rating: int((group["rating"] == rating).sum()) for rating in SCALE}
        per_arch[arch] = {"features_rated": int(group["id"].nunique()), "ratings": int(len(group)), "counts": counts,
                          "fraction_yes": counts["yes"] / len(group),
                          "fraction_yes_or_maybe": (counts["yes"] + counts["maybe"]) / len(group),
                          "mean_score": float(group["score"].mean())}
    wide = features.pivot_table(index=["pair", "site"], columns="arch", values="score").reset_index()
    for arch in (PROPOSED, BASELINE):
        if arch not in wide:
            wide[arch] = np.nan
    complete = wide.dropna(subset=[PROPOSED, BASELINE])
    overall = paired_comparison((complete[PROPOSED] - complete[BASELINE]).to_numpy(), resamples, confidence, seed)
    per_site = {site: paired_comparison((group[PROPOSED] - group[BASELINE]).to_numpy(), resamples, confidence, seed)
                for site, group in complete.groupby("site")}
    raters = sorted(ratings["rater"].unique())
    agreement = None
    if len(raters) > 1:
        shared = ratings.groupby("id").filter(lambda g: g["rater"].nunique() == len(raters))
        agreement = {"features_rated_by_all": int(shared["id"].nunique()),
                     "all_raters_agree": float(shared.groupby("id")["rating"].nunique().eq(1).mean())
                     if len(shared) else None}
    return {"study": key["study"], "raters": raters, "scores": SCORES, "per_architecture": per_arch,
            "gated_minus_baseline": overall, "per_site": per_site, "agreement": agreement,
            "features": int(len(key["features"])), "features_rated": int(features["score"].notna().sum())}


def markdown(result: dict) -> str:
    from gatedsae.plan.architectures import label
    from gatedsae.plan.sites import label as site_label

    lines = [f"# Interpretability study {result['study']}: analysis", "",
             f"{len(result['raters'])} rater(s): {', '.join(result['raters'])}; {result['features_rated']} of "
             f"{result['features']} features rated. Scores: No 0, Maybe ½, Yes 1 (a feature's score is the mean over "
             "its raters).", "", "| architecture | features | ratings | No | Maybe | Yes | mean score |",
             "|---|---|---|---|---|---|---|"]
    for arch, row in result["per_architecture"].items():
        c = row["counts"]
        lines.append(f"| {label(arch)} | {row['features_rated']} | {row['ratings']} | {c['no']} | "
                     f"{c['maybe']} | {c['yes']} | {row['mean_score']:.3f} |")
    lines += ["", "Gated − baseline, over matched pairs of features:", "",
              "| | pairs | mean difference | interval | p (paired sign-flip) |", "|---|---|---|---|---|"]
    for name, row in [("all sites", result["gated_minus_baseline"])] + [
            (site_label(site), row) for site, row in result["per_site"].items()]:
        if row["pairs"]:
            lines.append(f"| {name} | {row['pairs']} | {row['mean_difference']:+.3f} | "
                         f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] ({100 * row['confidence']:.0f}%) | "
                         f"{row['p_value']:.3g} |")
    if result["agreement"]:
        lines += ["", f"All raters agree on {100 * result['agreement']['all_raters_agree']:.0f}% of the "
                      f"{result['agreement']['features_rated_by_all']} features every rater rated."]
    return "\n".join(lines) + "\n"


def analyse_study(config: Config, ratings: Iterable[str | Path] | None = None) -> Path:
    """Unblind the raters' files (study.ratings) with the key; write analysis.json and analysis.md."""
    files = list(config.study.ratings if ratings is None else ratings)
    if not files:
        raise ConfigError("config key 'study.ratings': list the raters' downloaded files, "
                          "e.g. study.ratings=[ratings-ana.json,ratings-ben.json]")
    key_path = study_dir(config) / KEY_FILE
    if not key_path.exists():
        raise FileNotFoundError(f"{key_path} does not exist; build the study first (`python -m gatedsae study`)")
    try:
        key = json.loads(key_path.read_text())
    except ValueError:
        key = None
    if not isinstance(key, dict) or not isinstance(key.get("features"), dict) or "study" not in key:
        raise IntegrityError(f"{key_path} is corrupt (not the study's key); build the study again (`python -m "
                             "gatedsae study`, the same settings give the same key)")
    result = analyse(key, read_ratings(files, key), config.study.bootstrap, config.study.confidence, config.study.seed)
    out = study_dir(config)
    write_json_atomic(out / ANALYSIS_FILE, result)
    write_text_atomic(out / ANALYSIS_MARKDOWN, markdown(result))
    return out / ANALYSIS_FILE
