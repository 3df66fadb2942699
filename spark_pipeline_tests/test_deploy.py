"""deploy/: the manifests and the training pod spec against the Kubernetes API schema (offline,
kubernetes-validate), the pod Pipes' Kubernetes client would submit, the instance config and
the Helm values' key settings, and the image's pins against pyproject.toml."""

import re
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from spark_pipeline.k8s import GRACE_MARGIN_S, multinode_manifests, training_pod
from spark_pipeline.settings import PROJECT_DIR
from spark_pipeline.training.settings import TrainingSettings

DEPLOY = PROJECT_DIR / "deploy"
K8S_VERSION = "1.30.0"


def _validate(document: dict) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)  # raises on any unknown or wrong field


def _render():
    sys.path.insert(0, str(DEPLOY))
    try:
        import render
    finally:
        sys.path.remove(str(DEPLOY))
    return render


@pytest.fixture(scope="module")
def hero():
    return TrainingSettings.load("hero")


def test_every_manifest_is_valid_and_current():
    render = _render()
    rendered = render.render()
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert {f.name for f in files} == set(rendered)
    for f in files:
        assert f.read_text() == rendered[f.name], f"{f.name} is stale: run python deploy/render.py"
        for document in yaml.safe_load_all(f.read_text()):
            _validate(document)


def test_training_pod_gpus_shm_grace_and_storage(hero):
    pod = training_pod(hero, "img:1", ["torchrun", "--standalone"], checkpoint_url="gs://b/p")
    _validate(pod)
    spec = pod["spec"]
    assert spec["terminationGracePeriodSeconds"] == hero.termination_grace_s + GRACE_MARGIN_S == 360
    assert spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == hero.gpus == 8
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "SPARK_CHECKPOINT_URL", "value": "gs://b/p"} in container["env"]
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail: a misspelt field is refused
        _validate({**pod, "spec": {**spec, "terminationGracePeriodSecond": 1}})


def test_multinode_job_rendezvous_and_backoff(hero):
    service, job = multinode_manifests(hero, "img:1", 4, "hero", ["--run-dir", "/spark/runs/hero/x"])
    _validate(service)
    _validate(job)
    assert service["spec"]["clusterIP"] == "None"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    script = pod["containers"][0]["command"][-1]
    assert "--nnodes=4" in script and "--nproc_per_node=8" in script and "--node-rank=$JOB_COMPLETION_INDEX" in script
    assert f"--rdzv-endpoint=spark-train-hero-0.{service['metadata']['name']}:29500" in script
    assert f"--shutdown-timeout={hero.termination_grace_s}" in script
    assert pod["terminationGracePeriodSeconds"] == hero.termination_grace_s + GRACE_MARGIN_S


def test_the_pod_pipes_would_submit_for_train_hero(hero, monkeypatch):
    """train_hero with SPARK_TRAIN_LAUNCHER=k8s: the arguments it hands to PipesK8sClient.run,
    merged into a pod by dagster-k8s's own builder, are a valid Pod with the GPU settings."""
    from dagster_k8s.pipes import build_pod_body

    from spark_pipeline.training.launch import k8s_launch, torchrun_command

    cmd = torchrun_command(8, Path("/spark/runs/hero/r"), Path("/spark/tokens/k"), Path("/spark/models/m"),
                           Path("/spark/runs/hero/r/settings.json"), Path("/spark/runs/hero/r/lineage_input.json"),
                           grace_s=hero.termination_grace_s)
    monkeypatch.setenv("SPARK_TRAIN_IMAGE", "REGISTRY/spark-pipeline-gpu:0.1.0")
    launch = k8s_launch(hero, cmd, "gs://b/p", {"WANDB_SILENT": "true"})
    assert launch["command"][:2] == ["torchrun", "--standalone"], "no path of the launching machine in the pod"
    body = build_pod_body("spark-train", launch["image"], launch["command"], launch["env"], None,
                          launch["base_pod_spec"])
    document = body.to_dict() if hasattr(body, "to_dict") else body
    _validate({"apiVersion": "v1", "kind": "Pod", **{k: v for k, v in _camel(document).items()
                                                     if k not in ("apiVersion", "kind")}})
    spec = _camel(document)["spec"]
    assert spec["terminationGracePeriodSeconds"] == 360
    assert str(spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == "8"
    assert spec["containers"][0]["image"] == "REGISTRY/spark-pipeline-gpu:0.1.0"


def _camel(value):
    """The kubernetes client's snake_case dicts as the API's camelCase, dropping unset fields."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is None:
                continue
            if k in ("limits", "requests", "node_selector", "labels", "annotations"):  # free-form maps
                out[_camel_key(k)] = v
            else:
                out[_camel_key(k)] = _camel(v)
        return out
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    if "/" in key or "." in key:
        return key
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def test_instance_config_and_helm_values(monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["compute_logs"]["class"] == "GCSComputeLogManager"
    for var in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB", "SPARK_IMAGE",
                "SPARK_LOG_BUCKET"):
        monkeypatch.setenv(var, "x")
    checked = process_config(dagster_instance_config_schema(), config)  # Dagster's own instance schema
    assert checked.success, [e.message for e in checked.errors]

    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["jobSpecConfig"]["backoffLimit"] == 0
    assert values["computeLogManager"]["type"] == "GCSComputeLogManager"
    assert values["dagsterDaemon"]["enabled"] is True
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] and config["run_monitoring"]["enabled"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == config["run_monitoring"]["free_slots_after_run_end_seconds"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "spark_pipeline.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["SPARK_TRAIN_LAUNCHER"] == "k8s" and env["SPARK_PROFILE"] == "hero"


def test_the_image_pins_what_pyproject_pins():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pyproject = (PROJECT_DIR / "pyproject.toml").read_text()
    torch = re.search(r'"torch==([\d.]+)"', pyproject).group(1)
    assert f'"torch=={torch}"' in dockerfile
    dagster = re.search(r'"dagster==(1\.13\.\d+)"', dockerfile).group(1)
    assert '"dagster>=1.13,<1.14"' in pyproject and dagster.startswith("1.13.")
    for lib in ("dagster-postgres", "dagster-k8s", "dagster-gcp"):
        assert re.search(rf'"{lib}==0\.29\.\d+"', dockerfile), lib
    assert "VARIANT" in dockerfile and "gpu" in dockerfile
