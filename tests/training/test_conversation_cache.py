"""A multi-turn bake reads each conversation once (docs/multi-turn.md, Cost), and trains on the same loss as
one example per turn: the student's one row per conversation, the teacher walked along one KV cache."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from conftest import PIRATE, tiny_config
from lm_eval_baking import BakingError
from lm_eval_baking.core.batching import packed_rows
from lm_eval_baking.core.sampling import Trajectory
from lm_eval_baking.training.baker import PromptBaker, attach_lora
from lm_eval_baking.training.config import MultiTurnConfig
from lm_eval_baking.training.multi_turn import turn_trajectories

CONVERSATIONS = [
    [{"role": "user", "content": "Hi! What should I cook tonight?"}, {"role": "assistant", "content": "Pasta, matey."},
     {"role": "user", "content": "And for dessert?"}, {"role": "assistant", "content": "Ice cream with rum."},
     {"role": "user", "content": "Which flavour?"}, {"role": "assistant", "content": "Vanilla, of course."},
     {"role": "user", "content": "Why that one?"}, {"role": "assistant", "content": "It keeps on long voyages."}],
    [{"role": "user", "content": "Tell me about the sea."}, {"role": "assistant", "content": "It is wide and wet."},
     {"role": "user", "content": "How deep?"}, {"role": "assistant", "content": "Eleven kilometres at most."},
     {"role": "user", "content": "Any fish there?"}, {"role": "assistant", "content": "Strange ones, glowing."},
     {"role": "user", "content": "Would you go?"}, {"role": "assistant", "content": "Aye, in a sturdy ship!"}],
]
# A chat template that renders an earlier reply otherwise than it was answered (as templates that strip
# reasoning or add dates do): a turn's context and answer are then no prefix of the next turn's context.
MARKING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
           "{% if m['role'] == 'assistant' %}(earlier) {% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
REFRESH = {None: dict(refresh=False), "system": dict(refresh_as="system"), "user": dict(refresh_as="user")}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model with a LoRA whose B factors are not zero, so the student is not the base."""
    from lm_eval_baking.core.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir))
    model = attach_lora(model, tiny_config(tiny_model_dir, "unused"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    return model, tokenizer


def _baker(tiny, refresh, *, by_conversation=True, tokenizer=None, **overrides) -> PromptBaker:
    model, own_tokenizer = tiny
    settings = MultiTurnConfig(enabled=True, by_conversation=by_conversation, max_depth=4, **REFRESH[refresh])
    config = tiny_config("unused", "unused", multi_turn=settings, **overrides)  # fp32
    return PromptBaker(model, tokenizer or own_tokenizer, config, progress=False)


def _turns(tokenizer) -> list[Trajectory]:
    return turn_trajectories(CONVERSATIONS, range(1, 5), tokenizer, temperature=1.0)


def _loss_and_gradient(baker: PromptBaker, batches: list[list[Trajectory]]) -> tuple[float, list[torch.Tensor]]:
    """Σ over `batches` of the summed KL (n_tokens=1: not divided), and its gradient on the LoRA weights."""
    baker.model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = baker.compute_loss(batch, n_tokens=1)
        loss.backward()
        total += loss.item()
    gradient = [p.grad.clone() for p in baker.model.parameters() if p.requires_grad]
    baker.model.zero_grad(set_to_none=True)
    return total, gradient


# ---------------------------------------------------------------------------- the student


def test_packed_rows_read_a_sequence_inside_the_longest_it_starts():
    prefixes = [[1, 2, 3], [1, 2, 3, 4, 5, 6], [7, 8], [1, 2, 3]]
    answers = [[4, 5], [9], [9, 9], [4, 5]]  # the first and last are the same, and the start of the second
    rows = packed_rows(prefixes, answers, pad_id=0)
    assert rows.ids.tolist() == [[1, 2, 3, 4, 5, 6, 9], [7, 8, 9, 9, 0, 0, 0]]
    assert rows.mask.tolist() == [[1] * 7, [1] * 4 + [0] * 3]
    predicted = rows.ids[rows.positions[0], rows.positions[1] + 1].tolist()  # what each position predicts
    assert predicted == [4, 5, 9, 9, 9, 4, 5]  # every answer in order, the shared one counted twice
    assert rows.n_answer_tokens == 7


@pytest.mark.parametrize("refresh", list(REFRESH))
def test_one_row_per_conversation_gives_the_per_turn_loss_and_gradient(tiny, refresh):
    new, old = _baker(tiny, refresh), _baker(tiny, refresh, by_conversation=False)
    turns = _turns(tiny[1])
    ids, _, _ = new.student_inputs(turns)
    assert ids.shape[0] == len(CONVERSATIONS)  # each conversation one row
    assert old.student_inputs(turns)[0].shape[0] == len(turns)
    whole, whole_gradient = _loss_and_gradient(new, [turns])
    per_turn, per_turn_gradient = _loss_and_gradient(old, [[t] for t in turns])
    assert whole > 0 and whole == pytest.approx(per_turn, rel=1e-5)
    for a, b in zip(whole_gradient, per_turn_gradient):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_template_that_renders_earlier_replies_otherwise_falls_back_to_a_row_per_turn(tiny):
    marking = copy.deepcopy(tiny[1])
    marking.chat_template = MARKING
    new = _baker(tiny, "system", tokenizer=marking)
    old = _baker(tiny, "system", by_conversation=False, tokenizer=marking)
    turns = _turns(marking)
    assert "(earlier) Pasta" in new.tokenizer.decode(new.prefix(turns[1], False))
    assert new.student_inputs(turns)[0].shape[0] == len(turns)  # nothing nests: a row per turn
    assert _loss_and_gradient(new, [turns])[0] == pytest.approx(_loss_and_gradient(old, [turns])[0], rel=1e-5)


# ---------------------------------------------------------------------------- the teacher


def _teacher_side(baker: PromptBaker, turn: Trajectory) -> tuple:
    batch = baker._paired([turn])
    return batch.teacher_ids, batch.teacher_mask, batch.teacher_positions


@pytest.mark.parametrize("refresh", list(REFRESH))
def test_the_teacher_walked_along_the_conversation_gives_the_per_turn_log_probs(tiny, refresh):
    new, old = _baker(tiny, refresh), _baker(tiny, refresh, by_conversation=False)
    turns = _turns(tiny[1])
    random.Random(0).shuffle(turns)  # given in any order, returned in that order
    walked = new.teacher_inputs(turns)["teacher_logits"]
    with torch.no_grad():
        per_turn = torch.cat([old.bake_step.teacher_logits(*_teacher_side(old, t)) for t in turns])
    assert walked.shape == per_turn.shape == (sum(len(t.answer_ids) for t in turns), per_turn.shape[1])
    assert torch.allclose(torch.log_softmax(walked, -1), torch.log_softmax(per_turn, -1), atol=1e-5)


@pytest.mark.parametrize("refresh", list(REFRESH))
def test_the_walk_reads_each_shared_token_once(tiny, refresh):
    baker = _baker(tiny, refresh)
    turns = _turns(tiny[1])[:4]  # one conversation
    sequences = [baker.prefix(t, True) + t.answer_ids for t in turns]
    baker.teacher_inputs(turns[:1])  # the prompt's own cache is made once (core.prefix_cache): not counted
    fed = []
    hook = baker.model.get_input_embeddings().register_forward_hook(lambda _m, args, _o: fed.append(args[0].numel()))
    try:
        baker.teacher_inputs(turns)
    finally:
        hook.remove()
    prompt = len(baker.bake_step.teacher_prefix)
    # Every token read once per distinct beginning it ends (a node of the sequences' prefix tree), the prompt's
    # from its own cache: without refresh each turn's sequence is the start of the next, so that is the deepest
    # one's length; with it, the history once and each turn's refreshed prompt, latest message and reply.
    distinct = {tuple(s[:end]) for s in sequences for end in range(prompt + 1, len(s) + 1)}
    assert sum(fed) == len(distinct)
    assert refresh is not None or len(distinct) == len(sequences[-1]) - prompt
    assert sum(fed) < sum(len(s) - prompt for s in sequences) * 0.7


def test_the_top_k_teacher_cache_is_filled_along_the_conversation(tiny):
    turns = _turns(tiny[1])
    cached = _baker(tiny, "system", top_k=16, cache_teacher=True)
    plain = _baker(tiny, "system", top_k=16, by_conversation=False)
    first = cached.compute_loss(turns).item()
    assert len(cached._teacher_cache) == len(turns)
    assert first == pytest.approx(plain.compute_loss(turns).item(), rel=1e-5)
    assert cached.compute_loss(turns[::-1]).item() == pytest.approx(first, rel=1e-5)


# ---------------------------------------------------------------------------- batches and settings


def test_a_conversation_trains_in_one_step_and_single_answers_shuffle_as_ever(tiny):
    turns = _turns(tiny[1])
    single = [Trajectory(question=f"q{i}", answer="a", answer_ids=[5, 6]) for i in range(3)]
    baker = _baker(tiny, "system", batch_size=4)
    batches = baker.batches(turns + single, epoch=1)
    assert sorted(map(id, (t for b in batches for t in b))) == sorted(map(id, turns + single))
    assert len(batches) == 3  # ceil(11 / 4): the steps of an epoch do not change
    for conversation in range(len(CONVERSATIONS)):  # its turns in order, in at most two consecutive steps
        steps = [i for i, b in enumerate(batches) for t in b if t.conversation == conversation]
        depths = [t.depth for b in batches for t in b if t.conversation == conversation]
        assert depths == [1, 2, 3, 4] and steps[-1] - steps[0] <= 1
    # Not by conversation (or not multi-turn): every answer is shuffled alone, as it always was.
    per_turn = _baker(tiny, "system", batch_size=4, by_conversation=False)
    order = list(turns + single)
    random.Random(per_turn.config.seed * 1000 + 1).shuffle(order)
    assert per_turn.batches(turns + single, epoch=1) == [order[i:i + 4] for i in range(0, len(order), 4)]


def test_by_conversation_is_a_setting_with_a_flag():
    import argparse

    from lm_eval_baking import BakeConfig
    from lm_eval_baking.cli.options import add_settings, settings_from_args

    parser = argparse.ArgumentParser()
    add_settings(parser, BakeConfig, exclude=("prompt",))
    args = parser.parse_args(["--multi-turn", "--no-multi-turn-by-conversation"])
    assert settings_from_args(BakeConfig, args, prompt=PIRATE).multi_turn.by_conversation is False
    assert MultiTurnConfig().by_conversation is True
    with pytest.raises(BakingError, match="--multi-turn-by-conversation is on or off"):
        MultiTurnConfig(by_conversation="no")
