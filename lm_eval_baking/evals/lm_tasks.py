"""What our lm_eval task YAMLs name with `!function`: datasets, task classes, per-doc scoring, aggregations.

Everything else about a task lives in its YAML (tasks/ at the repository root).
Every bad input is refused with a BakingError, before lm_eval spends model time or
prints a number that cannot be right; inside the `lm_eval` command it ends the run
in one line (`lm_eval_glue.end_in_one_line`, installed when lm_eval_glue is imported).
"""

from __future__ import annotations

from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from ..artifacts.bake_dir import HELDOUT_FIELDS, BakeDir
from ..constants import BAKE_RECORD, DRIFT_TASK, MCKL_TASK
from ..core.stats import RESAMPLES, ratio_quality_ci
from ..errors import BakingError
from ..utils.text import quoted
from .drift import early_minus_late, scorer_from_json, score_doc
from .lm_eval_glue import check_peft

QUALITY_CI_RESAMPLES = RESAMPLES
DEFAULT_SAMPLED_ANSWERS = 4


def find_bake(metadata: dict, task: str) -> BakeDir:
    """The bake a task scores against: --metadata bake=DIR, else the peft= adapter.

    lm_eval puts --model_args into the task metadata, so a `peft=` adapter is
    also checked like everywhere else (`check_peft`), before the task's data is read.
    """
    explicit = metadata.get("bake")
    adapter = metadata.get("peft")
    candidate = explicit or adapter
    if not candidate:
        raise BakingError(f"{task} needs a bake directory: pass --model_args pretrained=BASE,peft=BAKE_DIR, or "
                         "--metadata '{\"bake\": \"BAKE_DIR\"}' when scoring a model without the adapter")
    if not isinstance(candidate, str):
        raise BakingError(f"the bake must be named by a folder path, not {quoted(candidate)}; "
                         "e.g. --metadata '{\"bake\": \"adapters/pirate\"}'")
    folder = BakeDir(candidate)
    if not folder.is_bake():
        how = "--metadata bake" if explicit else "the peft= adapter"
        raise BakingError(f"{how} {folder.path} has no {BAKE_RECORD}, so it carries no bake data; make one with "
                         "`lm-eval-baking bake`, or name the bake it came from with --metadata '{\"bake\": \"DIR\"}'")
    return folder


def _datasets(docs: list[dict]) -> dict:
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


# ---------------------------------------------------------------------------- baking_mckl


def mckl_dataset(**metadata) -> dict:
    """custom_dataset of baking_mckl: the bake's held-out trajectories with their teacher log-probs."""
    folder = find_bake(metadata, MCKL_TASK)
    check_peft(metadata)
    rows = folder.heldout_rows()
    form = _prompt_form(folder)
    return _datasets([{**{f: row[f] for f in HELDOUT_FIELDS}, "prompt_form": form} for row in rows])


def _prompt_form(folder: BakeDir) -> str:
    """chat | text: how the bake's answers were sampled (bakes made before text prompts existed: chat)."""
    record = folder.record_or_none()
    form = record.prompt_form if record is not None else None
    return form if form in ("chat", "text") else "chat"


class MCKLTask(ConfigurableTask):
    """baking_mckl, refusing a context built differently from the one the stored answers were sampled in.

    The teacher log-probs were computed inside the chat template (or, for a text-form bake, on
    the bare question); scored the other way, the model under test reads another context and
    the "KL" is a number that cannot be right (a quality of −0.8 for a good adapter).
    """

    def __init__(self, config=None):
        # `class` is how the YAML names this Python task, not a TaskConfig field.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

    def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                        fewshot_as_multiturn=False, chat_template=None, gen_prefix=None):
        if num_fewshot:
            raise BakingError(f"{MCKL_TASK} scores the bake's own held-out answers and takes no few-shot examples; "
                             "drop --num_fewshot")
        chat = bool(apply_chat_template and chat_template)
        if doc.get("prompt_form", "chat") == "chat" and not chat:
            raise BakingError(f"{MCKL_TASK} scores answers that were sampled inside the chat template: run lm_eval "
                             "with --apply_chat_template (without it the KL and quality are meaningless)")
        if doc.get("prompt_form") == "text" and apply_chat_template:
            raise BakingError(f"{MCKL_TASK}: this bake's answers were sampled after a plain-text prompt, without the "
                             "chat template: run lm_eval without --apply_chat_template")
        return super().fewshot_context(doc, num_fewshot, system_instruction, apply_chat_template,
                                       fewshot_as_multiturn, chat_template, gen_prefix)


def mckl_process_results(doc: dict, results: list) -> dict:
    """Per-doc KL of the model under test, and of the unprompted base for the quality score."""
    (model_logprob, _is_greedy), = results
    kl_sequence = doc["teacher_logprob"] - model_logprob
    base_kl_sequence = doc["teacher_logprob"] - doc["base_logprob"]
    pair = (kl_sequence / doc["n_tokens"], base_kl_sequence / doc["n_tokens"])
    return {"kl_per_token": pair[0], "kl_per_sequence": kl_sequence,
            "quality": pair, "quality_ci_low": pair, "quality_ci_high": pair}


def quality_score(items: list[tuple[float, float]]) -> float:
    """1 - KL(model) / KL(unprompted base): the share of the prompt's effect captured."""
    model_kl = sum(m for m, _ in items)
    base_kl = sum(b for _, b in items)
    if base_kl == 0:
        return float("nan")  # the prompt changed nothing on these answers: no share to capture
    return 1.0 - model_kl / base_kl


def _quality_ci(items):
    # Paired bootstrap over trajectories: each answer's model and base KL are resampled together.
    return ratio_quality_ci([m for m, _ in items], [b for _, b in items], n_boot=QUALITY_CI_RESAMPLES)


def quality_ci_low(items: list[tuple[float, float]]) -> float:
    """Lower end of the 95% paired-bootstrap CI of quality (lm_eval gives custom aggregations no stderr)."""
    return _quality_ci(items).low


def quality_ci_high(items: list[tuple[float, float]]) -> float:
    return _quality_ci(items).high


# ---------------------------------------------------------------------------- baking_persona_drift

_DOC_FIELDS = {"persona", "turn", "messages", "probe", "scorer", "references"}


def drift_dataset(**metadata) -> dict:
    """custom_dataset of baking_persona_drift: the drift docs of the bake named by
    `--metadata '{"bake": DIR}'` or, failing that, by `peft=DIR` in --model_args."""
    folder = find_bake(metadata, DRIFT_TASK)
    check_peft(metadata)
    path = folder.drift_docs_path
    if not path.is_file():
        raise BakingError(f"{path} not found; make it with `lm-eval-baking drift-data {folder.path}`")
    docs = folder.drift_docs()
    problems = [(line, problem) for line, doc in enumerate(docs, 1) if (problem := drift_doc_problem(doc))]
    if not docs or problems:
        where = f" (row {problems[0][0]} {problems[0][1]})" if problems else ""
        raise BakingError(f"{path} is empty or corrupt{where}; remake it with "
                         f"`lm-eval-baking drift-data {folder.path}`")
    return _datasets(docs)


def drift_doc_problem(doc) -> str | None:
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


class PersonaDriftTask(ConfigurableTask):
    """baking_persona_drift: a doc carries a whole chat history, so the prompt is rendered here from
    doc["messages"] + the probe instead of from one question. Each probe is answered once greedily and
    `sampled_answers` times at temperature 1 (task metadata, e.g. --metadata '{"sampled_answers": 2}'), so
    adherence is a rate per probe rather than one yes/no."""

    def __init__(self, config=None):
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

    def construct_requests(self, doc, ctx, **kwargs):
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        greedy = {**self.config.generation_kwargs, "do_sample": False}
        sampled = {**greedy, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        n = sampled_answers(self.config.metadata or {})
        return [Instance(request_type="generate_until", doc=doc, arguments=(ctx, dict(greedy if i == 0 else sampled)),
                         idx=i, **kwargs) for i in range(1 + n)]

    def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                        fewshot_as_multiturn=False, chat_template=None, gen_prefix=None):
        if num_fewshot:
            raise BakingError(f"{DRIFT_TASK} replays a conversation and takes no few-shot examples; drop --num_fewshot")
        if not (apply_chat_template and chat_template):
            raise BakingError(f"{DRIFT_TASK} replays a chat history: run lm_eval with --apply_chat_template")
        system = [{"role": "system", "content": system_instruction}] if system_instruction else []
        messages = system + list(doc["messages"]) + [{"role": "user", "content": doc["probe"]}]
        return chat_template(messages, add_generation_prompt=True)


def sampled_answers(metadata: dict) -> int:
    value = metadata.get("sampled_answers", DEFAULT_SAMPLED_ANSWERS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BakingError(f"sampled_answers must be a whole number of 0 or more, not {quoted(value)}; "
                         "e.g. --metadata '{\"sampled_answers\": 2}'")
    return value


def drift_process_results(doc, results):
    return score_doc(doc, list(results))


def drift_score(items):
    """Drift (early minus late adherence) is not a mean of per-doc values: a custom aggregation."""
    return early_minus_late(items)



# ---------------------------------------------------------------------------- baking_fewshot


def normalized_answer(text: str) -> str:
    """An answer as exact match compares it: its first line, trimmed, without a closing full stop, case-folded."""
    first = text.strip().split("\n", 1)[0].strip()
    return first.removesuffix(".").strip().casefold()


def fewshot_exact_match(doc: dict, results: list) -> dict:
    """1 when the generated answer is one of the doc's targets (see `normalized_answer`), else 0.

    Strict on purpose: "The sum of 80 and 29 is 109." does not count for "109". What few-shot
    examples teach a small chat model here is mostly the answer's form, and that is what is scored.
    """
    answer = normalized_answer(results[0])
    targets = doc.get("targets") or [doc["target"]]
    return {"exact_match": float(any(answer == normalized_answer(t) for t in targets))}
