"""The paper's figures from `metrics.csv`, one module per figure family; `FAMILIES` lists them all."""

from gatedsae.reporting.figures import ablations, density, pareto, ratio, shrinkage, training_curves

FAMILIES = {"pareto": pareto, "ratio": ratio, "shrinkage": shrinkage, "ablations": ablations, "density": density,
            "training_curves": training_curves}
# The order of figures.json and of the report: the paper's figures in the paper's order, then the others.
PAPER_ORDER = ("fig1_loss_recovered_vs_l0", "gamma_vs_l0", "fig8_ablations", "fig9_rescale_shift",
               "l0_ratio_vs_loss_recovered", "delta_lm_loss_vs_l0", "fvu_vs_l0", "successors_pareto", "feature_density",
               "training_curves")


def in_paper_order(files: list[str]) -> list[str]:
    from pathlib import Path

    rank = {stem: index for index, stem in enumerate(PAPER_ORDER)}
    return sorted(files, key=lambda f: (rank.get(Path(f).stem, len(rank)), Path(f).stem, Path(f).suffix))


def render_all(results, out_dir, others=((), {})):
    """Every figure of every family from `results`/metrics.csv (each SAE configuration at the mean of its
    training seeds), with the readings at the levels, and curves.csv when training curves were gathered,
    then `others` (files and captions: the other stages' figures, `stage_figures`); writes figures.json
    (files and captions) last and returns its path."""
    import json
    from pathlib import Path

    import pandas as pd

    from gatedsae.core.atomic import write_json_atomic
    from gatedsae.core.sealed import REBUILD, read_json

    from gatedsae.reporting.tables import seed_means

    results, out_dir = Path(results), Path(out_dir)
    frame = seed_means(pd.read_csv(results / "metrics.csv"))  # a configuration's point: the mean of its seeds
    densities = read_json(results / "densities.json", REBUILD)
    curves_file = results / "curves.csv"
    curves = pd.read_csv(curves_file) if curves_file.exists() else None
    # A reading the aggregate had nothing for (no ratio curve at a single site) is an empty file: none.
    readings = {name: pd.read_csv(results / f"{name}.csv") if _has_rows(results / f"{name}.csv") else None
                for name in ("ratio_curve", "headline")}
    files, captions = [], {}
    for module in FAMILIES.values():
        files += [str(path) for path in module.render(frame, out_dir, densities=densities, curves=curves,
                                                      **readings)]
        captions |= module.CAPTIONS
    files = in_paper_order(files) + [str(path) for path in others[0]]
    captions |= others[1]
    index = out_dir / "figures.json"
    stale = [Path(f) for f in _listed(index) if f not in files]
    write_json_atomic(index, {"files": files, "captions": {k: v for k, v in captions.items()
                                                          if any(Path(f).stem == k for f in files)}})
    for path in stale:  # drawn by an earlier run from SAEs this one no longer has: gone with them
        path.unlink(missing_ok=True)
    return index


def stage_figures(config) -> tuple[list[str], dict[str, str]]:
    """The figures other stages draw, for figures.json and the report: the ground-truth benchmark's (drawn
    by its stage) and sparse probing against L0 (drawn here from the interp stage's rows), where the
    experiment runs them."""
    from pathlib import Path

    import pandas as pd

    from gatedsae.plan import groundtruth, interp
    from gatedsae.reporting.figures import groundtruth as groundtruth_figures
    from gatedsae.reporting.figures import interp as interp_figures

    files, captions = [], {}
    if groundtruth.runs(config):
        files += [str(path) for stem in groundtruth.FIGURES.values() for suffix in ("png", "pdf")
                  if (path := groundtruth.figures_dir(config) / f"{stem}.{suffix}").exists()]
        captions |= groundtruth_figures.CAPTIONS
    rows = Path(interp.outputs(config)["rows"])
    if interp.runs(config) and rows.exists():
        files += [str(path) for path in interp_figures.render(pd.read_csv(rows), interp.figures_dir(config))]
        captions |= interp_figures.CAPTIONS
    return files, captions


def _has_rows(path) -> bool:
    return path.exists() and bool(path.read_text().strip())


def _listed(index) -> list[str]:
    """The files an earlier run's figures.json lists (none if it is missing or unreadable)."""
    import json

    try:
        return list(json.loads(index.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
