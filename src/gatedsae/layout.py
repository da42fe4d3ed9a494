"""File names shared by the stages and the Snakefile (kept free of heavy imports)."""

MODEL_MARKER = "prepared.json"    # written last by prepare_model: the model loads offline
MANIFEST = "manifest.json"        # written last by each stage: its output is complete
STORE_PROGRESS = "progress.json"  # the activation writer's journal (resume point)
DOCUMENTS = "documents.jsonl"
