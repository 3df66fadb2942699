"""Where things live: the storage root, the Dagster home, the bundled sample.

Every artifact of the pipeline lives under one storage root, named by the environment
variable ``SPARK_STORAGE``. Without it, the root is ``.spark_storage/`` inside the checkout
(ignored by git), so the embedded default works offline with no setting at all.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
SAMPLE_DIR = PACKAGE_DIR / "sample"
SAMPLE_MANIFEST = SAMPLE_DIR / "pairs.yaml"
CONFIG_DIR = PACKAGE_DIR / "configs"

STORAGE_ENV = "SPARK_STORAGE"
MANIFEST_ENV = "SPARK_PAIRS_MANIFEST"


def storage_root() -> Path:
    """The storage root: ``$SPARK_STORAGE`` or ``<checkout>/.spark_storage``."""
    value = os.environ.get(STORAGE_ENV)
    root = Path(value).expanduser() if value else PROJECT_DIR / ".spark_storage"
    return root.resolve()


def default_manifest() -> Path:
    """The pairs manifest: ``$SPARK_PAIRS_MANIFEST`` or the bundled sample's."""
    value = os.environ.get(MANIFEST_ENV)
    return Path(value).expanduser().resolve() if value else SAMPLE_MANIFEST


def default_dagster_home() -> Path:
    """``$DAGSTER_HOME`` or ``<checkout>/.dagster_home`` (the Makefile exports the same)."""
    value = os.environ.get("DAGSTER_HOME")
    return Path(value).expanduser().resolve() if value else PROJECT_DIR / ".dagster_home"
