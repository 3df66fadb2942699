#!/usr/bin/env bash
# Creates the project's virtual environment and installs everything the pipeline needs.
# Idempotent: a second run with nothing changed does nothing. Used by `make demo` / `make test`.
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.spark-installed"
TORCH_VERSION="2.13.0"

# Universal Ctags (SpecMap M3) comes from the system's packages.
if ! ctags --version 2>/dev/null | grep -q "Universal Ctags"; then
    echo "setup: installing Universal Ctags"
    if [ "$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq universal-ctags >/dev/null
    elif command -v brew >/dev/null; then
        brew install universal-ctags
    else
        echo "setup: please install Universal Ctags (https://ctags.io) and re-run" >&2
        exit 1
    fi
fi

# PostgreSQL (Debian's package): the tests run the cluster's Dagster instance on a real server.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    echo "setup: installing PostgreSQL"
    if [ "$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null
    else
        echo "setup: PostgreSQL not found; test_postgres_instance.py will be skipped (install it to run it)" >&2
    fi
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel >/dev/null 2>&1 || true

# PyTorch first. On a machine without an NVIDIA GPU take the CPU build: from PyTorch's CPU
# index when it can be reached (torch alone; its dependencies come from PyPI below), else as
# pip is configured (a local wheelhouse of the CPU build, as on this project's CI machines).
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: installing torch $TORCH_VERSION (CUDA)"
        $PIP install -q "torch==$TORCH_VERSION"
    elif "$VENV/bin/python" -c "import socket; socket.create_connection(('download.pytorch.org', 443), timeout=3)" 2>/dev/null; then
        echo "setup: installing torch $TORCH_VERSION (CPU build, PyTorch's CPU index)"
        $PIP install -q --no-deps "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
    else
        echo "setup: installing torch $TORCH_VERSION (PyTorch's CPU index is out of reach; using pip's configuration)"
        $PIP install -q "torch==$TORCH_VERSION"
        "$VENV/bin/python" -c "import torch; v = torch.__version__; print('setup: torch', v, '' if '+cpu' in v else '(not the CPU build: expect large CUDA packages)')"
    fi
fi

echo "setup: installing spark-pipeline and its dependencies (a few minutes the first time)"
$PIP install -q -e ".[dev]"

# After `. .venv/bin/activate`, plain `dagster asset materialize --select X` finds the code
# location and the project's instance, as under make.
# A DAGSTER_HOME that does not exist yet is created with the project's dagster.yaml.
if ! grep -q "spark-pipeline activate v2" "$VENV/bin/activate"; then
    ROOT="$(pwd)"
    cat >> "$VENV/bin/activate" <<ACT
# spark-pipeline activate v2: the code location and the local instance
export DAGSTER_MODULE_NAME=spark_pipeline.definitions
export DAGSTER_HOME="\${DAGSTER_HOME:-$ROOT/.dagster_home}"
mkdir -p "\$DAGSTER_HOME" && { [ -f "\$DAGSTER_HOME/dagster.yaml" ] || cp "$ROOT/dagster.yaml" "\$DAGSTER_HOME/dagster.yaml"; }
ACT
fi
touch "$STAMP"
echo "setup: done"
