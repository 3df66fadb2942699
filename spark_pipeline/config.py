"""Configuration profiles: ``hero`` (the paper's production values) and ``demo`` (the
embedded default), YAML files in ``configs/``. ``demo`` overlays ``hero``; a user's own
profile is a path to a YAML file that overlays ``hero`` the same way.

The active profile is ``$SPARK_PROFILE`` (default ``demo``).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import yaml

from spark_pipeline.settings import CONFIG_DIR

PROFILE_ENV = "SPARK_PROFILE"


def _merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=8)
def _load(profile: str) -> dict:
    hero = yaml.safe_load((CONFIG_DIR / "hero.yaml").read_text())
    if profile == "hero":
        return hero
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.exists():
        path = Path(profile).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"configuration profile {profile!r}: neither {CONFIG_DIR / (profile + '.yaml')} "
                                f"nor a file {path} exists")
    return _merge(hero, yaml.safe_load(path.read_text()) or {})


def profile_files(profile: str | None = None) -> list[Path]:
    """The YAML files a profile is read from (``hero.yaml`` first, then the overlay)."""
    profile = profile or active_profile()
    files = [CONFIG_DIR / "hero.yaml"]
    if profile != "hero":
        path = CONFIG_DIR / f"{profile}.yaml"
        files.append(path if path.exists() else Path(profile).expanduser())
    return files


def active_profile() -> str:
    return os.environ.get(PROFILE_ENV, "demo")


def load_config(profile: str | None = None) -> dict:
    """The merged configuration of a profile (a fresh copy the caller may change)."""
    return copy.deepcopy(_load(profile or active_profile()))
