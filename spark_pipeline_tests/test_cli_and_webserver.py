"""The user's two doors: the `dagster` CLI from the project root, and the web UI's GraphQL API."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from spark_pipeline.settings import PROJECT_DIR

BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ)
    env["DAGSTER_MODULE_NAME"] = "spark_pipeline.definitions"
    return env


def _dagster(*args, timeout=240):
    return subprocess.run([str(BIN / "dagster"), *args], cwd=PROJECT_DIR, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_cli_materializes_and_webserver_shows_the_graph(storage, monkeypatch, tmp_path):
    # the README's form: the venv activated, a DAGSTER_HOME that does not exist yet, the current CLI
    home = tmp_path / "fresh" / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_MODULE_NAME"}
    done = subprocess.run(["bash", "-c", f". {BIN / 'activate'} && dg launch --assets repo_datasheet_pairs"],
                          cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (home / "dagster.yaml").read_text() == (PROJECT_DIR / "dagster.yaml").read_text(), \
        "the missing DAGSTER_HOME was created with the project's instance settings"
    assert not [line for line in (done.stdout + done.stderr).splitlines()
                if "Warning" in line or "deprecat" in line.lower()], "no deprecation or supersession warning"
    assert (storage / "pairs" / "skm6_imu_i2c" / "pair.json").exists()
    mapped = _dagster("asset", "materialize", "--select", "specmap_mappings", "--partition", "cm4_startup_asm")
    assert mapped.returncode == 0, mapped.stderr[-2000:]
    assert (storage / "specmap" / "cm4_startup_asm" / "mapping.txt").exists()

    # the README's door: `make ui` (dagster dev: webserver and daemon), with the CLI's environment
    # (DAGSTER_MODULE_NAME exported, as the Makefile and the venv's activate script do)
    port = _free_port()
    log = open(Path(os.environ["DAGSTER_HOME"]) / "make_ui.log", "w+b")  # noqa: SIM115 - read after the server stops
    server = subprocess.Popen(["make", "--no-print-directory", "ui", f"UI_PORT={port}", f"VENV={BIN.parent}"],
                              cwd=PROJECT_DIR, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 150
        started = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise AssertionError("make ui did not serve the UI: " + log.read().decode()[-3000:]) from None
                time.sleep(0.5)
        print(f"make ui served the UI after {time.time() - started:.1f} s")
        nodes = _graphql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } isPartitioned "
                               "partitionKeys } }")["data"]["assetNodes"]
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {"repo_datasheet_pairs", "specmap_mappings"} <= set(by_key)
        specmap = by_key["specmap_mappings"]
        assert specmap["isPartitioned"] and [d["path"] for d in specmap["dependencyKeys"]] == [["repo_datasheet_pairs"]]
        assert "cm4_startup_asm" in specmap["partitionKeys"]
        checks = _graphql(port, '{ assetNodeOrError(assetKey: {path: ["specmap_mappings"]}) { ... on AssetNode '
                                '{ assetChecksOrError { ... on AssetChecks { checks { name } } } } } }')
        names = {c["name"] for c in checks["data"]["assetNodeOrError"]["assetChecksOrError"]["checks"]}
        assert names == {"every_section_has_status", "file_paths_exist_at_revision"}
        mats = _graphql(port, '{ assetOrError(assetKey: {path: ["specmap_mappings"]}) { ... on Asset '
                              '{ assetMaterializations(limit: 5) { partition } } } }')
        assert [m["partition"] for m in mats["data"]["assetOrError"]["assetMaterializations"]] == ["cm4_startup_asm"]
    finally:
        # make, dagster dev, its webserver, daemon and code servers: the session this test started
        stopping = time.time()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
            print(f"make ui stopped after {time.time() - stopping:.1f} s")
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def test_cli_reports_an_unknown_partition(storage):
    out = _dagster("asset", "materialize", "--select", "specmap_mappings", "--partition", "no_such_pair")
    assert out.returncode != 0
    assert "no_such_pair" in (out.stderr + out.stdout)


def test_the_demo_runs_named_jobs_each_selecting_its_step():
    """The UI lists the demo's runs under job names, not ``__ephemeral_asset_job__``."""
    from spark_pipeline.definitions import DEMO_JOBS, defs

    for selection, name in DEMO_JOBS.items():
        job = defs.resolve_job_def(name)
        assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == set(selection), name
