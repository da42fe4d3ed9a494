"""The browser page's index of every feature (reporting/feature_index.py's data, embedded in the page): open
any feature by its number, search features by the tokens they fire on, sort them by density or maximum
activation. A small script renders the list and the opened feature; the page stays one file that opens
from disk with no network."""

from __future__ import annotations

import json

STYLE = """
section.explore { border: 1px solid var(--line); border-radius: 6px; padding: .8em 1em; margin: 0 0 1.5em; }
section.explore .controls { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: center; font-size: .9em; }
section.explore input[type=number] { width: 6em; } section.explore input[type=search] { width: 14em; }
table.features { border-collapse: collapse; font-size: .85em; margin-top: .6em; width: 100%; }
table.features th, table.features td { border-bottom: 1px solid var(--line); padding: 2px 8px; text-align: left; }
table.features td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.features tr.open { background: #fff3e6; }
#feature-view section.feature { margin-top: 1em; }
.listed { color: var(--muted); font-size: .85em; }
"""

SCRIPT = """
<script>
(() => {
  const data = JSON.parse(document.getElementById("feature-index").textContent);
  const at = Object.fromEntries(data.fields.map((name, i) => [name, i]));
  const tokens = data.tokens, features = data.features, shown = 200;
  const activating = features.map(f => [...new Set(f[at.examples].map(e => tokens[e[1][e[0]]]))]);
  const $ = id => document.getElementById(id);
  const esc = text => String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const visible = text => text.replace(/\\n/g, "\\u23ce").replace(/\\t/g, "\\u21e5");
  const fmt = (value, digits = 3) => Number(value).toPrecision(digits).replace(/(\\.\\d*?)0+($|e)/, "$1$2").replace(/\\.($|e)/, "$1");
  let open = null;

  function matches(index, query) {
    if (!query) return true;
    const q = query.trim().toLowerCase();
    return activating[index].some(token => token.trim().toLowerCase().includes(q));
  }
  function listed() {
    const query = $("feature-search").value, order = $("feature-sort").value;
    const found = features.map((f, i) => i).filter(i => matches(i, query));
    const key = order === "index" ? i => i : i => -features[i][at[order]];
    return found.sort((a, b) => key(a) - key(b) || a - b);
  }
  function renderList() {
    const found = listed();
    $("feature-count").textContent = `${found.length.toLocaleString()} of ${features.length.toLocaleString()} features` +
      (found.length > shown ? `; the first ${shown} listed` : "");
    $("feature-rows").innerHTML = found.slice(0, shown).map(i => {
      const f = features[i];
      return `<tr data-index="${i}"${i === open ? ' class="open"' : ""}><td class="n"><a href="#feature=${i}">${i}</a></td>` +
        `<td class="n">${fmt(100 * f[at.density])}%</td><td class="n">${fmt(f[at.max_activation])}</td>` +
        `<td>${activating[i].slice(0, 6).map(t => `<span class="tok">${esc(visible(t))}</span>`).join(" ")}</td></tr>`;
    }).join("");
  }
  function histogram(counts, peak) {
    const w = 250, h = 112, left = 36, right = 8, top = 6, bottom = 30, pw = w - left - right, ph = h - top - bottom;
    const most = Math.max(...counts) || 1, bar = pw / counts.length, base = h - bottom;
    const bars = counts.map((c, i) => `<rect x="${(left + i * bar).toFixed(1)}" y="${(base - ph * c / most).toFixed(1)}" ` +
      `width="${(bar - 1).toFixed(1)}" height="${(ph * c / most).toFixed(1)}"><title>${fmt(peak * i / counts.length)}–` +
      `${fmt(peak * (i + 1) / counts.length)}: ${c} tokens</title></rect>`).join("");
    return `<svg class="hist" width="${w}" height="${h}" role="img" aria-label="activation histogram">${bars}` +
      `<path class="axis" d="M${left},${top} V${base} H${w - right}"/><text x="${left - 3}" y="${top + 7}" text-anchor="end">` +
      `${most.toLocaleString()}</text><text x="${left - 3}" y="${base}" text-anchor="end">0</text>` +
      `<text x="${left}" y="${base + 11}">0</text><text x="${w - right}" y="${base + 11}" text-anchor="end">${fmt(peak)}</text>` +
      `<text x="${left + pw / 2}" y="${h - 3}" text-anchor="middle">activation (model units)</text>` +
      `<text transform="translate(9,${top + ph / 2}) rotate(-90)" text-anchor="middle">tokens</text></svg>`;
  }
  function example(e, peak) {
    const [focus, ids, values] = e;  // then window, position
    const parts = ids.map((t, j) => {
      const text = esc(visible(tokens[t])), v = values[j];
      if (v <= 0 && j !== focus) return text;
      const alpha = peak > 0 ? Math.min(1, v / peak).toFixed(2) : 0;
      return `<span class="a${j === focus ? " f" : ""}" style="background:rgba(var(--hot),${alpha})" title="${fmt(v, 4)}">${text}</span>`;
    });
    return `<li><span class="value">${fmt(values[focus])}</span><span class="ctx">${parts.join("")}</span></li>`;
  }
  function logits(f) {
    const rows = f[at.promoted].map((up, j) => {
      const down = f[at.suppressed][j];
      return `<tr><td><span class="tok">${esc(visible(tokens[up[0]]))}</span></td><td class="v">${up[1] >= 0 ? "+" : ""}${up[1].toFixed(2)}</td>` +
        `<td><span class="tok">${esc(visible(tokens[down[0]]))}</span></td><td class="v">${down[1].toFixed(2)}</td></tr>`;
    }).join("");
    return `<table class="logits"><tr><th colspan="2">promotes</th><th colspan="2">suppresses</th></tr>${rows}</table>`;
  }
  function show(index) {
    if (!(index >= 0 && index < features.length)) {
      $("feature-view").innerHTML = `<p class="stats">No feature ${esc(index)}: this SAE has features 0 to ${features.length - 1}.</p>`;
      return;
    }
    open = index;
    const f = features[index], peak = f[at.max_activation];
    const fires = f[at.fired] ? `fires on ${fmt(100 * f[at.density])}% of held-out tokens (${f[at.fired].toLocaleString()}); ` +
      `max activation ${fmt(peak)}` : "never fires on the held-out tokens";
    const examples = f[at.examples].length ? `<ol class="examples">${f[at.examples].map(e => example(e, peak)).join("")}</ol>` :
      '<p class="stats">none</p>';
    $("feature-view").innerHTML = `<section class="feature" id="opened"><h2>Feature ${index}</h2><p class="stats">${fires}</p>` +
      `<div class="panels"><div><h3>Activations when firing</h3>${histogram(f[at.histogram], peak)}</div>` +
      `<div><h3>Logit effect (unit decoder direction · unembedding)</h3>${logits(f)}</div></div>` +
      `<h3>Top activations</h3>${examples}</section>`;
    $("feature-number").value = index;
    renderList();
  }
  function fromHash() {
    const found = /feature=(\\d+)/.exec(location.hash);
    if (found) show(Number(found[1]));
  }
  $("feature-open").addEventListener("submit", event => { event.preventDefault(); location.hash = `feature=${$("feature-number").value}`; });
  $("feature-search").addEventListener("input", renderList);
  $("feature-sort").addEventListener("change", renderList);
  window.addEventListener("hashchange", fromHash);
  renderList();
  fromHash();
  document.body.dataset.explorer = "ready";
})();
</script>
"""


def explorer_html(index: dict) -> str:
    """The section (controls, list, the opened feature) and the data it reads."""
    payload = json.dumps(index, separators=(",", ":")).replace("</", "<\\/")
    width = len(index["features"])
    return (
        f'<section class="explore"><h2>All {width:,} features</h2><div class="controls">'
        f'<form id="feature-open"><label>Open feature <input type="number" id="feature-number" min="0" '
        f'max="{width - 1}" required></label> <button type="submit">Open</button></form>'
        '<label>Tokens it fires on: <input type="search" id="feature-search" placeholder="e.g. the"></label>'
        '<label>Sort by <select id="feature-sort"><option value="density">density</option>'
        '<option value="max_activation">max activation</option><option value="index">index</option></select></label>'
        '</div><div id="feature-view"></div><p class="listed" id="feature-count"></p>'
        '<table class="features"><thead><tr><th>feature</th><th>density</th><th>max activation</th>'
        '<th>top activating tokens</th></tr></thead><tbody id="feature-rows"></tbody></table>'
        '<noscript><p class="stats">The list needs JavaScript; the sampled features below do not.</p></noscript>'
        f'</section><script type="application/json" id="feature-index">{payload}</script>')
