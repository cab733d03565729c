"""Low-precision copies of the frozen base's linear weights, used by the training step only.

Under autocast every fp32 linear weight is cast to bf16 at every forward pass:
autocast's cast cache keeps only leaf tensors that require grad, so a frozen
weight is cast again for the teacher's forward and again for the student's,
at every step (a read of 4 bytes and a write of 2 per parameter, each time).
Casting each frozen weight once, before the first step, and lending the copy
to the module for the training forward removes that work. The copy holds the
same bf16 values autocast makes (`Tensor.to` rounds to nearest even, as
autocast's cast does), so the loss and its gradients are bitwise those of
autocast's own casts; the held-out KL and everything reported keep reading
the fp32 weights, since the copies are lent only inside `lent()`.

The price is memory: a bf16 copy is half the size of the fp32 weights it
shadows, which is why `BakeConfig.bf16_weight_copy` turns it on for CPU bakes
only by default (docs/performance.md has the measurements).
"""

from __future__ import annotations

import contextlib

import torch


def _eligible(module: torch.nn.Module, dtype: torch.dtype) -> bool:
    """A frozen full-precision weight that autocast would cast for a matmul: nn.Linear (PEFT's base layers,
    MLPs, the LM head) and GPT-2's Conv1D. Embeddings and norms are not autocast ops and keep fp32."""
    weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    if weight is None or weight.requires_grad or weight.dtype != torch.float32 or weight.dtype == dtype:
        return False
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


class FrozenWeightCopies:
    """bf16 (or `dtype`) copies of every frozen fp32 linear weight of `models`, made on first use."""

    def __init__(self, models, dtype: torch.dtype):
        self.models = [m for m in models if m is not None]
        self.dtype = dtype
        # (module, its own fp32 Parameter, that Parameter's version when copied, the copy)
        self._copies: list[tuple[torch.nn.Module, torch.nn.Parameter, int, torch.nn.Parameter]] | None = None

    def _build(self) -> None:
        copies, seen = [], set()
        for model in self.models:
            for module in model.modules():
                if id(module) in seen or not _eligible(module, self.dtype):
                    continue
                seen.add(id(module))
                weight = module._parameters["weight"]
                # A tied LM head shares its Parameter with the embedding: the head gets the copy, the
                # embedding keeps the fp32 Parameter (it is swapped per module, not per Parameter).
                copy = torch.nn.Parameter(weight.detach().to(self.dtype), requires_grad=False)
                copies.append((module, weight, weight._version, copy))
        self._copies = copies

    def _stale(self) -> bool:
        """True if a base weight changed in place since it was copied (say, an adapter merged into it)."""
        return any(weight._version != version for _, weight, version, _ in self._copies)

    @contextlib.contextmanager
    def lent(self):
        """Within this block the modules hold the copies; on leaving, their fp32 weights again. Autograd
        keeps what the forward saved, so backward may run after the block."""
        if self._copies is None or self._stale():
            self._build()
        for module, _, _, copy in self._copies:
            module._parameters["weight"] = copy
        try:
            yield
        finally:
            for module, weight, _, _ in self._copies:
                module._parameters["weight"] = weight

    @property
    def n_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for *_, c in self._copies or [])
