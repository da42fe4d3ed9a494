"""Docs that quote the code or a benchmark (scripts/update_docs.py): every generated block is what its
generator gives now, so no number in them was typed by hand or has gone stale."""

from __future__ import annotations

import sys

from gatedsae.plan.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import update_docs  # noqa: E402


def test_generated_blocks_are_current():
    assert update_docs.stale() == [], "run python scripts/update_docs.py"
    for path in update_docs.DOCS:
        text = (REPO_ROOT / path).read_text()
        assert text.count("<!-- generated: ") == text.count("<!-- end generated -->") > 0
