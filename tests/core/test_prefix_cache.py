"""The shared-prefix KV cache gives the log-probs of reading the whole sequence, on every architecture."""

from __future__ import annotations

import pytest
import torch

from lm_eval_baking.core.batching import answer_logits, paired_batch
from lm_eval_baking.core.prefix_cache import SharedPrefix

from conftest import ARCHITECTURES, tiny_architecture_config

LONG_PROMPT = "You are a careful assistant for a shipping company. " * 12


def test_the_shared_prefix_leaves_every_sequence_a_token_of_its_own():
    assert SharedPrefix.of([[1, 2, 3, 4], [1, 2, 3, 9]], min_tokens=1).tokens == [1, 2, 3]
    assert SharedPrefix.of([[1, 2, 3], [1, 2, 3, 4]], min_tokens=1).tokens == [1, 2]  # [1, 2, 3] would leave none
    assert SharedPrefix.of([[1, 2], [3, 4]], min_tokens=1) is None
    assert SharedPrefix.of([[1, 2, 3, 4], [1, 2, 3, 5]], min_tokens=4) is None  # too short to pay
    assert SharedPrefix.of([], min_tokens=1) is None


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_cached_prefix_gives_the_uncached_log_probs(kind, default_model_dir):
    """fp32: teacher log-probs at the answer positions agree with one forward over the whole sequence to 1e-4."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_architecture_config(kind, tokenizer)).eval()
    questions = ["Where is my parcel?", "Can I change the address of a delivery that already left?", "Hi"]
    contexts = [tokenizer.apply_chat_template([{"role": "system", "content": LONG_PROMPT},
                                               {"role": "user", "content": q}], add_generation_prompt=True,
                                              tokenize=False) for q in questions]
    contexts = [tokenizer.encode(c, add_special_tokens=False) for c in contexts]
    answers = [tokenizer.encode(a, add_special_tokens=False) for a in ("It is on its way.", "Yes", "Hello! How can I help?")]
    prefix = SharedPrefix.of(contexts)
    assert prefix is not None and len(prefix) > 100
    batch = paired_batch(contexts, contexts, answers, tokenizer.pad_token_id)
    with torch.no_grad():
        plain = answer_logits(model, batch.teacher_ids, batch.teacher_mask, batch.teacher_positions)
        assert prefix.fits(batch.teacher_ids, batch.teacher_mask, batch.teacher_positions)
        cached = answer_logits(model, batch.teacher_ids, batch.teacher_mask, batch.teacher_positions, prefix)
        again = answer_logits(model, batch.teacher_ids, batch.teacher_mask, batch.teacher_positions, prefix)
    assert cached.shape == plain.shape == (sum(map(len, answers)), len(tokenizer))
    difference = (torch.log_softmax(cached, -1) - torch.log_softmax(plain, -1)).abs().max().item()
    assert difference < 1e-4, difference
    assert torch.equal(cached, again)  # the kept cache is not changed by a forward that used it


def test_a_batch_that_does_not_start_with_the_prefix_reads_everything():
    prefix = SharedPrefix([5, 6, 7])
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 1, 8, 9]])
    mask = torch.ones_like(ids)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, 3:] = True
    assert not prefix.fits(ids, mask, positions)
    assert prefix.fits(ids[:1], mask[:1], positions[:1])
    positions[0, 2] = True  # the logits after the prefix's last token are not in its cache
    assert not prefix.fits(ids[:1], mask[:1], positions[:1])


def test_sampling_from_the_cached_prompt_draws_what_generate_draws(tiny_model_dir, monkeypatch):
    """Same seed, fp32: the answers and the captured top-k teacher of the cached path are generate()'s."""
    import lm_eval_baking.core.sampling as sampling
    from lm_eval_baking.core.models import load_model
    from lm_eval_baking.core.prefix_cache import teacher_prefix
    from lm_eval_baking.core.questions import Question

    model, tokenizer = load_model(tiny_model_dir)
    questions = [Question("Where is my parcel?"), Question("Can I change the address?"), Question("Hi")]
    assert teacher_prefix(LONG_PROMPT, tokenizer) is not None

    def draw():
        return sampling.sample_trajectories(model, tokenizer, questions, system_prompt=LONG_PROMPT,
                                            samples_per_question=2, max_new_tokens=8, temperature=1.0, seed=4,
                                            progress=False, capture_top_k=5)
    cached = draw()
    monkeypatch.setattr(SharedPrefix, "of", classmethod(lambda *_, **__: None))  # every context read whole
    plain = draw()
    assert [t.answer_ids for t in cached] == [t.answer_ids for t in plain]
    assert len({tuple(t.answer_ids) for t in cached}) > 1  # sampled, not one greedy answer
    for c, p in zip(cached, plain):
        assert torch.equal(c.teacher_top_k[1], p.teacher_top_k[1])
        assert torch.allclose(c.teacher_top_k[0], p.teacher_top_k[0], atol=1e-4)
