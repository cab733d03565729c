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

The cache writes each step's keys and values into buffers with room to grow
(`GrowingLayer`) instead of concatenating the whole cache again per step, and
under autocast it stores them in the autocast dtype, which every attention
reads them in anyway: the same numbers, without a copy and a cast of the
whole cache per layer and step.

Sampling follows generate()'s ancestral sampling step for step (fp32 logits,
temperature, one multinomial draw per batch row and step, finished rows
included), so the same seed draws the same random numbers.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import BakingError
from .batching import pad
from .prefix_cache import SharedPrefix, cache_keyword


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers with room to grow.

    DynamicLayer appends by `torch.cat`, which copies the layer's whole cache at
    every decode step: for the drift conversations' agents (5 rows, up to 2,000
    tokens, 30 layers) that copy was 14% of a step. Here a step writes its new
    columns into the buffer and `keys` / `values` are views of its first columns,
    so the attention reads exactly what it read before. Cropping (DynamicLayer's
    slicing) keeps the view in the buffer; anything that replaces `keys` by
    another tensor (batch_repeat_interleave, ...) is copied into a new buffer at
    the next update.

    Under autocast the buffer holds the autocast dtype: some models cache fp32
    keys (rotary embeddings multiply the bf16 projection by fp32 cos/sin), and
    the attention under autocast (sdpa, or eager's matmul) casts the whole key
    cache to bf16 again at every layer and step. Casting once, when a column is
    written, gives the attention the same bf16 numbers (tested on seven
    architectures: tests/training/test_architectures.py).
    """

    @classmethod
    def holding(cls, layer: DynamicLayer) -> "GrowingLayer":
        """A growing layer that holds what `layer` holds."""
        grown = cls()
        if layer.is_initialized and layer.keys.numel():
            grown.update(layer.keys, layer.values)
        return grown

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer = self._value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held, new = self.get_seq_length(), key_states.shape[-2]
        in_buffer = self._key_buffer is not None and self.keys._base is self._key_buffer \
            and self.values._base is self._value_buffer and self._key_buffer.dtype == _stored_dtype(key_states)
        if not in_buffer or held + new > self._key_buffer.shape[-2]:
            self._grow(key_states, value_states, held, held + new)
        self._key_buffer[..., held:held + new, :].copy_(key_states)
        self._value_buffer[..., held:held + new, :].copy_(value_states)
        self.keys = self._key_buffer[..., :held + new, :]
        self.values = self._value_buffer[..., :held + new, :]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, held: int, needed: int) -> None:
        """New buffers for at least `needed` columns (twice that: growing costs one copy per doubling), holding
        the `held` columns kept so far."""
        def buffer(states: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
            dtype = _stored_dtype(states)
            fresh = states.new_empty((*states.shape[:-2], 2 * needed, states.shape[-1]), dtype=dtype)
            if held:
                fresh[..., :held, :].copy_(kept[..., :held, :])
            return fresh
        self._key_buffer, self._value_buffer = buffer(key_states, self.keys), buffer(value_states, self.values)


def _stored_dtype(states: torch.Tensor) -> torch.dtype:
    """The dtype the attention reads `states` in: autocast's when it is on and lowers them, else their own."""
    device = states.device.type
    if states.is_floating_point() and torch.is_autocast_enabled(device):
        low = torch.get_autocast_dtype(device)
        if torch.finfo(low).bits < torch.finfo(states.dtype).bits:
            return low
    return states.dtype


def growing(cache):
    """`cache` with its full-attention layers (plain DynamicLayers) growing in place (GrowingLayer); sliding-window
    and other layers stay as they are."""
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers made at their first update
        cache.layer_class_to_replicate = GrowingLayer
    if getattr(cache, "layers", None) is not None:
        cache.layers = [GrowingLayer.holding(layer) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


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
        batch.cache = growing(prefix.copied_cache(model, rows))
        batch.mask = torch.ones((rows, len(prefix)), dtype=torch.long)
        batch.tokens = [list(prefix.tokens) for _ in range(rows)]
        return batch

    def _empty(self) -> None:
        self.cache = growing(DynamicCache(config=self.model.config))
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
