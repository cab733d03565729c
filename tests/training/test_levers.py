"""The speed/memory levers change how the loss is computed, never what it is."""

import pytest
import torch

from lm_eval_baking import BakeConfig, BakingError, PromptBaker, bake
from lm_eval_baking.training.baker import attach_lora
from lm_eval_baking.core.kl import chunked_kl_sum, forward_kl, teacher_topk, topk_kl
from lm_eval_baking.core.models import load_model
from lm_eval_baking.core.prefix_cache import teacher_prefix
from lm_eval_baking.core.questions import load_questions
from lm_eval_baking.core.sampling import Trajectory, sample_trajectories

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


def test_top_k_captured_while_sampling_is_the_teacher_and_skips_its_forward(tiny_model_dir, question_file):
    config = tiny_config(tiny_model_dir, question_file, top_k=16, cache_teacher=True, temperature=0.7)
    model, tokenizer = load_model(tiny_model_dir)
    questions = load_questions(str(question_file))[:4]
    sampled = sample_trajectories(model, tokenizer, questions, system_prompt=config.prompt, max_new_tokens=6,
                                  temperature=config.temperature, seed=3, progress=False, capture_top_k=16)
    assert all(t.teacher_top_k[0].shape == (len(t.answer_ids), 16) for t in sampled)
    assert "teacher_top_k" not in sampled[0].to_dict(), "kept in memory, never written to train.jsonl"

    model = attach_lora(model, config)
    forwards = []
    model.get_input_embeddings().register_forward_hook(lambda *_: forwards.append(1))  # once per forward pass
    captured = PromptBaker(model, tokenizer, config, progress=False).compute_loss(sampled)
    assert len(forwards) == 1, "the student's forward only: the teacher came from sampling"
    plain = [Trajectory(question=t.question, answer=t.answer, answer_ids=t.answer_ids) for t in sampled]
    computed = PromptBaker(model, tokenizer, config, progress=False).compute_loss(plain)
    assert teacher_prefix(config.prompt, tokenizer) is not None
    assert len(forwards) == 4, "without the capture, the teacher runs: over its prompt once (the prefix cache), " \
                               "then over the rest, and the student"
    # Captured before temperature: the same teacher as the full forward, up to KV-cache and padding rounding.
    assert captured.item() == pytest.approx(computed.item(), rel=1e-4)


def test_a_cached_top_k_bake_never_runs_the_teacher_in_training(tiny_model_dir, question_file, tmp_path, monkeypatch):
    import lm_eval_baking.training.baker

    def no_teacher_forward(*_):
        raise AssertionError("the teacher ran in training although its top-k was captured while sampling")

    monkeypatch.setattr(lm_eval_baking.training.baker, "teacher_topk", no_teacher_forward)
    result = bake(tiny_config(tiny_model_dir, question_file, top_k=16, cache_teacher=True), tmp_path / "bake",
                  progress=False)
    assert result.kl_ratio < 1


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


def _loss_and_lora_grads(model, tokenizer, config, batch):
    baker = PromptBaker(model, tokenizer, config, progress=False)
    loss = baker.compute_loss(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    baker.optimizer.zero_grad(set_to_none=True)
    return baker, loss.item(), grads


@pytest.mark.parametrize("cache_teacher", [False, True])
def test_bf16_weight_copy_gives_autocasts_loss_and_gradients_bitwise(tiny_model_dir, question_file, cache_teacher):
    """The copies hold the values autocast's own cast makes, so the training step cannot tell them apart."""
    extra = {"top_k": 16, "cache_teacher": True} if cache_teacher else {}
    config = tiny_config(tiny_model_dir, question_file, precision="bf16", **extra)
    model, tokenizer = load_model(tiny_model_dir)
    model = attach_lora(model, config)
    batch = _trajectories(tokenizer)
    off, off_loss, off_grads = _loss_and_lora_grads(
        model, tokenizer, BakeConfig(**{**config.to_dict(), "bf16_weight_copy": "off"}), batch)
    on, on_loss, on_grads = _loss_and_lora_grads(
        model, tokenizer, BakeConfig(**{**config.to_dict(), "bf16_weight_copy": "on"}), batch)
    assert off.weight_copies is None and on.weight_copies.n_bytes > 0
    assert on_loss == off_loss
    assert all(torch.equal(on_grads[name], off_grads[name]) for name in off_grads)
    # Lent for the step only: afterwards every weight is the fp32 Parameter again, the embedding throughout.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with on.weight_copies.lent():
        assert model.get_input_embeddings().weight.dtype == torch.float32
        assert model.get_output_embeddings().weight.dtype == torch.bfloat16


def test_bf16_weight_copy_only_where_autocast_would_cast(tiny_model_dir, question_file):
    model, tokenizer = load_model(tiny_model_dir)
    for settings, used in [({"precision": "bf16"}, True),  # auto on a CPU
                           ({"precision": "bf16", "bf16_weight_copy": "off"}, False),
                           ({"precision": "fp32", "bf16_weight_copy": "on"}, False)]:
        config = tiny_config(tiny_model_dir, question_file, **settings)
        assert (PromptBaker(model, tokenizer, config, progress=False).weight_copies is not None) == used
    with pytest.raises(BakingError, match="--bf16-weight-copy"):
        tiny_config(tiny_model_dir, question_file, bf16_weight_copy="yes")


def test_bf16_weight_copy_follows_a_base_weight_changed_in_place(tiny_model_dir, question_file):
    config = tiny_config(tiny_model_dir, question_file, precision="bf16")
    model, tokenizer = load_model(tiny_model_dir)
    model = attach_lora(model, config)
    copies = PromptBaker(model, tokenizer, config, progress=False).weight_copies
    layer = model.get_base_model().model.layers[0].mlp.up_proj
    fp32 = layer.weight
    with copies.lent():
        assert layer.weight.dtype == torch.bfloat16
    with torch.no_grad():
        fp32.add_(1.0)  # as merging an adapter into the base does
    with copies.lent():
        assert torch.equal(layer.weight, fp32.to(torch.bfloat16))
    assert layer.weight is fp32
