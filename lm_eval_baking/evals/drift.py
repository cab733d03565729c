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
from dataclasses import asdict, dataclass, field
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

# The agent's first turns show whether a conversation started in persona at all.
FIRST_TURNS = 3


@dataclass
class DriftData:
    bake_dir: Path
    baked_prompt: str
    personas: list[Persona]
    conversations: Path
    docs: Path
    n_docs: int
    generated: list[str]
    """Personas whose conversations were generated now (the others were reused)."""
    warnings: list[str] = field(default_factory=list)
    """Conversations whose prompted agent was out of persona from its first turns (their curve measures little)."""


# ---------------------------------------------------------------------------- eval docs


def build_docs(conversations: list[dict], personas: dict[str, Persona], probes_at) -> list[dict]:
    """One doc per (persona, conversation, probed turn d, probe): the history up to agent turn d plus the probe."""
    docs = []
    for row in conversations:
        persona = personas[row["persona"]]
        scorer = json.dumps(persona.scorer.to_dict(), ensure_ascii=False)
        for turn in probes_at:
            history = row["messages"][:2 * turn]
            docs.extend(
                {"persona": persona.name, "conversation": row.get("conversation", 0), "turn": turn,
                 "messages": history, "probe": probe, "scorer": scorer, "references": list(persona.reference_texts)}
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


def score_doc(doc: dict, answers: list[str]) -> dict:
    """Per-doc metrics from the greedy answer and the sampled ones: adherence (their mean), adherence in the doc's
    turn bucket, the greedy answer's adherence and embedding similarity, and the (bucket, score) pair for drift."""
    scorer = scorer_from_json(doc["scorer"])
    scores = [scorer(answer) for answer in answers]
    score = sum(scores) / len(scores)
    bucket = turn_bucket(doc["turn"])
    metrics = {
        "adherence": score,
        f"adherence_{bucket}": score,
        "adherence_greedy": scores[0],
        "similarity": reference_similarity(answers[0], tuple(doc["references"])),
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


def prepare_drift_data(bake_dir: str | os.PathLike, personas: list[str | Persona] | None = None,
                       settings: ConversationSettings | None = None, probes_at=DEFAULT_PROBES_AT, *,
                       persona_file: str | os.PathLike | None = None, progress: bool = True) -> DriftData:
    """Generate (or reuse) each persona's conversations and write the drift docs into `bake_dir/data/`.

    `personas`: names (built-in or from `persona_file`) or Persona objects; by
    default the persona whose system prompt is the bake's prompt. `settings`
    decide the conversations (default: ConversationSettings()). A stored
    conversation is reused when its system prompt and settings match.
    """
    folder = BakeDir(bake_dir)
    record = folder.record()
    settings = settings or ConversationSettings()
    probes_at = _check_probes_at(probes_at, settings.turns)
    chosen = resolve_personas(record.prompt, personas, persona_file)
    base_model = record.base_path
    stored = _read_conversations(folder)
    expected = {**asdict(settings), "model": base_model}
    wanted = [(p, k) for p in chosen for k in range(settings.conversations)]
    stale = [(p, k) for p, k in wanted if not _reusable(stored.get((p.name, k)), p, expected)]
    if stale:
        from ..core.models import load_model
        from .conversations import check_context, generate_conversations

        model, tokenizer = load_model(base_model)
        check_context(model, tokenizer, [p.system_prompt for p, _ in stale],
                      [q for p, _ in stale for q in p.probes], settings)
        histories = generate_conversations(model, tokenizer, [p.system_prompt for p, _ in stale], settings,
                                           conversation_ids=[k for _, k in stale],
                                           autocast_dtype=_bake_autocast(record.config), progress=progress)
        for (persona, k), messages in zip(stale, histories):
            stored[(persona.name, k)] = {
                "persona": persona.name, "conversation": k, "system_prompt": persona.system_prompt,
                "messages": messages, "settings": expected,
                "agent_first_turns_adherence": _first_turns_adherence(persona, messages)}
        folder.write_conversations(stored.values())
    rows = [stored[(p.name, k)] for p, k in wanted]
    docs = build_docs(rows, {p.name: p for p in chosen}, probes_at)
    folder.write_drift_docs(docs)
    return DriftData(bake_dir=folder.path, baked_prompt=record.prompt, personas=chosen,
                     conversations=folder.conversations_path, docs=folder.drift_docs_path, n_docs=len(docs),
                     generated=sorted({p.name for p, _ in stale}), warnings=_out_of_persona(rows))


def _first_turns_adherence(persona: Persona, messages: list[dict]) -> float:
    replies = [m["content"] for m in messages if m["role"] == "assistant"][:FIRST_TURNS]
    return sum(persona.score(r) for r in replies) / len(replies) if replies else 0.0


def _out_of_persona(rows: list[dict]) -> list[str]:
    """A conversation whose prompted agent never followed its persona in its first turns measures no drift."""
    return [f"persona '{row['persona']}', conversation {row.get('conversation', 0)}: the prompted agent's first "
            f"{FIRST_TURNS} turns score 0 on its own persona, so the conversation never started in persona and its "
            "curve measures little; read data/conversations.jsonl, or use another --seed"
            for row in rows if row.get("agent_first_turns_adherence", 1.0) == 0]


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


def _read_conversations(folder: BakeDir) -> dict[tuple[str, int], dict]:
    rows = folder.conversations()
    if not all(isinstance(r, dict) and {"persona", "system_prompt", "messages"} <= set(r) for r in rows):
        raise BakingError(f"{folder.conversations_path} is corrupt (rows need persona, system_prompt, messages); "
                          "delete it and rerun drift-data")
    return {(row["persona"], row.get("conversation", 0)): row for row in rows}





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
