"""``spark`` / ``python -m spark_pipeline``: the pipeline's command line.

    spark demo        materialize every asset on the configured pairs (the bundled sample by
                      default), in the project's Dagster instance, and say where results are
    spark pairs       list the pairs of the manifest and their partitions
    spark lineage K   table -> checkpoint -> tokenized cache -> mixture -> pair partitions
    spark upload RUN --to gs://...   upload the checkpoints a run left pending
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from spark_pipeline import settings


def _instance():
    import dagster as dg

    home = settings.default_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text((settings.PROJECT_DIR / "dagster.yaml").read_text())
    return dg.DagsterInstance.get()


def _runner(instance):
    """A function that materializes a selection (one of the named demo jobs where there is
    one, so the UI lists the runs under its name) and prints a line with the outcome."""
    import dagster as dg

    from spark_pipeline.definitions import DEMO_JOBS, defs
    from spark_pipeline.defs.monitoring import PROCESS_TAG, reclaim_dead_runs
    from spark_pipeline.liveness import this_process

    for line in reclaim_dead_runs(instance):  # an earlier `spark sweep` killed mid-trial holds the gpu pool
        print(f"note: {line}")
    tags = {"spark/source": "demo", PROCESS_TAG: json.dumps(this_process())}

    def run(selection: list[str], partition: str | None = None, run_config: dict | None = None) -> bool:
        label = ", ".join(selection) + (f" [{partition}]" if partition else "")
        t0 = time.perf_counter()
        job = DEMO_JOBS.get(tuple(selection))
        config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **(run_config or {})}
        if job:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, partition_key=partition, raise_on_error=False, tags=tags,
                run_config=config)
        else:
            result = dg.materialize(list(defs.assets), selection=selection, partition_key=partition,
                                    instance=instance, resources=defs.resources, raise_on_error=False,
                                    tags=tags, run_config=config)
        print(f"  {'ok  ' if result.success else 'FAIL'} {label} ({time.perf_counter() - t0:.1f} s)")
        if not result.success:
            for line in failure_lines(result.all_events):
                print("       " + line)
        return result.success

    return run


def _data_stages(run, instance, storage) -> int | None:
    """Pairs, the per-pair stages, evaluation sets, mixture and tokenized cache. Returns the
    number of failures, or None when not even the pairs could be read."""
    from spark_pipeline.defs.pairs import pairs_partitions

    print("pairs")
    if not run(["repo_datasheet_pairs"]):
        return None
    print("per pair: SpecMap, chunks, quality samples")
    failures = 0
    for key in instance.get_dynamic_partitions(pairs_partitions.name):
        if (storage / "pairs" / key / "pair.json").exists():
            failures += not run(["specmap_mappings", "section_chunks", "quality_samples"], key)
    print("all pairs: evaluation sets, training mixture; tokenization")
    for selection in (["eval_sets"], ["training_mixture"], ["tokenized_cache"]):
        if not run(selection):
            return failures + 1
    return failures


def cmd_sweep(args: argparse.Namespace) -> int:
    """The hyperparameter sweep on the active profile (the demo's 2 x 2 grid by default), after
    the data stages when there is no tokenized cache yet; then its analysis."""
    from spark_pipeline.sweep.settings import SweepError, SweepSettings

    try:  # a bad settings file is said before anything runs
        sweep = SweepSettings.load(None, args.config)
    except SweepError as exc:
        print(exc, file=sys.stderr)
        return 2
    instance = _instance()
    storage = settings.storage_root()
    run = _runner(instance)
    print(f"storage root : {storage}\nDagster home : {os.environ['DAGSTER_HOME']}\n")
    if not any((storage / "tokens").glob("*/.done")):
        print("no tokenized cache yet: the data stages first")
        failures = _data_stages(run, instance, storage)
        if failures is None or failures:
            return 1
    print("sweep: trials, then the analysis")
    trials = {"sweep": args.config or None, "max_trials": args.max_trials or None}
    ok = run(["sweep_trials", "sweep_analysis"], run_config={"ops": {
        "sweep_trials": {"config": trials}, "sweep_analysis": {"config": {"sweep": args.config or None}}}})
    folder = storage / "sweep" / sweep.study
    if ok and (folder / "analysis.json").exists():
        analysis = json.loads((folder / "analysis.json").read_text())
        print(f"\n{analysis['completed_runs']} completed runs, {analysis['pruned_runs']} pruned; "
              f"analysis: {folder / 'analysis.md'} (plots beside it)")
        for w in analysis["warnings"]:
            print(f"warning: {w}")
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from spark_pipeline.defs.pairs import pairs_partitions

    instance = _instance()
    storage = settings.storage_root()
    print(f"storage root : {storage}\nDagster home : {os.environ['DAGSTER_HOME']}\n"
          f"manifest     : {settings.default_manifest()}\n")
    started = time.perf_counter()
    run = _runner(instance)
    failures = _data_stages(run, instance, storage)
    if failures is None:
        return 1
    if not run(["train_hero"]):
        failures += 1

    if not failures:
        from spark_pipeline.defs.evaluation import checkpoint_partitions, discover_checkpoints

        print("evaluation: every checkpoint, then the report")
        found = discover_checkpoints(storage / "runs")
        known = set(instance.get_dynamic_partitions(checkpoint_partitions.name))
        new = [k for k in found if k not in known]
        if new:
            instance.add_dynamic_partitions(checkpoint_partitions.name, new)
        for key in found:
            failures += not run(["checkpoints", "checkpoint_eval", "code_regression"], key)
        if found and not failures:
            failures += not run(["external_baselines", "evaluation_report"])
        if found and not failures:
            print("release: the last checkpoint")
            last = max(found, key=lambda k: (k.split("--")[0], int(k.rsplit("-", 1)[-1])))
            failures += not run(["release"], last)

    print(f"\nfinished in {time.perf_counter() - started:.1f} s\n")
    print(f"{'pair':28} {'sections':>8} {'impl.':>6} {'partial':>7} {'none':>5} {'n/a':>5} {'coverage':>8}")
    for key in instance.get_dynamic_partitions(pairs_partitions.name):
        sidecar = storage / "specmap" / key / "mapping.json"
        if sidecar.exists():
            st = json.loads(sidecar.read_text())["stats"]
            print(f"{key:28} {st['sections']:>8} {st['implemented']:>6} {st['partial']:>7} "
                  f"{st['not_implemented']:>5} {st.get('not_applicable', 0):>5} {st['coverage']:>8.0%}")
    print(f"\nmapping files: {storage / 'specmap'}/<pair>/mapping.txt (+ mapping.json, status.png)")
    manifest = storage / "corpus" / "mixture" / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        ev = json.loads((storage / "corpus" / "eval" / "eval.json").read_text())
        print(f"training mixture: {m['samples']} samples, {m['characters']:,} characters, "
              f"~{m['estimated_tokens']:,} tokens in {len(m['shards'])} shard(s) at {manifest.parent}")
        print(f"evaluation sets: {ev['in_domain']} in-domain, {ev['held_out']} held-out samples; "
              f"duplicates dropped {m['duplicates']['dropped']}, contamination found "
              f"{m['contamination']['found']}, dropped {m['contamination']['dropped']}")
        spec = ev.get("spec_conditioned") or {}
        print(f"spec-conditioned split: {spec.get('items', 0)} item(s) from the held-out pair(s) "
              f"{spec.get('per_pair', {})}" + ("" if spec.get("items") else
                                               " (none: spec-conditioned completion is not evaluated)"))
    from spark_pipeline.training.runs import latest_run

    run_dir = latest_run(storage, "hero")
    result = run_dir / "result.json" if run_dir else storage / "-"
    if result.exists():
        r = json.loads(result.read_text())
        print(f"training: {r['steps']} steps, final loss {r['final_loss']:.3f}, {r['trainable_parameters']:,} trainable "
              f"parameters; checkpoint {r['final_checkpoint']}")
        print(f"lineage: {r['final_checkpoint']}/lineage.json")
    releases = sorted((storage / "releases").glob("*/README.md"), key=lambda p: p.stat().st_mtime)
    if releases:
        print(f"release: {releases[-1].parent} (model card README.md, merged/, adapter/, adapter-serving/, "
              "SHA256SUMS)")
    report = storage / "evaluation" / "report"
    if (report / "report.md").exists():
        print(f"evaluation tables: {storage / 'evaluation'}/<checkpoint>/table.md; report and plots: {report}")
        if (report / "spec_conditioned.parquet").exists():
            import pyarrow.parquet as pq

            from spark_pipeline.evaluation.series import is_latest, latest

            spec_rows = pq.read_table(report / "spec_conditioned.parquet").to_pylist()
            newest = latest(spec_rows)
            for r in sorted(spec_rows, key=lambda r: r["model"] != "base"):
                if r["category"] == "all" and (r["model"] == "base" or is_latest(r, newest)):
                    def gain(metric, r=r):
                        if r.get(f"{metric}_gain_degenerate"):
                            return f"{r[f'{metric}_gain']:+.3f} (too few items for an interval)"
                        return (f"{r[f'{metric}_gain']:+.3f} [{r[f'{metric}_gain_lo']:+.3f}, "
                                f"{r[f'{metric}_gain_hi']:+.3f}]")

                    print(f"spec-conditioned gain ({r['model'].split('--')[-1]}, {r['items']} items): token accuracy "
                          f"{gain('token_accuracy')}, identifier match {gain('ident_match')}")
        print("(the numbers come from the small demo model, trained a few steps: they show the machinery)")
    print("browse the runs: make ui, then open http://127.0.0.1:3000")
    return 1 if failures else 0


def failure_lines(events) -> list[str]:
    """One line per failed step, naming the step (the stage) and the first line of its
    error; never fails itself, whatever the event holds."""
    lines = []
    for event in events:
        if not getattr(event, "is_step_failure", False):  # run failures repeat it, without the error
            continue
        try:
            data = event.step_failure_data
        except Exception:  # noqa: BLE001 - an event of another shape: say so, never crash the report
            data = None
        error = getattr(data, "error", None)
        user = getattr(data, "user_failure_data", None)
        text = (getattr(user, "description", None) or getattr(error, "message", None) or "").strip()
        if not text and getattr(error, "cause", None) is not None:
            text = (getattr(error.cause, "message", None) or "").strip()
        stage = getattr(event, "step_key", None) or "?"
        first = text.splitlines()[0][:300] if text else "(no message; see the run in the Dagster UI)"
        lines.append(f"{stage}: {first}")
    return lines


def cmd_lineage(args: argparse.Namespace) -> int:
    """Print [release ->] table -> checkpoint -> tokenized cache -> mixture -> pair partitions."""
    from spark_pipeline.training.runs import checkpoint_folder

    storage = settings.storage_root()
    key, release = args.checkpoint, Path(args.checkpoint)
    is_release = (release / "release.json").exists()
    if is_release:  # a release folder: check its files, then follow its checkpoint
        from spark_pipeline.release.build import verify_sums

        info = json.loads((release / "release.json").read_text())
        bad = verify_sums(release)
        print(f"release            {release}  ({'every file matches SHA256SUMS' if not bad else 'CHANGED: ' + ', '.join(bad)})")
        print(f"  merged weights   {release / 'merged'}  ({info['merged']['dtype']}, "
              f"top-1 agreement {info['merged']['verification']['top1_agreement']:.2%} with base + adapter)")
        key = info["checkpoint"]
        if bad:
            return 1
    try:
        folder = checkpoint_folder(storage, key)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not (folder / "lineage.json").exists() and is_release:
        folder = release  # a release copied away from its storage carries the checkpoint's lineage.json
    if not (folder / "lineage.json").exists():
        print(f"no checkpoint {key!r} at {folder}", file=sys.stderr)
        return 2
    from spark_pipeline.records import sha256_file

    lineage = json.loads((folder / "lineage.json").read_text())
    table = storage / "evaluation" / key / "table.parquet"
    print(f"evaluation table   {table if table.exists() else '(not evaluated yet)'}")
    print(f"  lineage sha256   {sha256_file(folder / 'lineage.json')}")
    print(f"checkpoint         {folder}  (step {lineage['step']}, adapter {lineage['adapter_sha256'][:16]})")
    print(f"  config {lineage['config_hash']}, code {lineage['code_version']}, W&B run {lineage.get('wandb_run_id')}, "
          f"Dagster run {lineage.get('dagster_run_id')}")
    cache = storage / "tokens" / lineage.get("tokenized_cache", "")
    print(f"tokenized cache    {cache}  ({lineage.get('tokenizer')})")
    print(f"training mixture   {lineage.get('mixture_hash')}")
    for pair, version in sorted(lineage.get("pairs", {}).items()):
        print(f"  pair partition   {pair:28} version {version}  samples {lineage.get('quality_samples', {}).get(pair)}")
    return 0


def _registered_pairs() -> set[str] | None:
    """The pair partitions the Dagster instance at $DAGSTER_HOME knows; None without one."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or not Path(home).is_dir():
        return None
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return set(instance.get_dynamic_partitions("pairs"))


def cmd_pairs(args: argparse.Namespace) -> int:
    """The manifest's pairs, and whether each is a partition yet: Dagster refuses an unknown
    partition key before any project code runs, so this is where to look first."""
    from spark_pipeline.specmap.pairs import ManifestError, load_manifest

    try:
        pairs = load_manifest(settings.default_manifest())
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 2
    registered = _registered_pairs()
    for p in pairs:
        repo = p.repo_url or p.repo_path
        state = "" if registered is None else ("registered" if p.id in registered else "not registered")
        print(f"{p.id:28} {p.domain_category:18} {'held-out' if p.held_out else '':9} {state:15} {repo}")
    missing = [p.id for p in pairs if registered is not None and p.id not in registered]
    if missing:
        print(f"\n{len(missing)} pair(s) are not partitions yet, so materializing them is refused: "
              "materialize repo_datasheet_pairs first (dg launch --assets repo_datasheet_pairs)")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload a run's checkpoints that are not (completely) in the bucket yet: what a run
    left pending at its upload deadline. Complete uploads are skipped, never overwritten."""
    from spark_pipeline.training.gcs import CheckpointUploader, GCSError

    run_dir = Path(args.run_dir)
    folders = sorted(p for p in (run_dir / "checkpoints").glob("*-*") if (p / "trainer_state.json").exists())
    if not folders:
        print(f"no checkpoints under {run_dir / 'checkpoints'}", file=sys.stderr)
        return 2
    try:
        uploader = CheckpointUploader(args.to, delete_local=args.delete_local)
    except GCSError as exc:
        print(exc, file=sys.stderr)
        return 2
    for folder in folders:
        uploader.submit(folder)
    statuses = uploader.close(timeout=args.deadline or None)
    for st in statuses:
        print(f"{st.state:9} {st.folder} -> {st.url}" + (f"  ({st.error})" if st.error and st.state != "uploaded" else ""))
    return 0 if all(st.state == "uploaded" for st in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spark", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="materialize every asset on the configured pairs").set_defaults(fn=cmd_demo)
    sub.add_parser("pairs", help="list the manifest's pairs").set_defaults(fn=cmd_pairs)
    sw = sub.add_parser("sweep", help="run or continue the hyperparameter sweep, then analyse it")
    sw.add_argument("--config", default="", help="a YAML overlaying configs/sweep.yaml")
    sw.add_argument("--max-trials", type=int, default=0, help="stop after this many trials (0: all)")
    sw.set_defaults(fn=cmd_sweep)
    lin = sub.add_parser("lineage", help="the chain from an evaluation table back to the pair partitions")
    lin.add_argument("checkpoint", help="a checkpoint partition key, e.g. hero.20261122-093015-a3f1--checkpoint-6, "
                     "or a release folder")
    lin.set_defaults(fn=cmd_lineage)
    up = sub.add_parser("upload", help="upload a run's checkpoints that are not in the bucket yet")
    up.add_argument("run_dir", help="the run's folder, <storage>/runs/<name>/<run id>")
    up.add_argument("--to", required=True, help="the run's bucket prefix, gs://bucket/prefix/<name>/<run id>")
    up.add_argument("--delete-local", action="store_true", help="delete each local copy after its verified upload")
    up.add_argument("--deadline", type=float, default=0, help="give up after this many seconds (0: no limit)")
    up.set_defaults(fn=cmd_upload)
    args = parser.parse_args(argv)
    if args.command in ("demo", "sweep"):
        try:
            check_profile(getattr(args, "config", ""))
        except ValueError as exc:  # ConfigError and the sections' own errors
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return args.fn(args)


def check_profile(sweep_yaml: str = "") -> None:
    """Every section of the active profile, before anything runs: an unknown key, a wrong
    type or a value out of range anywhere stops the command with the key and the files."""
    from spark_pipeline.corpus.settings import CorpusSettings
    from spark_pipeline.evaluation.settings import EvalSettings
    from spark_pipeline.release.settings import ReleaseSettings
    from spark_pipeline.sweep.settings import SweepSettings
    from spark_pipeline.training.settings import TrainingSettings

    for section in (CorpusSettings, TrainingSettings, EvalSettings, ReleaseSettings):
        section.load()
    SweepSettings.load(user_yaml=sweep_yaml)


if __name__ == "__main__":
    sys.exit(main())
