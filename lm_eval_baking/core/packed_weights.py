"""A frozen model's linear layers with their bf16 weights packed once for oneDNN (CPU, bf16 autocast).

Under bf16 autocast on a CPU every `nn.Linear` casts its fp32 weight to bf16
(autocast keeps the cast for the context) and oneDNN then reorders it into
its blocked matmul layout at every call. A decode step of a few rows is all
weight traffic, so that reorder is a good part of it: on the drift
conversations' 5-row steps of the 135M default model, a linear with its
weight packed once runs about 1.3-1.6x faster (docs/performance.md). Packing
runs the same oneDNN kernel on the same bf16 numbers, so the outputs are the
autocast linear's bit for bit (tested: tests/core/test_packed_weights.py).

Only for weights that do not change while the context lives (a frozen model
generating), only without autograd (a packed weight has no gradient) and
only where oneDNN has bf16; anywhere else each layer runs as before.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

# The row count oneDNN packs a weight for; any count runs. Packed for 1 row it picks a gemv layout whose outputs
# for more than 32 rows round differently from the autocast linear's; packed for 5, 8 or 32 rows they were equal
# at every row count tried (1 to 3,500) on an AMX CPU, and 5-row steps ran as fast.
PACKED_FOR_ROWS = 8


def packing_pays(model, dtype: torch.dtype | None) -> bool:
    """Whether packing applies: bf16 autocast of a model on a CPU whose oneDNN has bf16 matmuls."""
    return (dtype == torch.bfloat16 and model.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def packed_linears(model, dtype: torch.dtype | None):
    """Within the context, every plain `nn.Linear` of `model` with an fp32 weight runs its bf16 autocast matmul
    on a weight packed once; a no-op where `packing_pays` says no."""
    patched: list[nn.Linear] = []
    try:
        if packing_pays(model, dtype):
            for module in model.modules():
                # A module whose forward is already replaced (e.g. by an accelerate hook) is left alone.
                if type(module) is nn.Linear and module.weight.dtype == torch.float32 and "forward" not in vars(module):
                    module.forward = _packed_forward(module, dtype)
                    patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def _packed_forward(module: nn.Linear, dtype: torch.dtype):
    weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach().to(dtype), PACKED_FOR_ROWS)
    bias = None if module.bias is None else module.bias.detach().to(dtype)
    plain = module.forward  # the class's forward, bound: what any other call runs

    def forward(x: torch.Tensor) -> torch.Tensor:
        # What autocast would do: the input cast to bf16 (as F.linear under autocast casts it), a bf16 output.
        if torch.is_grad_enabled() or not torch.is_autocast_enabled("cpu") \
                or torch.get_autocast_dtype("cpu") != dtype or not x.is_floating_point():
            return plain(x)
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), weight, bias, "none", [], "")

    return forward
