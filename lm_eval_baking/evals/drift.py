"""Persona drift (Li et al. 2024, arXiv 2402.10962): does a persona hold over a long conversation?

The prompted base model (agent = base + persona system prompt) chats with a
simulated user (the same base model with a user-simulator prompt, reading the
history with roles swapped). The conversation is generated once per persona
and stored with the bake. Evaluation then cuts the history after agent turn d,
appends a probe question as the next user message and scores the reply with
the persona's scorer. Both the baked model (no system prompt) and the prompted
base (`--system_instruction`) answer the same probes after the same histories,
so their curves over d are directly comparable.

Files written into a bake directory:
    data/conversations.jsonl  one row per persona: persona, system_prompt, messages, settings
    data/drift_docs.jsonl     one lm_eval doc per (persona, probed turn, probe question)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ..artifacts.bake_dir import BakeDir
from ..constants import DRIFT_TASK
from ..core.harness import LmEvalRun
from ..errors import BakingError
from ..utils.text import quoted
from .config import ConversationSettings
from .personas import BUILTIN_PERSONAS, Persona, get_persona, load_persona_file, persona_for_prompt, persona_names
from .scorers import Scorer
from .similarity import reference_similarity

TASK_NAME = DRIFT_TASK
DEFAULT_PROBES_AT = (1, 5, 10, 15, 20, 25, 30)
EARLY_MAX_TURN = 5
LATE_MIN_TURN = 25

@dataclass
class DriftData:
    bake_dir: Path
    baked_prompt: str
    personas: list[Persona]
    conversations: Path
    docs: Path
    n_docs: int
    generated: list[str]
    """Personas whose conversation was generated now (the others were reused)."""


# ---------------------------------------------------------------------------- conversations


def generate_conversations(model, tokenizer, system_prompts: list[str], settings: ConversationSettings, *,
                           autocast_dtype=None, progress: bool = True) -> list[list[dict]]:
    """One conversation per system prompt, generated in lockstep (one batch per turn and side).

    Returns message lists [user, assistant, user, assistant, ...] with `settings.turns`
    assistant messages and no system message.
    """
    import torch
    from tqdm.auto import tqdm

    from ..core.batching import autocast

    histories = [[{"role": "user", "content": settings.opener}] for _ in system_prompts]
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        with autocast(model.device, autocast_dtype):
            for turn in tqdm(range(1, settings.turns + 1), desc="conversation turns", unit="turn", disable=not progress):
                agent_views = [[_system(prompt)] + history for prompt, history in zip(system_prompts, histories)]
                for history, reply in zip(histories, generate_replies(model, tokenizer, agent_views, settings)):
                    history.append({"role": "assistant", "content": reply})
                if turn == settings.turns:
                    break
                user_prompt = _system(settings.user_system_prompt(turn))
                user_views = [[user_prompt] + swap_roles(history) for history in histories]
                for history, reply in zip(histories, generate_replies(model, tokenizer, user_views, settings)):
                    history.append({"role": "user", "content": reply})
    finally:
        torch.random.set_rng_state(rng_state)
    return histories


def _system(prompt: str) -> dict:
    return {"role": "system", "content": prompt}


def swap_roles(messages: list[dict]) -> list[dict]:
    """The simulated user's view: its own turns become the assistant's, the agent's the user's."""
    swapped = {"user": "assistant", "assistant": "user"}
    return [{"role": swapped[m["role"]], "content": m["content"]} for m in messages]


def generate_replies(model, tokenizer, conversations: list[list[dict]], settings: ConversationSettings) -> list[str]:
    """The next assistant message of each conversation, generated as one left-padded batch."""
    import torch

    from ..core.batching import pad
    from ..core.chat import encode_like_lm_eval
    from ..core.sampling import cut_at_eos, eos_ids

    prompts = [
        encode_like_lm_eval(tokenizer, tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
        for c in conversations
    ]
    input_ids, attention_mask = pad(prompts, tokenizer.pad_token_id, left=True)
    stop_ids = eos_ids(tokenizer, model)
    sampling = (dict(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
                if settings.temperature > 0 else dict(do_sample=False))
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
            max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(stop_ids), **sampling,
        )
    return [
        tokenizer.decode(cut_at_eos(row[input_ids.shape[1]:].tolist(), stop_ids), skip_special_tokens=True).strip()
        for row in output
    ]


def _check_context(model, tokenizer, personas: list[Persona], settings: ConversationSettings) -> None:
    """Refuse before generating when the longest probe context cannot fit the model."""
    from ..core.chat import encode_like_lm_eval
    from ..core.models import model_context_length

    limit = model_context_length(model)
    filler = "x " * settings.max_new_tokens  # about one token per "x "
    turn = [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}]
    for persona in personas:
        longest_probe = max(persona.probes, key=len)
        messages = [_system(persona.system_prompt)] + turn * settings.turns + [{"role": "user", "content": longest_probe}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        needed = len(encode_like_lm_eval(tokenizer, rendered)) + settings.max_new_tokens
        if needed > limit:
            raise BakingError(
                f"{settings.turns} turns of up to {settings.max_new_tokens} tokens need about {needed} tokens of context "
                f"for persona '{persona.name}', more than the model's {limit}; lower --turns or --max-new-tokens"
            )


# ---------------------------------------------------------------------------- eval docs


def build_docs(conversations: list[dict], personas: list[Persona], probes_at) -> list[dict]:
    """One doc per (persona, probed turn d, probe): the history up to agent turn d plus the probe."""
    docs = []
    for persona, row in zip(personas, conversations):
        scorer = json.dumps(persona.scorer.to_dict(), ensure_ascii=False)
        for turn in probes_at:
            history = row["messages"][:2 * turn]
            docs.extend(
                {"persona": persona.name, "turn": turn, "messages": history, "probe": probe,
                 "scorer": scorer, "references": list(persona.reference_texts)}
                for probe in persona.probes
            )
    return docs


def turn_bucket(turn: int) -> str:
    if turn <= EARLY_MAX_TURN:
        return "early"
    return "late" if turn >= LATE_MIN_TURN else "mid"


@lru_cache(maxsize=256)
def scorer_from_json(spec: str) -> Scorer:
    return Scorer.from_dict(json.loads(spec), "drift doc")


def score_doc(doc: dict, answer: str) -> dict:
    """Per-doc metrics: adherence, adherence in the doc's turn bucket, embedding similarity,
    and the doc's (bucket, score) pair for early/late drift."""
    score = scorer_from_json(doc["scorer"])(answer)
    bucket = turn_bucket(doc["turn"])
    metrics = {
        "adherence": score,
        f"adherence_{bucket}": score,
        "similarity": reference_similarity(answer, tuple(doc["references"])),
    }
    if bucket != "mid":
        metrics["drift"] = (bucket, score)
    return metrics


def early_minus_late(items: list[tuple[str, float]]) -> float:
    """Drift = mean adherence at turns <= 5 minus at turns >= 25; NaN when either bucket is empty."""
    early = [score for bucket, score in items if bucket == "early"]
    late = [score for bucket, score in items if bucket == "late"]
    if not early or not late:
        return float("nan")
    return sum(early) / len(early) - sum(late) / len(late)


# ---------------------------------------------------------------------------- bake directory


def resolve_personas(bake_prompt: str, personas: list[str | Persona] | None = None,
                     persona_file: str | os.PathLike | None = None) -> list[Persona]:
    """The given personas (names are looked up among the built-ins and `persona_file`),
    or else the one whose system prompt is the baked prompt."""
    extra = load_persona_file(persona_file) if persona_file else {}
    if personas:
        return [p if isinstance(p, Persona) else get_persona(p, extra) for p in personas]
    match = persona_for_prompt(bake_prompt, {**BUILTIN_PERSONAS, **extra})
    if match is None:
        raise BakingError(
            f"the baked prompt {quoted(bake_prompt)} is no known persona's system prompt; pass --persona NAME "
            f"(one of {', '.join(persona_names())}) or --persona-file FILE defining a persona with this prompt"
        )
    return [match]


def prepare_drift_data(bake_dir: str | os.PathLike, personas: list[str | Persona] | None = None, turns: int = 30,
                       probes_at=DEFAULT_PROBES_AT, *, persona_file: str | os.PathLike | None = None,
                       max_new_tokens: int = 40, temperature: float = 0.7, seed: int = 0,
                       progress: bool = True) -> DriftData:
    """Generate (or reuse) each persona's conversation and write the drift docs into `bake_dir/data/`.

    `personas`: names (built-in or from `persona_file`) or Persona objects; by
    default the persona whose system prompt is the bake's prompt. A stored
    conversation is reused when its system prompt and settings match.
    """
    folder = BakeDir(bake_dir)
    record = folder.record()
    settings = ConversationSettings(turns, max_new_tokens, temperature, seed)
    settings.validate()
    probes_at = _check_probes_at(probes_at, turns)
    chosen = resolve_personas(record.prompt, personas, persona_file)
    base_model = record.base_path
    stored = _read_conversations(folder)
    expected = {**asdict(settings), "model": base_model}
    stale = [p for p in chosen if not _reusable(stored.get(p.name), p, expected)]
    if stale:
        from ..core.models import load_model

        model, tokenizer = load_model(base_model)
        _check_context(model, tokenizer, stale, settings)
        histories = generate_conversations(model, tokenizer, [p.system_prompt for p in stale], settings,
                                           autocast_dtype=_bake_autocast(record.config), progress=progress)
        for persona, messages in zip(stale, histories):
            stored[persona.name] = {"persona": persona.name, "system_prompt": persona.system_prompt,
                                    "messages": messages, "settings": expected}
        folder.write_conversations(stored.values())
    docs = build_docs([stored[p.name] for p in chosen], chosen, probes_at)
    folder.write_drift_docs(docs)
    return DriftData(bake_dir=folder.path, baked_prompt=record.prompt, personas=chosen,
                     conversations=folder.conversations_path, docs=folder.drift_docs_path, n_docs=len(docs),
                     generated=[p.name for p in stale])


def _bake_autocast(config: dict):
    """Generate in the bake's precision: bf16 autocast is about 2x faster than fp32 on this CPU."""
    import torch

    return torch.bfloat16 if config.get("precision") == "bf16" else None


def _check_probes_at(probes_at, turns: int) -> tuple[int, ...]:
    depths = tuple(sorted(set(probes_at)))
    if not depths or depths[0] < 0 or depths[-1] > turns:
        raise BakingError(f"probed turns {list(probes_at)} must lie between 0 and --turns {turns}")
    return depths


def _reusable(row: dict | None, persona: Persona, expected_settings: dict) -> bool:
    return bool(row) and row.get("system_prompt") == persona.system_prompt and row.get("settings") == expected_settings


def _read_conversations(folder: BakeDir) -> dict[str, dict]:
    rows = folder.conversations()
    if not all(isinstance(r, dict) and {"persona", "system_prompt", "messages"} <= set(r) for r in rows):
        raise BakingError(f"{folder.conversations_path} is corrupt (rows need persona, system_prompt, messages); "
                          "delete it and rerun drift-data")
    return {row["persona"]: row for row in rows}





def lm_eval_commands(bake_dir: str | os.PathLike) -> dict[str, str]:
    """The lm_eval command lines that score the baked adapter and the prompted base on the drift docs."""
    record = BakeDir(bake_dir).record()
    bake = str(Path(bake_dir).absolute())
    common = dict(base=record.base_path, tasks=[TASK_NAME], log_samples=True)
    return {
        "baked adapter": LmEvalRun(adapter=bake, output_path="results/drift/baked", **common).shell(),
        "prompted base": LmEvalRun(system_instruction=record.prompt, metadata={"bake": bake},
                                   output_path="results/drift/prompted", **common).shell(),
    }


# ---------------------------------------------------------------------------- first-turn measurement


def first_turn_adherence(model, tokenizer, personas: list[Persona], *, samples: int = 4, max_new_tokens: int = 40,
                         seed: int = 0, progress: bool = True) -> list[dict]:
    """How well the model follows each persona right after its system prompt (no history).

    Per persona: one greedy answer plus `samples` T=1 answers per probe, scored
    with the persona's scorer; the same for answers without the system prompt,
    so a scorer the unprompted model already satisfies shows up.
    """
    from ..core.questions import Question
    from ..core.sampling import sample_trajectories

    def answers(probes, system_prompt):
        questions = [Question(p) for p in probes]
        common = dict(system_prompt=system_prompt, max_new_tokens=max_new_tokens, seed=seed, progress=progress)
        greedy = sample_trajectories(model, tokenizer, questions, temperature=0, **common)
        sampled = sample_trajectories(model, tokenizer, questions, temperature=1.0, samples_per_question=samples, **common)
        return [t.answer for t in greedy], [t.answer for t in sampled]

    unprompted = {probes: answers(probes, None) for probes in {p.probes for p in personas}}
    rows = []
    for persona in personas:
        greedy, sampled = answers(persona.probes, persona.system_prompt)
        plain = unprompted[persona.probes][0] + unprompted[persona.probes][1]
        rows.append({
            "persona": persona.name,
            "n": len(greedy) + len(sampled),
            "prompted": _mean(persona.score(a) for a in greedy + sampled),
            "prompted_greedy": _mean(persona.score(a) for a in greedy),
            "prompted_sampled": _mean(persona.score(a) for a in sampled),
            "unprompted": _mean(persona.score(a) for a in plain),
            "similarity_prompted": _mean(reference_similarity(a, persona.reference_texts) for a in greedy + sampled),
            "similarity_unprompted": _mean(reference_similarity(a, persona.reference_texts) for a in plain),
        })
    return rows


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
