"""Writes the example training manifests in deploy/k8s/ from spark_pipeline/k8s.py and the
hero settings. Run it after changing either: `python deploy/render.py` (a test checks the files
are current).

The manifests name placeholders a launcher fills in: IMAGE (the GPU image), RUN_ID, CACHE_KEY
and the bucket. On the cluster `train_hero` builds the same pod itself (launcher: k8s)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_pipeline.k8s import STORAGE_MOUNT, multinode_manifests, training_pod  # noqa: E402
from spark_pipeline.training.settings import TrainingSettings  # noqa: E402

IMAGE = "REGISTRY/spark-pipeline-gpu:0.1.0"
BUCKET = "gs://BUCKET/spark/checkpoints"
RUN = f"{STORAGE_MOUNT}/runs/hero/RUN_ID"


def program_args() -> list[str]:
    return ["--run-dir", RUN, "--cache", f"{STORAGE_MOUNT}/tokens/CACHE_KEY",
            "--base-model", f"{STORAGE_MOUNT}/models/OLMo-3-1025-7B", "--settings", f"{RUN}/settings.json",
            "--lineage", f"{RUN}/lineage_input.json", "--upload", f"{BUCKET}/hero/RUN_ID", "--resume", "latest"]


def documents() -> dict[str, list[dict]]:
    settings = TrainingSettings.load("hero")
    single = ["torchrun", "--standalone", f"--nproc_per_node={settings.gpus}",
              f"--shutdown-timeout={settings.termination_grace_s}", "-m", "spark_pipeline.training", *program_args()]
    return {
        "storage.yaml": [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "spark-storage"},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "standard-rwx",
                      "resources": {"requests": {"storage": "2Ti"}}}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spark-training"}},
        ],
        "training-pod.yaml": [training_pod(settings, IMAGE, single, checkpoint_url=BUCKET)],
        "training-multinode.yaml": multinode_manifests(settings, IMAGE, 2, "hero", program_args(),
                                                       checkpoint_url=BUCKET),
    }


def render() -> dict[str, str]:
    header = "# Written by deploy/render.py from spark_pipeline/k8s.py and configs/hero.yaml; do not edit by hand.\n"
    return {name: header + yaml.safe_dump_all(docs, sort_keys=False) for name, docs in documents().items()}


if __name__ == "__main__":
    out = Path(__file__).parent / "k8s"
    out.mkdir(exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
