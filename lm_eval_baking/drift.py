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

import argparse
import json
import os
import shlex
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from .baking import BAKE_RECORD, load_bake_record
from .errors import BakingError
from .io import read_jsonl
from .personas import (
    BUILTIN_PERSONAS, Persona, Scorer, get_persona, load_persona_file, persona_for_prompt, persona_names,
    reference_similarity,
)

CONVERSATIONS_FILE = "data/conversations.jsonl"
DOCS_FILE = "data/drift_docs.jsonl"
TASK_NAME = "baking_persona_drift"
DEFAULT_PROBES_AT = (1, 5, 10, 15, 20, 25, 30)
EARLY_MAX_TURN = 5
LATE_MIN_TURN = 25

# The simulated user gets a new everyday topic each turn: left to itself, a small
# model echoes the assistant ("You're welcome!") and the chat collapses into a loop.
USER_SIMULATOR_PROMPT = (
    "You are a curious person chatting with an AI assistant. "
    "Reply with one short sentence that asks the assistant a question about {topic}."
)
TOPICS = (
    "cooking", "gardening", "sport", "books", "money", "the weather", "pets", "travel", "music", "sleep",
    "friendship", "films", "the sea", "history", "work", "science", "holidays", "the city", "art", "health",
)
# The simulated user's first message. A fixed opener (chosen by the seed) rather
# than a generated one: a small model asked to open a chat often answers instead.
OPENERS = (
    "Hi! What should I cook for dinner tonight?",
    "Hello! Do you have any tips for keeping houseplants alive?",
    "Hey, how do I start running as a beginner?",
    "Hi there! What is a good book to read on holiday?",
    "Hello! How can I save money on groceries?",
    "Hi! What is a fun thing to do on a rainy day?",
)


@dataclass(frozen=True)
class ConversationSettings:
    """What decides a generated conversation; stored with it so a stale one is never reused."""

    turns: int = 30
    """Agent turns (each after one simulated-user turn)."""
    max_new_tokens: int = 40
    """Length cap of every turn, agent and user alike: short turns keep CPU generation to minutes."""
    temperature: float = 0.7
    seed: int = 0
    user_prompt: str = USER_SIMULATOR_PROMPT

    def validate(self) -> None:
        if self.turns < 1:
            raise BakingError("--turns must be at least 1")
        if self.max_new_tokens < 1:
            raise BakingError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise BakingError("--temperature must be 0 (greedy) or above")

    @property
    def opener(self) -> str:
        return OPENERS[self.seed % len(OPENERS)]

    def user_system_prompt(self, turn: int) -> str:
        return self.user_prompt.format(topic=TOPICS[(self.seed + turn) % len(TOPICS)])


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

    from .kl import autocast

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

    from .trajectories import _cut_at_eos, _eos_ids, _left_pad, encode_like_lm_eval

    prompts = [
        encode_like_lm_eval(tokenizer, tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
        for c in conversations
    ]
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id)
    eos_ids = _eos_ids(tokenizer, model)
    sampling = (dict(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
                if settings.temperature > 0 else dict(do_sample=False))
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
            max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids), **sampling,
        )
    return [
        tokenizer.decode(_cut_at_eos(row[input_ids.shape[1]:].tolist(), eos_ids), skip_special_tokens=True).strip()
        for row in output
    ]


def _check_context(model, tokenizer, personas: list[Persona], settings: ConversationSettings) -> None:
    """Refuse before generating when the longest probe context cannot fit the model."""
    from .models import model_context_length
    from .trajectories import encode_like_lm_eval

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


def adherence_curve(samples_file: str | os.PathLike) -> dict[int, float]:
    """Mean adherence per probed turn from an lm_eval `--log_samples` file of this task."""
    by_turn: dict[int, list[float]] = {}
    for row in read_jsonl(samples_file):
        by_turn.setdefault(row["doc"]["turn"], []).append(row["adherence"])
    return {turn: sum(v) / len(v) for turn, v in sorted(by_turn.items())}


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
            f"the baked prompt {bake_prompt[:60]!r} is no known persona's system prompt; pass --persona NAME "
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
    bake_dir = Path(bake_dir)
    record = load_bake_record(bake_dir)
    settings = ConversationSettings(turns, max_new_tokens, temperature, seed)
    settings.validate()
    probes_at = _check_probes_at(probes_at, turns)
    chosen = resolve_personas(record["config"]["prompt"], personas, persona_file)
    base_model = record["base_model"]["name_or_path"]
    stored = _read_conversations(bake_dir / CONVERSATIONS_FILE)
    expected = {**asdict(settings), "model": base_model}
    stale = [p for p in chosen if not _reusable(stored.get(p.name), p, expected)]
    if stale:
        from .models import load_model

        model, tokenizer = load_model(base_model)
        _check_context(model, tokenizer, stale, settings)
        histories = generate_conversations(model, tokenizer, [p.system_prompt for p in stale], settings,
                                           autocast_dtype=_bake_autocast(record), progress=progress)
        for persona, messages in zip(stale, histories):
            stored[persona.name] = {"persona": persona.name, "system_prompt": persona.system_prompt,
                                    "messages": messages, "settings": expected}
        _write_jsonl_atomic(bake_dir / CONVERSATIONS_FILE, stored.values())
    docs = build_docs([stored[p.name] for p in chosen], chosen, probes_at)
    _write_jsonl_atomic(bake_dir / DOCS_FILE, docs)
    return DriftData(bake_dir=bake_dir, baked_prompt=record["config"]["prompt"], personas=chosen,
                     conversations=bake_dir / CONVERSATIONS_FILE, docs=bake_dir / DOCS_FILE, n_docs=len(docs),
                     generated=[p.name for p in stale])


def _bake_autocast(record: dict):
    """Generate in the bake's precision: bf16 autocast is ~2x faster on AMX CPUs."""
    import torch

    return torch.bfloat16 if record["config"].get("precision") == "bf16" else None


def _check_probes_at(probes_at, turns: int) -> tuple[int, ...]:
    depths = tuple(sorted(set(probes_at)))
    if not depths or depths[0] < 0 or depths[-1] > turns:
        raise BakingError(f"probed turns {list(probes_at)} must lie between 0 and --turns {turns}")
    return depths


def _reusable(row: dict | None, persona: Persona, expected_settings: dict) -> bool:
    return bool(row) and row.get("system_prompt") == persona.system_prompt and row.get("settings") == expected_settings


def _read_conversations(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    rows = read_jsonl(path)
    if not all(isinstance(r, dict) and {"persona", "system_prompt", "messages"} <= set(r) for r in rows):
        raise BakingError(f"{path} is corrupt (rows need persona, system_prompt, messages); delete it and rerun drift-data")
    return {row["persona"]: row for row in rows}


def _write_jsonl_atomic(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- lm_eval side

_DOC_FIELDS = {"persona", "turn", "messages", "probe", "scorer", "references"}


def load_drift_dataset(bake: str | None = None, peft: str | None = None, **_other_metadata) -> dict:
    """`custom_dataset` of the lm_eval task: the drift docs of the bake named by
    `--metadata '{"bake": DIR}'` or, failing that, by `peft=DIR` in --model_args."""
    import datasets

    bake_dir = bake or peft
    if not bake_dir:
        raise BakingError(
            f"{TASK_NAME} needs a bake directory: pass --model_args pretrained=BASE,peft=BAKE_DIR, "
            "or --metadata '{\"bake\": \"BAKE_DIR\"}' when evaluating the prompted base model"
        )
    bake_dir = Path(bake_dir)
    if not (bake_dir / BAKE_RECORD).is_file():
        raise BakingError(
            f"{bake_dir} has no {BAKE_RECORD}, so it holds no drift data; point peft= or --metadata bake= "
            "at a directory made by `lm-eval-baking bake`"
        )
    docs_path = bake_dir / DOCS_FILE
    if not docs_path.is_file():
        raise BakingError(f"{docs_path} not found; make it with `lm-eval-baking drift-data {bake_dir}`")
    docs = read_jsonl(docs_path)
    problems = [(line, _doc_problem(doc)) for line, doc in enumerate(docs, 1)]
    problems = [(line, problem) for line, problem in problems if problem]
    if not docs or problems:
        where = f" (row {problems[0][0]} {problems[0][1]})" if problems else ""
        raise BakingError(f"{docs_path} is empty or corrupt{where}; remake it with `lm-eval-baking drift-data {bake_dir}`")
    return {"test": datasets.Dataset.from_list(docs)}


def _doc_problem(doc) -> str | None:
    """What makes one drift doc unusable (None when lm_eval can run it): checked here, because a
    wrong type otherwise fails deep inside pyarrow or halfway through an evaluation."""
    if not isinstance(doc, dict) or not _DOC_FIELDS <= set(doc):
        return f"needs the fields {sorted(_DOC_FIELDS)}"
    text_list = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    checks = [
        (isinstance(doc["persona"], str) and isinstance(doc["probe"], str), "needs persona and probe strings"),
        (isinstance(doc["turn"], int) and not isinstance(doc["turn"], bool) and doc["turn"] >= 0,
         "needs a whole turn number ≥ 0"),
        (isinstance(doc["messages"], list) and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ("user", "assistant")
            and isinstance(m["content"], str) for m in doc["messages"]),
         "needs messages as a list of {role: user|assistant, content: text}"),
        (text_list(doc["references"]), "needs references as a list of strings"),
        (isinstance(doc["scorer"], str), "needs a scorer (JSON text)"),
    ]
    for ok, problem in checks:
        if not ok:
            return problem
    try:
        scorer_from_json(doc["scorer"])
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return "has a scorer that is not valid JSON"
    except BakingError as e:
        return f"has an unusable scorer ({e})"
    return None


def lm_eval_commands(bake_dir: str | os.PathLike) -> dict[str, str]:
    """The lm_eval command lines that score the baked adapter and the prompted base on the drift docs."""
    record = load_bake_record(bake_dir)
    base = shlex.quote(record["base_model"]["name_or_path"])
    bake_dir = shlex.quote(str(Path(bake_dir).absolute()))
    common = (f'--apply_chat_template --include_path "$(lm-eval-baking tasks-path)" --tasks {TASK_NAME} '
              "--device cpu --batch_size 8 --log_samples")
    return {
        "baked adapter": f"lm_eval --model hf --model_args pretrained={base},peft={bake_dir} {common} "
                         "--output_path results/drift/baked",
        "prompted base": f"lm_eval --model hf --model_args pretrained={base} {common} "
                         f"--system_instruction {shlex.quote(record['config']['prompt'])} "
                         f"--metadata {shlex.quote(json.dumps({'bake': str(Path(bake_dir).absolute())}))} "
                         "--output_path results/drift/prompted",
    }


# ---------------------------------------------------------------------------- first-turn measurement


def first_turn_adherence(model, tokenizer, personas: list[Persona], *, samples: int = 4, max_new_tokens: int = 40,
                         seed: int = 0, progress: bool = True) -> list[dict]:
    """How well the model follows each persona right after its system prompt (no history).

    Per persona: one greedy answer plus `samples` T=1 answers per probe, scored
    with the persona's scorer; the same for answers without the system prompt,
    so a scorer the unprompted model already satisfies shows up.
    """
    from .questions import Question
    from .trajectories import sample_trajectories

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


# ---------------------------------------------------------------------------- command line


def add_drift_command(subparsers) -> argparse.ArgumentParser:
    """Register `lm-eval-baking drift-data BAKE_DIR ...`."""
    parser = subparsers.add_parser(
        "drift-data", help="generate persona-drift conversations for a bake and print the lm_eval commands",
        description=__doc__.split("\n\n")[0],
        epilog=f"built-in personas: {', '.join(persona_names())}",
    )
    parser.add_argument("bake_dir", type=Path, help="a directory made by `lm-eval-baking bake`")
    parser.add_argument("--persona", action="append", dest="personas", metavar="NAME",
                        help="persona to test (repeatable); default: the one whose system prompt is the baked prompt")
    parser.add_argument("--persona-file", type=Path,
                        help="JSON/YAML list of personas {name, system_prompt, scorer, probes?, references?}")
    parser.add_argument("--turns", type=int, default=30, help="agent turns per conversation (default: 30)")
    parser.add_argument("--probes-at", type=int, nargs="+", default=list(DEFAULT_PROBES_AT),
                        help=f"turns after which the probes are asked (default: {' '.join(map(str, DEFAULT_PROBES_AT))})")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="length cap of each turn (default: 40)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of both sides (default: 0.7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_drift_data)
    return parser


def _run_drift_data(args) -> None:
    data = prepare_drift_data(
        args.bake_dir, args.personas, args.turns, args.probes_at, persona_file=args.persona_file,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, progress=not args.quiet,
    )
    names = [p.name for p in data.personas]
    reused = [name for name in names if name not in data.generated]
    print(f"\nPersonas: {', '.join(names)}"
          + (f" (conversations reused: {', '.join(reused)})" if reused else ""))
    print(f"Conversations: {data.conversations}\nDrift docs:    {data.docs} ({data.n_docs} docs)")
    for persona in data.personas:
        if persona.system_prompt.strip() != data.baked_prompt.strip():
            print(f"note: persona '{persona.name}' chatted under its own system prompt, not the baked one; "
                  "the prompted-base command below uses the baked prompt")
    print("\nScore persona drift with lm-evaluation-harness:")
    for label, command in lm_eval_commands(data.bake_dir).items():
        print(f"  # {label}\n  {command}")
