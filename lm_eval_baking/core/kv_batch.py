"""A batch of token sequences that grow, with their KV cache kept between calls.

`generate()` re-reads its whole input on every call. A conversation that
grows by one turn at a time, or answers that all start with the same long
system prompt, then pay for the same prefix again and again. `CachedBatch`
keeps one KV cache for a batch of rows: `extend` feeds only the new tokens of
each row, `generate` samples from where every row stands, `rollback` forgets
what was generated.

Rows grow by different amounts. Each call's new tokens are left-padded to the
longest row, so a row's sequence in the cache may hold padding in its middle;
the attention mask hides those columns and the position ids count only real
tokens, so every row sees exactly the tokens it would see alone. The
numerics are not bit-identical to one forward over the whole sequence (other
matmul shapes round differently), which is why a sampled continuation can
differ from an uncached one in bf16; in fp32 they agree (tests/core).

Sampling follows generate()'s ancestral sampling step for step (fp32 logits,
temperature, one multinomial draw per batch row and step, finished rows
included), so the same seed draws the same random numbers.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from transformers import DynamicCache

from ..errors import BakingError
from .batching import pad
from .prefix_cache import SharedPrefix, cache_keyword


class CachedBatch:
    """`rows` token sequences in one KV cache. The cache holds exactly `tokens[i]` for row i (plus hidden padding)."""

    def __init__(self, model, pad_id: int, rows: int):
        self.model, self.pad_id, self.rows = model, pad_id, rows
        self._empty()
        # Read the signature through a PEFT wrapper, whose forward takes **kwargs.
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._keep_last = "logits_to_keep" in inspect.signature(core.forward).parameters
        self._cache_arg = cache_keyword(model)

    @classmethod
    def after(cls, model, pad_id: int, rows: int, prefix: SharedPrefix) -> "CachedBatch":
        """A batch whose every row already holds `prefix`, from a copy of its cache (frozen `model` only)."""
        batch = cls(model, pad_id, rows)
        batch.cache = prefix.copied_cache(model, rows)
        batch.mask = torch.ones((rows, len(prefix)), dtype=torch.long)
        batch.tokens = [list(prefix.tokens) for _ in range(rows)]
        return batch

    def _empty(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.mask = torch.zeros((self.rows, 0), dtype=torch.long)
        self.tokens: list[list[int]] = [[] for _ in range(self.rows)]
        self._next_logits: torch.Tensor | None = None

    @torch.no_grad()
    def extend(self, chunks: list[list[int]]) -> None:
        """Feed each row its new tokens (a row may get none)."""
        if len(chunks) != self.rows:
            raise ValueError(f"{len(chunks)} chunks for {self.rows} rows")
        width = max(len(c) for c in chunks)
        if width == 0:
            return
        ids, chunk_mask = pad([c or [self.pad_id] for c in chunks], self.pad_id, left=True)
        for row, chunk in enumerate(chunks):
            if not chunk:
                chunk_mask[row] = 0
        mask = torch.cat([self.mask, chunk_mask], dim=1)
        # Each real token's position is the count of real tokens before it; padding repeats a neighbour's.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        device = self.model.device
        extra = {self._cache_arg: self.cache, **({"logits_to_keep": 1} if self._keep_last else {})}
        output = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            position_ids=positions.to(device), use_cache=True, **extra)
        last = output.logits[:, -1].float()
        fed = torch.tensor([bool(c) for c in chunks], device=last.device)
        self._next_logits = last if self._next_logits is None else torch.where(fed[:, None], last, self._next_logits)
        self.mask = mask
        for row, chunk in enumerate(chunks):
            self.tokens[row].extend(chunk)

    def sync(self, sequences: list[list[int]]) -> bool:
        """Make row i hold `sequences[i]`: feed what is new when every row only grew; else re-read all from scratch.

        Returns whether the cache was reused (False: some row's held tokens were no prefix of its new sequence).
        """
        if all(seq[:len(held)] == held for seq, held in zip(sequences, self.tokens)):
            self.extend([seq[len(held):] for seq, held in zip(sequences, self.tokens)])
            return True
        self._empty()
        self.extend(sequences)
        return False

    @torch.no_grad()
    def generate(self, max_new_tokens: int, temperature: float, stop_ids: set[int],
                 on_logits: Callable[[torch.Tensor], None] | None = None) -> list[list[int]]:
        """Sample up to `max_new_tokens` from every row (temperature 0 = greedy); each row ends after a stop id.

        `on_logits` sees each step's [rows, V] fp32 logits before temperature (generate()'s logits processors
        see the same). The generated tokens stay in the cache until `rollback`.
        """
        if self._next_logits is None:
            raise BakingError("nothing to continue: extend the batch before generating")
        self._generation_start = (self.mask.shape[1], [len(t) for t in self.tokens], self._next_logits)
        done = [False] * self.rows
        answers: list[list[int]] = [[] for _ in range(self.rows)]
        for step in range(max_new_tokens):
            logits = self._next_logits
            if on_logits is not None:
                on_logits(logits)
            if temperature > 0:
                picked = torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1).squeeze(1)
            else:
                picked = logits.argmax(dim=-1)
            was_done = list(done)
            for row, token in enumerate(picked.tolist()):
                if not was_done[row]:
                    answers[row].append(token)
                    done[row] = token in stop_ids
            if all(done) or step == max_new_tokens - 1:
                break
            self.extend([[] if was_done[row] else [answers[row][-1]] for row in range(self.rows)])
        return answers

    def rollback(self) -> None:
        """Forget the tokens of the last `generate`: the cache holds what it held before it."""
        width, lengths, logits = self._generation_start
        generated = self.mask.shape[1] - width
        if generated and self.cache.is_croppable:
            self.cache.crop(-generated)  # a negative count removes that many columns
            self.mask = self.mask[:, :width]
        elif generated:  # e.g. sliding-window layers: hide the generated columns instead of removing them
            self.mask[:, width:] = 0
        for row, n in enumerate(lengths):
            del self.tokens[row][n:]
        self._next_logits = logits
