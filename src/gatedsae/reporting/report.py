"""One self-contained HTML report: the verdict, the headline next to the paper's numbers, every figure with its
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

from gatedsae.core.sealed import REBUILD, read_json
from gatedsae.plan.config import Config
from gatedsae.plan.layout import FIGURES_INDEX, MANIFEST, MODEL_MARKER

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def paper_headline(config: Config) -> pd.DataFrame:
    """The paper's rows at matched loss recovered (conf/verdict)."""
    rows = [{"paper run": row.run, "site": row.site, "L0 Gated": row.l0_gated, "L0 baseline": row.l0_baseline,
             "L0 ratio": round(row.l0_ratio, 2),
             "loss recovered (Gated / baseline)": f"{row.loss_recovered_gated:.2f}% / {row.loss_recovered_baseline:.2f}%"}
            for row in config.verdict.paper_matched_l0]
    return pd.DataFrame(rows)


def verdict_html(results: Path) -> str:
    """The verdict's table (verdict.json), or a line saying it is missing."""
    path = results / "verdict.json"
    if not path.exists():
        return "<p>No verdict yet: run the <code>verdict</code> stage.</p>"
    from gatedsae.reporting.claims import load_claims
    from gatedsae.reporting.convergence import describe

    verdict = read_json(path, REBUILD)
    claims = load_claims(verdict["claims"])
    summary = ", ".join(f"{n} {status}" for status, n in verdict["summary"].items() if n)
    table = pd.DataFrame([{"claim": c.claim, "site": "—" if c.layer is None else f"{c.site}, L{c.layer}",
                           "statistic": c.statistic, "read at": c.read_at, "measured [95% CI]": c.measured(),
                           "seed SD": c.spread(), "threshold": c.threshold, "paper": c.paper,
                           "reference run": c.reference, "SAEs converged": describe(c.convergence) if c.convergence else "—",
                           "verdict": c.status + (f" ({c.note})" if c.note else "")} for c in claims])
    split = html.escape(str(verdict.get("split", "")))
    return f"<p>{len(claims)} claims, read on the held-out split <b>{split}</b>: {html.escape(summary)}.</p>" \
        + table.to_html(index=False)


def _figure_html(png: Path, caption: str) -> str:
    """The figure at its printed size relative to the page, so every figure's fonts show at one size (a
    single-column figure takes half the column, not all of it)."""
    from gatedsae.reporting.figures.style import FULL_WIDTH, SAVE_DPI

    raw = png.read_bytes()
    inches = int.from_bytes(raw[16:20], "big") / SAVE_DPI  # the PNG header's width, in pixels
    data = base64.b64encode(raw).decode()
    return (f'<figure><img alt="{html.escape(png.stem)}" style="width:{min(100.0, 100 * inches / FULL_WIDTH):.1f}%" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(png.stem)}.</b> {html.escape(caption)}</figcaption></figure>")


def versions(config: Config, code_version: str) -> dict:
    """Code, software, model and data provenance, read from the artifacts themselves."""
    from importlib.metadata import version

    paths, model, corpus = config.paths, config.model.name, config.corpus.name
    found = {"code": code_version, "python": platform.python_version(), "platform": platform.platform()}
    found |= {package: version(package) for package in ("torch", "transformer-lens", "transformers", "snakemake")}
    marker = paths.model_dir(model) / MODEL_MARKER
    if marker.exists():
        prepared = read_json(marker, REBUILD)
        found["model"] = {k: prepared.get(k) for k in ("gguf_sha256", "files", "seconds") if k in prepared} | {
            "packages": prepared.get("model", {}).get("packages")}
    corpus_manifest = paths.text_dir(corpus) / MANIFEST
    if corpus_manifest.exists():
        found["corpus_sources"] = read_json(corpus_manifest, REBUILD).get("sources")
    stores = {}
    for (site, layer), directory in config.activation_dirs().items():
        if (directory / MANIFEST).exists():
            store = read_json(directory / MANIFEST, REBUILD)
            stores[f"{site}/layer{layer}"] = {"config_hash": store.get("config_hash"),
                                              "tokens": {k: v.get("tokens") for k, v in store["splits"].items()}}
    found["activation_stores"] = stores
    return found


def build_report(config: Config, results: Path, figures: list[Path], captions: dict[str, str], code_version: str) -> str:
    """The page; `figures` are the PNGs in the order shown (figures.json's: the paper's order)."""
    head = pd.read_csv(results / "headline.csv")
    metrics = pd.read_csv(results / "metrics.csv")
    markdown_tables = (results / "tables" / "metrics.md").read_text()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Gated SAE replication: "
             f"{html.escape(config.experiment.name)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Gated SAE replication — experiment <code>{html.escape(config.experiment.name)}</code></h1>",
             f"<p>Model <b>{html.escape(config.model.name)}</b>, corpus <b>{html.escape(config.corpus.name)}</b>, "
             f"sites (layers) {', '.join(f'{s} {config.experiment.layers_at(s)}' for s in config.experiment.sites)}; "
             f"{len(metrics)} SAEs evaluated; code {html.escape(code_version)}.</p>",
             "<h2>Verdict</h2>", verdict_html(results),
             "<h2>Headline: L0 of Gated / baseline at matched loss recovered</h2>",
             "<p>Interpolated along each Pareto frontier (seed-averaged) at the pre-registered loss-recovered "
             "levels of conf/verdict (geometric mean over a site's levels), with 95% intervals from a two-level "
             "bootstrap (training seeds, then held-out windows) and the seed-to-seed SD; this table reads the "
             "development split, the verdict above the test split. The paper reports about ½.</p>",
             head.drop(columns=[c for c in head.columns if c.endswith("_per_seed")]).to_html(
                 index=False, float_format=lambda v: f"{v:.3f}", na_rep="—"),
             "<h3>The paper's values</h3>", paper_headline(config).to_html(index=False),
             f"<p>The paper's γ: Gated {html.escape(config.verdict.paper_gamma_gated)}; baseline "
             f"{html.escape(config.verdict.paper_gamma_baseline)} ({html.escape(config.verdict.paper_gamma_source)}).</p>",
             "<h2>Figures</h2>"]
    for png in figures:
        parts.append(_figure_html(png, captions.get(png.stem, "")))
    parts += ["<h2>Tables</h2>", "<p>★ marks Pareto-optimal SAEs (L0 vs loss recovered) within each sweep; "
              "[low, high]: 95% interval.</p>",
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
    from gatedsae.core.atomic import atomic_path
    from gatedsae.core.codehash import code_version

    results, figures = config.experiment.results, config.experiment.figures
    index = read_json(figures / FIGURES_INDEX, REBUILD)
    pngs = [Path(f) for f in index["files"] if f.endswith(".png")]
    path = results / "report.html"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(build_report(config, results, pngs, index["captions"], code_version()))
    return path
