"""The Optuna study behind the sweep: its storage (a database, so a sweep survives a crash and
several workers can share it), the choice of the next configuration, and the loop that
trains each one at every seed.

A trial is one configuration; its runs are that configuration at each seed, and its value
is their mean objective. A trial whose runs show unstable gradients is recorded PRUNED with
the reason (the paper's optimizer deprioritised such cells). A worker that dies leaves its
trial RUNNING: on this host a dead process id marks it FAIL at once; on another host the
heartbeat does after ``grace_period`` seconds. A FAILed configuration is tried again by the
next worker; a COMPLETE or PRUNED one never is.
"""

from __future__ import annotations

import math
import os
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spark_pipeline.liveness import this_process
from spark_pipeline.sweep.settings import SweepSettings

HEARTBEAT_S = 30
GRACE_S = 180


def storage_url(storage_root: Path, instance=None) -> str:
    """``$SPARK_SWEEP_STORAGE``; else the PostgreSQL database of a Postgres-backed Dagster
    instance (schema ``spark_sweep``, so Optuna's tables stay apart from Dagster's); else
    SQLite under the storage root."""
    explicit = os.environ.get("SPARK_SWEEP_STORAGE")
    if explicit:
        return explicit
    postgres = getattr(getattr(instance, "run_storage", None), "postgres_url", None) if instance else None
    if postgres:
        return postgres_schema_url(postgres, "spark_sweep")
    folder = Path(storage_root) / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def postgres_schema_url(url: str, schema: str) -> str:
    """The same database with ``schema`` first on the search path, created if missing: Optuna
    and Dagster both keep an ``alembic_version`` table, which must not be shared."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    engine.dispose()
    return url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"


def display_url(url: str) -> str:
    """The storage URL as it may be shown and recorded (lineage, metadata): no password, no
    query (the Postgres search-path option)."""
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).set(query={}).render_as_string(hide_password=True)


def open_study(settings: SweepSettings, url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what frees a dead host's trial
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                             grace_period=GRACE_S)
    seed = settings.seeds[0]
    sampler = {"grid": lambda: optuna.samplers.GridSampler({a: v for a, v in settings.space.items()}, seed=seed),
               "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "gp": lambda: optuna.samplers.GPSampler(seed=seed)}[settings.sampler]()
    study = optuna.create_study(study_name=settings.study, storage=storage, direction="minimize", sampler=sampler,
                                load_if_exists=True)
    study.set_user_attr("space", settings.space_as_data())
    study.set_user_attr("seeds", settings.seeds)
    study.set_user_attr("objective", settings.objective)
    return study


def fail_dead_trials(study) -> list[int]:
    """Trials left RUNNING by a worker of this host whose process is gone become FAIL."""
    from optuna.trial import TrialState

    from spark_pipeline.liveness import dead_here

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if dead_here(t.user_attrs.get("worker", {})):
            study._storage.set_trial_user_attr(t._trial_id, "failed_because", "its worker died")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed.append(t.number)
    return failed


def _key(params: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in params.items()))


def next_configuration(study, settings: SweepSettings) -> dict | None:
    """Grid: the first cell with no COMPLETE, PRUNED or RUNNING trial. TPE/GP: ``{}`` (the
    sampler chooses) until ``trials`` configurations are COMPLETE or PRUNED; None when done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if settings.sampler != "grid":
        running = [t for t in trials if t.state == TrialState.RUNNING]
        return {} if len(done) + len(running) < settings.trials else None
    if any(t.state == TrialState.WAITING for t in trials):
        return {}  # a configuration enqueued by a worker that stopped before running it: run that one
    taken = {_key(t.params) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)}
    taken |= {_key(t.user_attrs.get("configuration", {})) for t in trials if t.state == TrialState.RUNNING}
    for cell in settings.cells():
        if _key(cell) not in taken:
            return cell
    return None


def suggest(trial, settings: SweepSettings) -> dict:
    params = {}
    for axis, levels in settings.space.items():
        if isinstance(levels, list):
            params[axis] = trial.suggest_categorical(axis, levels)
        elif isinstance(levels.low, int) and isinstance(levels.high, int):  # a Range
            params[axis] = trial.suggest_int(axis, levels.low, levels.high, log=levels.log)
        else:
            params[axis] = trial.suggest_float(axis, float(levels.low), float(levels.high), log=levels.log)
    return params


@dataclass
class Outcome:
    """A configuration's runs (one per seed), each a :func:`summarize` dict."""
    runs: list[dict] = field(default_factory=list)


def unstable(run: dict, prune) -> str:
    """Why a run counts as unstable under the prune rules (:class:`~.settings.Prune`; '' when
    it does not)."""
    if prune.non_finite and (run.get("non_finite") or run.get("diverged")):
        return f"seed {run['seed']}: " + ("diverged" if run.get("diverged") else f"{run['non_finite']} non-finite losses")
    limit = prune.max_grad_norm_spikes
    if limit is not None and (run.get("grad_norm_spikes") or 0) > limit:
        return f"seed {run['seed']}: {run['grad_norm_spikes']} grad-norm spikes (more than {limit})"
    return ""


def run_study(study, settings: SweepSettings, train: Callable[[dict, int, int], dict], max_trials: int = 0,
              log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> list[int]:
    """Trains configurations until the study is done or ``max_trials`` were run by this call.
    ``train(params, seed, trial_number)`` runs one seed and returns its summary. Returns the
    numbers of the trials this call finished."""
    import optuna

    finished: list[int] = []
    while not max_trials or len(finished) < max_trials:
        dead = fail_dead_trials(study)
        if dead:
            (warn or log)(f"trials {dead} were left running by a worker that died: marked FAIL, their configurations run again")
        params = next_configuration(study, settings)
        if params is None:
            break
        if params:
            study.enqueue_trial(params, user_attrs={"configuration": params})

        def objective(trial):
            finished.append(trial.number)
            trial.set_user_attr("worker", this_process())
            chosen = suggest(trial, settings)
            trial.set_user_attr("configuration", chosen)
            runs = []
            for seed in settings.seeds:
                run = train(chosen, seed, trial.number)
                runs.append(run)
                trial.set_user_attr("runs", runs)
                reason = unstable(run, settings.prune)
                if reason:
                    trial.set_user_attr("pruned_reason", reason)
                    log(f"trial {trial.number} {chosen}: pruned ({reason})")
                    raise optuna.TrialPruned(reason)
            values = [r[settings.objective] for r in runs]
            if not all(isinstance(v, float) and math.isfinite(v) for v in values):
                raise optuna.TrialPruned(f"objective not finite: {values}")
            value = statistics.fmean(values)
            log(f"trial {trial.number} {chosen}: {settings.objective} {value:.4f} over seeds {settings.seeds}")
            return value

        study.optimize(objective, n_trials=1, catch=())
    return finished


def summarize(steps: list[dict], settings: SweepSettings, seed: int, result: dict | None = None) -> dict:
    """One run's numbers from its per-step metrics (Table 7's and Table 9's columns): initial
    loss (at ``init_loss_step``), final loss (mean of the last ``objective_window`` steps),
    minimum, reduction, gradient norms before clipping, and the health monitor's spikes
    recounted over the whole run with its own rule."""
    from spark_pipeline.training.health import HealthMonitor

    steps = sorted(steps, key=lambda m: m["step"])
    losses = [m["train/loss"] for m in steps]
    grads = [m.get("train/grad_norm", m.get("train/grad_norm_post_clip")) for m in steps]
    finite = [v for v in losses if isinstance(v, float) and math.isfinite(v)]
    monitor = HealthMonitor()
    kinds: dict[str, int] = {}
    for m, loss, grad in zip(steps, losses, grads, strict=True):
        for event in monitor.check(m["step"], loss, grad if grad is not None else 0.0)["events"]:
            kinds[event["kind"]] = kinds.get(event["kind"], 0) + 1
    init = next((m["train/loss"] for m in steps if m["step"] >= settings.init_loss_step), losses[0] if losses else None)
    window = finite[-settings.objective_window:]
    final = statistics.fmean(window) if window else float("nan")
    finite_grads = [g for g in grads if g is not None and math.isfinite(g)]
    result = result or {}
    return {"seed": seed, "steps": len(steps), "init_loss": init, "final_loss": final,
            "min_loss": min(finite) if finite else float("nan"),
            "reduction": (1 - final / init) if init and math.isfinite(final) else float("nan"),
            "peak_grad_norm": max(finite_grads) if finite_grads else None,
            "mean_grad_norm": statistics.fmean(finite_grads) if finite_grads else None,
            "grad_norm_spikes": kinds.get("grad_norm_spike", 0), "loss_spikes": kinds.get("loss_spike", 0),
            "non_finite": kinds.get("non_finite", 0), "diverged": result.get("exit") == "diverged",
            "tokens_per_sec": statistics.median([m["train/throughput_tokens_per_sec"] for m in steps])
            if steps else None, "losses": losses}
