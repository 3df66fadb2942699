"""Shared fixtures: a private storage root and Dagster home per test, sample pairs, git repos."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from spark_pipeline.settings import SAMPLE_DIR


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own storage root and Dagster home; nothing leaks into the checkout."""
    storage = tmp_path / "storage"
    home = tmp_path / "dagster_home"
    storage.mkdir()
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("SPARK_STORAGE", str(storage))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("SPARK_PAIRS_MANIFEST", raising=False)
    return storage


@pytest.fixture
def storage(isolated_env) -> Path:
    return isolated_env


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_git_repo(src: Path, dest: Path) -> tuple[Path, str]:
    """A git repository holding a copy of ``src``; returns (path, commit)."""
    shutil.copytree(src, dest)
    git("init", "-q", "-b", "main", cwd=dest)
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=dest)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial", cwd=dest)
    return dest, git("rev-parse", "HEAD", cwd=dest)


def write_manifest(path: Path, pairs: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"pairs": pairs}, sort_keys=False))
    return path


def sample_entry(pair_id: str = "skm6_imu_i2c", **overrides) -> dict:
    """A manifest entry pointing at one of the bundled sample pairs (absolute paths)."""
    data = yaml.safe_load((SAMPLE_DIR / "pairs.yaml").read_text())
    entry = next(p for p in data["pairs"] if p["id"] == pair_id)
    entry = dict(entry)
    entry["repository"] = {"path": str(SAMPLE_DIR / entry["repository"]["path"])}
    entry["datasheets"] = [str(SAMPLE_DIR / d) for d in entry["datasheets"]]
    entry.update(overrides)
    return entry


def dagster_resources(storage: Path, profile: str = "demo") -> dict:
    """Every resource the definitions need, pointed at a test's storage root."""
    import dagster as dg

    from spark_pipeline.defs.resources import SparkConfig, SparkStorage, SpecMapJudge

    return {"storage": SparkStorage(root=str(storage)), "judge": SpecMapJudge(),
            "spark_config": SparkConfig(profile=profile), "pipes_subprocess_client": dg.PipesSubprocessClient()}
