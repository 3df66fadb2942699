"""The training forward: the decoder, then the causal-LM loss over the vocabulary in chunks.

The plain path (``model(input_ids, labels=...)``) materialises the logits of every token
over the whole vocabulary in fp32 and keeps them, their softmax and their gradient alive
at once: at 2,048 tokens and OLMo-3's 100,278 ids that is 0.8 GB per row for the logits
alone and about 3.6× that at the peak. Here the final hidden states go through ``lm_head``
``chunk_tokens`` tokens at a time, each chunk's logits and cross-entropy computed under
activation checkpointing, so only one chunk's logits exist at a time, forward or backward.

``lm_head`` is called as the module it is — PEFT's LoRA-wrapped linear layer — so its
adapter takes part exactly as in the plain path and receives its gradient (fused kernels
that read ``lm_head.weight`` directly leave a LoRA adapter on ``lm_head`` untrained,
silently; docs/architecture.md, known traps). Only labelled tokens (label != -100, next-token shifted as the
model's own loss does) are sent through ``lm_head``.

The whole forward is one module, so DDP sees every parameter through its own ``forward``.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss(lm_head, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


class CausalLMLoss(torch.nn.Module):
    """``forward(input_ids, labels, position_ids) -> mean loss over labelled tokens``.

    ``chunk_tokens = 0`` uses the model's own loss (full logits), for comparison."""

    def __init__(self, model, chunk_tokens: int = 512):
        super().__init__()
        self.model = model  # a PEFT model (or a plain causal LM)
        self.chunk_tokens = chunk_tokens

    def _parts(self):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.model, base.lm_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None):
        if not self.chunk_tokens:
            return self.model(input_ids=input_ids, labels=labels, position_ids=position_ids, use_cache=False).loss
        decoder, lm_head = self._parts()
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = labels[:, 1:].reshape(-1)
        keep = targets != IGNORE_INDEX
        hidden, targets = hidden[keep], targets[keep]
        count = targets.numel()
        if count == 0:
            return hidden.sum() * 0.0
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, count, self.chunk_tokens):
            part = slice(start, start + self.chunk_tokens)
            total = total + checkpoint(_chunk_loss, lm_head, hidden[part], targets[part], use_reentrant=False)
        return total / count
