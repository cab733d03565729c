"""Which layers the LoRA adapter wraps, named the way PEFT matches them, for any decoder architecture.

PEFT matches a `target_modules` list by suffix: a module is wrapped when its
full name equals an entry or ends with "." + the entry. Layer names differ
between architectures (Llama's q_proj/k_proj/v_proj/o_proj, GPT-2's c_attn and
c_proj, GPT-NeoX's query_key_value and dense, Phi-3's qkv_proj and o_proj...),
so the default target is a keyword resolved on the model itself:

- `attention`: the linear layers (nn.Linear, or GPT-2's Conv1D) inside each
  decoder layer's attention block, the authors' choice. The attention block
  is the outermost module of a decoder layer whose class name says Attention
  (LlamaAttention, GPT2Attention, ...) or that is named attn/attention/self_attn.
- `all-linear`: every linear layer except the output head (PEFT's
  "all-linear" rule).

Any other entry is a module name, used as PEFT would. A keyword resolves to
the shortest suffixes that match exactly the chosen layers: the leaf name
where it is unique to them (q_proj), else with its parent (attn.c_proj, since
GPT-2's MLP has a c_proj too). On the default Llama model `attention` resolves
to exactly q_proj, k_proj, v_proj, o_proj.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ..errors import BakingError
from ..utils.text import quoted

ATTENTION = "attention"
ALL_LINEAR = "all-linear"
KEYWORDS = (ATTENTION, ALL_LINEAR)
_ATTENTION_CHILD_NAMES = {"attn", "attention", "self_attn", "self_attention"}


@dataclass
class LoraTargets:
    """The user's request and what it resolved to on one model."""

    requested: list[str]
    target_modules: list[str]
    """What LoraConfig(target_modules=...) gets: suffixes PEFT matches."""
    modules: list[str] = field(default_factory=list)
    """Full names of every module these wrap, in model order."""

    def counts(self) -> dict[str, int]:
        """How many modules each entry of `target_modules` wraps."""
        return {t: sum(matches(name, t) for name in self.modules) for t in self.target_modules}

    def to_record(self) -> dict:
        return {"requested": list(self.requested), "target_modules": list(self.target_modules),
                "modules": len(self.modules), "per_target": self.counts()}


def matches(name: str, target: str) -> bool:
    """PEFT's rule for one entry of a target_modules list."""
    return name == target or name.endswith("." + target)


def is_linear(module) -> bool:
    """A layer LoRA can wrap as a linear map: nn.Linear (bitsandbytes' 4-bit layers subclass it) or Conv1D."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def resolve_targets(model, requested: list[str]) -> LoraTargets:
    """Resolve `requested` (keywords and/or module names) on `model` (a real or meta-device skeleton).

    Raises a one-line BakingError naming real candidates when an entry wraps nothing.
    """
    named = [(name, module) for name, module in _base(model).named_modules() if name]
    names = [name for name, _ in named]
    linear = [name for name, module in named if is_linear(module)]
    chosen: list[str] = []
    explicit: list[str] = []
    for entry in requested:
        if entry == ATTENTION:
            found = attention_linears(model)
            if not found:
                raise BakingError(f"found no attention block in this model's layers ({_architecture(model)}); pass "
                                  f"--target-modules {ALL_LINEAR} or names from: {candidates(model)}")
            chosen += found
        elif entry == ALL_LINEAR:
            head = _output_head_name(model)
            chosen += [name for name in linear if name != head]
        else:
            if not any(matches(name, entry) for name in linear):
                raise BakingError(f"--target-modules {quoted(entry)} matches no linear layer of this model "
                                  f"({_architecture(model)}); pick from: {candidates(model)}, or the keywords "
                                  f"{' / '.join(KEYWORDS)}")
            explicit.append(entry)
    targets = shortest_suffixes(names, _unique(chosen)) + [e for e in _unique(explicit)]
    targets = _unique(targets)
    wrapped = [name for name in linear if any(matches(name, t) for t in targets)]
    return LoraTargets(requested=list(requested), target_modules=targets, modules=wrapped)


def attention_linears(model) -> list[str]:
    """Full names of the linear layers inside the decoder layers' attention blocks, in model order."""
    found: list[str] = []
    for layer_name, layer in _decoder_layers(model):
        for block_name, block in _attention_blocks(layer):
            prefix = ".".join(p for p in (layer_name, block_name) if p)
            found += [f"{prefix}.{name}" for name, module in block.named_modules() if name and is_linear(module)]
    return found


def shortest_suffixes(all_names: list[str], chosen: list[str]) -> list[str]:
    """For each chosen module, its shortest dotted suffix that matches only chosen modules (deduplicated).

    Layer indices are never used, so a suffix names the same layer in every block.
    """
    chosen_set = set(chosen)
    out: list[str] = []
    for name in chosen:
        parts = name.split(".")
        suffix = name
        for depth in range(1, len(parts) + 1):
            candidate = ".".join(parts[-depth:])
            if any(p.isdigit() for p in parts[-depth:]):
                break  # a layer index would single out one block: keep the full name instead
            if all(n in chosen_set for n in all_names if matches(n, candidate)):
                suffix = candidate
                break
        out.append(suffix)
    return _unique(out)


def candidates(model, limit: int = 16) -> str:
    """The model's linear layers by leaf name with their counts: 'q_proj (30), ..., lm_head (1)'."""
    counts = Counter(name.rsplit(".", 1)[-1] for name, module in _base(model).named_modules()
                     if name and is_linear(module))
    shown = [f"{leaf} ({n})" for leaf, n in list(counts.items())[:limit]]
    more = f" and {len(counts) - limit} more" if len(counts) > limit else ""
    return ", ".join(shown) + more if shown else "(no linear layers)"


def _decoder_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every decoder layer: the members of the model's longest nn.ModuleList of blocks."""
    base = _base(model)
    layer_classes = set(getattr(base, "_no_split_modules", None) or [])
    layers = [(name, m) for name, m in base.named_modules() if type(m).__name__ in layer_classes]
    if layers:
        return layers
    lists = [(name, m) for name, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        return []
    name, longest = max(lists, key=lambda item: len(item[1]))
    return [(f"{name}.{i}", m) for i, m in enumerate(longest)]


def _attention_blocks(layer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The outermost attention modules inside one decoder layer (self- and cross-attention)."""
    blocks: list[tuple[str, torch.nn.Module]] = []
    for name, module in layer.named_modules():
        if not name or any(name.startswith(b + ".") for b, _ in blocks):
            continue
        leaf = name.rsplit(".", 1)[-1].lower()
        if "attention" in type(module).__name__.lower() or leaf in _ATTENTION_CHILD_NAMES:
            if any(is_linear(m) for m in module.modules()):
                blocks.append((name, module))
    return blocks


def _output_head_name(model) -> str | None:
    base = _base(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return next((name for name, m in base.named_modules() if m is head), None) if head is not None else None


def _base(model):
    """The transformers model under a PEFT wrapper (names then match what LoraConfig sees)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _architecture(model) -> str:
    return str(getattr(getattr(_base(model), "config", None), "model_type", type(_base(model)).__name__))


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
