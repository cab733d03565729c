"""Multi-turn baking: contexts at depth, the refreshed teacher, the settings' checks, a tiny bake end to end."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from conftest import PIRATE, tiny_config
from lm_eval_baking import BakeConfig, BakingError, bake
from lm_eval_baking.cli.options import add_settings, settings_from_args
from lm_eval_baking.core.batching import paired_batch
from lm_eval_baking.core.chat import encode_like_lm_eval
from lm_eval_baking.core.prompts import REFRESH_SEPARATOR, BakePrompt, refresh_placement
from lm_eval_baking.core.sampling import Trajectory
from lm_eval_baking.training.config import MultiTurnConfig
from lm_eval_baking.training.multi_turn import teacher_prompt, turn_trajectories
from lm_eval_baking.training.plan import plan_bake
from lm_eval_baking.workflows.recipe import parse_recipe

CONVERSATION = [{"role": "user", "content": "Hi! What should I cook?"}, {"role": "assistant", "content": "Pasta."},
                {"role": "user", "content": "And for dessert?"}, {"role": "assistant", "content": "Ice cream."},
                {"role": "user", "content": "Which flavour?"}, {"role": "assistant", "content": "Vanilla."}]
# Chat templates that take a system message only first: one refuses another (roles must alternate, as Mistral's
# does), one drops it without a word.
REFUSING = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
            "{{ raise_exception('a system message only first') }}{% endif %}"
            "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DROPPING = ("{% for m in messages %}{% if m['role'] != 'system' or loop.first %}"
            "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from lm_eval_baking.core.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _with_template(tokenizer, template):
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def _prompt(tokenizer, refresh=None) -> BakePrompt:
    return replace(BakePrompt.from_setting(PIRATE, "chat", tokenizer), refresh=refresh)


# ---------------------------------------------------------------------------- contexts


@pytest.mark.parametrize("refresh", [None, "system", "user"])
def test_the_student_has_no_prompt_and_the_teacher_has_it_where_refresh_says(tokenizer, refresh):
    prompt = _prompt(tokenizer, refresh)
    history, question = CONVERSATION[:4], CONVERSATION[4]["content"]
    student = prompt.context(tokenizer, question, prompted=False, history=history)
    teacher = prompt.context(tokenizer, question, history=history)
    assert PIRATE not in student
    assert student == tokenizer.apply_chat_template(history + [CONVERSATION[4]], tokenize=False,
                                                    add_generation_prompt=True)
    system = [{"role": "system", "content": PIRATE}]
    latest = {"role": "user", "content": question}
    expected = {None: system + history + [latest],
                "system": system + history + system + [latest],
                "user": system + history + [{"role": "user", "content": PIRATE + REFRESH_SEPARATOR + question}]}[refresh]
    assert teacher == tokenizer.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
    assert teacher.count(PIRATE) == (1 if refresh is None else 2)
    # The refreshed prompt sits after the whole history, right before the latest user message.
    assert refresh is None or teacher.rindex(PIRATE) > teacher.rindex(CONVERSATION[3]["content"])


def test_the_first_turn_is_not_refreshed_the_prompt_is_next_to_it_already(tokenizer):
    for refresh in ("system", "user"):
        prompt = _prompt(tokenizer, refresh)
        assert prompt.context(tokenizer, "Hi!", history=[]) == _prompt(tokenizer).context(tokenizer, "Hi!")


def test_refresh_goes_where_the_chat_template_renders_it(tokenizer):
    assert refresh_placement(tokenizer, "auto") == "system"  # SmolLM2's template renders a later system message
    assert refresh_placement(tokenizer, "user") == "user"
    for template in (REFUSING, DROPPING):
        other = _with_template(tokenizer, template)
        assert refresh_placement(other, "auto") == "user"
        with pytest.raises(BakingError, match="--multi-turn-refresh-as user"):
            refresh_placement(other, "system")
    # The user placement renders on a template that refuses a later system message.
    refusing = _with_template(tokenizer, REFUSING)
    context = _prompt(refusing, "user").context(refusing, "Which flavour?", history=CONVERSATION[:4])
    assert context.count(PIRATE) == 2 and f"{PIRATE}{REFRESH_SEPARATOR}Which flavour?" in context


def test_only_a_system_prompt_can_be_refreshed(tokenizer):
    with pytest.raises(BakingError, match="only a system prompt"):
        BakePrompt("chat", messages=(("user", "2+2?"), ("assistant", "4")), refresh="system")


def test_turn_trajectories_hold_the_history_before_each_trained_turn(tokenizer):
    turns = turn_trajectories([CONVERSATION], range(2, 4), tokenizer, temperature=1.0)
    assert [t.depth for t in turns] == [2, 3]
    assert [t.question for t in turns] == ["And for dessert?", "Which flavour?"]
    assert [t.history for t in turns] == [CONVERSATION[:2], CONVERSATION[:4]]
    assert turns[1].answer == "Vanilla."
    assert turns[1].answer_ids == tokenizer.encode("Vanilla.", add_special_tokens=False) + [tokenizer.eos_token_id]
    again = Trajectory.from_dict(json.loads(json.dumps(turns[1].to_dict())))  # as train.jsonl keeps it
    assert again.history == turns[1].history and again.depth == 3 and again.context_key == turns[1].context_key


def test_only_the_reply_tokens_are_compared(tokenizer):
    """The KL positions of teacher and student are those that predict the reply's tokens, nothing of the history."""
    config = tiny_config("unused", "unused", multi_turn=MultiTurnConfig(enabled=True, refresh_as="system"))
    prompt = teacher_prompt(BakePrompt.from_setting(PIRATE, "chat", tokenizer), config)
    turn = turn_trajectories([CONVERSATION], range(3, 4), tokenizer, temperature=1.0)[0]

    def prefix(prompted):
        return encode_like_lm_eval(tokenizer, prompt.context(tokenizer, turn.question, prompted=prompted,
                                                             history=turn.history))

    batch = paired_batch([prefix(True)], [prefix(False)], [turn.answer_ids], tokenizer.pad_token_id)
    for ids, positions in ((batch.teacher_ids, batch.teacher_positions), (batch.student_ids, batch.student_positions)):
        predicted = ids[0, 1:][positions[0, :-1]].tolist()  # the token each selected position predicts
        assert predicted == turn.answer_ids
    assert batch.n_answer_tokens == len(turn.answer_ids)


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings, message", [
    (dict(min_depth=0), "--multi-turn-min-depth must be at least 1"),
    (dict(min_depth=3, max_depth=2), "--multi-turn-max-depth must be at least --multi-turn-min-depth 3"),
    (dict(conversations=0), "--multi-turn-conversations must be at least 1"),
    (dict(heldout_conversations=1), "--multi-turn-heldout-conversations must be at least 2"),
    (dict(single_turn_mix=1.0), "--multi-turn-single-turn-mix must be at least 0 and below 1"),
    (dict(single_turn_mix=float("nan")), "--multi-turn-single-turn-mix"),
    (dict(refresh_as="middle"), "--multi-turn-refresh-as must be one of auto, system, user"),
])
def test_bad_multi_turn_settings_are_one_line_errors(settings, message):
    with pytest.raises(BakingError, match=message) as error:
        MultiTurnConfig(**settings)
    assert "\n" not in str(error.value)


def test_multi_turn_bakes_a_text_prompt_in_the_chat_form(tiny_model_dir, question_file, plain_model_dir):
    on = {"enabled": True}
    with pytest.raises(BakingError, match="--multi-turn bakes a system prompt"):
        tiny_config(tiny_model_dir, question_file, multi_turn=on,
                    prompt=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    with pytest.raises(BakingError, match="--multi-turn bakes a system prompt"):
        tiny_config(tiny_model_dir, question_file, multi_turn=on, prompt_format="text")
    with pytest.raises(BakingError, match="--multi-turn needs a model with a chat template"):
        plan_bake(tiny_config(plain_model_dir, question_file, multi_turn=on))
    with pytest.raises(BakingError, match="lower --multi-turn-max-depth or --max-new-tokens"):
        plan_bake(tiny_config(tiny_model_dir, question_file, multi_turn={"enabled": True, "max_depth": 20},
                              max_new_tokens=40))  # the tiny model's context is 512 tokens


def test_the_plan_sizes_a_multi_turn_bake_and_resolves_the_refresh(tiny_model_dir, question_file):
    settings = MultiTurnConfig(enabled=True, conversations=4, min_depth=2, max_depth=4, single_turn_mix=0.25)
    plan = plan_bake(tiny_config(tiny_model_dir, question_file, multi_turn=settings, epochs=None, min_steps=1))
    assert plan.budget["conversation_turns"] == 12 and plan.budget["single_turn_answers"] == 4
    assert plan.budget["trajectories"] == 16 and plan.budget["heldout_conversation_turns"] == 8 * 3
    assert plan.config.multi_turn.refresh_as == "system" and plan.requested.multi_turn.refresh_as == "auto"


def test_flags_build_the_nested_settings():
    parser = argparse.ArgumentParser()
    add_settings(parser, BakeConfig, exclude=("prompt",))
    args = parser.parse_args(["--multi-turn", "--no-multi-turn-refresh", "--multi-turn-max-depth", "3",
                              "--multi-turn-single-turn-mix", "0.5", "--max-new-tokens", "8"])
    config = settings_from_args(BakeConfig, args, prompt=PIRATE)
    assert config.multi_turn == MultiTurnConfig(enabled=True, refresh=False, max_depth=3, single_turn_mix=0.5)
    assert config.max_new_tokens == 8
    plain = settings_from_args(BakeConfig, parser.parse_args([]), prompt=PIRATE)
    assert plain.multi_turn == MultiTurnConfig()
    assert BakeConfig.from_dict(config.to_dict()) == config  # as baking.json records it


def test_a_recipe_sets_multi_turn_for_all_stages_or_one(tmp_path):
    recipe = parse_recipe({"output": str(tmp_path / "run"), "bake": {"multi_turn": {"enabled": True, "max_depth": 4}},
                           "stages": [{"name": "pirate", "prompt": PIRATE},
                                      {"name": "plain", "prompt": "Be brief.", "multi_turn": {"enabled": False}}]})
    first, second = (recipe.stage_config(s).multi_turn for s in recipe.stages)
    assert first == MultiTurnConfig(enabled=True, max_depth=4) and second == MultiTurnConfig()


@pytest.mark.parametrize("recipe, message", [
    ({"stages": [{"name": "a", "prompt": "p", "multi_turn": {"enabld": True}}]},
     "recipe key 'stages[0].multi_turn' has unknown setting enabld; did you mean enabled?"),
    ({"stages": [{"name": "a", "prompt": "p", "multi_turn": {"max_depth": 0}}]},
     "recipe key 'stages[0].multi_turn': max_depth must be at least min_depth 1"),
    ({"stages": [{"name": "a", "prompt": "p"}], "bake": {"multi_turn": {"refresh": "yes"}}},
     "recipe key 'bake.multi_turn.refresh' must be true or false"),
])
def test_a_bad_multi_turn_recipe_key_is_one_line(tmp_path, recipe, message):
    with pytest.raises(BakingError) as error:
        parse_recipe({"output": str(tmp_path / "run"), **recipe})
    assert message in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------- a bake


def test_a_tiny_multi_turn_bake_writes_a_loadable_adapter_and_records_its_settings(tiny_model_dir, question_file,
                                                                                    tmp_path):
    from peft import PeftModel

    from lm_eval_baking.core.models import load_model
    from lm_eval_baking.utils.jsonl import read_jsonl

    settings = MultiTurnConfig(enabled=True, conversations=3, heldout_conversations=2, min_depth=2, max_depth=3,
                               single_turn_mix=0.25)
    config = tiny_config(tiny_model_dir, question_file, multi_turn=settings, epochs=1, max_new_tokens=4)
    result = bake(config, tmp_path / "pirate", progress=False)
    record = json.loads((result.output / "baking.json").read_text())
    assert record["config"]["multi_turn"] == {**config.multi_turn.__dict__, "refresh_as": "system"}
    by_depth = record["kl"]["multi_turn"]["by_depth"]
    assert sorted(by_depth) == ["2", "3"] and all(d["baked"]["n_sequences"] == 2 for d in by_depth.values())
    assert record["kl"]["multi_turn"]["single_turn"]["n_sequences"] == 3  # the single-turn held-out answers
    assert record["kl"]["unprompted_base"]["n_sequences"] == 4  # 2 held-out conversations x 2 depths

    train = read_jsonl(result.output / "data" / "train.jsonl")
    turns = [row for row in train if "depth" in row]
    assert len(turns) == 6 and len(train) == 6 + 2  # 25% single-turn answers beside 6 conversation turns
    assert all(len(row["history"]) == 2 * (row["depth"] - 1) for row in turns)
    assert all(m["role"] != "system" for row in turns for m in row["history"])
    heldout_turns = read_jsonl(result.output / "data" / "heldout_turns.jsonl")
    assert {r["history"][0]["content"] for r in heldout_turns} != {r["history"][0]["content"] for r in turns}

    model, _ = load_model(str(tiny_model_dir))
    assert isinstance(PeftModel.from_pretrained(model, str(result.output)), PeftModel)
    # Other multi-turn settings are another bake, never this one reused.
    with pytest.raises(BakingError, match="--overwrite"):
        bake(replace(config, multi_turn=replace(settings, refresh=False)), result.output, progress=False)
    assert bake(config, result.output, progress=False).reused
