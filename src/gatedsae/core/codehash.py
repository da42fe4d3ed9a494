"""Fingerprints of the code that computes a stage's numbers, so that a fix to it recomputes them.

A fingerprint hashes the syntax tree of the named modules (or of named functions in them), without
docstrings: a change to what the code does changes it; a comment, a docstring or reformatting does not.
The files are parsed, never imported, so the Snakefile can use this without loading torch. A parsed
file is remembered by its text for the life of the process: evaluate fingerprints once per SAE, and the
same text always gives the same tree.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
from pathlib import Path
from typing import Mapping, Optional, Sequence

PACKAGE = Path(__file__).resolve().parents[1]  # src/gatedsae
CHECKOUT = PACKAGE.parents[1]  # the repository: src/gatedsae → .

# What computes each stage's numbers: a module (None: all of it) or some of its functions.
METRICS_CODE: dict[str, Optional[Sequence[str]]] = {   # per-SAE evaluation results
    "evaluation/evaluate.py": None, "evaluation/reconstruction.py": None, "evaluation/spliced.py": None,
    "evaluation/lean_blocks.py": None,
    "plan/sites.py": None, "saes/checkpoints.py": ("encode_raw", "decode_raw"),
    "saes/": None,  # every architecture's module: the sae-lens encoders live on the SAE classes
}
STATISTICS_CODE: dict[str, Optional[Sequence[str]]] = {  # the readings at the levels, with their intervals
    "reporting/statistics.py": None, "evaluation/intervals.py": None, "evaluation/frontiers.py": None,
    "evaluation/seeds.py": None,
}
AGGREGATE_CODE: dict[str, Optional[Sequence[str]]] = {"reporting/tables.py": None, **STATISTICS_CODE}
GROUNDTRUTH_CODE: dict[str, Optional[Sequence[str]]] = {  # the ground-truth benchmark's data, metrics and claims
    "activations/synthetic.py": None, "evaluation/groundtruth.py": None, "reporting/groundtruth.py": None,
    "reporting/groundtruth_claims.py": None, "plan/groundtruth.py": None,
    "saes/checkpoints.py": ("encode_raw", "decode_raw"), "saes/": None}
# Each SAE's saved interpretability scores (sparse probing, absorption) and the stage's summary of them.
INTERP_SCORES_CODE: dict[str, Optional[Sequence[str]]] = {
    "evaluation/interp.py": None, "evaluation/interp_data.py": None, "evaluation/sparse_probing.py": None,
    "evaluation/absorption.py": None, "plan/sites.py": None, "saes/checkpoints.py": ("encode_raw", "decode_raw"),
    "saes/": None}
INTERP_CODE: dict[str, Optional[Sequence[str]]] = {**INTERP_SCORES_CODE, "reporting/interp.py": None,
                                                   "plan/interp.py": None}
VERDICT_CODE: dict[str, Optional[Sequence[str]]] = {
    "reporting/verdict.py": None, "reporting/claims.py": None, "reporting/convergence.py": None}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


_PARSED: dict[tuple[str, str, Optional[tuple[str, ...]]], str] = {}  # (path, text, functions) → normalized


def _normalized(path: Path, functions: Optional[Sequence[str]]) -> str:
    text = path.read_text()
    key = (str(path), text, None if functions is None else tuple(functions))
    if key not in _PARSED:
        _PARSED[key] = _parse(path, text, functions)
    return _PARSED[key]


def _parse(path: Path, text: str, functions: Optional[Sequence[str]]) -> str:
    tree = _without_docstrings(ast.parse(text, filename=str(path)))
    if functions is None:
        return ast.dump(tree)
    found = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    missing = [name for name in functions if name not in found]
    if missing:
        raise ValueError(f"{path} no longer defines {missing}: update gatedsae.core.codehash")
    return "\n".join(ast.dump(found[name]) for name in functions)


def code_fingerprint(modules: Mapping[str, Optional[Sequence[str]]], package: Path = PACKAGE) -> str:
    """A short hash of the named modules' (or functions') syntax trees, docstrings left out."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        # A folder ("saes/") stands for every module in it, so a module added there is covered too.
        paths = sorted((package / name).glob("*.py")) if name.endswith("/") else [package / name]
        if not paths:
            raise ValueError(f"{package / name} holds no modules: update gatedsae.core.codehash")
        for path in paths:
            relative = path.relative_to(package).as_posix()
            digest.update(relative.encode() + b"\0" + _normalized(path, modules[name]).encode() + b"\0")
    return digest.hexdigest()[:16]


# Written by the run itself (`dvc repro` records each stage's hashes there as it finishes), so a change
# to it says nothing about the code that ran
RUN_RECORDS = ("dvc.lock",)


def code_version(checkout: Path = CHECKOUT) -> str:
    """The checkout's commit for provenance, `-dirty` when tracked files differ from it (the run's own
    records excepted)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("describe", "--always")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      *(f":(exclude){path}" for path in RUN_RECORDS))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if changed else commit or "unknown"
