"""One self-contained HTML report: the headline next to the paper's numbers, every figure with its
caption, the tables, the resolved configuration and the versions of code, data and model."""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import yaml

from .config import Config
from .layout import MANIFEST, MODEL_MARKER

# The paper's L0 at matched loss recovered (arXiv v2, Tables 1–8 rows quoted in PAPER.md):
# (model, site): (L0 Gated, L0 baseline, loss recovered Gated, loss recovered baseline).
PAPER_MATCHED_L0 = {
    ("Gemma-7B L20", "resid_post"): (15.6, 46.4, 97.70, 97.95),
    ("Gemma-7B L20", "mlp_out"): (24.4, 56.8, 87.81, 87.23),
    ("Gemma-7B L20", "attn_z"): (55.2, 97.3, 92.72, 92.52),
    ("Pythia-2.8B L4", "resid_post"): (16.2, 28.1, 98.83, 98.67),
    ("Pythia-2.8B L4", "mlp_out"): (15.8, 43.3, 87.13, 87.20),
    ("Pythia-2.8B L4", "attn_z"): (24.7, 62.1, 90.94, 90.96),
}
PAPER_GAMMA = "Gated 0.99–1.01; baseline 0.72–0.98, falling as λ grows"

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def paper_headline() -> pd.DataFrame:
    rows = [{"paper run": model, "site": site, "L0 Gated": g, "L0 baseline": b, "L0 ratio": round(g / b, 2),
             "loss recovered (Gated / baseline)": f"{lg:.2f}% / {lb:.2f}%"}
            for (model, site), (g, b, lg, lb) in PAPER_MATCHED_L0.items()]
    return pd.DataFrame(rows)


def _figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(png.stem)}.</b> {html.escape(caption)}</figcaption></figure>")


def versions(config: Config, code_version: str) -> dict:
    """Code, software, model and data provenance, read from the artifacts themselves."""
    from importlib.metadata import version

    paths, model, corpus = config.paths, config.model.name, config.corpus.name
    found = {"code": code_version, "python": platform.python_version(), "platform": platform.platform()}
    found |= {package: version(package) for package in ("torch", "transformer-lens", "transformers", "snakemake")}
    marker = paths.model_dir(model) / MODEL_MARKER
    if marker.exists():
        prepared = json.loads(marker.read_text())
        found["model"] = {k: prepared.get(k) for k in ("gguf_sha256", "files", "seconds") if k in prepared} | {
            "packages": prepared.get("model", {}).get("packages")}
    corpus_manifest = paths.text_dir(corpus) / MANIFEST
    if corpus_manifest.exists():
        found["corpus_sources"] = json.loads(corpus_manifest.read_text()).get("sources")
    stores = {}
    for (site, layer), directory in config.activation_dirs().items():
        if (directory / MANIFEST).exists():
            store = json.loads((directory / MANIFEST).read_text())
            stores[f"{site}/layer{layer}"] = {"config_hash": store.get("config_hash"),
                                              "tokens": {k: v.get("tokens") for k, v in store["splits"].items()}}
    found["activation_stores"] = stores
    return found


def build_report(config: Config, results: Path, figures: Path, captions: dict[str, str], code_version: str) -> str:
    head = pd.read_csv(results / "headline.csv")
    metrics = pd.read_csv(results / "metrics.csv")
    markdown_tables = (results / "tables" / "metrics.md").read_text()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Gated SAE replication: "
             f"{html.escape(config.experiment.name)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Gated SAE replication — experiment <code>{html.escape(config.experiment.name)}</code></h1>",
             f"<p>Model <b>{html.escape(config.model.name)}</b>, corpus <b>{html.escape(config.corpus.name)}</b>, "
             f"layers {config.experiment.layers}, sites {', '.join(config.experiment.sites)}; "
             f"{len(metrics)} SAEs evaluated; code {html.escape(code_version)}.</p>",
             "<h2>Headline: L0 of Gated / baseline at matched loss recovered</h2>",
             "<p>Interpolated along each Pareto frontier over the range of loss recovered both cover "
             "(geometric mean over 21 levels; min and max alongside). The paper reports about ½.</p>",
             head.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="—"),
             "<h3>The paper's values</h3>", paper_headline().to_html(index=False),
             f"<p>The paper's γ: {PAPER_GAMMA}.</p>", "<h2>Figures</h2>"]
    for png in sorted(figures.glob("*.png")):
        parts.append(_figure_html(png, captions.get(png.stem, "")))
    parts += ["<h2>Tables</h2>", "<p>★ marks Pareto-optimal SAEs (L0 vs loss recovered) within each sweep.</p>",
              _markdown_tables_html(markdown_tables),
              "<h2>Configuration</h2>", f"<pre>{html.escape(yaml.safe_dump(asdict(config), sort_keys=False))}</pre>",
              "<h2>Versions</h2>",
              f"<pre>{html.escape(json.dumps(versions(config, code_version), indent=2, default=str))}</pre>",
              "</body></html>"]
    return "\n".join(parts)


def _markdown_tables_html(markdown: str) -> str:
    """The tables of metrics.md as HTML (headings and pipe tables only: what `tables` writes)."""
    out, rows = [], []

    def flush():
        if rows:
            header, body = rows[0], rows[2:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        else:
            flush()
            if line.startswith("### "):
                out.append(f"<h3>{html.escape(line[4:])}</h3>")
    flush()
    return "\n".join(out)


def write_report(config: Config) -> Path:
    """results/<experiment>/report.html from the aggregated results and figures."""
    from .atomic import atomic_path
    from .checkpoints import code_version

    results, figures = config.experiment.results, config.experiment.figures
    captions = json.loads((figures / "figures.json").read_text())["captions"]
    path = results / "report.html"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(build_report(config, results, figures, captions, code_version()))
    return path
