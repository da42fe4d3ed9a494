"""The experiment's SAEs in the layout of a Hugging Face Hub repository that sae-lens' pretrained loader reads
(`SAE.from_pretrained(release="<user>/<repo>", sae_id="<hook>/<sae>")`), ready to upload:

    <out>/README.md                           model card: what the SAEs are, how to load them, their metrics
    <out>/pretrained_saes.yaml                the release's entry for sae-lens' directory of pretrained SAEs
    <out>/<hook name>/<sae>/cfg.json          as the checkpoint (sae-lens 6.x, metadata included)
    <out>/<hook name>/<sae>/sae_weights.safetensors
    <out>/<hook name>/<sae>/sparsity.safetensors   log10 firing frequency per feature on held-out tokens

Architectures sae-lens does not know (the untied Gated ablation) are left out, and named.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import atomic_directory, write_text_atomic
from gatedsae.evaluation.evaluate import CheckpointSAE, grid_indexes
from gatedsae.plan.architectures import ARCHITECTURES, knob_text
from gatedsae.plan.config import Config
from gatedsae.plan.grid import read_grid_index
from gatedsae.plan.sites import hook_name
from gatedsae.reporting.browser import development_windows, heldout_shards, scan
from gatedsae.saes.checkpoints import CFG_FILE, WEIGHTS_FILE

SPARSITY_FILE = "sparsity.safetensors"  # sae-lens reads the tensor "sparsity": log10 of each feature's density


def exported_checkpoints(config: Config) -> tuple[list[dict], list[str]]:
    """(grid entries of the SAEs sae-lens loads, names of those it does not), over the experiment's grids."""
    kept, left_out = [], []
    for site, layer in config.experiment.site_layer_pairs():
        for index in grid_indexes(config, site, layer).values():
            for entry in read_grid_index(index) if index.exists() else []:
                if entry["arch"] in ARCHITECTURES and ARCHITECTURES[entry["arch"]].saelens_loadable:
                    kept.append({**entry, "site": site, "layer": layer})
                else:
                    left_out.append(entry["sae"])
    return kept, left_out


def log_sparsity(config: Config, sae: CheckpointSAE, site: str, layer: int) -> torch.Tensor | None:
    """log10 of each feature's firing frequency on the held-out rows development may read (the validation
    split's; None without the activation store)."""
    directory = config.paths.activations_dir(config.model.name, config.corpus.name, site, layer)
    if not (directory / "manifest.json").exists():
        return None
    store = ActivationStore(directory, "heldout")
    shards = heldout_shards(store, None, sae.massive_norm_threshold, development_windows(config))
    scanned = scan(sae, shards, config.evaluate.batch_rows)
    return torch.log10(scanned.fired.double() / max(scanned.rows, 1)).float()


def export_hub(config: Config, out: Path, repo_id: str) -> Path:
    """Write the repository layout under `out` (replacing it whole); returns `out`."""
    entries, left_out = exported_checkpoints(config)
    if not entries:
        raise FileNotFoundError(f"no trained SAE of experiment '{config.experiment.name}' to export; train it first")
    metrics = _metrics(config)
    rows = []
    with atomic_directory(Path(out), staging_name=Path(out).name + ".staging") as staging:
        for entry in entries:
            sae_id = f"{hook_name(entry['site'], entry['layer'])}/{entry['sae']}"
            target = staging / sae_id
            target.mkdir(parents=True)
            for name in (CFG_FILE, WEIGHTS_FILE):
                shutil.copy2(Path(entry["path"]) / name, target / name)
            sae = CheckpointSAE.load(entry["path"])
            sparsity = log_sparsity(config, sae, entry["site"], entry["layer"])
            if sparsity is not None:
                save_file({"sparsity": sparsity}, target / SPARSITY_FILE)
            rows.append({"id": sae_id, "entry": entry, "metrics": metrics.get((entry["site"], entry["layer"], entry["sae"]), {})})
        write_text_atomic(staging / "pretrained_saes.yaml", _directory_entry(config, repo_id, rows))
        write_text_atomic(staging / "README.md", _model_card(config, repo_id, rows, left_out))
    print(f"{len(rows)} SAEs in {out}" + (f"; left out (no sae-lens architecture): {', '.join(left_out)}" if left_out else ""))
    return Path(out)


def _metrics(config: Config) -> dict:
    """(site, layer, sae) → its metrics row, when the experiment has been aggregated."""
    import pandas as pd

    path = config.experiment.results / "metrics.csv"
    if not path.exists():
        return {}
    frame = pd.read_csv(path)
    return {(row["site"], int(row["layer"]), row["sae"]): row.to_dict() for _, row in frame.iterrows()}


def _release(config: Config) -> str:
    return f"gatedsae-{config.model.name}-{config.experiment.name}"


def _directory_entry(config: Config, repo_id: str, rows: list[dict]) -> str:
    saes = []
    for row in rows:
        item = {"id": row["id"], "path": row["id"]}
        l0 = row["metrics"].get("l0")
        if l0 is not None and not (isinstance(l0, float) and math.isnan(l0)):
            item["l0"] = round(float(l0), 2)
        saes.append(item)
    entry = {_release(config): {"repo_id": repo_id, "model": config.model.name, "conversion_func": None, "saes": saes}}
    return ("# This release's entry for sae-lens' directory of pretrained SAEs (sae_lens/pretrained_saes.yaml).\n"
            "# Without it, load by repository id: SAE.from_pretrained(release=<repo_id>, sae_id=<id below>).\n"
            + yaml.safe_dump(entry, sort_keys=False, allow_unicode=True))


def _model_card(config: Config, repo_id: str, rows: list[dict], left_out: list[str]) -> str:
    lines = ["---", "library_name: saelens", "tags: [sparse-autoencoder, gated-sae, interpretability]", "---", "",
             f"# Sparse autoencoders on {config.model.name}, experiment `{config.experiment.name}`", "",
             "Gated and baseline SAEs (and the experiment's other architectures) trained and evaluated by gatedsae, a "
             "replication of Rajamanoharan et al., *Improving Dictionary Learning with Gated Sparse Autoencoders* "
             "(2024). Each folder is one SAE in the sae-lens 6.x format; activations are the model's raw activations "
             "(the training's scaling is folded into the weights).", "",
             "```python", "from sae_lens import SAE", "",
             f'sae = SAE.from_pretrained(release="{repo_id}", sae_id="{rows[0]["id"]}")', "```", "",
             f"`metadata.model_name` is the pipeline's model name (`{config.model.name}`): "
             + (f"the dequantized GGUF of {config.model.hub_id} packaged on a registry, whose activations differ from "
                "the hub weights'; load it with gatedsae (`gatedsae.saes.hooked.load_hooked_sae_transformer`)."
                if config.model.source == "package_gguf" else f"the weights of {config.model.hub_id or config.model.name}."),
             "", "| sae_id | architecture | sparsity | width | L0 | loss recovered |", "|---|---|---|---|---|---|"]
    for row in rows:
        entry, metrics = row["entry"], row["metrics"]
        l0, recovered = metrics.get("l0"), metrics.get("loss_recovered")
        lines.append(f"| `{row['id']}` | {ARCHITECTURES[entry['arch']].label} | {knob_text(entry['arch'], entry)} | "
                     f"{entry['width']:,} | {_number(l0, '.1f')} | {_number(recovered, '.2%')} |")
    if left_out:
        lines += ["", f"Not included (no sae-lens architecture): {', '.join(left_out)}."]
    return "\n".join(lines) + "\n"


def _number(value, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(float(value), spec)
