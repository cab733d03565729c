import pytest
import torch

from lm_eval_baking.core.models import load_model
from lm_eval_baking.core.questions import Question
from lm_eval_baking.core.chat import chat_prefix, lm_eval_encode_pair
from lm_eval_baking.core.sampling import sample_trajectories
from lm_eval_baking.core.scoring import continuation_logprobs

from conftest import PIRATE

QUESTIONS = [Question("Why is the sky blue?"), Question("How do I boil an egg?"), Question("What is 7 times 8?")]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def hflm(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4)


def test_chat_prefix_puts_prompt_in_system_turn(tiny):
    _, tokenizer = tiny
    prompted = chat_prefix(tokenizer, "Hi?", PIRATE)
    plain = chat_prefix(tokenizer, "Hi?", None)
    assert PIRATE in prompted and PIRATE not in plain
    assert prompted.endswith("assistant\n") and plain.endswith("assistant\n")


@pytest.mark.parametrize("answer", ["Ahoy! The sky be blue.", " leading space", "", "multi\nline\n"])
def test_encode_pair_matches_lm_eval(tiny, hflm, answer):
    _, tokenizer = tiny
    context = chat_prefix(tokenizer, "Why is the sky blue?", PIRATE)
    assert lm_eval_encode_pair(tokenizer, context, answer) == tuple(hflm._encode_pair(context, answer))


def test_continuation_logprobs_match_lm_eval_loglikelihood(tiny, hflm):
    from lm_eval.api.instance import Instance

    model, tokenizer = tiny
    pairs = [(chat_prefix(tokenizer, q.text, PIRATE), f"Ahoy! About {q.text.lower()}") for q in QUESTIONS]
    ours = continuation_logprobs(model, tokenizer, pairs, batch_size=2, progress=False)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    theirs = hflm.loglikelihood(requests, disable_tqdm=True)
    for (our_logprob, n_tokens), (their_logprob, _), (ctx, cont) in zip(ours, theirs, pairs):
        assert our_logprob == pytest.approx(their_logprob, abs=1e-3)
        assert n_tokens == len(lm_eval_encode_pair(tokenizer, ctx, cont)[1])


def test_sampling_is_seeded_and_stops_at_eos(tiny):
    model, tokenizer = tiny
    run = lambda seed: sample_trajectories(model, tokenizer, QUESTIONS, system_prompt=PIRATE, samples_per_question=2,
                                           max_new_tokens=6, temperature=1.0, batch_size=4, seed=seed, progress=False)
    first, again, other = run(0), run(0), run(1)
    assert [t.answer_ids for t in first] == [t.answer_ids for t in again]
    assert [t.answer_ids for t in first] != [t.answer_ids for t in other]
    assert len(first) == 6 and all(1 <= len(t.answer_ids) <= 6 for t in first)
    assert [t.question for t in first] == [q.text for q in QUESTIONS for _ in range(2)]
    for t in first:
        assert tokenizer.eos_token_id not in t.answer_ids[:-1]


def test_sampling_leaves_global_rng_alone(tiny):
    model, tokenizer = tiny
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    sample_trajectories(model, tokenizer, QUESTIONS[:1], system_prompt=None, max_new_tokens=2, progress=False)
    assert torch.rand(1) == expected
