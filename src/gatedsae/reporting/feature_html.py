"""HTML for the feature browser and the rating page: self-contained (inline CSS, no external resource,
no script needed to read it), one card per feature."""

from __future__ import annotations

import html

from gatedsae.plan.architectures import knob_text, label
from gatedsae.plan.sites import label as site_label
from gatedsae.reporting.feature_explorer import SCRIPT, explorer_html
from gatedsae.reporting.feature_explorer import STYLE as EXPLORER_STYLE

STYLE = """
:root { --ink: #222; --muted: #666; --line: #ddd; --hot: 255, 110, 0; --cold: 30, 110, 220; }
body { font-family: system-ui, sans-serif; color: var(--ink); max-width: 1100px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.35em; } h2 { font-size: 1.1em; margin: 0 0 .3em; } h3 { font-size: .9em; margin: .8em 0 .3em; color: var(--muted); }
.summary, .stats { color: var(--muted); font-size: .9em; }
nav.features { font-size: .85em; line-height: 1.8; margin: .8em 0 1.2em; }
nav.features a { margin-right: .5em; }
section.feature { border: 1px solid var(--line); border-radius: 6px; padding: .8em 1em; margin: 0 0 1.2em; }
.panels { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
table.logits { border-collapse: collapse; font-size: .8em; }
table.logits td, table.logits th { padding: 1px 6px; text-align: left; }
table.logits td.v { text-align: right; color: var(--muted); }
.tok { font-family: ui-monospace, monospace; white-space: pre; background: #f4f4f4; border-radius: 2px; }
ol.examples { list-style: none; padding: 0; margin: 0; }
ol.examples li { display: flex; gap: .8em; font-size: .85em; margin: 2px 0; }
ol.examples .value { flex: 0 0 4.5em; text-align: right; color: var(--muted); font-variant-numeric: tabular-nums; }
.ctx { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
.ctx span.a { border-radius: 2px; }
.ctx span.f { outline: 1.5px solid #b00; }
svg.hist rect { fill: rgb(var(--hot)); } svg.hist text { font-size: 9px; fill: var(--muted); }
svg.hist path.axis { stroke: var(--muted); fill: none; stroke-width: 1; }
fieldset.rating { border: 1px solid var(--line); border-radius: 4px; margin-top: .8em; }
fieldset.rating label { margin-right: 1.2em; } fieldset.rating input.note { width: 60%; margin-top: .4em; }
header.study { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: .5em 0; z-index: 1; }
table.saes { border-collapse: collapse; } table.saes td, table.saes th { border: 1px solid var(--line); padding: 3px 8px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _visible(token: str) -> str:
    """A token as it should read in a context line: newlines and tabs shown, not obeyed."""
    return token.replace("\n", "⏎").replace("\t", "⇥")


def context_html(example: dict, scale: float) -> str:
    """One context: tokens shaded by the feature's activation (relative to its maximum), the token the
    example is about outlined; the exact activation in each shaded token's tooltip."""
    parts = []
    for position, (token, value) in enumerate(zip(example["tokens"], example["activations"])):
        text = _e(_visible(token))
        focus = position == example["focus"]
        if value > 0 or focus:
            alpha = min(1.0, value / scale) if scale > 0 else 0.0
            cls = "a f" if focus else "a"
            parts.append(f'<span class="{cls}" style="background:rgba(var(--hot),{alpha:.2f})" '
                         f'title="{value:.3f}">{text}</span>')
        else:
            parts.append(text)
    return "".join(parts)


def examples_html(examples: list[dict], scale: float) -> str:
    if not examples:
        return '<p class="stats">none</p>'
    items = "".join(f'<li><span class="value">{example["value"]:.3f}</span>'
                    f'<span class="ctx">{context_html(example, scale)}</span></li>' for example in examples)
    return f'<ol class="examples">{items}</ol>'


HIST = {"width": 250, "height": 112, "left": 36, "right": 8, "top": 6, "bottom": 30}  # px, plot margins


def histogram_svg(histogram: dict) -> str:
    """The feature's non-zero activations as a bar chart with both axes: activation (model units) from 0 to
    its maximum, and the number of held-out tokens per bin."""
    counts, edges = histogram["counts"], histogram["edges"]
    w, h, left, right, top, bottom = (HIST[k] for k in ("width", "height", "left", "right", "top", "bottom"))
    plot_w, plot_h, base = w - left - right, h - top - bottom, h - bottom
    peak = max(counts) or 1
    bar = plot_w / len(counts)
    bars = "".join(f'<rect x="{left + i * bar:.1f}" y="{base - plot_h * c / peak:.1f}" width="{bar - 1:.1f}" '
                   f'height="{plot_h * c / peak:.1f}"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: {c} tokens</title></rect>'
                   for i, c in enumerate(counts))
    axes = (f'<path class="axis" d="M{left},{top} V{base} H{w - right}"/>'
            f'<text x="{left - 3}" y="{top + 7}" text-anchor="end">{peak:,}</text>'
            f'<text x="{left - 3}" y="{base}" text-anchor="end">0</text>'
            f'<text x="{left}" y="{base + 11}">0</text>'
            f'<text x="{w - right}" y="{base + 11}" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="{left + plot_w / 2}" y="{h - 3}" text-anchor="middle">activation (model units)</text>'
            f'<text transform="translate(9,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">tokens</text>')
    return (f'<svg class="hist" width="{w}" height="{h}" role="img" aria-label="activation histogram">{bars}{axes}'
            '</svg>')


def logits_html(logits: dict) -> str:
    rows = "".join(
        f'<tr><td><span class="tok">{_e(_visible(up[0]))}</span></td><td class="v">{up[1]:+.2f}</td>'
        f'<td><span class="tok">{_e(_visible(down[0]))}</span></td><td class="v">{down[1]:+.2f}</td></tr>'
        for up, down in zip(logits["promoted"], logits["suppressed"]))
    return f'<table class="logits"><tr><th colspan="2">promotes</th><th colspan="2">suppresses</th></tr>{rows}</table>'


def feature_html(feature: dict, title: str, anchor: str, extra: str = "") -> str:
    """One feature's card: density, activation histogram, logit effects, top and quantile examples."""
    scale = feature["max_activation"]
    quantiles = "".join(
        f'<h3>Quantile {i + 1} of {len(feature["quantiles"])} (activation {q["low"]:.3g}–{q["high"]:.3g})</h3>'
        + examples_html(q["examples"], scale) for i, q in reversed(list(enumerate(feature["quantiles"]))))
    return (
        f'<section class="feature" id="{_e(anchor)}"><h2>{_e(title)}</h2>'
        f'<p class="stats">fires on {100 * feature["density"]:.3g}% of held-out tokens ({feature["fired"]:,}); '
        f'max activation {feature["max_activation"]:.3g}</p>'
        f'<div class="panels"><div><h3>Activations when firing</h3>{histogram_svg(feature["histogram"])}</div>'
        f'<div><h3>Logit effect (decoder direction · unembedding)</h3>{logits_html(feature["logits"])}</div></div>'
        f'<h3>Top activations</h3>{examples_html(feature["top"], scale)}{quantiles}{extra}</section>')


def _page(title: str, body: str, script: str = "") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body>{body}{script}</body></html>\n')


def describe(data: dict) -> str:
    return (f"{label(data['arch'])}, {knob_text(data['arch'], data)}, width {data['width']:,}: "
            f"{site_label(data['site'])}, layer {data['layer']} of {data['model']}")


def units_note(data: dict) -> str:
    """How to read the numbers: activations in the model's units, directions of norm 1 (as SAEDashboard and
    Neuronpedia show them), and the scale this checkpoint folds into its decoder."""
    units = data.get("units") or {}
    folded = (f" This checkpoint's decoder rows have norms {units['decoder_norm_min']:.3g}–{units['decoder_norm_max']:.3g} "
              "(the training's activation scale is folded into W_dec)." if "decoder_norm_min" in units else "")
    return (f"Activations are in the model's units: the feature's activation times the norm of its decoder row, "
            f"i.e. the size of what it adds to the reconstruction of the {site_label(data['site']).lower()}. Logit "
            f"effects follow its decoder direction normalised to 1.{folded}")


def sae_page(data: dict, index: dict | None = None) -> str:
    """One SAE's page: the sampled features as cards, and (with `index`) every feature, to open and search."""
    nav = " ".join(f'<a href="#f{f["index"]}">{f["index"]}</a>' for f in data["features"])
    cards = "".join(feature_html(f, f"Feature {f['index']}", f"f{f['index']}") for f in data["features"])
    body = (f'<h1>{_e(describe(data))}</h1>'
            f'<p class="summary">L0 {data["l0"]:.1f} on {data["heldout_rows"]:,} held-out tokens; {data["alive"]:,} '
            f'features fire, {data["dead"]:,} never do. {_e(units_note(data))} Shading: the feature\'s activation on '
            f'each token relative to its maximum; outlined: the token the example is about; hover a token for its '
            f'activation. Checkpoint <code>{_e(data["checkpoint"])}</code> ({_e(data["checkpoint_id"])}). '
            f'<a href="index.html">All SAEs</a></p>'
            + (explorer_html(index) if index else "")
            + f'<h2>{len(data["features"])} features sampled among those that fire</h2>'
            f'<nav class="features">Features: {nav}</nav>{cards}')
    page = _page(f"Features of {data['sae']}", body, SCRIPT if index else "")
    return page.replace("</style>", EXPLORER_STYLE + "</style>", 1) if index else page


def index_page(pages: list[dict], experiment: str) -> str:
    rows = "".join(f'<tr><td><a href="{_e(p["sae"])}.html">{_e(p["sae"])}</a></td>'
                   f'<td>{_e(label(p["arch"]))}</td><td>{_e(knob_text(p["arch"], p))}</td><td>{p["width"]:,}</td>'
                   f'<td>{p["l0"]:.1f}</td><td>{p["dead"]:,}</td></tr>' for p in pages)
    first = pages[0]
    body = (f'<h1>Feature browser: {_e(site_label(first["site"]))}, layer {first["layer"]} '
            f'({_e(experiment)})</h1><p class="summary">One page per SAE; each shows sampled features on held-out '
            f'text.</p><table class="saes"><tr><th>SAE</th><th>architecture</th><th>λ</th><th>width</th>'
            f'<th>L0 (held-out)</th><th>dead</th></tr>{rows}</table>')
    return _page(f"Feature browser ({experiment})", body)


RATING_INSTRUCTIONS = """
<p>Each card below is one feature of a sparse autoencoder, shown on held-out text: how often it fires, the
distribution of its activations, the tokens its output direction makes more and less likely, its top-activating
contexts and random contexts from each quartile of its activations (shading: the feature's activation on each
token; outlined: the token the example is about). Cards come from several dictionaries, shuffled; nothing on the
page tells you which, and nothing should.</p>
<p><b>Is this feature interpretable?</b> <b>Yes</b>: its activations follow one concept you could name and would
predict on new text, across the top examples and most of the lower quantiles. <b>Maybe</b>: a concept is visible but
with clear exceptions, or only in part of its range. <b>No</b>: you cannot find a consistent concept. Judge each card
on its own; there is no quota. An optional note (what it seems to respond to) helps the analysis.</p>
<p>Your ratings are kept in this browser as you go (closing the page loses nothing). When done, or to hand in part,
enter your name and press <b>Download ratings</b>: send the downloaded file back.</p>
"""

RATING_SCRIPT = """
<script>
(() => {
  const study = document.body.dataset.study;
  const ids = [...document.querySelectorAll("fieldset.rating")].map(f => f.dataset.id);
  const storeKey = "gatedsae-study-" + study;
  const rater = document.getElementById("rater");
  function collect() {
    const ratings = {}, notes = {};
    for (const id of ids) {
      const chosen = document.querySelector(`input[name="${id}"]:checked`);
      if (chosen) ratings[id] = chosen.value;
      const note = document.querySelector(`input.note[data-id="${id}"]`).value.trim();
      if (note) notes[id] = note;
    }
    return {study, rater: rater.value.trim(), scale: ["no", "maybe", "yes"], ratings, notes,
            saved_at: new Date().toISOString()};
  }
  function progress() {
    const done = Object.keys(collect().ratings).length;
    for (const element of document.querySelectorAll(".progress")) element.textContent = `${done} of ${ids.length} rated`;
  }
  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(collect())); } catch (error) { /* private mode: no memory */ }
    progress();
  }
  function restore() {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(storeKey) || "null"); } catch (error) { saved = null; }
    if (!saved) return;
    rater.value = saved.rater || "";
    for (const [id, value] of Object.entries(saved.ratings || {})) {
      const input = document.querySelector(`input[name="${id}"][value="${value}"]`);
      if (input) input.checked = true;
    }
    for (const [id, text] of Object.entries(saved.notes || {})) {
      const note = document.querySelector(`input.note[data-id="${id}"]`);
      if (note) note.value = text;
    }
  }
  function download() {
    const data = collect();
    const blob = new Blob([JSON.stringify(data, null, 2)], {type: "application/json"});
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `ratings-${(data.rater || "anonymous").replace(/[^A-Za-z0-9_-]+/g, "_")}-${study}.json`;
    document.body.appendChild(link);
    link.click();
    link.remove();
  }
  document.addEventListener("change", save);
  document.addEventListener("input", save);
  for (const button of document.querySelectorAll("button.download")) button.addEventListener("click", download);
  restore();
  progress();
  document.body.dataset.ready = "true";
})();
</script>
"""


def rating_form(identifier: str) -> str:
    choices = "".join(f'<label><input type="radio" name="{_e(identifier)}" value="{value}"> {value.capitalize()}</label>'
                      for value in ("no", "maybe", "yes"))
    return (f'<fieldset class="rating" data-id="{_e(identifier)}"><legend>Is {_e(identifier)} interpretable?</legend>'
            f'{choices}<br><input type="text" class="note" data-id="{_e(identifier)}" '
            f'placeholder="optional: what it seems to respond to"></fieldset>')


def rating_page(study: str, features: list[tuple[str, dict]]) -> str:
    """The blinded rating page: each feature under its study id only, with the No / Maybe / Yes scale."""
    save = '<span class="progress"></span> <button type="button" class="download">Download ratings</button>'
    cards = "".join(feature_html(feature, identifier, identifier, extra=rating_form(identifier))
                    for identifier, feature in features)
    body = (f'<h1>Feature interpretability rating ({len(features)} features)</h1>{RATING_INSTRUCTIONS}'
            f'<header class="study"><label>Your name: <input type="text" id="rater" autocomplete="name"></label> '
            f'{save}</header>{cards}<p>{save}</p>')
    return _page("Feature interpretability rating", body, RATING_SCRIPT).replace("<body>", f'<body data-study="{_e(study)}">', 1)
