"""Every file and folder name this package reads or writes, and the formats of its records.

One place, so a reader and a writer can never disagree on a name.
"""

# ---------------------------------------------------------------------------- a bake folder
# adapters/NAME/
#     adapter_config.json, adapter_model.safetensors   the standard PEFT adapter
#     baking.json                                      the BakeRecord
#     README.md                                        a model card
#     data/train.jsonl, data/heldout.jsonl             trajectories trained and validated on
#     data/conversations.jsonl, data/drift_docs.jsonl  persona-drift conversations and lm_eval docs
#     checkpoints/epoch-N/                             the adapter after each epoch
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
BAKE_RECORD = "baking.json"
MODEL_CARD = "README.md"
DATA_DIR = "data"
TRAIN_DATA = "data/train.jsonl"
HELDOUT_DATA = "data/heldout.jsonl"
CONVERSATIONS = "data/conversations.jsonl"
DRIFT_DOCS = "data/drift_docs.jsonl"
CHECKPOINTS_DIR = "checkpoints"

BAKE_FORMAT = "lm-eval-baking/bake"
BAKE_FORMAT_VERSION = 1

# ---------------------------------------------------------------------------- work in progress
# .NAME.partial/ beside a bake's output: state.json, data/, checkpoints/, resume/trainer.pt
PARTIAL_SUFFIX = ".partial"
WORK_STATE = "state.json"
TRAINER_STATE = "resume/trainer.pt"
WORK_FORMAT = "lm-eval-baking/partial"
WORK_FORMAT_VERSION = 1

# ---------------------------------------------------------------------------- other artefacts
PURSUIT_RECORD = "pursuit.json"
PURSUIT_FORMAT = "lm-eval-baking/pursuit"
PURSUED_DIR = "pursued"
SEQUENCE_RECORD = "sequence.json"
SEQUENCE_FORMAT = "lm-eval-baking/sequence"
COMBINED_DIR = "combined"
REFERENCES_DIR = "references"
JOINT_REFERENCE = "joint"  # references/joint/: the original base prompted with every prompt joined
FORGETTING_RECORD = "forgetting.json"
FORGETTING_FORMAT = "lm-eval-baking/forgetting"
FORGETTING_FORMAT_VERSION = 2
FORGETTING_HEATMAP = "forgetting.png"
CROSS_TASK_RECORD = "cross_task.json"
CROSS_TASK_FORMAT = "lm-eval-baking/cross-task"
CROSS_TASK_FORMAT_VERSION = 1
CROSS_TASK_HEATMAP = "cross_task.png"
CROSS_TASK_BAKES = "bakes"
REPORT_RECORD = "report.json"
REPORT_FORMAT = "lm-eval-baking/report"
REPORT_FORMAT_VERSION = 1
COMPARE_FORMAT = "lm-eval-baking/compare"  # `compare --json FILE`
LM_EVAL_RUN_STAMP = "lm_eval_run.json"
PIPELINE_RECORD = "pipeline.json"
PIPELINE_FORMAT = "lm-eval-baking/pipeline"
LM_EVAL_RUN_FORMAT = "lm-eval-baking/lm-eval-run"  # stamps written before it had a format read too

# ---------------------------------------------------------------------------- the base-model store
# <cache>/lm_eval_base/KEY/ (or $LM_EVAL_BAKING_BASE_STORE/KEY/): one stamped result of the base model (no adapter),
# reused by every run with the same key (artifacts/base_store.py).
#     base_result.json    the BaseResultRecord: the key, everything it was hashed from, every file's sha256
#     scores.json         a forgetting/cross-task run's per-doc scores of one task
#     run/                an lm_eval CLI run's output folder, as the pipeline keeps it
#     run_bake.json       the bake folder that run's --metadata named, rewritten to the new run's on a copy
BASE_STORE_DIR = "lm_eval_base"
BASE_STORE_ENV = "LM_EVAL_BAKING_BASE_STORE"
BASE_RESULT_RECORD = "base_result.json"
BASE_RESULT_FORMAT = "lm-eval-baking/base-result"
BASE_SCORES = "scores.json"
BASE_RUN_DIR = "run"
BASE_RUN_BAKE = "run_bake.json"  # the bake folder the stored run's --metadata named (JSON: a path or null)

# ---------------------------------------------------------------------------- ownership
# Every folder lm-eval-baking writes holds this manifest: the tool, the kind of output, and every file it wrote
# (artifacts/manifest.py). Only a folder with a valid one is ours to replace, and only what it lists goes.
MANIFEST = "lm-eval-baking-manifest.json"
MANIFEST_TOOL = "lm-eval-baking"
MANIFEST_FORMAT = "lm-eval-baking/manifest"
MANIFEST_FORMAT_VERSION = 1
MANIFEST_HASH_LIMIT = 16 << 20  # files up to 16 MiB are listed with their sha256, bigger ones (weights) by size

# Records that outputs written before manifests hold: such a folder is not replaced (it has no manifest), but the
# refusal says it may be an old output of ours, to delete by hand.
LEGACY_RECORDS = (BAKE_RECORD, PURSUIT_RECORD, SEQUENCE_RECORD, FORGETTING_RECORD, CROSS_TASK_RECORD, REPORT_RECORD,
                  PIPELINE_RECORD)

# ---------------------------------------------------------------------------- names shared across layers
DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what a model card names as its base_model
# The lm_eval task folders: tasks/ at the top of the repository, copied into the package by a build (setup.py).
TASKS_DIR = "tasks"
BUILTIN_QUESTIONS = "builtin"
MCKL_TASK = "baking_mckl"
DRIFT_TASK = "baking_persona_drift"
FORGETTING_GROUP = "baking_forgetting"

# ---------------------------------------------------------------------------- CPU threads
# A thread count for torch's CPU kernels, pinned (core/threads.py chooses one from the free cores otherwise).
THREADS_ENV = "LM_EVAL_BAKING_THREADS"
