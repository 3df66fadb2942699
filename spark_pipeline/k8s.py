"""Kubernetes objects for training on a cluster, as plain dicts (no cluster needed to build
them; `deploy/render.py` writes them out, `spark_pipeline_tests/test_deploy.py` checks them
against the Kubernetes API schema).

* ``training_pod_spec``: the pod that runs ``torchrun`` for one node — what ``train_hero``
  hands to Dagster Pipes' Kubernetes client (``base_pod_spec``) when ``launcher: k8s``.
* ``multinode_manifests``: a headless Service and an Indexed Job for training across several
  nodes, torchrun's c10d rendezvous on pod 0.

The numbers come from the training settings (``configs/hero.yaml``): GPUs per node, and the
grace period. A scheduler's SIGTERM reaches torchrun, which gives its workers
``termination_grace_s`` to write the emergency checkpoint (``--shutdown-timeout``); the pod
is killed ``terminationGracePeriodSeconds`` after the SIGTERM, so that is the grace period
plus ``GRACE_MARGIN_S`` for torchrun's own exit and the last log lines.
"""

from __future__ import annotations

from spark_pipeline.training.settings import TrainingSettings

GRACE_MARGIN_S = 60
STORAGE_MOUNT = "/spark"
RDZV_PORT = 29500


def _env(checkpoint_url: str, profile: str) -> list[dict]:
    env = [{"name": "SPARK_STORAGE", "value": STORAGE_MOUNT}, {"name": "SPARK_PROFILE", "value": profile},
           {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key",
                                                                    "optional": True}}}]
    if checkpoint_url:
        env.append({"name": "SPARK_CHECKPOINT_URL", "value": checkpoint_url})
    return env


def _container(image: str, command: list[str], gpus: int, checkpoint_url: str, profile: str,
               extra_env: list[dict] | None = None) -> dict:
    return {
        "name": "torchrun",
        "image": image,
        "command": list(command),
        "env": _env(checkpoint_url, profile) + (extra_env or []),
        # 8 x H100 nodes: about 200 GB of host memory per node is what a 7B LoRA run with
        # data loading and checkpoint writing needs with room; the CPUs feed the GPUs.
        "resources": {"limits": {"nvidia.com/gpu": gpus, "memory": f"{25 * gpus}Gi", "cpu": str(8 * gpus)},
                      "requests": {"nvidia.com/gpu": gpus, "memory": f"{20 * gpus}Gi", "cpu": str(6 * gpus)}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "storage", "mountPath": STORAGE_MOUNT}],
    }


def _pod_spec(settings: TrainingSettings, container: dict, storage_claim: str, service_account: str,
              gpus: int) -> dict:
    return {
        "serviceAccountName": service_account,
        "restartPolicy": "Never",
        # torchrun's --shutdown-timeout (the emergency save) plus a margin: see the module doc
        "terminationGracePeriodSeconds": settings.termination_grace_s + GRACE_MARGIN_S,
        "containers": [container],
        "volumes": [
            # NCCL and the data loaders share memory through /dev/shm; the default 64 MiB is far too small
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{8 * gpus}Gi"}},
            {"name": "storage", "persistentVolumeClaim": {"claimName": storage_claim}},
        ],
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def training_pod_spec(settings: TrainingSettings, image: str, command: list[str], *, gpus: int | None = None,
                      storage_claim: str = "spark-storage", checkpoint_url: str = "", profile: str = "hero",
                      service_account: str = "spark-training") -> dict:
    """The ``spec`` of the single-node training pod (``base_pod_spec`` for Pipes' Kubernetes client)."""
    gpus = gpus or settings.gpus
    return _pod_spec(settings, _container(image, command, gpus, checkpoint_url, profile), storage_claim,
                     service_account, gpus)


def training_pod(settings: TrainingSettings, image: str, command: list[str], name: str = "spark-train-hero",
                 **kwargs) -> dict:
    """The whole Pod object (for ``kubectl apply`` and the schema check)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "spark-pipeline",
                                                  "app.kubernetes.io/component": "training"}},
            "spec": training_pod_spec(settings, image, command, **kwargs)}


def torchrun_multinode_command(nnodes: int, nproc_per_node: int, job: str, service: str, grace_s: int,
                               program_args: list[str]) -> list[str]:
    """torchrun across ``nnodes`` pods of an Indexed Job: each pod's rank is its completion
    index, the c10d rendezvous runs on pod 0, reached through the headless service."""
    script = ("exec torchrun --nnodes={nnodes} --nproc_per_node={nproc} --node-rank=$JOB_COMPLETION_INDEX "
              "--rdzv-backend=c10d --rdzv-endpoint={job}-0.{service}:{port} --rdzv-id={job} "
              "--shutdown-timeout={grace} -m spark_pipeline.training {args}").format(
        nnodes=nnodes, nproc=nproc_per_node, job=job, service=service, port=RDZV_PORT, grace=int(grace_s),
        args=" ".join(program_args))
    return ["/bin/sh", "-c", script]


def multinode_manifests(settings: TrainingSettings, image: str, nnodes: int, run_name: str, program_args: list[str],
                        *, nproc_per_node: int | None = None, storage_claim: str = "spark-storage",
                        checkpoint_url: str = "", profile: str = "hero",
                        service_account: str = "spark-training") -> list[dict]:
    """A headless Service and an Indexed Job of ``nnodes`` pods training together. A failed
    pod fails the Job (``backoffLimit: 0``): training resumes from the latest checkpoint with
    a new Job (``--resume latest``), not by restarting one rank alone."""
    gpus = nproc_per_node or settings.gpus
    job, service = f"spark-train-{run_name}", f"spark-train-{run_name}-rdzv"
    labels = {"app.kubernetes.io/name": "spark-pipeline", "app.kubernetes.io/component": "training",
              "spark/run": run_name}
    command = torchrun_multinode_command(nnodes, gpus, job, service, settings.termination_grace_s, program_args)
    container = _container(image, command, gpus, checkpoint_url, profile)
    container["ports"] = [{"name": "rdzv", "containerPort": RDZV_PORT}]
    spec = _pod_spec(settings, container, storage_claim, service_account, gpus)
    spec["subdomain"] = service  # pods resolve as <job>-<index>.<service>
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": service, "labels": labels},
         "spec": {"clusterIP": "None", "selector": {"job-name": job},
                  "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT}]}},
        {"apiVersion": "batch/v1", "kind": "Job",
         "metadata": {"name": job, "labels": labels},
         "spec": {"completionMode": "Indexed", "completions": nnodes, "parallelism": nnodes, "backoffLimit": 0,
                  "template": {"metadata": {"labels": labels}, "spec": spec}}},
    ]
