"""lm_eval glue for baking_persona_drift: what the YAML cannot express.

A doc carries a whole chat history, so the prompt is rendered here from
doc["messages"] + the probe, instead of from one question. Scoring lives in
lm_eval_baking.drift.

Drift (early minus late adherence) is not a mean of per-doc values, so it has
a custom aggregation and lm_eval reports no stderr for it; adherence_early and
adherence_late carry their own stderrs (a doc reports only its own bucket),
and sqrt(se_early**2 + se_late**2) approximates drift's.
"""

from lm_eval.api.task import ConfigurableTask

from lm_eval_baking.drift import early_minus_late, score_doc
from lm_eval_baking.errors import BakingError


class PersonaDriftTask(ConfigurableTask):
    def __init__(self, config=None):
        # `class` is how the YAML names this Python task, not a TaskConfig field.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

    def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                        fewshot_as_multiturn=False, chat_template=None, gen_prefix=None):
        if num_fewshot:
            raise BakingError(f"{self.config.task} replays a conversation and takes no few-shot examples; drop --num_fewshot")
        if not (apply_chat_template and chat_template):
            raise BakingError(f"{self.config.task} replays a chat history: run lm_eval with --apply_chat_template")
        system = [{"role": "system", "content": system_instruction}] if system_instruction else []
        messages = system + list(doc["messages"]) + [{"role": "user", "content": doc["probe"]}]
        return chat_template(messages, add_generation_prompt=True)


def process_results(doc, results):
    return score_doc(doc, results[0])


def drift(items):
    return early_minus_late(items)
