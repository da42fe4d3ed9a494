"""Every feature of an SAE in a compact form, so the browser can open any feature by index, search them by
the tokens they fire on, and sort them by density or maximum activation.

Two passes over the held-out rows, window by window (a window's rows are consecutive in the store):
1. each feature's firing count, and its maximum activation in every window (and where in the window);
   its top windows are those with the highest maxima, one example per window;
2. each feature's activation histogram (bins from 0 to its maximum) and its activations on the tokens
   around each of its top examples.

Activations are in the model's units (times the decoder row's norm, `browser.decoder_norms`), logit
effects along the unit decoder direction (`browser.logit_effects`). The result is one JSON object whose
token strings are stored once (`tokens`) and referred to by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gatedsae.reporting.browser import HeldoutText, decoder_norms, logit_effects

BINS = 20  # histogram bins per feature, from 0 to its maximum


@dataclass(frozen=True)
class IndexShape:
    examples: int  # top examples per feature
    before: int    # tokens shown before the activating one
    after: int     # ... and after it
    logit_tokens: int


def _window_chunks(shards, positions: int, batch_rows: int):
    """(rows [w·positions, d], kept [w·positions]) of whole windows, `batch_rows` rows or so at a time; a
    last partial window (a row limit) is padded with rows left out."""
    per_chunk = max(1, batch_rows // positions) * positions
    for x, kept in shards:
        for start in range(0, len(x), per_chunk):
            rows, keep = x[start : start + per_chunk], kept[start : start + per_chunk]
            missing = (-len(rows)) % positions
            if missing:
                rows = torch.cat([rows, rows.new_zeros(missing, rows.shape[1])])
                keep = torch.cat([keep, keep.new_zeros(missing)])
            yield rows, keep


def _activations(sae, rows: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, positions: int) -> torch.Tensor:
    """[windows, positions, width] activations in the model's units, 0 on rows left out."""
    values = sae.encode(rows) * scale * keep[:, None]
    return values.view(-1, positions, values.shape[-1])


@torch.no_grad()
def index_features(sae, shards_fn, text: HeldoutText, model, shape: IndexShape, batch_rows: int) -> dict:
    """The compact record of every feature of `sae` (see the module's docstring)."""
    positions, width, scale = text.positions, sae.width, decoder_norms(sae)
    fired = torch.zeros(width, dtype=torch.long)
    maxima, places, kept_rows, kept_windows = [], [], 0, 0
    for rows, keep in _window_chunks(shards_fn(), positions, batch_rows):
        values = _activations(sae, rows, keep, scale, positions)
        fired += (values > 0).sum((0, 1))
        kept_rows += int(keep.sum())
        kept_windows += int(keep.view(-1, positions).any(1).sum())  # a test window's rows are all left out
        best = values.max(1)
        maxima.append(best.values)
        places.append(best.indices.to(torch.int32))
    maxima, places = torch.cat(maxima), torch.cat(places)  # [windows, width]
    top = torch.topk(maxima, min(shape.examples, len(maxima)), dim=0)  # [k, width]: the top windows
    peak = maxima.max(0).values
    # the (feature, window) pairs shown, and the offsets of the tokens around each example
    feature_of = torch.arange(width).expand_as(top.indices)[top.values > 0]
    window_of = top.indices[top.values > 0]
    focus_of = places[window_of, feature_of].long()
    offsets = focus_of[:, None] + torch.arange(-shape.before, shape.after + 1)[None, :]
    inside = (offsets >= 0) & (offsets < positions)
    context = torch.zeros(offsets.shape)
    counts = torch.zeros(width * BINS, dtype=torch.long)
    first = 0
    for rows, keep in _window_chunks(shards_fn(), positions, batch_rows):
        values = _activations(sae, rows, keep, scale, positions)
        on = values > 0
        feature = on.nonzero()[:, 2]
        bins = (values[on] / peak[feature] * BINS).long().clamp_(max=BINS - 1)
        counts.scatter_add_(0, feature * BINS + bins, torch.ones_like(bins))
        here = (window_of >= first) & (window_of < first + len(values))
        local = (window_of[here] - first)[:, None].expand(-1, offsets.shape[1])
        picked = values[local, offsets[here].clamp(0, positions - 1), feature_of[here][:, None].expand_as(local)]
        context[here] = picked * inside[here]
        first += len(values)
    return _records(sae, text, model, shape, fired, kept_rows, kept_windows, peak, counts.view(width, BINS),
                    feature_of, window_of, focus_of, offsets, inside, context)


def _records(sae, text: HeldoutText, model, shape: IndexShape, fired, rows, windows, peak, histograms,
             feature_of, window_of, focus_of, offsets, inside, context) -> dict:
    tokens: dict[str, int] = {}

    def token(identifier: int) -> int:
        return tokens.setdefault(text.token_text(int(identifier)), len(tokens))

    examples: list[list] = [[] for _ in range(sae.width)]
    for pair in range(len(feature_of)):  # in order of activation within each feature (topk's order)
        window, shown = int(window_of[pair]), offsets[pair][inside[pair]]
        ids = text.windows[window, 1 + shown.numpy()]  # row offset r is token position r + 1 (BOS never shown)
        examples[int(feature_of[pair])].append(
            [int((offsets[pair][inside[pair]] == focus_of[pair]).nonzero()[0]),
             [token(i) for i in ids], [round(float(v), 3) for v in context[pair][inside[pair]]],
             window, 1 + int(focus_of[pair])])
    record = sae.record
    effects = logit_effects(model, sae, record["site"], int(record["layer"]), np.arange(sae.width),
                            shape.logit_tokens, lambda i: i)
    features = []
    for index in range(sae.width):
        effect = effects[index]
        features.append([index, round(int(fired[index]) / max(rows, 1), 7), int(fired[index]),
                         round(float(peak[index]), 4), histograms[index].tolist(), examples[index],
                         [[token(i), round(v, 3)] for i, v in effect["promoted"]],
                         [[token(i), round(v, 3)] for i, v in effect["suppressed"]]])
    return {"fields": ["index", "density", "fired", "max_activation", "histogram", "examples", "promoted",
                       "suppressed"],
            "example_fields": ["focus", "tokens", "activations", "window", "position"], "bins": BINS,
            "tokens": list(tokens), "rows": rows, "windows": windows, "context": text.positions + 1,
            "features": features}


def feature_view(index: dict, feature: int) -> dict:
    """One feature of a compact index as a plain mapping (token positions replaced by their text)."""
    fields = dict(zip(index["fields"], index["features"][feature]))
    tokens = index["tokens"]
    fields["examples"] = [{"focus": focus, "tokens": [tokens[t] for t in ids], "activations": values, "window": window,
                           "position": position} for focus, ids, values, window, position in fields["examples"]]
    for key in ("promoted", "suppressed"):
        fields[key] = [[tokens[t], value] for t, value in fields[key]]
    return fields
