"""What keeps the training mixture trustworthy: no duplicates, no evaluation text in training.

Texts are compared by their 5-word shingles (words lowercased; a text of fewer than five
words is one shingle), hashed to 64-bit integers.

* **Duplicates** inside a row set (the mixture, each evaluation set): an exact duplicate has
  the same whitespace-normalised text; a near duplicate has a Jaccard similarity of at least
  ``threshold`` (0.8, as large code corpora use) with an earlier row. Candidates come from
  MinHash LSH run at a *lower* threshold (``candidate_threshold``) so that it misses almost
  nothing, and every candidate is then verified with the exact Jaccard of the two shingle
  sets: nothing is dropped on an estimate. The first occurrence in order is kept; every drop
  is recorded with the row it duplicates and the measured similarity.
* **Contamination** between training and evaluation is found without estimates: every
  evaluation shingle goes into an inverted index, every training row's shingles are looked
  up in it, and for each evaluation row a training row shares shingles with, the exact
  Jaccard and the *containment* (share of the evaluation text's shingles inside the training
  text) are computed. A training row is contaminated when Jaccard ≥ ``threshold`` (a near or
  exact copy) or containment ≥ ``threshold`` (the evaluation text sits inside a longer
  training text, word for word when it is 1.0). A row is never compared with itself:
  evaluation rows leave training by identity before the check (:func:`split_out`).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

_WORDS = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def normalized(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def exact_key(text: str) -> str:
    return hashlib.sha256(normalized(text).encode("utf-8")).hexdigest()


def shingle_hashes(text: str, n: int = 5) -> frozenset[int]:
    words = _WORDS.findall(text.lower())
    if not words:
        return frozenset()
    grams = [" ".join(words)] if len(words) < n else (" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return frozenset(int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def identity(row: dict) -> tuple:
    """Where a sample comes from: pair, section, chunk (a sample's own name in every table)."""
    return (row["pair_id"], row["section_id"], int(row["chunk_index"]))


def describe(row: dict) -> str:
    return f"{row['pair_id']}:{row['section_id']}#{row['chunk_index']}"


@dataclass
class Duplicate:
    dropped: dict
    kept: dict
    kind: str          # exact | near
    jaccard: float

    def to_row(self, scope: str) -> dict:
        return {"scope": scope, "kind": self.kind, "jaccard": round(self.jaccard, 4),
                "dropped": describe(self.dropped), "kept": describe(self.kept),
                "dropped_seq": self.dropped.get("seq", -1), "kept_seq": self.kept.get("seq", -1)}


def deduplicate(rows: list[dict], threshold: float = 0.8, permutations: int = 128,
                candidate_threshold: float = 0.5) -> tuple[list[dict], list[Duplicate]]:
    """Rows without exact and near duplicates (first occurrence kept, order preserved), and
    a record of every drop."""
    from datasketch import MinHash, MinHashLSH

    kept: list[dict] = []
    drops: list[Duplicate] = []
    by_key: dict[str, dict] = {}
    lsh = MinHashLSH(threshold=candidate_threshold, num_perm=permutations)
    shingles: dict[int, frozenset[int]] = {}
    for row in rows:
        key = exact_key(row["text"])
        if key in by_key:
            drops.append(Duplicate(row, by_key[key], "exact", 1.0))
            continue
        sh = shingle_hashes(row["text"])
        mh = MinHash(num_perm=permutations, seed=1)
        mh.update_batch([h.to_bytes(8, "little") for h in sh])
        best, best_j = None, 0.0
        for cand in lsh.query(mh):
            j = jaccard(sh, shingles[cand])
            if j >= threshold and (j > best_j or (j == best_j and cand < best)):
                best, best_j = cand, j
        if best is not None:
            drops.append(Duplicate(row, kept[best], "near", best_j))
            continue
        slot = len(kept)
        kept.append(row)
        by_key[key] = row
        shingles[slot] = sh
        lsh.insert(slot, mh)
    return kept, drops


def split_out(training: list[dict], evaluation: list[dict]) -> tuple[list[dict], list[dict]]:
    """Training rows without the evaluation samples themselves (by identity, whatever any
    contamination setting says), and the rows taken out."""
    held = {identity(r) for r in evaluation}
    kept, removed = [], []
    for row in training:
        (removed if identity(row) in held else kept).append(row)
    return kept, removed


@dataclass
class Contamination:
    train: dict
    evaluation: dict
    kind: str            # exact | near | contained
    jaccard: float
    containment: float

    def to_row(self) -> dict:
        return {"kind": self.kind, "jaccard": round(self.jaccard, 4), "containment": round(self.containment, 4),
                "train": describe(self.train), "train_seq": self.train.get("seq", -1),
                "eval": describe(self.evaluation), "eval_split": self.evaluation.get("split", "")}


class EvalIndex:
    """Every evaluation shingle, inverted: exact similarity of any text with the evaluation rows."""

    def __init__(self, evaluation: list[dict], threshold: float = 0.8):
        self.rows = evaluation
        self.threshold = threshold
        self.sizes: list[int] = []
        self.exact: dict[str, list[int]] = defaultdict(list)
        self.postings: dict[int, list[int]] = defaultdict(list)
        for i, row in enumerate(evaluation):
            sh = shingle_hashes(row["text"])
            self.sizes.append(len(sh))
            self.exact[exact_key(row["text"])].append(i)
            for h in sh:
                self.postings[h].append(i)

    def match(self, row: dict) -> Contamination | None:
        """The closest evaluation row a training row copies or contains, or None."""
        key = exact_key(row["text"])
        if key in self.exact:
            return Contamination(row, self.rows[self.exact[key][0]], "exact", 1.0, 1.0)
        return max(self.matches(row).values(), key=lambda c: (c.jaccard, c.containment), default=None)

    def matches(self, row: dict) -> dict[int, Contamination]:
        """Every evaluation row ``row`` copies, nearly copies or contains, by its position."""
        found = {i: Contamination(row, self.rows[i], "exact", 1.0, 1.0)
                 for i in self.exact.get(exact_key(row["text"]), ())}
        sh = shingle_hashes(row["text"])
        shared: dict[int, int] = defaultdict(int)
        for h in sh:
            for i in self.postings.get(h, ()):
                shared[i] += 1
        for i, inter in shared.items():
            if i in found:
                continue
            j = inter / (len(sh) + self.sizes[i] - inter)
            c = inter / self.sizes[i] if self.sizes[i] else 0.0
            if j >= self.threshold:
                found[i] = Contamination(row, self.rows[i], "near", j, c)
            elif c >= self.threshold:
                found[i] = Contamination(row, self.rows[i], "contained", j, c)
        return found


def lsh_matches(training: list[dict], evaluation: list[dict], threshold: float, permutations: int) -> int:
    """How many training rows plain MinHash LSH at ``threshold`` flags (for comparison only)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=permutations)

    def minhash(text: str):
        m = MinHash(num_perm=permutations, seed=1)
        m.update_batch([h.to_bytes(8, "little") for h in shingle_hashes(text)])
        return m

    for i, row in enumerate(evaluation):
        lsh.insert(i, minhash(row["text"]))
    return sum(1 for row in training if lsh.query(minhash(row["text"])))
