"""How lm_eval renders a question and tokenizes a continuation: the teacher, the student and the
stored log-probs all follow these, so KL measured here and inside lm_eval agree.
"""

from __future__ import annotations


def chat_messages(question: str, system_prompt: str | None) -> list[dict]:
    """The messages lm_eval builds for a zero-shot doc (with --system_instruction if given)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def chat_prefix(tokenizer, question: str, system_prompt: str | None) -> str:
    """The chat-templated context up to and including the assistant header."""
    return tokenizer.apply_chat_template(
        chat_messages(question, system_prompt), tokenize=False, add_generation_prompt=True
    )


def encode_like_lm_eval(tokenizer, text: str) -> list[int]:
    """HFLM.tok_encode: the tokenizer's default special tokens, unless `text` already starts with BOS."""
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return tokenizer.encode(text, add_special_tokens=add_special)


def lm_eval_encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Split (context, continuation) into token ids exactly as lm_eval 0.4.13 does.

    Trailing whitespace moves from the context into the continuation, and the
    continuation is whatever `encode(context + continuation)` has beyond
    `encode(context)`. With a chat template the context ends in "assistant\\n",
    so that newline is scored as part of the continuation.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode_like_lm_eval(tokenizer, context + continuation)
    context_ids = encode_like_lm_eval(tokenizer, context)
    return context_ids, whole[len(context_ids):]
