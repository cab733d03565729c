"""What a bake puts before the question, and the teacher's and the student's context, rendered as lm_eval does.

A prompt has one of two forms, the two ways lm_eval builds a context:

- **chat**: chat messages placed before the question (a system message and/or user/assistant
  few-shot turns), rendered with the tokenizer's chat template, the question as the last user
  turn, then the assistant header. A plain string is one system message, as lm_eval's
  `--system_instruction`; few-shot turns are what `--apply_chat_template --fewshot_as_multiturn`
  renders for a task's examples.
- **text**: a plain-text prefix glued to the question with nothing in between, as lm_eval builds
  a k-shot context for a model without a chat template (description, then each example's
  question, target delimiter, answer and few-shot delimiter) and as it prepends
  `--system_instruction` there.

The student's context is the same without the prompt. Sampling, scoring (the stored
log-probs), the held-out KL, training and `baking_mckl` all render through `BakePrompt.context`,
so they cannot disagree.

A multi-turn bake (training/multi_turn.py) gives `context` the conversation so far (`history`):
the student reads it without the prompt, the teacher with the prompt first and, with `refresh`,
the prompt again next to the latest user message (REFRESH_PLACES).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import BakingError
from ..utils.text import quoted

FORMS = ("auto", "chat", "text")
ROLES = ("system", "user", "assistant")
# Where a refreshed prompt sits in the teacher's context: a system message just before the latest user message,
# or prefixed to that message (for chat templates that take a system message only first); auto picks system
# where the template renders it there (`refresh_placement`).
REFRESH_PLACES = ("auto", "system", "user")
# Between a prompt prefixed to a user message and the message itself.
REFRESH_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class BakePrompt:
    form: str
    """chat | text."""
    messages: tuple[tuple[str, str], ...] = ()
    """chat: (role, content) pairs placed before the question."""
    text: str = ""
    """text: the prefix placed right before the question."""
    refresh: str | None = None
    """With a conversation history: where the teacher reads the prompt again, "system" or "user"
    (REFRESH_PLACES); None: only at the start. Only a one-system-message prompt can be refreshed."""

    def __post_init__(self):
        if self.form not in ("chat", "text"):
            raise BakingError(f"a prompt's form is chat or text, not {quoted(self.form)}")
        if self.refresh is not None and (self.refresh not in ("system", "user") or self.system_text is None):
            raise BakingError("only a system prompt (text, in the chat form) can be refreshed, as a system or a user "
                              f"message (got {quoted(self.refresh)})")

    @property
    def system_text(self) -> str | None:
        """The prompt's text when it is one system message (what a conversation's agent has), else None."""
        if self.form == "chat" and len(self.messages) == 1 and self.messages[0][0] == "system":
            return self.messages[0][1]
        return None

    @classmethod
    def from_setting(cls, prompt, form: str, tokenizer) -> "BakePrompt":
        """The prompt of a bake: `prompt` is a string or a list of {role, content} messages (BakeConfig.prompt).

        `form` auto means chat when the tokenizer has a chat template, text otherwise.
        """
        resolved = resolve_form(form, tokenizer)
        if isinstance(prompt, str):
            return cls("chat", messages=(("system", prompt),)) if resolved == "chat" else cls("text", text=prompt)
        messages = checked_messages(prompt)
        if resolved == "text":
            raise BakingError("a prompt of chat messages needs the chat form and a model with a chat template; "
                              "pass the prompt as plain text (the k-shot context as lm_eval builds it without "
                              "a chat template), or drop --prompt-format text")
        return cls("chat", messages=tuple((m["role"], m["content"]) for m in messages))

    @classmethod
    def unprompted(cls, tokenizer, form: str = "auto") -> "BakePrompt":
        """No prompt at all: the context is the bare question (in its chat turn, in the chat form)."""
        resolved = resolve_form(form, tokenizer)
        return cls(resolved)

    def context(self, tokenizer, question: str, *, prompted: bool = True, history: list[dict] | None = None) -> str:
        """The context lm_eval gives the model for `question`: with this prompt (teacher) or without (student).

        `history` is the conversation before `question` (user/assistant messages, chat form only). The
        prompted context then has the prompt first and, with `refresh`, again next to `question`; with no
        history the prompt is next to it already, so it is not repeated.
        """
        if self.form == "text":
            if history:
                raise BakingError("a conversation history needs the chat form (a model with a chat template)")
            return (self.text if prompted else "") + question
        turns = list(self.messages) if prompted else []
        messages = [{"role": role, "content": content} for role, content in turns] + list(history or [])
        refreshed = prompted and bool(history) and self.refresh is not None
        if refreshed and self.refresh == "system":
            messages.append({"role": "system", "content": self.system_text})
        if refreshed and self.refresh == "user":
            question = self.system_text + REFRESH_SEPARATOR + question
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def as_bake_prompt(prompt, tokenizer) -> BakePrompt:
    """A BakePrompt from what callers pass as `system_prompt`: a BakePrompt, a string, messages, or None."""
    if isinstance(prompt, BakePrompt):
        return prompt
    if prompt is None:
        return BakePrompt.unprompted(tokenizer)
    return BakePrompt.from_setting(prompt, "auto", tokenizer)


def refresh_placement(tokenizer, requested: str) -> str:
    """Where a refreshed prompt goes for this tokenizer's chat template: `requested` (REFRESH_PLACES), with auto
    resolved to system when the template renders a system message after other turns, else user.

    Some templates raise on such a message (roles must alternate), others drop it silently: both count as not
    rendering it, so the marker text is looked for in what comes out.
    """
    if requested not in REFRESH_PLACES:
        raise BakingError(f"--multi-turn-refresh-as must be one of {', '.join(REFRESH_PLACES)} (got {quoted(requested)})")
    if requested == "user":
        return "user"
    marker = "refresh-marker-7f3a"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "system", "content": marker}, {"role": "user", "content": "bye"}]
    try:
        renders = marker in tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja's TemplateError and whatever a template's raise_exception raises
        renders = False
    if requested == "system" and not renders:
        raise BakingError("--multi-turn-refresh-as system: this model's chat template does not render a system "
                          "message after other turns; use --multi-turn-refresh-as user (or auto)")
    return "system" if renders else "user"


def resolve_form(form: str, tokenizer) -> str:
    if form not in FORMS:
        raise BakingError(f"--prompt-format must be one of {', '.join(FORMS)} (got {quoted(form)})")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if form == "chat" and not has_template:
        raise BakingError("--prompt-format chat needs a model with a chat template, and this one has none; "
                          "use --prompt-format text (or auto)")
    if form == "auto":
        return "chat" if has_template else "text"
    return form


def checked_messages(messages) -> list[dict]:
    """A list of {role, content} messages (system first if any, user/assistant turns), or one BakingError."""
    example = '[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]'
    if not isinstance(messages, list) or not messages:
        raise BakingError(f"a prompt of chat messages must be a non-empty JSON list, e.g. {example}")
    for index, message in enumerate(messages, 1):
        if not isinstance(message, dict) or set(message) != {"role", "content"} \
                or message["role"] not in ROLES or not isinstance(message["content"], str):
            raise BakingError(f"prompt message {index} is {quoted(message)}; each message is "
                              f'{{"role": system|user|assistant, "content": text}}, e.g. {example}')
        if message["role"] == "system" and index != 1:
            raise BakingError(f"prompt message {index} is a system message; only the first message may be one")
    if messages[-1]["role"] == "user":
        raise BakingError("the prompt's last message is a user turn, so the question would follow another user "
                          "turn; end the few-shot turns with the assistant's answer")
    return messages


def parse_prompt_file(text: str, name: str):
    """A prompt file's content: a `.json` file holds a list of chat messages (checked); any other is the text."""
    if not name.lower().endswith(".json"):
        return text
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BakingError(f"--prompt-file {name} is not valid JSON ({getattr(e, 'msg', 'nested too deeply')}); "
                          "a .json prompt file holds a list of chat messages (use .txt for a text prompt)") from None
    return checked_messages(data)


def prompt_text_for_hash(prompt) -> str:
    """The prompt as one string, for its sha256: the text itself, or the messages as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)
