"""The last stage: from an evaluated checkpoint to what a user publishes and serves. A
release folder holds a generated model card, the merged weights (a plain transformers
folder), the adapter as trained, an adapter a serving engine accepts, the checkpoint's
lineage, and the sha256 of every file."""
