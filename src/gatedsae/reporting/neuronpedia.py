"""The feature browser's data in Neuronpedia's import format, one source per SAE:

    <out>/<model>/<layer>-<source set>/model.jsonl, release.jsonl, sourceset.jsonl, source.jsonl
    <out>/<model>/<layer>-<source set>/features/batch-0.jsonl.gz      one record per feature
    <out>/<model>/<layer>-<source set>/activations/batch-0.jsonl.gz   one record per top example

Each feature record carries its density (`frac_nonzero`), its maximum activation (`maxActApprox`), the
tokens its unit decoder direction promotes and suppresses (`pos_str`/`pos_values`, `neg_str`/`neg_values`)
and its activation histogram (`freq_hist_data_bar_heights`/`_values`); each activation record a context
(`tokens`, `values`, `maxValue`, `maxValueTokenIndex`). Values are the browser's: activations in the
model's units. Read from `results/<experiment>/browser/<site>/layer<L>/<sae>.features.json`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from gatedsae.core.atomic import atomic_directory
from gatedsae.plan.config import Config
from gatedsae.plan.layout import browser_dir
from gatedsae.plan.sites import hook_name
from gatedsae.reporting.browse import INDEX_SUFFIX
from gatedsae.reporting.feature_index import feature_view

HOOK_TYPE = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_z": "hook_z"}


def source_set(sae: str, site: str) -> str:
    """A Neuronpedia source-set name: letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", f"gatedsae-{HOOK_TYPE[site].removeprefix('hook_')}-{sae}".lower()).strip("-")


def _jsonl(path: Path, records: list[dict], compress: bool = False) -> None:
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text, compresslevel=5, mtime=0) if compress else text)


def _activation_id(source: str, feature: int, rank: int) -> str:
    return hashlib.sha256(f"{source}/{feature}/{rank}".encode()).hexdigest()[:25]


def source_records(page: dict, index: dict, model: str, dataset: str, release: str, creator: str, created: str) -> dict:
    """The records of one SAE's source: {file name: [records]}."""
    site, layer, sae = page["site"], int(page["layer"]), page["sae"]
    name = source_set(sae, site)
    source = f"{layer}-{name}"
    features, activations = [], []
    width = index["bins"]
    for number in range(len(index["features"])):
        feature = feature_view(index, number)
        peak = feature["max_activation"]
        features.append({
            "modelId": model, "layer": source, "index": str(number), "creatorId": creator, "createdAt": created,
            "maxActApprox": peak, "hasVector": False, "hookName": hook_name(site, layer),
            "pos_str": [t for t, _ in feature["promoted"]], "pos_values": [v for _, v in feature["promoted"]],
            "neg_str": [t for t, _ in feature["suppressed"]], "neg_values": [v for _, v in feature["suppressed"]],
            "frac_nonzero": feature["density"],
            "freq_hist_data_bar_heights": feature["histogram"],
            "freq_hist_data_bar_values": [round(peak * (b + 0.5) / width, 6) for b in range(width)],
        })
        for rank, example in enumerate(feature["examples"]):
            values = example["activations"]
            activations.append({
                "id": _activation_id(source, number, rank), "modelId": model, "layer": source, "index": str(number),
                "tokens": example["tokens"], "values": values, "maxValue": max(values),
                "maxValueTokenIndex": example["focus"], "minValue": min(values), "creatorId": creator,
                "createdAt": created, "dataSource": f"held-out window {example['window']}",
            })
    return {
        "model.jsonl": [{"id": model, "displayName": model, "displayNameShort": model, "creatorId": creator,
                         "instruct": False, "createdAt": created, "updatedAt": created}],
        "release.jsonl": [{"name": release, "description": "gatedsae: Gated SAE replication", "creatorName": creator,
                           "creatorNameShort": creator, "creatorId": creator, "urls": [], "createdAt": created}],
        "sourceset.jsonl": [{"modelId": model, "name": name, "creatorId": creator, "creatorName": creator,
                             "releaseName": release, "visibility": "PUBLIC", "createdAt": created,
                             "description": f"{page['arch']} SAE, {page['width']} features, {hook_name(site, layer)}"}],
        "source.jsonl": [{"id": source, "modelId": model, "setName": name, "visibility": "PUBLIC", "creatorId": creator,
                          "dataset": dataset, "num_prompts": index["windows"], "num_tokens_in_prompt": index["context"],
                          "hfRepoId": None, "hfFolderId": None}],
        "features/batch-0.jsonl.gz": features,
        "activations/batch-0.jsonl.gz": activations,
    }


def export_neuronpedia(config: Config, out: Path, release: str, creator: str) -> Path:
    """Every browsed SAE of the experiment as a Neuronpedia source under `out` (replaced whole)."""
    folder = browser_dir(config)
    indexes = sorted(folder.glob(f"*{INDEX_SUFFIX}"))
    if not indexes:
        raise FileNotFoundError(f"no feature index in {folder}; run the browse stage first "
                                f"(python -m gatedsae browse experiment={config.experiment.name}, browser.all_features=true)")
    created = datetime.fromtimestamp(max(p.stat().st_mtime for p in indexes), timezone.utc).isoformat()
    with atomic_directory(Path(out), staging_name=Path(out).name + ".staging") as staging:
        for path in indexes:
            page = json.loads(path.with_name(path.name.removesuffix(INDEX_SUFFIX) + ".json").read_text())
            records = source_records(page, json.loads(path.read_text()), config.model.name, config.corpus.name, release,
                                     creator, created)
            source = records["source.jsonl"][0]["id"]
            for name, rows in records.items():
                _jsonl(staging / config.model.name / source / name, rows, compress=name.endswith(".gz"))
            print(f"{page['sae']}: {len(records['features/batch-0.jsonl.gz'])} features, "
                  f"{len(records['activations/batch-0.jsonl.gz'])} activations → {config.model.name}/{source}")
    return Path(out)
