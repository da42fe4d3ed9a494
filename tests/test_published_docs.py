"""The numbers of the published reference runs in README.md and docs/ come from their files through the
verdict's formatter: a block that disagrees with its file fails here (`python -m gatedsae render-docs`
rewrites them)."""

from __future__ import annotations

import json

import pytest

from gatedsae.plan.config import REPO_ROOT
from gatedsae.reporting.published import BLOCK, documents, render_block, render_text


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.relative_to(REPO_ROOT).as_posix())
def test_every_generated_block_agrees_with_the_published_run(path):
    text = path.read_text()
    assert render_text(text) == text, f"{path.name} disagrees with reference/: run `python -m gatedsae render-docs`"


def test_the_readme_quotes_the_reference_verdict():
    blocks = {(m["source"], m["kind"]) for m in BLOCK.finditer((REPO_ROOT / "README.md").read_text())}
    assert ("reference/default/verdict.json", "claims") in blocks
    assert ("reference/default/verdict.json", "summary") in blocks


def test_an_edited_number_is_caught_and_fractions_are_shown_in_points(tmp_path):
    verdict = {"summary": {"REPRODUCED": 1}, "claims": [
        {"id": "rescale_shift_vs_baseline/resid_post/layer15", "claim": "(c) rescale-and-shift beats the baseline",
         "site": "resid_post", "layer": 15, "statistic": "", "value": 0.041832, "ci_low": 0.039343, "ci_high": 0.04485,
         "threshold": "> 0 pp", "paper": "", "status": "REPRODUCED", "percent_points": True, "seeds": 3,
         "seed_sd": 0.0023}]}
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "verdict.json").write_text(json.dumps(verdict))
    block = render_block(tmp_path / "reference" / "verdict.json", "claims")
    assert "+4.18 pp [+3.93, +4.49]" in block and "0.23 pp (3 seeds)" in block  # a fraction, ×100 in points
    head = "<!-- generated from reference/verdict.json (claims) by `python -m gatedsae render-docs`: do not edit -->\n"
    text = head + block + "<!-- end of generated block -->\n"
    assert render_text(text, tmp_path) == text
    edited = text.replace("+4.18 pp", "+0.04 pp")
    assert render_text(edited, tmp_path) != edited
    with pytest.raises(ValueError, match="unknown generated block kind"):
        render_block(tmp_path / "reference" / "verdict.json", "numbers")


def test_the_summary_says_where_and_on_what_the_claims_were_read():
    from gatedsae.reporting.published import summary

    verdict = {"summary": {"REPRODUCED": 2, "NOT TESTED": 1}, "split": "test",
               "protocol": {"levels": {"resid_post": [0.97825, 0.9875]}}, "notes": {"sites": [{"seeds": [0, 1, 2]}]}}
    (line,) = summary(verdict)
    assert line.startswith("3 claims: 2 REPRODUCED, 1 NOT TESTED. Read on the held-out split `test`, with 3 training seeds")
    assert "(Residual stream 97.825%, 98.75%)" in line
    (older,) = summary({"summary": {"REPRODUCED": 12, "INCONCLUSIVE": 3}})
    assert "predates the pre-registered protocol" in older
