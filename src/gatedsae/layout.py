"""File names shared by the stages and the Snakefile (kept free of heavy imports)."""

MODEL_MARKER = "prepared.json"    # written last by prepare_model: the model loads offline
MANIFEST = "manifest.json"        # written last by each stage: its output is complete
STORE_PROGRESS = "progress.json"  # the activation writer's journal (resume point)
DOCUMENTS = "documents.jsonl"

# What the aggregate stage writes under the experiment's results folder, by key.
AGGREGATE_OUTPUTS = {"metrics": "metrics.csv", "pareto": "pareto.csv", "headline": "headline.csv",
                     "comparisons": "comparisons.csv", "summary": "summary.json", "densities": "densities.json",
                     "markdown": "tables/metrics.md", "latex": "tables/metrics.tex"}
VERDICT_OUTPUTS = {"verdict_json": "verdict.json", "verdict_markdown": "verdict.md"}  # what the verdict stage writes there
