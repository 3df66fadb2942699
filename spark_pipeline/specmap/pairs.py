"""The pairs manifest: which repository goes with which datasheets.

A manifest is YAML::

    pairs:
      - id: imu_i2c_driver                 # partition key: lowercase letters, digits, _ and -
        repository:
          path: repos/imu_driver           # a local folder (relative to the manifest) ...
          # url: file:///srv/git/imu.git   # ... or a git URL with a pinned revision
          # revision: 4f2a9c1
        datasheets: [datasheets/imu_regs.pdf]   # PDF, Markdown/text or CMSIS-SVD (.svd/.xml)
        manufacturer: Example Semi
        component_category: sensors
        component_class: imu
        domain_category: register_defines  # one of DOMAIN_CATEGORIES
        held_out: false                    # true: evaluation only, never trained on

``load_manifest`` reports every problem at once, each naming the pair and the field.
``resolve_pair`` makes the repository available at its pinned revision under the storage
root (git clone) or in place (a local folder) and returns a :class:`ResolvedPair`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from spark_pipeline.schema import Strict, dotted
from spark_pipeline.schema import problems as schema_problems

#: The paper's 13 domain categories (§3.4, Table 2 and Figure 1).
DOMAIN_CATEGORIES: tuple[str, ...] = (
    "linux_kernel",
    "amd_gpu_registers",
    "device_tree",
    "wireless_ble_wifi",
    "usb_stack",
    "infineon_aurix",
    "stm32_hal",
    "nxp_imx",
    "arm_cortex_asm",
    "zephyr_rtos",
    "crypto",
    "register_defines",
    "general",
)

DATASHEET_KINDS = {".pdf": "pdf", ".md": "markdown", ".markdown": "markdown", ".txt": "text",
                   ".svd": "svd", ".xml": "svd"}

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_REV_RE = re.compile(r"^[0-9A-Za-z._/-]{1,100}$")


class RepositoryRef(Strict):
    path: Annotated[str, Field(min_length=1)] | None = None
    """A local folder, relative to the manifest ..."""
    url: Annotated[str, Field(min_length=1)] | None = None
    """... or a git URL, with a pinned ``revision``."""
    revision: str | int | None = None
    """A commit, tag or branch (YAML reads an all-digit hash as a number: it is taken as text)."""

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == bool(self.url):
            raise ValueError("repository needs exactly one of 'path' or 'url'")
        return self


class ManifestEntry(Strict):
    """One pair of the manifest; an unknown key (``held_ot``) is an error, not a default."""

    id: Annotated[str, Field(pattern=_ID_RE.pattern)]
    repository: RepositoryRef
    datasheets: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]],
                                                               Field(min_length=1)]
    manufacturer: str = "unknown"
    component_category: str = "unknown"
    component_class: str = "unknown"
    domain_category: Literal[DOMAIN_CATEGORIES]  # type: ignore[valid-type]
    held_out: bool = False
    """true: evaluation only, never trained on."""


class ManifestError(ValueError):
    """The manifest is unusable; the message lists every problem found."""


class PairError(RuntimeError):
    """One pair cannot be prepared (its repository or datasheet); other pairs are unaffected."""


@dataclass(frozen=True)
class Datasheet:
    path: Path
    kind: str  # pdf | markdown | text | svd


@dataclass(frozen=True)
class Pair:
    id: str
    repo_path: Path | None
    repo_url: str | None
    revision: str | None
    datasheets: tuple[Datasheet, ...]
    manufacturer: str
    component_category: str
    component_class: str
    domain_category: str
    held_out: bool = False


@dataclass
class ResolvedPair:
    """A pair whose repository is on disk at a known revision, ready for SpecMap."""

    pair: Pair
    repo_root: Path
    revision: str  # a git commit, or ``tree:<sha256>`` for a plain folder
    is_git: bool
    datasheet_hashes: dict[str, str] = field(default_factory=dict)

    def to_record(self) -> dict:
        p = self.pair
        return {
            "id": p.id,
            "repository": {"path": str(p.repo_path) if p.repo_path else None, "url": p.repo_url,
                           "requested_revision": p.revision},
            "repo_root": str(self.repo_root),
            "revision": self.revision,
            "is_git": self.is_git,
            "datasheets": [{"path": str(d.path), "kind": d.kind,
                            "sha256": self.datasheet_hashes.get(str(d.path))} for d in p.datasheets],
            "manufacturer": p.manufacturer,
            "component_category": p.component_category,
            "component_class": p.component_class,
            "domain_category": p.domain_category,
            "held_out": p.held_out,
        }


def load_manifest(path: Path) -> list[Pair]:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem."""
    pairs, problems = read_manifest(path)
    if problems:
        raise ManifestError(f"pairs manifest {path} has {len(problems)} problem(s):\n  - "
                            + "\n  - ".join(message for _, message in problems))
    return pairs


def read_manifest(path: Path) -> tuple[list[Pair], list[tuple[str, str]]]:
    """The valid pairs of a manifest and, for every entry that is not, (its id or position,
    the problems naming the pair and field). One bad entry does not stop the others; a
    manifest that cannot be read at all raises :class:`ManifestError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"pairs manifest {path} does not exist") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"pairs manifest {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("pairs"), list):
        raise ManifestError(f"pairs manifest {path} must be a mapping with a 'pairs' list")
    base = path.parent
    problems: list[str] = []
    pairs: list[Pair] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw["pairs"]):
        pid = entry.get("id") if isinstance(entry, dict) else None
        where = f"pair {pid!r}" if isinstance(pid, str) and _ID_RE.match(pid) else f"pairs[{index}]"
        try:
            e = ManifestEntry.model_validate(entry)
        except ValidationError as exc:
            for line in schema_problems(exc, ManifestEntry, dotted()):
                problems.append((where, f"{where}: {line}"))
            continue
        if e.id in seen:
            problems.append((where, f"{where}: duplicate id"))
            continue
        seen.add(e.id)
        before = len(problems)
        repo_path = repo_url = None
        revision = None if e.repository.revision is None else str(e.repository.revision)
        if revision is not None and (not _REV_RE.match(revision) or revision.startswith("-")):
            problems.append((where, f"{where}: repository.revision {revision!r} is not a git revision"))
        if e.repository.path:
            repo_path = (base / e.repository.path).resolve()
            if not repo_path.is_dir():
                problems.append((where, f"{where}: repository.path {repo_path} is not a folder"))
        else:
            repo_url = e.repository.url
            if repo_url.startswith("-"):
                problems.append((where, f"{where}: repository.url {repo_url!r} is not a URL"))
            if not revision:
                problems.append((where, f"{where}: repository.url needs a pinned 'revision'"))
        datasheets: list[Datasheet] = []
        for sheet in [e.datasheets] if isinstance(e.datasheets, str) else e.datasheets:
            sheet_path = (base / sheet).resolve()
            kind = DATASHEET_KINDS.get(sheet_path.suffix.lower())
            if kind is None:
                problems.append((where, f"{where}: datasheet {sheet_path.name} has an unknown type "
                                f"(expected one of {', '.join(sorted(DATASHEET_KINDS))})"))
            elif not sheet_path.is_file():
                problems.append((where, f"{where}: datasheet {sheet_path} does not exist"))
            else:
                datasheets.append(Datasheet(sheet_path, kind))
        if len(problems) == before:
            pairs.append(Pair(
                id=e.id, repo_path=repo_path, repo_url=repo_url, revision=revision, datasheets=tuple(datasheets),
                manufacturer=e.manufacturer, component_category=e.component_category,
                component_class=e.component_class, domain_category=e.domain_category, held_out=e.held_out,
            ))
    return pairs, problems


def _git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise PairError(f"git {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def tree_hash(root: Path) -> str:
    """A content hash of a plain folder: relative paths and bytes of every regular file."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            digest.update(rel.encode() + b"\0")
            with open(full, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


def _is_git_checkout(path: Path) -> bool:
    return (path / ".git").exists()


def resolve_pair(pair: Pair, storage: Path) -> ResolvedPair:
    """Make the pair's repository available at its pinned revision.

    A git URL is cloned once into ``<storage>/repos/<pair id>/<commit>``; the folder appears
    only when the checkout is complete (clone into a temporary folder, then rename).
    A local folder is used in place; its revision is its git HEAD or a content hash.
    """
    from spark_pipeline.records import sha256_file

    hashes = {str(d.path): sha256_file(d.path) for d in pair.datasheets}
    if pair.repo_path is not None:
        root = pair.repo_path
        if _is_git_checkout(root):
            wanted = pair.revision or "HEAD"
            revision = _git("rev-parse", "--verify", f"{wanted}^{{commit}}", cwd=root)
            head = _git("rev-parse", "HEAD", cwd=root)
            if revision != head:
                raise PairError(f"pair {pair.id!r}: {root} is checked out at {head[:12]}, "
                                f"not the pinned revision {wanted} ({revision[:12]})")
            return ResolvedPair(pair, root, revision, True, hashes)
        return ResolvedPair(pair, root, "tree:" + tree_hash(root), False, hashes)

    base = storage / "repos" / pair.id
    base.mkdir(parents=True, exist_ok=True)
    for existing in base.iterdir():
        if (existing / ".spark_complete").exists() and (
            existing.name == pair.revision or existing.name.startswith(str(pair.revision))):
            return ResolvedPair(pair, existing, existing.name, True, hashes)
    tmp = base / f".clone-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _git("clone", "--quiet", "--no-checkout", "--", pair.repo_url, str(tmp))
        commit = _git("rev-parse", "--verify", f"{pair.revision}^{{commit}}", cwd=tmp)
        _git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit, cwd=tmp)
        (tmp / ".spark_complete").write_text(commit + "\n")
        final = base / commit
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except PairError as exc:
        raise PairError(f"pair {pair.id!r}: cannot check out {pair.repo_url} at {pair.revision}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedPair(pair, final, commit, True, hashes)


def pair_to_dict(pair: Pair) -> dict:
    d = asdict(pair)
    d["repo_path"] = str(pair.repo_path) if pair.repo_path else None
    d["datasheets"] = [{"path": str(s.path), "kind": s.kind} for s in pair.datasheets]
    return d


def files_at_revision(resolved: ResolvedPair) -> set[str]:
    """Every file path (repo-relative, POSIX) in the repository at the pinned revision."""
    if resolved.is_git:
        out = _git("ls-tree", "-r", "--name-only", "-z", resolved.revision, cwd=resolved.repo_root)
        return {p for p in out.split("\0") if p}
    found = set()
    for dirpath, dirnames, filenames in os.walk(resolved.repo_root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            found.add((Path(dirpath) / name).relative_to(resolved.repo_root).as_posix())
    return found


# ------------------------------------------------------------------------ registry


@dataclass
class Registry:
    """What ``prepare_pairs`` made of a manifest."""

    manifest: Path
    records: dict[str, dict]
    failures: list  # list[Rejection]
    versions: dict[str, str]  # pair id -> content hash of its record


def record_path(storage: Path, pair_id: str) -> Path:
    return Path(storage) / "pairs" / pair_id / "pair.json"


def record_version(record: dict) -> str:
    import json

    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def prepare_pairs(manifest: Path, storage: Path, log=None) -> Registry:
    """Resolve every pair of a manifest and write its record under ``<storage>/pairs/<id>/``.

    A pair that cannot be prepared is reported as a failure naming it; the others go on.
    A pair whose record has not changed is not rewritten (its data version stays).
    """
    from spark_pipeline.records import Rejection, atomic_write_json

    pairs, problems = read_manifest(manifest)
    records: dict[str, dict] = {}
    failures: list[Rejection] = []
    versions: dict[str, str] = {}
    by_entry: dict[str, list[str]] = {}
    for where, message in problems:
        by_entry.setdefault(where, []).append(message)
    for where, messages in by_entry.items():  # a bad entry is recorded; the good ones go on
        m = re.match(r"pair '(.+)'$", where)
        failures.append(Rejection("pairs", m.group(1) if m else where, "invalid_manifest_entry",
                                  f"{manifest}: " + "; ".join(messages)))
        if log:
            log.warning(failures[-1].message)
    for pair in pairs:
        try:
            resolved = resolve_pair(pair, storage)
        except (PairError, OSError) as exc:
            failures.append(Rejection("pairs", pair.id, "unresolvable_pair", str(exc)))
            if log:
                log.warning(str(exc))
            continue
        record = resolved.to_record()
        path = record_path(storage, pair.id)
        version = record_version(record)
        if not path.exists() or record_version(_read_json(path)) != version:
            atomic_write_json(path, record)
        records[pair.id] = record
        versions[pair.id] = version
    from spark_pipeline.records import sha256_file

    entries = manifest_entries(pairs)
    registry = {"manifest": str(manifest), "order": list(records), "versions": versions,
                "held_out": [pid for pid, r in records.items() if r["held_out"]],
                "categories": {pid: r["domain_category"] for pid, r in records.items()},
                "manifest_sha256": sha256_file(Path(manifest)), "entries": entries,
                "entries_digest": _digest(entries)}
    if _read_json(registry_path(storage)) != registry:
        atomic_write_json(registry_path(storage), registry)
    return Registry(Path(manifest), records, failures, versions)


class ManifestChanged(PairError):
    """The pairs manifest in use is not the one the pairs were registered from; the message
    names the changed pairs and what to materialize again."""


def _digest(value) -> str:
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def manifest_entries(pairs: list[Pair]) -> dict[str, dict]:
    """Per pair: what its manifest entry says that the stages use (the held-out flag and the
    category by name, everything else as one digest)."""
    out = {}
    for p in pairs:
        d = asdict(p)
        d["repo_path"] = str(p.repo_path) if p.repo_path else None
        d["datasheets"] = [[str(x.path), x.kind] for x in p.datasheets]
        out[p.id] = {"held_out": p.held_out, "domain_category": p.domain_category, "digest": _digest(d)}
    return out


def manifest_changes(registry: dict, pair_id: str | None = None) -> list[str]:
    """How the manifest the registry was built from differs now (of one pair, or of all):
    nothing when its bytes are the same or only comments and layout changed."""
    from spark_pipeline.records import sha256_file

    path = Path(registry.get("manifest", ""))
    if not path.is_file():
        return [f"the manifest {path} is gone"]
    if sha256_file(path) == registry.get("manifest_sha256"):
        return []
    try:
        now = manifest_entries(read_manifest(path)[0])
    except ManifestError as exc:
        return [str(exc)]
    before = registry.get("entries")
    if before is None:
        return ["the registry predates manifest tracking"]
    changes = []
    for pid in sorted(set(now) | set(before)) if pair_id is None else [pair_id]:
        a, b = before.get(pid), now.get(pid)
        if a == b:
            continue
        if a is None:
            changes.append(f"pair {pid!r} is new")
        elif b is None:
            changes.append(f"pair {pid!r} is no longer in it (or its entry is now invalid)")
        else:
            details = [f"{k} {a[k]!r} -> {b[k]!r}" for k in ("held_out", "domain_category") if a[k] != b[k]]
            changes.append(f"pair {pid!r}: " + (", ".join(details) or "its repository or datasheets changed"))
    return changes


def current_registry(storage: Path, pair_id: str | None = None) -> dict:
    """The registry, when the manifest it was built from still says the same (of one pair, or
    of all); otherwise :class:`ManifestChanged` naming the changes."""
    registry = read_registry(storage)
    changes = manifest_changes(registry, pair_id)
    if changes:
        raise ManifestChanged(
            f"the pairs manifest {registry.get('manifest')} changed since repo_datasheet_pairs last read it: "
            + "; ".join(changes) + ". Materialize repo_datasheet_pairs, then specmap_mappings, section_chunks and "
            "quality_samples of the changed pairs, then eval_sets and training_mixture")
    return registry


def registry_path(storage: Path) -> Path:
    return Path(storage) / "pairs" / "registry.json"


def read_registry(storage: Path) -> dict:
    """The last registry written by ``prepare_pairs``: pair order, versions, held-out pairs."""
    data = _read_json(registry_path(storage))
    if not data:
        raise PairError(f"no pair registry at {registry_path(storage)}: materialize repo_datasheet_pairs first")
    return data


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_resolved(storage: Path, pair_id: str) -> ResolvedPair:
    """The resolved pair from its record; a clear error when the pair was never registered or
    its manifest entry changed since."""
    current_registry(storage, pair_id)
    path = record_path(storage, pair_id)
    record = _read_json(path)
    if not record:
        raise PairError(f"pair {pair_id!r} has no record at {path}: materialize repo_datasheet_pairs first")
    repo = record["repository"]
    pair = Pair(
        id=record["id"],
        repo_path=Path(repo["path"]) if repo.get("path") else None,
        repo_url=repo.get("url"),
        revision=repo.get("requested_revision"),
        datasheets=tuple(Datasheet(Path(d["path"]), d["kind"]) for d in record["datasheets"]),
        manufacturer=record["manufacturer"],
        component_category=record["component_category"],
        component_class=record["component_class"],
        domain_category=record["domain_category"],
        held_out=record["held_out"],
    )
    hashes = {d["path"]: d["sha256"] for d in record["datasheets"]}
    return ResolvedPair(pair, Path(record["repo_root"]), record["revision"], record["is_git"], hashes)
