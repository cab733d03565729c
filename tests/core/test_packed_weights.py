"""Packed linear weights (core.packed_weights) give the bf16 autocast linears' numbers bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lm_eval_baking.core.packed_weights import packed_linears, packing_pays

from conftest import ARCHITECTURES, tiny_architecture_config


def _patched(model) -> int:
    return sum("forward" in vars(m) for m in model.modules())


def _logits_twice(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids, attention_mask=mask).logits
        with packed_linears(model, torch.bfloat16):
            assert _patched(model) == (sum(type(m) is nn.Linear for m in model.modules())
                                       if packing_pays(model, torch.bfloat16) else 0)
            packed = model(input_ids=ids, attention_mask=mask).logits
    assert _patched(model) == 0  # every layer has its own forward back
    return plain, packed


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_packed_linears_give_the_autocast_logits(kind, default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_baking.core.batching import pad

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_architecture_config(kind, tokenizer)).eval()
    rows = [tokenizer.encode("The sea is calm today and"), tokenizer.encode("One two")]
    ids, mask = pad(rows, tokenizer.pad_token_id, left=True)
    plain, packed = _logits_twice(model, ids, mask)
    assert torch.equal(plain, packed)


def test_packed_linears_give_the_default_models_autocast_logits(default_model_dir):
    """The model drift-data runs, in its shapes: a few rows of one token (a decode step) and a longer read."""
    from lm_eval_baking.core.models import load_model

    model, _ = load_model(default_model_dir)
    torch.manual_seed(0)
    for shape in ((5, 1), (2, 40)):
        ids = torch.randint(100, 40000, shape)
        plain, packed = _logits_twice(model, ids, torch.ones_like(ids))
        assert torch.equal(plain, packed), shape


def test_packing_is_a_no_op_out_of_bf16_autocast_and_with_autograd(tiny_model_dir):
    from lm_eval_baking.core.models import load_model

    model, _ = load_model(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7]])
    with packed_linears(model, None):
        assert _patched(model) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16), packed_linears(model, torch.bfloat16):
        logits = model(input_ids=ids).logits  # autograd on: every layer runs as before
        assert logits.requires_grad
        logits.sum().backward()
    assert _patched(model) == 0
