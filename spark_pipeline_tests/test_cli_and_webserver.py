"""The user's two doors: the `dagster` CLI from the project root, and the web UI's GraphQL API."""

import json
import os
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
def test_cli_materializes_and_webserver_shows_the_graph(storage):
    done = _dagster("asset", "materialize", "--select", "repo_datasheet_pairs")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (storage / "pairs" / "skm6_imu_i2c" / "pair.json").exists()
    mapped = _dagster("asset", "materialize", "--select", "specmap_mappings", "--partition", "cm4_startup_asm")
    assert mapped.returncode == 0, mapped.stderr[-2000:]
    assert (storage / "specmap" / "cm4_startup_asm" / "mapping.txt").exists()

    port = _free_port()
    server = subprocess.Popen([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)],
                              cwd=PROJECT_DIR, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError("webserver did not start: " + server.stderr.read().decode()[-2000:]) from None
                time.sleep(0.5)
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
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_cli_reports_an_unknown_partition(storage):
    out = _dagster("asset", "materialize", "--select", "specmap_mappings", "--partition", "no_such_pair")
    assert out.returncode != 0
    assert "no_such_pair" in (out.stderr + out.stdout)
