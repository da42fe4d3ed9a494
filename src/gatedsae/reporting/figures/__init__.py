"""The paper's figures from `metrics.csv`, one module per figure family; `FAMILIES` lists them all."""

from gatedsae.reporting.figures import ablations, curves, density, pareto, shrinkage

FAMILIES = {"pareto": pareto, "shrinkage": shrinkage, "ablations": ablations, "density": density, "curves": curves}


def render_all(results, out_dir):
    """Every figure of every family from `results`/metrics.csv (and curves.csv, when training curves were
    gathered); writes figures.json (files and captions) last and returns its path."""
    import json
    from pathlib import Path

    import pandas as pd

    from gatedsae.core.atomic import write_json_atomic

    results, out_dir = Path(results), Path(out_dir)
    frame = pd.read_csv(results / "metrics.csv")
    densities = json.loads((results / "densities.json").read_text())
    curves_file = results / "curves.csv"
    training_curves = pd.read_csv(curves_file) if curves_file.exists() else None
    files, captions = [], {}
    for module in FAMILIES.values():
        files += [str(path) for path in module.render(frame, out_dir, densities=densities, curves=training_curves)]
        captions |= module.CAPTIONS
    index = out_dir / "figures.json"
    write_json_atomic(index, {"files": files, "captions": {k: v for k, v in captions.items()
                                                          if any(Path(f).stem == k for f in files)}})
    return index
