"""The speed/memory levers change how the loss is computed, never what it is."""

import pytest
import torch

from lm_eval_baking import BakeConfig, BakingError, PromptBaker
from lm_eval_baking.baking import attach_lora
from lm_eval_baking.kl import chunked_kl_sum, forward_kl, teacher_topk, topk_kl
from lm_eval_baking.models import load_model
from lm_eval_baking.trajectories import Trajectory

from conftest import PIRATE, tiny_config


@pytest.mark.parametrize("top_k", [None, 5])
def test_chunked_kl_matches_unchunked_value_and_gradient(top_k):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    states = torch.randn(13, 8, requires_grad=True)
    teacher = torch.randn(13, 50)
    whole = forward_kl(teacher, head(states), top_k).sum()
    (whole_grad,) = torch.autograd.grad(whole, states)
    chunked = chunked_kl_sum(head, states, teacher, chunk_size=4, top_k=top_k)
    (chunked_grad,) = torch.autograd.grad(chunked, states)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-5)
    assert torch.allclose(chunked_grad, whole_grad, atol=1e-6)


def test_cached_topk_teacher_gives_the_topk_kl():
    torch.manual_seed(1)
    teacher, student = torch.randn(6, 40), torch.randn(6, 40)
    cached = topk_kl(*teacher_topk(teacher, 7), torch.log_softmax(student, dim=-1))
    assert torch.allclose(cached, forward_kl(teacher, student, top_k=7), atol=1e-6)


def _trajectories(tokenizer):
    questions = ["Why is the sky blue?", "Name a fish.", "What is 2+2?", "Tell me a joke about boats, please."]
    return [Trajectory(question=q, answer="", answer_ids=tokenizer.encode(" Ahoy matey" * (i + 1))[:2 + 3 * i])
            for i, q in enumerate(questions)]


def test_teacher_cache_reproduces_the_uncached_loss_and_is_reused(tiny_model_dir, question_file):
    config = tiny_config(tiny_model_dir, question_file, top_k=16)
    model, tokenizer = load_model(tiny_model_dir)
    model = attach_lora(model, config)
    batch = _trajectories(tokenizer)
    plain = PromptBaker(model, tokenizer, config, progress=False).compute_loss(batch)
    cached_baker = PromptBaker(model, tokenizer, BakeConfig(**{**config.to_dict(), "cache_teacher": True}),
                               progress=False)
    first = cached_baker.compute_loss(batch)
    assert len(cached_baker._teacher_cache) == len(batch)
    again = cached_baker.compute_loss(batch[::-1])  # from the cache, in another order
    assert first.item() == pytest.approx(plain.item(), rel=1e-5)
    assert again.item() == pytest.approx(plain.item(), rel=1e-5)


def test_length_bucketing_keeps_every_trajectory_once(tiny_model_dir, question_file):
    config = tiny_config(tiny_model_dir, question_file, length_bucketing=True, batch_size=2)
    model, tokenizer = load_model(tiny_model_dir)
    baker = PromptBaker(attach_lora(model, config), tokenizer, config, progress=False)
    trajectories = _trajectories(tokenizer)
    batches = baker.batches(trajectories, 1)
    assert sorted(id(t) for b in batches for t in b) == sorted(id(t) for t in trajectories)
    lengths = [[len(t.answer_ids) for t in b] for b in batches]
    assert sorted(map(sorted, lengths)) == [[2, 5], [8, 11]]  # neighbours in length share a batch


def test_cache_teacher_needs_top_k():
    with pytest.raises(BakingError, match="--top-k"):
        BakeConfig(prompt=PIRATE, cache_teacher=True).validate()
