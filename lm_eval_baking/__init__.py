"""lm-eval-baking: bake prompts into PEFT adapters and validate them with lm-evaluation-harness."""

from .baking import BakeConfig, BakeResult, PromptBaker, bake, load_bake_record
from .errors import BakingError
from .models import default_model_dir, load_model
from .questions import Question, load_questions

__all__ = [
    "BakeConfig", "BakeResult", "BakingError", "PromptBaker", "Question",
    "bake", "default_model_dir", "load_bake_record", "load_model", "load_questions",
]
