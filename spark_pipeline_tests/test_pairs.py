from pathlib import Path

import pytest

from spark_pipeline.settings import SAMPLE_DIR, SAMPLE_MANIFEST
from spark_pipeline.specmap.pairs import (
    DOMAIN_CATEGORIES,
    ManifestError,
    PairError,
    files_at_revision,
    load_manifest,
    load_resolved,
    prepare_pairs,
    resolve_pair,
    tree_hash,
)
from spark_pipeline_tests.conftest import git, make_git_repo, sample_entry, write_manifest


def test_sample_manifest_meets_the_brief():
    pairs = load_manifest(SAMPLE_MANIFEST)
    assert len(pairs) >= 4
    assert len({p.domain_category for p in pairs}) >= 4
    assert all(p.domain_category in DOMAIN_CATEGORIES for p in pairs)
    kinds = {d.kind for p in pairs for d in p.datasheets}
    assert {"pdf", "svd"} <= kinds
    assert sum(p.held_out for p in pairs) == 1
    assert list((SAMPLE_DIR / "general_c").glob("*.c")), "general C pool for later mixtures"


def test_manifest_reports_every_problem_naming_pair_and_field(tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", [
        sample_entry(id="Bad Id"),
        sample_entry(id="dup"),
        sample_entry(id="dup"),
        sample_entry(id="cat", domain_category="toasters"),
        sample_entry(id="sheet", datasheets=[str(tmp_path / "missing.pdf")]),
        sample_entry(id="kind", datasheets=[str(tmp_path / "m.yaml")]),
        sample_entry(id="url", repository={"url": "file:///nowhere.git"}),
        sample_entry(id="both", repository={"url": "file:///x.git", "path": "."}),
        sample_entry(id="held", held_out="yes"),
        {**sample_entry(id="typo"), "held_ot": True},
        {**sample_entry(id="typo2"), "repositry": {"path": "."}},
    ])
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    text = str(info.value)
    for expected in ["'Bad Id'", "pair 'dup': duplicate id", "pair 'cat': domain_category = 'toasters'",
                     "pair 'sheet': datasheet", "does not exist", "pair 'kind': datasheet m.yaml has an unknown type",
                     "pair 'url': repository.url needs a pinned 'revision'", "pair 'both': repository",
                     "repository needs exactly one of 'path' or 'url'", "pair 'held': held_out = 'yes'",
                     "pair 'typo': held_ot: unknown key (did you mean held_out?)",
                     "pair 'typo2': repositry: unknown key (did you mean repository?)"]:
        assert expected in text, expected


def test_manifest_that_is_not_yaml(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("pairs: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "absent.yaml")


def test_local_folder_revision_is_a_content_hash(tmp_path, storage):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.c").write_text("int a;\n")
    entry = sample_entry(repository={"path": str(repo)})
    pair = load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0]
    first = resolve_pair(pair, storage)
    assert first.revision == "tree:" + tree_hash(repo) and not first.is_git
    (repo / "a.c").write_text("int b;\n")
    assert resolve_pair(pair, storage).revision != first.revision


def test_git_url_is_cloned_at_the_pinned_revision(tmp_path, storage):
    repo, first = make_git_repo(SAMPLE_DIR / "repos" / "imu_driver", tmp_path / "origin")
    (repo / "src" / "later.c").write_text("int later;\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "later", cwd=repo)
    entry = sample_entry(repository={"url": f"file://{repo}", "revision": first[:10]})
    pair = load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0]
    resolved = resolve_pair(pair, storage)
    assert resolved.revision == first and resolved.is_git
    assert resolved.repo_root == storage / "repos" / pair.id / first
    files = files_at_revision(resolved)
    assert "src/skm6.c" in files and "src/later.c" not in files
    assert not (resolved.repo_root / "src" / "later.c").exists()
    # a second resolve reuses the finished checkout
    assert resolve_pair(pair, storage).repo_root == resolved.repo_root
    assert not list((storage / "repos" / pair.id).glob(".clone-*")), "no half-written clone left behind"


def test_unknown_revision_fails_that_pair_only(tmp_path, storage):
    repo, _ = make_git_repo(SAMPLE_DIR / "repos" / "imu_driver", tmp_path / "origin")
    manifest = write_manifest(tmp_path / "m.yaml", [
        sample_entry(id="bad_rev", repository={"url": f"file://{repo}", "revision": "deadbeef"}),
        sample_entry(id="good"),
    ])
    registry = prepare_pairs(manifest, storage)
    assert list(registry.records) == ["good"]
    assert registry.failures[0].input == "bad_rev"
    assert "deadbeef" in registry.failures[0].message
    assert not (storage / "repos" / "bad_rev" / "deadbeef").exists()
    assert load_resolved(storage, "good").pair.id == "good"
    with pytest.raises(PairError, match="materialize repo_datasheet_pairs first"):
        load_resolved(storage, "bad_rev")


def test_record_is_not_rewritten_when_unchanged(tmp_path, storage):
    manifest = write_manifest(tmp_path / "m.yaml", [sample_entry()])
    first = prepare_pairs(manifest, storage)
    record = storage / "pairs" / "skm6_imu_i2c" / "pair.json"
    mtime = record.stat().st_mtime_ns
    second = prepare_pairs(manifest, storage)
    assert first.versions == second.versions
    assert record.stat().st_mtime_ns == mtime


def test_sample_paths_are_inside_the_package():
    for p in load_manifest(SAMPLE_MANIFEST):
        assert Path(p.repo_path).is_relative_to(SAMPLE_DIR)


def test_a_bad_manifest_entry_blocks_only_itself(tmp_path, storage):
    """A missing repository folder, a missing datasheet or an unknown category fails that
    entry, with its message; the good pairs register (one bad entry used to stop them all)."""
    manifest = write_manifest(tmp_path / "m.yaml", [
        sample_entry(id="no_repo", repository={"path": str(tmp_path / "nowhere")}),
        sample_entry(id="good"),
        sample_entry(id="no_sheet", datasheets=[str(tmp_path / "missing.pdf")]),
        sample_entry(id="odd_category", domain_category="toasters"),
    ])
    registry = prepare_pairs(manifest, storage)
    assert list(registry.records) == ["good"]
    failures = {f.input: f for f in registry.failures}
    assert set(failures) == {"no_repo", "no_sheet", "odd_category"}
    assert all(f.reason == "invalid_manifest_entry" for f in failures.values())
    assert "nowhere is not a folder" in failures["no_repo"].message
    assert "missing.pdf does not exist" in failures["no_sheet"].message
    assert "domain_category = 'toasters' (str): expected 'linux_kernel'" in failures["odd_category"].message


def test_pairs_command_says_which_pairs_are_not_partitions_yet(capsys):
    """Dagster refuses an unregistered pair partition before any project code runs; the
    project's `pairs` command is where a user finds out which are registered and what to do."""
    import dagster as dg

    from spark_pipeline.cli import main

    assert main(["pairs"]) == 0
    out = capsys.readouterr().out
    assert "skm6_imu_i2c" in out and "not registered" in out
    assert "materialize repo_datasheet_pairs first" in out
    with dg.DagsterInstance.get() as instance:  # the test's own DAGSTER_HOME
        instance.add_dynamic_partitions("pairs", [p.id for p in load_manifest(SAMPLE_MANIFEST)])
    assert main(["pairs"]) == 0
    out = capsys.readouterr().out
    assert "not registered" not in out and "repo_datasheet_pairs first" not in out
    assert all(line.split()[-2] == "registered" for line in out.strip().splitlines())
