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

from spark_pipeline.schema import ConfigError, Strict, check
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


class Profile(Strict):
    """The sections of a profile; each is checked whole by its own settings model (corpus,
    training, evaluation, release: their ``load``; the sweep: :mod:`spark_pipeline.sweep.settings`)."""

    corpus: dict
    training: dict
    evaluation: dict
    release: dict = {}
    sweep: dict = {}


def _load(profile: str) -> dict:
    """The checked profile, read again whenever one of its files changed (a code server that
    stays up sees an edited profile)."""
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else (str(p), 0, 0)
                  for p in profile_files(profile))
    return _load_files(profile, stamp)


@functools.lru_cache(maxsize=8)
def _load_files(profile: str, stamp: tuple) -> dict:
    hero = yaml.safe_load((CONFIG_DIR / "hero.yaml").read_text())
    if profile != "hero":
        path = CONFIG_DIR / f"{profile}.yaml"
        if not path.exists():
            path = Path(profile).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration profile {profile!r} (${PROFILE_ENV}): neither "
                              f"{CONFIG_DIR / (profile + '.yaml')} nor a file {path} exists; the profiles here are "
                              f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml') if p.stem != 'sweep'))}")
        try:
            overlay = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration profile {path} is not valid YAML: {exc}") from None
        if not isinstance(overlay, dict):
            raise ConfigError(f"configuration profile {path} must be a mapping of sections")
        hero = _merge(hero, overlay)
    check(Profile, hero, "configuration", where(profile))
    return hero


def profile_files(profile: str | None = None) -> list[Path]:
    """The YAML files a profile is read from (``hero.yaml`` first, then the overlay)."""
    profile = profile or active_profile()
    files = [CONFIG_DIR / "hero.yaml"]
    if profile != "hero":
        path = CONFIG_DIR / f"{profile}.yaml"
        files.append(path if path.exists() else Path(profile).expanduser())
    return files


def where(profile: str | None = None) -> str:
    """The files a profile is read from, for a message: ``configs/hero.yaml over my.yaml``."""
    return " over ".join(str(p) for p in profile_files(profile))


def active_profile() -> str:
    return os.environ.get(PROFILE_ENV, "demo")


def load_config(profile: str | None = None) -> dict:
    """The merged configuration of a profile (a fresh copy the caller may change)."""
    return copy.deepcopy(_load(profile or active_profile()))


RESOLVED_FILE = "config.json"


def write_resolved(folder: Path, profile: str | None = None) -> Path:
    """The configuration a stage ran with, next to its outputs: the profile's name, the files
    it was read from, and every section as checked and merged."""
    from spark_pipeline.records import atomic_write_json

    profile = profile or active_profile()
    path = Path(folder) / RESOLVED_FILE
    atomic_write_json(path, {"profile": profile, "files": [str(p) for p in profile_files(profile)],
                             "config": load_config(profile)})
    return path
