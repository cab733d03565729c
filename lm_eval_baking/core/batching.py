"""Batches and forward passes: padding, teacher/student pairs, logits at answer positions only.

Teacher and student see different prefixes (with and without the prompt) but
the same answer tokens, so their answer positions line up one to one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .prefix_cache import SharedPrefix


def pad(sequences: list[list[int]], pad_id: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token sequences padded to the longest; left padding is what generation needs."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


@dataclass
class PairedBatch:
    """Teacher and student inputs for the same answers, right-padded.

    `teacher_positions` / `student_positions` mark the positions whose logits
    predict an answer token; both select the same number of positions per row,
    in the same order.
    """

    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    teacher_positions: torch.Tensor
    student_ids: torch.Tensor
    student_mask: torch.Tensor
    student_positions: torch.Tensor

    @property
    def n_answer_tokens(self) -> int:
        return int(self.student_positions.sum())


def paired_batch(teacher_prefixes: list[list[int]], student_prefixes: list[list[int]],
                 answers: list[list[int]], pad_id: int) -> PairedBatch:
    def side(prefixes):
        ids, mask = pad([p + a for p, a in zip(prefixes, answers)], pad_id)
        positions = torch.zeros_like(ids, dtype=torch.bool)
        for row, (prefix, answer) in enumerate(zip(prefixes, answers)):
            positions[row, len(prefix) - 1:len(prefix) + len(answer) - 1] = True
        return ids, mask, positions

    return PairedBatch(*side(teacher_prefixes), *side(student_prefixes))


@dataclass
class PackedRows:
    """Sequences packed into as few right-padded rows as they allow: a sequence that is a prefix of another is
    read inside that one's row (causal attention gives its positions exactly the context they have alone).

    `positions` is a (row index, column index) pair of [N] tensors: the positions whose logits predict the
    answer tokens, sequence after sequence in the order given, each sequence's in order, so they line up one to
    one with a PairedBatch's teacher positions. A position two sequences share is listed (and counted) twice.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    positions: tuple[torch.Tensor, torch.Tensor]

    @property
    def n_answer_tokens(self) -> int:
        return len(self.positions[0])


def packed_rows(prefixes: list[list[int]], answers: list[list[int]], pad_id: int) -> PackedRows:
    """The rows of `prefix + answer` sequences, each read inside the longest one it is a prefix of.

    In a conversation the context and answer of each turn are, token for token, the start of the next turn's
    context when the chat template renders earlier turns as they were answered; then the whole conversation is
    one row. Where a template renders them otherwise (strips reasoning, adds dates), the turn is its own row.
    """
    sequences = [p + a for p, a in zip(prefixes, answers)]
    rows: list[list[int]] = []
    row_of = [0] * len(sequences)
    for index in sorted(range(len(sequences)), key=lambda i: -len(sequences[i])):  # the longest start the rows
        sequence = sequences[index]
        row = next((r for r, held in enumerate(rows) if held[:len(sequence)] == sequence), None)
        if row is None:
            row = len(rows)
            rows.append(sequence)
        row_of[index] = row
    ids, mask = pad(rows, pad_id)
    row_index, column_index = [], []
    for index, (prefix, answer) in enumerate(zip(prefixes, answers)):
        row_index += [row_of[index]] * len(answer)
        column_index += range(len(prefix) - 1, len(prefix) + len(answer) - 1)
    return PackedRows(ids, mask, (torch.tensor(row_index, dtype=torch.long),
                                  torch.tensor(column_index, dtype=torch.long)))


def at_positions(states: torch.Tensor, positions) -> torch.Tensor:
    """states[positions] on `states`' device: a [rows, width] boolean mask (row by row) or a (row index,
    column index) pair (PackedRows.positions, in its order)."""
    if isinstance(positions, tuple):
        return states[positions[0].to(states.device), positions[1].to(states.device)]
    return states[positions.to(states.device)]


def answer_logits(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                  prefix: SharedPrefix | None = None) -> torch.Tensor:
    """[N, V] logits at the answer positions only.

    The LM head (a V x d matmul, the biggest single cost for a small model)
    runs on answer positions alone when the model exposes its decoder. With a
    `prefix` that every row starts with (frozen weights only: the teacher),
    the prefix's tokens are not read again.
    """
    split = decoder_and_head(model)
    if split is None:
        device = model.device
        if prefix is not None and prefix.fits(ids, mask, positions):
            return model(**prefix.inputs_after(model, ids, mask)).logits[positions[:, len(prefix):].to(device)]
        return at_positions(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits, positions)
    return split[1](answer_states(model, ids, mask, positions, prefix))


def decoder_and_head(model):
    """(decoder, LM head) of a causal LM (through a PEFT wrapper), or None if it does not expose them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def answer_states(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                  prefix: SharedPrefix | None = None) -> torch.Tensor:
    """[N, d] final hidden states at the answer positions (the LM head's input). Needs `decoder_and_head`.
    `positions` is a boolean mask or, without a `prefix`, a (row index, column index) pair (`at_positions`)."""
    device = model.device
    decoder, _ = decoder_and_head(model)
    if prefix is not None and prefix.fits(ids, mask, positions):
        states = decoder(**prefix.inputs_after(decoder, ids, mask)).last_hidden_state
        return states[positions[:, len(prefix):].to(device)]
    states = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return at_positions(states, positions)


def teacher_mode(model):
    """Context in which `model` is the teacher: the base weights, adapter switched off."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast where asked (fast on AMX CPUs and GPUs); a no-op for fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
