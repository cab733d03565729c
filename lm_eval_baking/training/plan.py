"""What a bake will do, decided before any weights load: the question split, the LoRA targets, the sizes.

A BakeConfig may leave sizes unset (samples per question, held-out samples,
epochs) and name LoRA targets by keyword ('attention', 'all-linear'). The
plan makes them concrete from the question file and the model's own layer
names (read from a weightless skeleton), so that

- baking.json records exactly what ran (`config`), beside what was asked;
- two requests that come to the same concrete config are the same bake;
- a bad target name or an impossible setting fails in seconds, not after the
  weights have loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..artifacts.outputs import check_writable
from ..core import models
from ..core.chat import encode_like_lm_eval
from ..core.lora_targets import LoraTargets, resolve_targets
from ..core.prompts import BakePrompt, refresh_placement
from ..core.questions import Question, load_questions, split_questions
from ..errors import BakingError
from ..utils.text import quoted
from .config import BakeConfig


@dataclass
class BakePlan:
    requested: BakeConfig
    """The config as the user gave it (unset sizes, target keywords)."""
    config: BakeConfig
    """The same config made concrete: what the bake runs and records."""
    model_path: str
    train_questions: list[Question]
    heldout_questions: list[Question]
    targets: LoraTargets
    budget: dict
    """Sizes: questions, samples per question, trajectories, epochs, steps (BakeConfig.budget)."""

    def to_record(self) -> dict:
        """The part of baking.json that says how the request became this bake."""
        requested = {k: v for k, v in self.requested.to_dict().items() if v != self.config.to_dict()[k]}
        return {"requested": requested, "budget": self.budget, "lora_targets": self.targets.to_record()}


def plan_bake(config: BakeConfig, *, trust_remote_code: bool = False, device: str | None = None) -> BakePlan:
    """Resolve `config` against its questions and its model's config (no weights are read)."""
    questions = load_questions(config.questions)
    train, heldout = split_questions(questions, config.heldout_fraction, config.seed)
    model_path = models.resolve_model(config.model)
    model_config = models.model_config(model_path, trust_remote_code=trust_remote_code)
    models.check_weights(model_path)
    vocabulary = getattr(model_config, "vocab_size", None)
    if config.top_k is not None and isinstance(vocabulary, int) and config.top_k > vocabulary:
        raise BakingError(f"--top-k {config.top_k} is larger than the model's vocabulary of {vocabulary} tokens; "
                          f"pass a smaller --top-k (e.g. 64), or omit it for the full vocabulary")
    tokenizer = models.load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    limit = models.model_context_length(model_config)
    check_fits_context(config, tokenizer, questions, limit)
    refresh_as = None
    if config.multi_turn.enabled:
        refresh_as = refresh_placement(tokenizer, config.multi_turn.refresh_as) if config.multi_turn.refresh else None
        check_conversation_fits(config, tokenizer, limit, refresh_as)
    if config.load_in_4bit:
        models.check_4bit_device(models.pick_device(device or config.device))
    skeleton = models.model_skeleton(model_path, trust_remote_code=trust_remote_code)
    targets = resolve_targets(skeleton, list(config.target_modules))
    resolved = config.resolved(len(train), len(heldout), targets.target_modules, refresh_as)
    return BakePlan(requested=config, config=resolved, model_path=model_path, train_questions=train,
                    heldout_questions=heldout, targets=targets, budget=config.budget(len(train), len(heldout)))


def check_before_work(configs, output, *, trust_remote_code: bool = False) -> None:
    """Every limit of every bake a command will run, and that `output` can be written, before it creates its
    folder or loads a model: pursuit, sequence and pipeline write their record before their first bake."""
    check_writable(output)
    for config in configs:
        plan_bake(config, trust_remote_code=trust_remote_code)


# The few longest questions (by their own tokens) whose whole context is measured: the prompt adds nearly the same
# tokens to every question, so the longest context is among them, and 10,000 questions are not all templated.
_LONGEST_MEASURED = 8


def check_fits_context(config: BakeConfig, tokenizer, questions: list[Question], limit: int) -> None:
    """The prompt, the longest question and --max-new-tokens answer tokens must fit the model's context of `limit`
    tokens; each way they do not is its own line naming what to change (also checks the prompt's form).

    Run before any weights load or any work folder exists: a question of a million tokens used to try to allocate
    its attention at sampling time, and left a .partial behind.
    """
    prompt = BakePrompt.from_setting(config.prompt, config.prompt_format, tokenizer)
    where = "in the chat template" if prompt.form == "chat" else "as a text prefix"
    prompt_only = len(encode_like_lm_eval(tokenizer, prompt.context(tokenizer, "")))
    longest, question, cut = prompt_only, None, False
    for q, q_cut in _longest_questions(tokenizer, questions, limit):
        tokens = len(encode_like_lm_eval(tokenizer, prompt.context(tokenizer, q.text)))
        if tokens > longest:
            longest, question, cut = tokens, q, q_cut
    answer = config.max_new_tokens
    if longest + answer <= limit:
        return
    room = limit - longest
    if prompt_only + answer > limit:  # the prompt alone leaves no room: blame the larger of the two
        if answer >= prompt_only:
            fix = f"pass at most {room}" if room >= 1 else "shorten the prompt"
            raise BakingError(f"--max-new-tokens {answer} leaves no room for the prompt and the longest question "
                              f"({longest} tokens {where}) in the model's context of {limit}; {fix}")
        fix = f" (or pass --max-new-tokens at most {limit - prompt_only})" if limit - prompt_only >= 1 else ""
        raise BakingError(f"the prompt takes {prompt_only} tokens {where}, and with --max-new-tokens {answer} that "
                          f"exceeds the model's context of {limit}; shorten the prompt{fix}")
    named = question.where or quoted(question.text, 40)
    most = limit - answer - prompt_only
    fix = f"shorten it to at most {most} tokens or remove it" if most >= 1 else "remove it"
    if room >= 1:
        fix += f", or pass --max-new-tokens at most {room}"
    raise BakingError(f"the longest question, {named}, takes {'over ' if cut else ''}{longest} tokens with the "
                      f"prompt {where}, and with --max-new-tokens {answer} that exceeds the model's context of "
                      f"{limit}; {fix}")


def check_conversation_fits(config: BakeConfig, tokenizer, limit: int, refresh_as: str | None) -> None:
    """A multi-turn bake's deepest teacher context (the prompt, --multi-turn-max-depth turns of both sides at up to
    --max-new-tokens tokens each, the refreshed prompt) and its answer must fit the model's context of `limit`."""
    prompt = BakePrompt.from_setting(config.prompt, config.prompt_format, tokenizer)
    if prompt.form != "chat":
        raise BakingError("--multi-turn needs a model with a chat template (the conversations are chat turns), and "
                          "this one has none")
    depth, answer = config.multi_turn.max_depth, config.max_new_tokens
    filler = "x " * answer  # about one token per "x ", as the drift check estimates a turn
    history = [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}] * (depth - 1)
    teacher = BakePrompt(prompt.form, prompt.messages, refresh=refresh_as)
    needed = len(encode_like_lm_eval(tokenizer, teacher.context(tokenizer, filler, history=history))) + answer
    if needed > limit:
        raise BakingError(f"--multi-turn-max-depth {depth} turns of up to --max-new-tokens {answer} tokens need about "
                          f"{needed} tokens of context, more than the model's {limit}; lower --multi-turn-max-depth "
                          "or --max-new-tokens")


def _longest_questions(tokenizer, questions: list[Question], limit: int) -> list[tuple[Question, bool]]:
    """The `_LONGEST_MEASURED` questions with the most tokens of their own, each with whether it was cut short.

    Only the first (limit + 1) x (the longest token's length) characters of a question are tokenised: no token
    covers more, so that part alone is over the limit and the rest could only add to it (a 5 MB line then costs
    a fraction of a second, not seconds).
    """
    if not questions:
        return []
    cap = (limit + 1) * max((len(t) for t in tokenizer.get_vocab()), default=16)
    shown = [q.text[:cap] for q in questions]
    counts = [len(ids) for ids in tokenizer(shown, add_special_tokens=False)["input_ids"]]
    ranked = sorted(range(len(questions)), key=lambda i: -counts[i])[:_LONGEST_MEASURED]
    return [(Question(shown[i], questions[i].category, where=questions[i].where), len(questions[i].text) > cap)
            for i in ranked]
