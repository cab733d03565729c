"""BakePrompt: the ordinary system-prompt bake renders exactly as before; chat turns and text prefixes as lm_eval does."""

import pytest

from lm_eval_baking import BakeConfig
from lm_eval_baking.core.chat import chat_prefix, encode_like_lm_eval
from lm_eval_baking.core.prompts import BakePrompt, as_bake_prompt, checked_messages, parse_prompt_file
from lm_eval_baking.errors import BakingError

from conftest import PIRATE

TURNS = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from lm_eval_baking.core.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def plain_tokenizer(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


def test_the_default_bake_renders_exactly_as_before(tokenizer):
    """A string prompt is one system message: the very context (and token ids) of the system-prompt-only baker."""
    prompt = BakePrompt.from_setting(PIRATE, "auto", tokenizer)
    assert prompt == BakePrompt("chat", messages=(("system", PIRATE),))
    question = "Why is the sky blue?"
    teacher, student = prompt.context(tokenizer, question), prompt.context(tokenizer, question, prompted=False)
    assert teacher == chat_prefix(tokenizer, question, PIRATE) and student == chat_prefix(tokenizer, question, None)
    assert teacher == ("<|im_start|>system\nYou are a pirate. Start every answer with 'Ahoy!'<|im_end|>\n"
                       "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
    assert encode_like_lm_eval(tokenizer, teacher)[:4] == [1, 9690, 198, 2683]
    assert as_bake_prompt(PIRATE, tokenizer) == prompt
    assert as_bake_prompt(None, tokenizer).context(tokenizer, question) == student


def test_chat_turns_sit_between_the_system_message_and_the_question(tokenizer):
    prompt = BakePrompt.from_setting([{"role": "system", "content": "Be brief."}, *TURNS], "chat", tokenizer)
    expected = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *TURNS,
                                              {"role": "user", "content": "3+3?"}], tokenize=False,
                                             add_generation_prompt=True)
    assert prompt.context(tokenizer, "3+3?") == expected
    assert prompt.context(tokenizer, "3+3?", prompted=False) == chat_prefix(tokenizer, "3+3?", None)


def test_text_form_glues_the_prefix_to_the_question(tokenizer, plain_tokenizer):
    prefix = "Q: 2+2?\nA: 4\n\n"
    for form, tok in (("text", tokenizer), ("auto", plain_tokenizer)):
        prompt = BakePrompt.from_setting(prefix, form, tok)
        assert prompt.form == "text"
        assert prompt.context(tok, "Q: 3+3?\nA:") == prefix + "Q: 3+3?\nA:"
        assert prompt.context(tok, "Q: 3+3?\nA:", prompted=False) == "Q: 3+3?\nA:"


def test_forms_that_cannot_be_rendered_are_refused(tokenizer, plain_tokenizer):
    with pytest.raises(BakingError, match="needs a model with a chat template"):
        BakePrompt.from_setting(PIRATE, "chat", plain_tokenizer)
    with pytest.raises(BakingError, match="needs the chat form"):
        BakePrompt.from_setting(TURNS, "text", tokenizer)
    with pytest.raises(BakingError, match="needs the chat form"):
        BakePrompt.from_setting(TURNS, "auto", plain_tokenizer)


@pytest.mark.parametrize("messages, problem", [
    ([], "non-empty JSON list"),
    ([{"role": "user"}], "each message is"),
    ([{"role": "bot", "content": "x"}], "each message is"),
    ([*TURNS, {"role": "system", "content": "late"}], "only the first message"),
    ([{"role": "user", "content": "dangling"}], "last message is a user turn"),
])
def test_bad_messages_are_one_clear_error(messages, problem):
    with pytest.raises(BakingError, match=problem):
        checked_messages(messages)


def test_prompt_files_are_text_or_json_messages():
    assert parse_prompt_file("[not json] is fine as text", "prompt.txt") == "[not json] is fine as text"
    assert parse_prompt_file('[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]',
                             "turns.json") == TURNS
    with pytest.raises(BakingError, match="not valid JSON"):
        parse_prompt_file("[{oops", "turns.json")


def test_bake_config_takes_messages_and_a_form(tiny_model_dir, question_file):
    config = BakeConfig(prompt=TURNS, prompt_format="chat")
    assert config.to_dict()["prompt"] == TURNS and BakeConfig.from_dict(config.to_dict()) == config
    assert BakeConfig(prompt=PIRATE).prompt_format == "auto"
    with pytest.raises(BakingError, match="--prompt-format must be one of"):
        BakeConfig(prompt=PIRATE, prompt_format="html")
    with pytest.raises(BakingError, match="last message is a user turn"):
        BakeConfig(prompt=[{"role": "user", "content": "x"}])
