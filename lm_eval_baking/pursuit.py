"""Baking into baked models: prompt pursuit, half-baking, and multi-prompt sequences.

Prompt pursuit (arXiv 2409.13697) iterates θ_(i+1) = B(θ_i, u): round
i+1 bakes the same prompt u into the round-i model, whose prompted behaviour
is stronger than the base's. Each round is an ordinary `bake` whose teacher is
the base with rounds 1..i merged in, so round i+1's adapter only makes sense
stacked on top of rounds 1..i.

A LoRA on a linear layer adds ΔW_k = s_k·B_k·A_k to its weight (s_k =
lora_alpha/r), and merging adds it for good, so a chain of rounds is
W + Σ_k s_k·B_k·A_k: one LoRA whose A is the rounds' A stacked along the rank
and whose B is the rounds' s_k·B_k side by side, at scale 1. `export_chain`
writes that adapter, so a pursued or multi-prompt model is one standard PEFT
adapter on the original base. `export_strength` scales one bake's update by s
("half-baking": 0 = base, 1 = the bake, >1 extrapolates); a bake's per-epoch
checkpoints are the other strength dial.

Layout of a pursuit folder (`pursue`):

    round-1/ ... round-N/   one bake each; round-k stacks on rounds 1..k-1
    pursued/                rounds 1..best as one adapter on the base (export_chain)
    pursuit.json            per-round scores, stop reason, best round, settings

and of a sequence folder (`bake_sequence`):

    references/prompt-k/    held-out answers of the ORIGINAL base prompted with prompt k
    stage-1/ ... stage-N/   one bake per stage, each into the model with the earlier stages merged
    combined/               all stages as one adapter on the base (export_chain)
    sequence.json           each prompt's quality after every stage
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import models
from .baking import (
    BAKE_RECORD, FORMAT, FORMAT_VERSION, BakeConfig, bake, load_bake_record, package_version, text_sha256,
)
from .errors import BakingError
from .io import read_jsonl, staged_directory, write_json, write_jsonl
from .kl import KLEstimate, autocast, monte_carlo_kl
from .personas import Persona, get_persona, persona_for_prompt
from .questions import Question, load_questions, split_questions
from .safety import check_adapter, read_adapter_weights
from .trajectories import Trajectory, chat_prefix, continuation_logprobs, sample_trajectories, score_heldout

PURSUIT_RECORD = "pursuit.json"
SEQUENCE_RECORD = "sequence.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HELDOUT = Path("data") / "heldout.jsonl"

# An evaluator scores a model (higher is better): (model, tokenizer, round_index) -> float.
# Round 0 is the unbaked base. One that also takes a `system_prompt` keyword can
# score a model re-prompted with its prompt (the "baked + prompt" column).
Evaluator = Callable[..., float]


# ---------------------------------------------------------------------------- chains of adapters


def merge_adapters(model, adapter_dirs, *, base_model: str | None = None,
                   allow_pickle: bool = False) -> torch.nn.Module:
    """Merge each adapter into `model`'s weights, in order; returns the plain merged model.

    Each adapter is checked first (`safety.check_adapter`): safetensors only
    unless `allow_pickle`, and baked on `base_model` when that is given.
    """
    from peft import PeftModel

    for adapter in adapter_dirs:
        check_adapter(adapter, base_model=base_model, allow_pickle=allow_pickle)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model


def load_chain(base_model: str, adapter_dirs, *, device: str = "cpu",
               allow_pickle: bool = False) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the base with the adapters merged in order, i.e. the model a chain produced."""
    adapter_dirs = list(adapter_dirs)
    for adapter in adapter_dirs:  # before the (slow) model load
        check_adapter(adapter, base_model=base_model, allow_pickle=allow_pickle)
    model, tokenizer = models.load_model(base_model, device=device)
    return merge_adapters(model, adapter_dirs, allow_pickle=allow_pickle), tokenizer


def chain_id(adapter_dirs) -> str | None:
    """sha256 over a chain's adapter weights: names the teacher a pursuit round or sequence stage bakes into
    (None for the bare base), so resuming an interrupted round cannot mix two teachers' work."""
    adapter_dirs = list(adapter_dirs)
    if not adapter_dirs:
        return None
    digest = hashlib.sha256()
    for adapter in adapter_dirs:
        digest.update((Path(adapter) / ADAPTER_WEIGHTS).read_bytes())
    return digest.hexdigest()


@dataclass
class _LoraRound:
    """One adapter's LoRA factors, with its scale s = lora_alpha/r (or /√r with rsLoRA)."""

    source: Path
    rank: int
    lora_alpha: float
    scaling: float
    target_modules: list[str]
    fan_in_fan_out: bool
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """module key -> (A [r, in], B [out, r]), keys as stored minus '.lora_A.weight'."""


def _read_lora(adapter_dir: Path, allow_pickle: bool = False) -> _LoraRound:
    files = check_adapter(adapter_dir, allow_pickle=allow_pickle)
    config = files.config
    # Anything that is not plain W + s·B·A would make the concatenated adapter inexact.
    unsupported = [
        (config.get("peft_type") != "LORA", f"peft_type {config.get('peft_type')}"),
        (config.get("use_dora"), "DoRA"),
        (config.get("rank_pattern") or config.get("alpha_pattern"), "per-module rank/alpha patterns"),
        (config.get("modules_to_save"), "modules_to_save"),
        (config.get("bias", "none") != "none" or config.get("lora_bias"), "trained biases"),
        (not isinstance(config.get("target_modules"), list), "a regex target_modules"),
    ]
    for problem, what in unsupported:
        if problem:
            raise BakingError(f"{adapter_dir} uses {what}; only plain LoRA on linear layers can be chained or "
                              "scaled exactly")
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
        if rank < 1 or not math.isfinite(alpha):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise BakingError(f"{adapter_dir}/{ADAPTER_CONFIG} needs a LoRA rank r ≥ 1 and a finite lora_alpha; "
                          "re-bake or re-download the adapter") from None
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank

    weights = read_adapter_weights(files)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in weights:
        module, _, suffix = key.rpartition(".lora_")
        if suffix not in ("A.weight", "B.weight"):
            raise BakingError(f"{adapter_dir} has weight {key}; only LoRA on linear layers can be chained exactly")
        if module in factors:
            continue
        a, b = weights.get(f"{module}.lora_A.weight"), weights.get(f"{module}.lora_B.weight")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2:
            raise BakingError(f"{adapter_dir}: {module} is not a LoRA on a linear layer; only those can be chained "
                              "exactly")
        factors[module] = (a.float(), b.float())
    return _LoraRound(adapter_dir, rank, alpha, scaling, list(config["target_modules"]),
                      bool(config.get("fan_in_fan_out")), factors)


def _check_one_base(base_path: str, records: list[dict], bake_dirs: list[Path]) -> str:
    """The base model's sha256, after checking every bake was made on exactly those weights."""
    expected = models.model_fingerprint(base_path)
    for bake_dir, record in zip(bake_dirs, records):
        found = record.get("base_model", {}).get("sha256")
        if found != expected:
            raise BakingError(
                f"{bake_dir} was baked on a different base model (sha256 {str(found)[:12]}) than {base_path} "
                f"(sha256 {expected[:12]}); a chain must share one base: re-bake it with --model {base_path}"
            )
    return expected


def export_chain(base_model: str, round_dirs, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write one standard PEFT LoRA adapter on `base_model` equal to the chain of `round_dirs`.

    `round_dirs` are bakes in chain order (round k was baked into the base with
    rounds 1..k-1 merged). The result has rank Σ r_k and lora_alpha = rank
    (scale 1, rsLoRA off); each round's scale is folded into its B. Modules a
    round did not target get zero factors, so chains over different module
    sets export exactly too. `output` also gets a bake-style baking.json and
    round 1's held-out data, so `lm_eval ... peft=OUTPUT --tasks baking_mckl`
    scores it against the base prompted with round 1's prompt.
    """
    import peft
    from peft import LoraConfig
    from safetensors.torch import save_file

    round_dirs = [Path(d) for d in round_dirs]
    if not round_dirs:
        raise BakingError("export_chain needs at least one bake directory; pass the rounds in the order they "
                          "were baked")
    base_path = models.resolve_model(base_model)
    records = [load_bake_record(d) for d in round_dirs]
    base_sha = _check_one_base(base_path, records, round_dirs)
    rounds = [_read_lora(d) for d in round_dirs]
    if len({r.fan_in_fan_out for r in rounds}) > 1:
        raise BakingError(f"the rounds disagree on fan_in_fan_out ({[r.fan_in_fan_out for r in rounds]}); "
                          "re-bake them alike")

    total_rank = sum(r.rank for r in rounds)
    modules = sorted(set().union(*(r.factors for r in rounds)))
    tensors = {}
    for module in modules:
        a_any, b_any = next(r.factors[module] for r in rounds if module in r.factors)
        a_parts, b_parts = [], []
        for r in rounds:
            untouched = (a_any.new_zeros(r.rank, a_any.shape[1]), b_any.new_zeros(b_any.shape[0], r.rank))
            a, b = r.factors.get(module, untouched)
            if a.shape[1] != a_any.shape[1] or b.shape[0] != b_any.shape[0]:
                raise BakingError(f"{r.source}: {module} has another shape than in the other rounds; "
                                  "they need one base model")
            a_parts.append(a)
            b_parts.append(b * r.scaling)
        tensors[f"{module}.lora_A.weight"] = torch.cat(a_parts, dim=0).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    target_modules = sorted(set().union(*(r.target_modules for r in rounds)))
    lora = LoraConfig(
        r=total_rank, lora_alpha=total_rank, use_rslora=False, lora_dropout=0.0, bias="none",
        target_modules=target_modules, fan_in_fan_out=rounds[0].fan_in_fan_out, task_type="CAUSAL_LM",
        base_model_name_or_path=base_path, inference_mode=True,
    )
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "pursuit_export",
        # config and data/ are round 1's: it is the only round baked on the base itself,
        # so its held-out answers are samples of the base prompted with its prompt.
        "config": records[0]["config"],
        "prompt_sha256": records[0]["prompt_sha256"],
        "base_model": {"name_or_path": base_path, "sha256": base_sha},
        "pursuit_export": {
            "method": "delta_W = sum_k scaling_k * B_k @ A_k: A stacked along the rank, scaling_k * B_k side by side",
            "rank": total_rank,
            "lora_alpha": total_rank,
            "target_modules": target_modules,
            "rounds": [
                {"source": str(r.source), "prompt": rec["config"]["prompt"], "rank": r.rank,
                 "lora_alpha": r.lora_alpha, "scaling": r.scaling, "target_modules": r.target_modules}
                for r, rec in zip(rounds, records)
            ],
        },
        "data": {"heldout": str(HELDOUT), "heldout_source": str(round_dirs[0])},
        "versions": {"torch": torch.__version__, "peft": peft.__version__, "lm_eval_baking": package_version()},
    }
    output = Path(output)
    with staged_directory(output, replace=overwrite) as staging:
        lora.save_pretrained(staging)
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        _copy_heldout(round_dirs[0], staging)
        write_json(staging / BAKE_RECORD, record)
    return output


def _copy_heldout(bake_dir: Path, destination: Path) -> None:
    source = bake_dir / HELDOUT
    if source.is_file():
        (destination / HELDOUT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination / HELDOUT)


def parse_strength(value) -> float:
    """A prompt strength: a finite number ≥ 0 (0 = base, 1 = the full bake, above 1 extrapolates)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        strength = float(value)
    except (TypeError, ValueError):
        strength = float("nan")
    if not math.isfinite(strength) or strength < 0:
        raise BakingError("--strength must be a number ≥ 0 (0 = base, 1 = the full bake, above 1 extrapolates); "
                          f"got {value!r}")
    return strength


def export_strength(bake_dir: str | Path, strength, output: str | Path, *, epoch: int | None = None,
                    overwrite: bool = False, allow_pickle: bool = False) -> Path:
    """Write the bake's adapter with its update scaled by `strength` ("half-baking").

    B is multiplied by s, so ΔW becomes s·ΔW exactly; lora_alpha is left alone
    so the adapter config stays the bake's. `epoch` starts from that epoch's
    checkpoint instead of the final adapter (early stopping is the other dial).
    """
    from safetensors.torch import save_file

    strength = parse_strength(strength)
    bake_dir = Path(bake_dir)
    record = load_bake_record(bake_dir)
    source = bake_dir if epoch is None else bake_dir / "checkpoints" / f"epoch-{epoch}"
    if not (source / ADAPTER_CONFIG).is_file():
        epochs = record.get("config", {}).get("epochs")
        raise BakingError(f"{source} holds no adapter; --epoch must be between 1 and {epochs} for this bake")
    lora = _read_lora(source, allow_pickle)  # refuses DoRA & co., where scaling B is not scaling ΔW
    weights = read_adapter_weights(check_adapter(source, allow_pickle=allow_pickle))
    scaled = {key: value * strength if ".lora_B." in key else value for key, value in weights.items()}
    record = {key: value for key, value in record.items() if key not in ("kl", "performance")}  # the source bake's
    record.update(kind="strength_export", half_baking={
        "strength": strength, "source": str(bake_dir), "epoch": epoch, "source_scaling": lora.scaling,
        "method": "lora_B multiplied by strength: delta_W = strength * scaling * B @ A",
    })
    output = Path(output)
    with staged_directory(output, replace=overwrite) as staging:
        shutil.copyfile(source / ADAPTER_CONFIG, staging / ADAPTER_CONFIG)
        save_file(scaled, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        _copy_heldout(bake_dir, staging)
        write_json(staging / BAKE_RECORD, record)
    return output


# ---------------------------------------------------------------------------- evaluators


def heldout_questions(config: BakeConfig) -> list[Question]:
    """The questions `bake(config)` holds out: never trained on, in any round or stage."""
    return split_questions(load_questions(config.questions), config.heldout_fraction, config.seed)[1]


@dataclass
class AdherenceEvaluator:
    """Share of greedy answers to held-out questions that a persona's scorer accepts.

    The most direct measure of "does the model do what the prompt says" where
    the prompt has a programmatic check (the pirate: the answer opens with
    "Ahoy"). Greedy, so it is deterministic from round to round.
    """

    persona: Persona
    questions: list[Question]
    max_new_tokens: int = 48
    batch_size: int = 64

    @property
    def name(self) -> str:
        return f"adherence:{self.persona.name}"

    def answers(self, model, tokenizer, system_prompt: str | None = None) -> list[str]:
        greedy = sample_trajectories(model, tokenizer, self.questions, system_prompt=system_prompt, temperature=0,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, progress=False)
        return [t.answer for t in greedy]

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        answers = self.answers(model, tokenizer, system_prompt)
        return sum(self.persona.score(a) for a in answers) / len(answers)


@dataclass
class QualityEvaluator:
    """1 − KL(model) / KL(unprompted base), both from the ORIGINAL prompted base.

    KL is the Monte-Carlo estimate over held-out answers the original prompted
    base sampled (teacher log-probs stored with the bake), with the model's
    log-probs computed the way lm_eval scores a continuation: the same number
    `baking_mckl`'s `quality` metric gives. 1 = behaves like the prompted base,
    0 = like the unprompted base. It measures fidelity to the original prompted
    model, so pursuit rounds that overshoot it score lower.
    """

    heldout: list[Trajectory]
    batch_size: int = 16
    name: str = "quality"

    @classmethod
    def from_bake(cls, bake_dir: str | Path, batch_size: int = 16) -> "QualityEvaluator":
        path = Path(bake_dir) / HELDOUT
        if not path.is_file():
            raise BakingError(f"{path} is missing; re-run the bake with --overwrite")
        heldout = [Trajectory.from_dict(row) for row in read_jsonl(path)]
        if not heldout or any(t.teacher_logprob is None or t.base_logprob is None for t in heldout):
            raise BakingError(f"{path} lacks teacher/base log-probs; re-run the bake with --overwrite")
        evaluator = cls(heldout, batch_size)
        if not evaluator.unprompted_kl.per_token > 0:
            raise BakingError(
                f"the prompt changes nothing measurable on {path} (MC-KL {evaluator.unprompted_kl.per_token:.2g}), "
                "so quality 1 − KL/KL_unprompted is undefined; use a prompt that changes the answers "
                "(or, for pursuit, another --evaluator)"
            )
        return evaluator

    @property
    def unprompted_kl(self) -> KLEstimate:
        return monte_carlo_kl([t.teacher_logprob for t in self.heldout], [t.base_logprob for t in self.heldout],
                              [t.n_tokens for t in self.heldout])

    def kl(self, model, tokenizer, system_prompt: str | None = None) -> KLEstimate:
        """MC-KL(original prompted base ‖ model), the model seeing `system_prompt` (default: none)."""
        pairs = [(chat_prefix(tokenizer, t.question, system_prompt), t.answer) for t in self.heldout]
        scored = continuation_logprobs(model, tokenizer, pairs, batch_size=self.batch_size, progress=False)
        return monte_carlo_kl([t.teacher_logprob for t in self.heldout], [logprob for logprob, _ in scored],
                              [t.n_tokens for t in self.heldout])

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        return 1.0 - self.kl(model, tokenizer, system_prompt).per_token / self.unprompted_kl.per_token


@dataclass
class LmEvalEvaluator:
    """An lm_eval task's metric on the model in memory (HFLM wraps the model instance).

    The metric is negated when lm_eval says lower is better, so higher is
    always better. Our own tasks (baking_mckl, ...) read the bake named by
    `bake` (round 1 of a pursuit: samples of the original prompted base).
    """

    task: str
    metric: str
    bake: str | None = None
    batch_size: int = 8
    limit: int | float | None = None

    @property
    def name(self) -> str:
        return f"{self.task}:{self.metric}"

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from .tasks import tasks_path

        metadata = {"bake": self.bake} if self.bake else {}
        manager = TaskManager(include_path=str(tasks_path()), include_defaults=False, metadata=metadata)
        if self.task not in manager.all_tasks:  # indexing lm_eval's own tasks takes tens of seconds: only if needed
            manager = TaskManager(include_path=str(tasks_path()), metadata=metadata)
        if self.task not in manager.all_tasks:
            raise BakingError(f"lm_eval knows no task '{self.task}'; check the name with `lm_eval ls tasks`")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
        output = lm_eval.simple_evaluate(
            model=lm, tasks=[self.task], task_manager=manager, apply_chat_template=True,
            system_instruction=system_prompt, limit=self.limit, log_samples=False, bootstrap_iters=0,
        )
        results = output["results"].get(self.task, {})
        values = {key.partition(",")[0]: value for key, value in results.items() if "," in key}
        if self.metric not in values:
            reported = sorted(m for m in values if not m.endswith("_stderr"))
            raise BakingError(f"task '{self.task}' reports no metric '{self.metric}'; pick one of {reported}")
        higher_is_better = output.get("higher_is_better", {}).get(self.task, {}).get(self.metric, True)
        return float(values[self.metric]) * (1 if higher_is_better else -1)


def evaluator_spec(spec, prompt: str) -> str:
    """Check an --evaluator value before anything is baked; returns its normal form (the record's name).

    - None / "default": "adherence:PERSONA" when the prompt is a built-in
      persona's (it has a programmatic check), else "quality";
    - "adherence" or "adherence:PERSONA": greedy persona adherence on the held-out questions;
    - "quality": 1 − MC-KL/MC-KL_unprompted to the original prompted base;
    - "TASK:METRIC": an lm_eval task run on the model in memory, e.g. "baking_mckl:kl_per_token".
    """
    spec = "default" if spec is None else str(spec).strip()
    persona = persona_for_prompt(prompt)
    if spec == "default":
        return f"adherence:{persona.name}" if persona else "quality"
    if spec == "adherence":
        if persona is None:
            raise BakingError("--evaluator adherence needs a persona with a scorer: use adherence:NAME "
                              "(see `lm-eval-baking drift-data --help`), quality, or TASK:METRIC")
        return f"adherence:{persona.name}"
    if spec.startswith("adherence:"):
        get_persona(spec.partition(":")[2])  # an unknown name fails here, before any baking
        return spec
    task, _, metric = spec.partition(":")
    if spec != "quality" and (not task.strip() or not metric.strip()):
        raise BakingError(f"--evaluator '{spec}' is not understood; use default, quality, adherence[:PERSONA] "
                          "or TASK:METRIC (e.g. baking_mckl:quality)")
    return spec


def resolve_evaluator(spec, config: BakeConfig, reference_bake: str | Path) -> Evaluator:
    """Turn an --evaluator value (see `evaluator_spec`) or a callable into a scorer (higher is better).

    `reference_bake` is a bake on the original base (a pursuit's round 1): its
    held-out answers are what "quality" and our lm_eval tasks compare against.
    """
    if callable(spec):
        return spec
    spec = evaluator_spec(spec, config.prompt)
    if spec == "quality":
        return QualityEvaluator.from_bake(reference_bake, batch_size=config.batch_size * 2)
    if spec.startswith("adherence:"):
        return AdherenceEvaluator(get_persona(spec.partition(":")[2]), heldout_questions(config),
                                  max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    task, _, metric = spec.partition(":")
    return LmEvalEvaluator(task, metric, bake=str(reference_bake))


def evaluator_name(evaluator: Evaluator) -> str:
    return getattr(evaluator, "name", None) or getattr(evaluator, "__qualname__", None) or type(evaluator).__name__


def takes_system_prompt(evaluator: Evaluator) -> bool:
    try:
        return "system_prompt" in inspect.signature(evaluator).parameters
    except (TypeError, ValueError):
        return False


def checked_score(evaluator: Evaluator, model, tokenizer, round_index: int, *, system_prompt: str | None = None,
                  kept: str = "") -> float:
    """Run the evaluator; anything but a finite number becomes one clear BakingError."""
    name = evaluator_name(evaluator)
    try:
        extra = {"system_prompt": system_prompt} if system_prompt is not None else {}
        value = evaluator(model, tokenizer, round_index, **extra)
    except BakingError:
        raise
    except Exception as e:  # noqa: BLE001 - a user callable may raise anything; report it in one line
        first_line = (str(e).strip().splitlines() or [""])[0][:160]
        raise BakingError(f"evaluator {name} failed on round {round_index} ({type(e).__name__}: {first_line}){kept}; "
                          "fix the evaluator and rerun to continue") from e
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError):
        score = None
    if score is None or not math.isfinite(score):
        raise BakingError(f"evaluator {name} returned {value!r} on round {round_index}, not a finite number{kept}; "
                          "make it return a float (higher is better)")
    return score


def reprompted_score(evaluator: Evaluator, model, tokenizer, prompt: str, round_index: int, *,
                     kept: str = "") -> float | None:
    """The evaluator's score of `model` with `prompt` given again as the system prompt.

    Re-prompting a baked model with its own prompt is the paper's "re-prompting"
    result. None when the evaluator cannot take a system prompt.
    """
    if not takes_system_prompt(evaluator):
        return None
    return checked_score(evaluator, model, tokenizer, round_index, system_prompt=prompt, kept=kept)


# ---------------------------------------------------------------------------- prompt pursuit


@dataclass
class PursuitSettings:
    """When pursuit stops. Serialised into pursuit.json."""

    max_rounds: int = 5
    min_improvement: float = 0.01
    """Stop once a round improves the score by less than this fraction of the previous score."""
    evaluator: str = "default"
    """What scored the rounds (its name, for the record)."""

    def validate(self) -> None:
        if not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise BakingError(f"--max-rounds must be an integer ≥ 1 (got {self.max_rounds!r})")
        if not (isinstance(self.min_improvement, (int, float)) and math.isfinite(self.min_improvement)
                and self.min_improvement >= 0):
            raise BakingError("--min-improvement must be a number ≥ 0, e.g. 0.01 for 1% "
                              f"(got {self.min_improvement!r})")


@dataclass
class RoundScore:
    round: int
    """0 is the unbaked base (reference only); 1 is the plain bake."""
    bake: str | None
    score: float
    improvement: float | None = None
    """Relative to the previous round: (score − previous) / |previous| (the plain difference when previous is 0)."""
    reprompted_score: float | None = None
    """The same model with the prompt given again (round 0: the prompted base)."""
    heldout_kl: float | None = None
    """The round's own held-out KL per token to its teacher (the previous round, prompted)."""
    kl_ratio: float | None = None
    """heldout_kl / KL of its teacher without the prompt: how completely this round baked."""


STOP_REASONS = {
    "worse": "the last round scored worse than the one before",
    "converged": "the last round improved the score by less than --min-improvement",
    "max_rounds": "reached --max-rounds",
}


@dataclass
class PursuitResult:
    output: Path
    base_model: str
    rounds: list[RoundScore]
    """Round 0 (the base) first, then every round baked."""
    stop_reason: str
    best_round: int
    pursued: Path
    """Rounds 1..best_round as one adapter on the base."""
    settings: PursuitSettings = field(default_factory=PursuitSettings)


def relative_improvement(previous: float, current: float) -> float:
    return (current - previous) / abs(previous) if previous != 0 else current - previous


def stop_decision(round_index: int, improvement: float | None, settings: PursuitSettings) -> str | None:
    """Why pursuit stops after this round (a STOP_REASONS key), or None to go on."""
    if improvement is not None and improvement < 0:
        return "worse"
    if improvement is not None and improvement < settings.min_improvement:
        return "converged"
    if round_index >= settings.max_rounds:
        return "max_rounds"
    return None


def _check_output(output: Path, record_name: str, config: dict, overwrite: bool, what: str) -> None:
    """Refuse to mix a new run into a folder holding a run with other settings."""
    if output.exists() and not output.is_dir():
        raise BakingError(f"--output {output} is a file; choose a directory path")
    if overwrite or not (output / record_name).is_file():
        return
    if (_read_record(output / record_name) or {}).get("config") != config:
        raise BakingError(f"--output {output} holds a {what} with other settings; choose another --output "
                          "or pass --overwrite to replace it")


def _read_record(path: Path) -> dict | None:
    """A JSON record we wrote, or None when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def pursue(config: BakeConfig, output: str | Path, *, max_rounds: int = 5, min_improvement: float = 0.01,
           evaluator=None, overwrite: bool = False, resume: bool = False, progress: bool = True) -> PursuitResult:
    """Prompt pursuit: bake `config.prompt` again and again into the baked model.

    Round 1 is `bake(config)` into `output/round-1`; round i+1 bakes the same
    prompt with the base + rounds 1..i merged as teacher (prompted) and student
    (unprompted, new LoRA). After each round the merged model is scored by
    `evaluator` (see `resolve_evaluator`; higher is better). Pursuit stops when
    a round scores worse than the one before, improves by less than
    `min_improvement` (relative), or at `max_rounds`; the best round's chain is
    exported to `output/pursued/`. Rerunning with the same settings reuses the
    rounds already on disk, so a failed evaluator costs no re-baking, and with
    `resume` a round that was interrupted continues from its last checkpoint.
    """
    config.validate()
    settings = PursuitSettings(max_rounds, min_improvement, evaluator_name(evaluator) if callable(evaluator)
                               else evaluator_spec(evaluator, config.prompt))
    settings.validate()
    output = Path(output)
    _check_output(output, PURSUIT_RECORD, config.to_dict(), overwrite, "pursuit")
    base_model = models.resolve_model(config.model)

    rounds: list[RoundScore] = []
    round_dirs: list[Path] = []
    teacher = None  # round 1 bakes the base, which bake() loads itself
    score_fn: Evaluator | None = None
    stop_reason = None
    bar = tqdm(range(1, max_rounds + 1), desc="pursuit", unit="round", disable=not progress)
    for round_index in bar:
        round_dir = output / f"round-{round_index}"
        result = bake(config, round_dir, overwrite=overwrite, resume=resume, progress=progress, teacher=teacher,
                      teacher_id=chain_id(round_dirs))
        round_dirs.append(round_dir)
        kept = f"; rounds 1-{round_index} are kept in {output}"
        if score_fn is None:
            # Round 1's held-out data are samples of the original prompted base: the fixed
            # reference every later round is compared against.
            score_fn = resolve_evaluator(evaluator, config, round_dir)
            model, tokenizer = models.load_model(base_model, device=config.device)
            rounds.append(RoundScore(
                round=0, bake=None, score=checked_score(score_fn, model, tokenizer, 0, kept=kept),
                reprompted_score=reprompted_score(score_fn, model, tokenizer, config.prompt, 0, kept=kept)))
            model = merge_adapters(model, [round_dir], base_model=base_model)
        else:
            model, _ = load_chain(base_model, round_dirs, device=config.device)
        score = checked_score(score_fn, model, tokenizer, round_index, kept=kept)
        improvement = None if round_index == 1 else relative_improvement(rounds[-1].score, score)
        rounds.append(RoundScore(
            round=round_index, bake=round_dir.name, score=score, improvement=improvement,
            reprompted_score=reprompted_score(score_fn, model, tokenizer, config.prompt, round_index, kept=kept),
            heldout_kl=result.final_kl.per_token, kl_ratio=result.kl_ratio,
        ))
        bar.set_postfix(score=f"{score:.4g}")
        stop_reason = stop_decision(round_index, improvement, settings)
        _write_pursuit_record(output, config, settings, base_model, rounds, stop_reason)
        if stop_reason:
            break
        teacher = (model, tokenizer)  # bake() wraps it in a fresh LoRA in place
    bar.close()

    baked = rounds[1:]
    best = max(baked, key=lambda r: r.score)  # the earliest of equal scores: fewer rounds, same quality
    pursued = export_chain(base_model, round_dirs[:best.round], output / "pursued", overwrite=True)
    _write_pursuit_record(output, config, settings, base_model, rounds, stop_reason, best.round)
    return PursuitResult(output=output, base_model=base_model, rounds=rounds, stop_reason=stop_reason,
                         best_round=best.round, pursued=pursued, settings=settings)


def _write_pursuit_record(output: Path, config: BakeConfig, settings: PursuitSettings, base_model: str,
                          rounds: list[RoundScore], stop_reason: str | None, best_round: int | None = None) -> None:
    write_json(output / PURSUIT_RECORD, {
        "format": "lm-eval-baking/pursuit",
        "format_version": 1,
        "status": "done" if best_round is not None else "running",
        "config": config.to_dict(),
        "settings": asdict(settings),
        "base_model": base_model,
        "score": f"{settings.evaluator} (higher is better); round 0 is the unbaked base",
        "rounds": [asdict(r) for r in rounds],
        "stop_reason": stop_reason,
        "stop_reason_text": STOP_REASONS.get(stop_reason),
        "best_round": best_round,
        "pursued": "pursued" if best_round is not None else None,
        "note": "round-k is an adapter on the base with rounds 1..k-1 merged; pursued/ is the usable single adapter",
    })


def format_pursuit_table(result: PursuitResult) -> str:
    lines = [f"score: {result.settings.evaluator} (higher is better)", "",
             "| round | score | improvement | with prompt again | held-out KL to teacher | KL ratio |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result.rounds:
        label = "base" if r.round == 0 else str(r.round) + (" (best)" if r.round == result.best_round else "")
        lines.append(f"| {label} | {r.score:.4f} | {_fmt(r.improvement, '+.1%')} | {_fmt(r.reprompted_score, '.4f')} "
                     f"| {_fmt(r.heldout_kl, '.4f')} | {_fmt(r.kl_ratio, '.1%')} |")
    lines.append(f"\nstopped: {STOP_REASONS[result.stop_reason]}; best round {result.best_round} "
                 f"exported to {result.pursued}")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------------------- multi-prompt sequences


@dataclass
class StageRecord:
    stage: int
    prompt_index: int
    """1-based index into the prompt list."""
    bake: str
    heldout_kl: float
    kl_ratio: float
    quality_after: list[float]
    """Every prompt's quality (1 − KL/KL_unprompted vs the ORIGINAL base with that prompt) after this stage."""


@dataclass
class SequenceResult:
    output: Path
    prompts: list[str]
    stages: list[StageRecord]
    combined: Path

    def quality_after_own_stage(self) -> list[float]:
        """Each prompt's quality right after the last stage that baked it."""
        last = {s.prompt_index: s for s in self.stages}
        return [last[k].quality_after[k - 1] for k in range(1, len(self.prompts) + 1)]

    def quality_after_sequence(self) -> list[float]:
        return list(self.stages[-1].quality_after)


def _reference_heldout(model, tokenizer, config: BakeConfig, progress: bool) -> list[Trajectory]:
    """Held-out answers of `model` prompted with config.prompt, scored like a bake's data/heldout.jsonl."""
    with autocast(model.device, config.autocast_dtype):
        heldout = sample_trajectories(
            model, tokenizer, heldout_questions(config), system_prompt=config.prompt,
            samples_per_question=config.heldout_samples_per_question, max_new_tokens=config.max_new_tokens,
            temperature=1.0, batch_size=config.generation_batch_size, seed=config.seed + 1,  # bake()'s held-out seed
            desc="sampling reference answers", progress=progress,
        )
    score_heldout(model, tokenizer, heldout, config.prompt, batch_size=config.batch_size * 2, progress=progress)
    return heldout


def _reference(directory: Path, model, tokenizer, config: BakeConfig, base_sha: str,
               progress: bool) -> QualityEvaluator:
    """The original base's answers for one prompt, in a folder lm_eval's `--metadata bake=` can read."""
    record = _read_record(directory / BAKE_RECORD) or {}
    if record.get("config") == config.to_dict() and record.get("base_model", {}).get("sha256") == base_sha:
        return QualityEvaluator.from_bake(directory, batch_size=config.batch_size * 2)
    heldout = _reference_heldout(model, tokenizer, config, progress)
    with staged_directory(directory, replace=True) as staging:
        write_jsonl(staging / HELDOUT, (t.to_dict() for t in heldout))
        write_json(staging / BAKE_RECORD, {
            "format": "lm-eval-baking/reference", "format_version": 1, "config": config.to_dict(),
            "prompt_sha256": text_sha256(config.prompt),
            "base_model": {"name_or_path": models.resolve_model(config.model), "sha256": base_sha},
            "data": {"heldout": str(HELDOUT)},
            "note": "held-out answers of the original base with this prompt; use with --metadata '{\"bake\": DIR}'",
        })
    return QualityEvaluator.from_bake(directory, batch_size=config.batch_size * 2)


def bake_sequence(prompts: list[str], base_config: BakeConfig, output: str | Path, cycles: int = 1, *,
                  overwrite: bool = False, resume: bool = False, progress: bool = True) -> SequenceResult:
    """Bake several prompts one after another into one model, optionally cycling through them.

    Stage j bakes its prompt with the base + stages 1..j-1 merged as teacher.
    Every stage uses `base_config`'s settings (its prompt is ignored) and seed,
    so every stage holds out the same questions and none is ever trained on.
    A stage's own data/heldout.jsonl comes from its teacher; "how well is
    prompt k kept" needs answers of the ORIGINAL base with prompt k, which are
    sampled once into references/prompt-k/ and give each prompt's quality
    1 − KL(model)/KL(unprompted base) after every stage.
    """
    if not prompts:
        raise BakingError("the prompt list is empty; pass at least one --prompt to bake")
    if not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 1:
        raise BakingError(f"--cycles must be an integer ≥ 1 (got {cycles!r})")
    prompt_configs = [replace(base_config, prompt=p) for p in prompts]
    for k, prompt_config in enumerate(prompt_configs, 1):
        try:
            prompt_config.validate()
        except BakingError as e:
            raise BakingError(f"prompt {k}: {e}") from None
    output = Path(output)
    settings = {"prompts": list(prompts), "cycles": cycles, "bake": {**base_config.to_dict(), "prompt": None}}
    _check_output(output, SEQUENCE_RECORD, settings, overwrite, "sequence")
    base_model = models.resolve_model(base_config.model)
    base_sha = models.model_fingerprint(base_model)

    model, tokenizer = models.load_model(base_model, device=base_config.device)
    references = [_reference(output / "references" / f"prompt-{k}", model, tokenizer, c, base_sha, progress)
                  for k, c in enumerate(prompt_configs, 1)]
    schedule = [(k, prompt_configs[k - 1]) for _ in range(cycles) for k in range(1, len(prompts) + 1)]
    stages: list[StageRecord] = []
    stage_dirs: list[Path] = []
    for stage, (prompt_index, stage_config) in enumerate(tqdm(schedule, desc="sequence", unit="stage",
                                                              disable=not progress), 1):
        stage_dir = output / f"stage-{stage}"
        result = bake(stage_config, stage_dir, overwrite=overwrite, resume=resume, progress=progress,
                      teacher=(model, tokenizer), teacher_id=chain_id(stage_dirs))
        stage_dirs.append(stage_dir)
        model, _ = load_chain(base_model, stage_dirs, device=base_config.device)
        stages.append(StageRecord(
            stage=stage, prompt_index=prompt_index, bake=stage_dir.name, heldout_kl=result.final_kl.per_token,
            kl_ratio=result.kl_ratio, quality_after=[reference(model, tokenizer, stage) for reference in references],
        ))
    combined = export_chain(base_model, stage_dirs, output / "combined", overwrite=True)
    sequence = SequenceResult(output=output, prompts=list(prompts), stages=stages, combined=combined)
    write_json(output / SEQUENCE_RECORD, {
        "format": "lm-eval-baking/sequence",
        "format_version": 1,
        "config": settings,
        "base_model": base_model,
        "quality": "1 - MC-KL(original base + prompt k || model) / MC-KL(original base + prompt k || base), "
                   "on references/prompt-k",
        "references": [f"references/prompt-{k}" for k in range(1, len(prompts) + 1)],
        "stages": [asdict(s) for s in stages],
        "quality_after_own_stage": sequence.quality_after_own_stage(),
        "quality_after_sequence": sequence.quality_after_sequence(),
        "combined": "combined",
    })
    return sequence


def format_sequence_table(result: SequenceResult) -> str:
    header = " | ".join(f"prompt {k}" for k in range(1, len(result.prompts) + 1))
    lines = [*(f"prompt {k}: {p}" for k, p in enumerate(result.prompts, 1)), "",
             "quality = 1 − KL/KL_unprompted against the original base with each prompt (1 = as prompted)", "",
             f"| after stage | baked | {header} |", "| ---: | ---: |" + " ---: |" * len(result.prompts)]
    for s in result.stages:
        cells = " | ".join(f"{q:.3f}" for q in s.quality_after)
        lines.append(f"| {s.stage} | prompt {s.prompt_index} | {cells} |")
    own = " | ".join(f"{q:.3f}" for q in result.quality_after_own_stage())
    lines.append(f"| own stage | | {own} |")
    lines.append(f"\ncombined adapter: {result.combined}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line


def add_pursuit_commands(subparsers) -> None:
    """Register `pursue`, `strength` and `sequence` on the CLI's subparsers."""
    from .cli import _add_config_options  # here, not at the top: cli imports this module

    pursuit = subparsers.add_parser("pursue", help="prompt pursuit: bake a prompt again into the baked model")
    prompt = pursuit.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text to bake in")
    prompt.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the prompt")
    _add_output_options(pursuit, "folder for round-N/, pursued/ and pursuit.json")
    pursuit.add_argument("--max-rounds", type=int, default=5, help="(default: 5)")
    pursuit.add_argument("--min-improvement", type=float, default=0.01,
                         help="stop when a round improves the score by less than this fraction (default: 0.01)")
    pursuit.add_argument("--evaluator", default="default",
                         help="default | quality | adherence[:PERSONA] | TASK:METRIC (default: adherence for "
                              "built-in persona prompts, else quality)")
    _add_config_options(pursuit)
    pursuit.set_defaults(run=_run_pursue)

    strength = subparsers.add_parser("strength", help="half-baking: scale a bake's adapter by a prompt strength")
    strength.add_argument("bake_dir", type=Path, help="a directory made by `lm-eval-baking bake`")
    strength.add_argument("--strength", required=True, help="0 = base, 1 = the bake, above 1 extrapolates")
    strength.add_argument("--epoch", type=int, help="start from this epoch's checkpoint instead of the final adapter")
    strength.add_argument("--output", "-o", type=Path, required=True, help="adapter directory to create")
    strength.add_argument("--overwrite", action="store_true", help="replace what is at --output")
    strength.add_argument("--allow-pickle", action="store_true",
                          help="accept an adapter stored only as a pickle (adapter_model.bin); only for trusted files")
    strength.set_defaults(run=_run_strength)

    sequence = subparsers.add_parser("sequence", help="bake several prompts one after another into one model")
    sequence.add_argument("--prompt", action="append", dest="prompts", required=True, metavar="TEXT",
                          help="a prompt to bake (repeat, in order)")
    sequence.add_argument("--cycles", type=int, default=1, help="times to go through the prompts (default: 1)")
    _add_output_options(sequence, "folder for stage-N/, references/, combined/ and sequence.json")
    _add_config_options(sequence)
    sequence.set_defaults(run=_run_sequence)


def _add_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--output", "-o", type=Path, required=True, help=what)
    parser.add_argument("--overwrite", action="store_true", help="re-bake instead of reusing what --output holds")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted round from its last checkpoint (finished rounds are always reused)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_pursue(args) -> None:
    from .cli import config_from_args, read_prompt

    result = pursue(config_from_args(args, read_prompt(args)), args.output, max_rounds=args.max_rounds,
                    min_improvement=args.min_improvement, evaluator=args.evaluator, overwrite=args.overwrite,
                    resume=args.resume, progress=not args.quiet)
    print("\n" + format_pursuit_table(result))
    print(f"\nEvaluate it with lm-evaluation-harness:\n  lm_eval --model hf --model_args "
          f"pretrained={result.base_model},peft={result.pursued} --apply_chat_template "
          '--include_path "$(lm-eval-baking tasks-path)" --tasks baking_mckl')


def _run_strength(args) -> None:
    output = export_strength(args.bake_dir, args.strength, args.output, epoch=args.epoch, overwrite=args.overwrite,
                             allow_pickle=args.allow_pickle)
    print(f"Wrote {output}: {args.bake_dir} at strength {parse_strength(args.strength):g}")


def _run_sequence(args) -> None:
    from .cli import config_from_args

    settings = config_from_args(args, args.prompts[0])  # bake_sequence sets each stage's prompt itself
    result = bake_sequence(args.prompts, settings, args.output, args.cycles,
                           overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
    print("\n" + format_sequence_table(result))
