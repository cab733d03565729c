"""The tokens every teacher context starts with, read once: a shared-prefix KV cache.

Every context the prompted teacher reads begins with the same tokens: the
chat template's opening, the system prompt (or a few-shot prefix) and the
template's turn markers, up to where the questions differ. With a long prompt
those tokens are most of every forward pass: a 1,100-token tool instruction
is read again for each answer sampled, scored and trained on. `SharedPrefix`
runs the frozen teacher over them once and hands every later forward a copy
of their KV cache, so a forward reads only what follows the prefix.

The cache is computed once per module and autocast dtype and never again,
so it is only for weights that do not change while it lives: the frozen
teacher of a bake (the base with its adapter off, or a separate teacher
model), or any model within one call of sampling or scoring, which makes
its own. The numerics are not bit-identical to one forward over the whole
sequence (other matmul shapes round differently); in fp32 the log-probs agree
to about 1e-5 (tests/core/test_prefix_cache.py checks seven architectures).
"""

from __future__ import annotations

import copy
import inspect

import torch

# Below this many shared tokens there is little to save (a guess: the break-even is not measured).
MIN_SHARED_TOKENS = 16
# Questions unlike each other from their first character, so their contexts share only what any question's does.
_PROBE_QUESTIONS = ("Why is the sky blue?", "2 + 2 = ?", " hello")


def cache_keyword(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` since transformers 5.x, `past_key_values`
    before. Read through a PEFT wrapper, whose forward takes **kwargs."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(core.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward returned, under either name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


class SharedPrefix:
    """`tokens` that every sequence given to `inputs_after` starts with, and their KV cache per module."""

    def __init__(self, tokens: list[int]):
        self.tokens = list(tokens)
        self._ids = torch.tensor(self.tokens, dtype=torch.long)
        self._caches: dict[tuple, object] = {}

    @classmethod
    def of(cls, sequences: list[list[int]], *, min_tokens: int = MIN_SHARED_TOKENS) -> "SharedPrefix | None":
        """The longest prefix all `sequences` share, leaving each at least one token of its own (the forward
        must still produce the logits that predict what follows); None when it is shorter than `min_tokens`."""
        if not sequences:
            return None
        first, n = sequences[0], min(len(s) for s in sequences) - 1
        for seq in sequences[1:]:
            n = next((i for i in range(n) if seq[i] != first[i]), n)
        return cls(first[:n]) if n >= min_tokens else None

    def __len__(self) -> int:
        return len(self.tokens)

    def fits(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> bool:
        """Whether every row of a right-padded batch begins with the prefix and no wanted position lies in it
        (the last prefix token's logits are not kept in the cache)."""
        n = len(self.tokens)
        return (ids.shape[1] > n and bool((ids[:, :n] == self._ids).all()) and bool(mask[:, :n].all())
                and not bool(positions[:, :n].any()))

    def _cache(self, module):
        key = (id(module), torch.is_autocast_enabled(), torch.get_autocast_dtype(module.device.type)
               if torch.is_autocast_enabled() else None)
        if key not in self._caches:
            core = module.get_base_model() if hasattr(module, "get_base_model") else module
            # A causal LM would compute the logits of every prefix position; none of them is wanted.
            head = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(core.forward).parameters else {}
            with torch.no_grad():
                self._caches[key] = returned_cache(module(input_ids=self._ids[None].to(module.device), use_cache=True,
                                                          **head))
        return self._caches[key]

    def copied_cache(self, module, rows: int):
        """A fresh copy of the prefix's KV cache for `rows` rows (a forward appends to the cache it is given)."""
        cache = copy.deepcopy(self._cache(module))
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def inputs_after(self, module, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """Keyword arguments for `module` (a causal LM or its decoder) that read `ids` / `mask` (right-padded,
        every row starting with the prefix: `fits`) without reading the prefix again; the output's positions
        are those of `ids[:, len(prefix):]`. The cache is a fresh copy: the forward appends to it."""
        n, rows = len(self.tokens), ids.shape[0]
        cache = self.copied_cache(module, rows)
        device = module.device
        full_mask = torch.cat([torch.ones((rows, n), dtype=mask.dtype), mask[:, n:]], dim=1)
        positions = torch.arange(n, ids.shape[1], dtype=torch.long).expand(rows, -1)
        return dict(input_ids=ids[:, n:].to(device), attention_mask=full_mask.to(device),
                    position_ids=positions.to(device), use_cache=True, **{cache_keyword(module): cache})


def teacher_prefix(prompt, tokenizer) -> SharedPrefix | None:
    """What every prompted context of `prompt` (anything `prompts.as_bake_prompt` takes) starts with, whatever
    the question: the shared prefix of a few unlike questions' contexts. A batch whose rows do not all start
    with it (a question that merges with the template's last token, a replayed answer's other prompt) is read
    whole, as before."""
    from .chat import encode_like_lm_eval
    from .prompts import as_bake_prompt

    bake_prompt = as_bake_prompt(prompt, tokenizer)
    return SharedPrefix.of([encode_like_lm_eval(tokenizer, bake_prompt.context(tokenizer, question))
                            for question in _PROBE_QUESTIONS])
