"""BIG-bench tasks as offline lm_eval datasets: multiple-choice, and generative (few-shot) with a train split.

BIG-bench's task files ship inside PyPI's `bigbench` source distribution
(~360 MB). We download that archive once into the cache, pull out only the
`task.json` files we are asked for, and turn their `target_scores` examples
into lm_eval multiple-choice docs. After the first run no network is needed.

We get it through pip, so a user's index, mirror and proxy settings apply:
`pip download --no-deps --no-build-isolation --dest DIR bigbench==1.0.0`, and we
take the archive pip leaves in DIR; its sha256 is checked against the pinned
value. pip builds an sdist's metadata before it keeps the file, and when that
build fails pip keeps nothing (pip 26.3: exit 1, "metadata-generation-failed",
DIR empty); then the error says how to put the archive in the cache by hand.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import BakingError
from ..core.models import cache_dir
from ..utils.atomic import write_bytes
from ..utils.hashing import sha256_file
from ..utils.processes import run_child
from .bigbench_generated import generate_tasks, is_generated
from .lm_eval_glue import check_peft

SDIST_REQUIREMENT = "bigbench==1.0.0"
SDIST_NAME = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"

# Caps each task so the whole baking_forgetting group stays a CPU-minutes job;
# the accuracy stderr is then about 3.5 points per task.
MAX_DOCS = 200
SAMPLE_SEED = 1234

# Generative tasks: a seeded share of the examples becomes the train split (few-shot examples and
# bake questions come from it), capped so a 10k-example task does not build a 3k-doc split.
TRAIN_SHARE = 0.3
TRAIN_MAX = 200
TRAIN_MIN = 16

# Member paths look like bigbench-1.0.0/bigbench/benchmark_tasks/<name>/task.json,
# where <name> may be a subtask path such as logical_deduction/three_objects.
_TASK_MEMBER = re.compile(r"^[^/]+/bigbench/benchmark_tasks/(.+)/task\.json$")
INDEX_FILE = "task_names.json"


# The folder of BIG-bench data (the archive and the extracted task files), when not `<cache>/bigbench`: a shared
# copy on a cluster, or a folder filled by hand (`tasks/<name>/task.json`, as in BIG-bench's own repository).
BIGBENCH_DIR_ENV = "LM_EVAL_BAKING_BIGBENCH"


def bigbench_dir() -> Path:
    """Folder for the archive and the extracted task files: $LM_EVAL_BAKING_BIGBENCH, else `<cache>/bigbench`."""
    return Path(os.environ.get(BIGBENCH_DIR_ENV) or cache_dir() / "bigbench")


def task_file(name: str) -> Path:
    return bigbench_dir() / "tasks" / name / "task.json"


def ensure_bigbench_tasks(names: list[str]) -> Path:
    """Make sure `<cache>/bigbench/tasks/<name>/task.json` exists for every name.

    Downloads the sdist on first use and extracts only the missing task files,
    in one streaming pass over the archive. Without the archive, missing `arithmetic/...` tasks are written by
    BIG-bench's own generator instead (evals/bigbench_generated.py: PyPI still has it, not the archive).
    Returns the `tasks` folder.
    """
    _check_known(names)
    missing = [name for name in names if not task_file(name).is_file()]
    generated = [name for name in missing if is_generated(name)]
    if generated and not (bigbench_dir() / SDIST_NAME).is_file():
        generate_tasks(generated, bigbench_dir() / "tasks", bigbench_dir() / INDEX_FILE)
        missing = [name for name in missing if name not in generated]
    if missing:
        archive = _ensure_sdist()
        _extract_tasks(archive, missing)
    return bigbench_dir() / "tasks"


def convert_task(path: str | os.PathLike, *, max_docs: int | None = MAX_DOCS) -> list[dict]:
    """Turn a BIG-bench task.json into docs {"input", "choices", "label"}.

    The prompt follows BIG-bench's own zero-shot format (task prefix, input
    prefix, the choices listed, output prefix). Examples without
    `target_scores`, or without a single best choice, are skipped because
    single-label accuracy cannot score them. A seeded sample of at most
    `max_docs` examples is kept, in file order, so the result is the same on
    every machine.
    """
    task = _read_task_json(Path(path))
    rng = random.Random(SAMPLE_SEED)
    examples = [ex for ex in task.get("examples", []) if _has_single_best_choice(ex)]
    if max_docs is not None and len(examples) > max_docs:
        keep = sorted(rng.sample(range(len(examples)), max_docs))
        examples = [examples[i] for i in keep]
    return [_to_doc(task, example, rng) for example in examples]


def load_bigbench(task_name: str, max_docs: int = MAX_DOCS, **_lm_eval_metadata) -> dict:
    """lm_eval `custom_dataset` loader: `{"test": Dataset}` for one BIG-bench task.

    lm_eval calls it with the task's `dataset_kwargs` plus its metadata
    (config path, model args, version): only `peft=` and `pretrained=` are read, to check the adapter.
    """
    import datasets

    check_peft(_lm_eval_metadata)  # the peft= adapter must be baked on pretrained=, as on every task of ours
    ensure_bigbench_tasks([task_name])
    docs = convert_task(task_file(task_name), max_docs=max_docs)
    if not docs:
        raise BakingError(
            f"BIG-bench task '{task_name}' has no multiple-choice examples (no target_scores); "
            "pick a multiple-choice task"
        )
    return {"test": datasets.Dataset.from_list(docs)}


def convert_generative(path: str | os.PathLike, *, max_docs: int | None = MAX_DOCS) -> dict[str, list[dict]]:
    """Turn a BIG-bench task.json's examples with a `target` into {"train": docs, "test": docs}.

    Each doc is {"input", "target", "targets"}: the prompt in BIG-bench's own format (task
    prefix, input prefix, input, output prefix), the first target and every accepted target.
    The examples (deduplicated by input) are shuffled with a fixed seed; the first
    `TRAIN_SHARE` of them (at least TRAIN_MIN, at most TRAIN_MAX) are the train split, the
    rest the test split, of which the first `max_docs` are kept. So the split is the same
    on every machine, and a smaller `max_docs` keeps a prefix of a larger one's docs.
    """
    task = _read_task_json(Path(path))
    docs = list({doc["input"]: doc for doc in (_to_generative_doc(task, ex) for ex in task.get("examples", []))
                 if doc is not None}.values())
    random.Random(SAMPLE_SEED).shuffle(docs)
    n_train = min(TRAIN_MAX, max(TRAIN_MIN, round(len(docs) * TRAIN_SHARE)), len(docs) // 2)
    test = docs[n_train:]
    return {"train": docs[:n_train], "test": test if max_docs is None else test[:max_docs]}


def load_bigbench_generative(task_name: str, max_docs: int = MAX_DOCS, **_lm_eval_metadata) -> dict:
    """lm_eval `custom_dataset` loader: `{"train": Dataset, "test": Dataset}` of one generative BIG-bench task."""
    import datasets

    check_peft(_lm_eval_metadata)
    ensure_bigbench_tasks([task_name])
    splits = convert_generative(task_file(task_name), max_docs=int(max_docs))
    if not splits["test"] or not splits["train"]:
        raise BakingError(f"BIG-bench task '{task_name}' has too few examples with a target (train "
                          f"{len(splits['train'])}, test {len(splits['test'])}); pick a generative task")
    return {name: datasets.Dataset.from_list(docs) for name, docs in splits.items()}


def _to_generative_doc(task: dict, example: dict) -> dict | None:
    target = example.get("target")
    targets = [target] if isinstance(target, str) else target
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        return None
    if not isinstance(example.get("input"), str):
        return None
    text = (task.get("task_prefix", "") + task.get("example_input_prefix", "\nQ: ") + example["input"]
            + task.get("example_output_prefix", "\nA: "))
    # lm_eval puts its target delimiter (" ") between the prompt and the answer.
    return {"input": text.strip(), "target": targets[0].strip(), "targets": [t.strip() for t in targets]}


def _has_single_best_choice(example: dict) -> bool:
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        return False
    best = max(scores.values())
    return sum(1 for score in scores.values() if score == best) == 1


def _to_doc(task: dict, example: dict, rng: random.Random) -> dict:
    scores = example["target_scores"]
    choices = sorted(scores)
    # Shuffled like BIG-bench does, so the listed order gives no hint.
    rng.shuffle(choices)
    best = max(scores.values())
    label = next(i for i, choice in enumerate(choices) if scores[choice] == best)

    text = example["input"]
    if task.get("append_choices_to_input", True):
        choice_prefix = task.get("choice_prefix", "\n  choice: ")
        text += choice_prefix + choice_prefix.join(choices)
    text = (
        task.get("task_prefix", "")
        + task.get("example_input_prefix", "\nQ: ")
        + text
        + task.get("example_output_prefix", "\nA: ")
    )
    # lm_eval adds its own " " between the prompt and each choice.
    return {"input": text.strip(), "choices": choices, "label": label}


def _read_task_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise BakingError(f"{path} not found; run ensure_bigbench_tasks() for that task first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BakingError(f"{path} is not a readable task.json ({e}); delete it and rerun to extract it again") from None


def _check_known(names: list[str]) -> None:
    """Reject unknown names early, once an earlier extraction has listed the archive."""
    index = bigbench_dir() / INDEX_FILE
    if not index.is_file():
        return
    try:
        known = set(json.loads(index.read_text("utf-8")))
    except (OSError, json.JSONDecodeError):
        return  # rebuilt by the next extraction pass
    for name in names:
        if name not in known:
            raise _unknown_task(name, known)


def _unknown_task(name: str, known) -> BakingError:
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"see {bigbench_dir() / INDEX_FILE} for the names"
    return BakingError(f"no BIG-bench task '{name}' in {SDIST_NAME}; {hint}")


def _manual_download_hint(archive: Path) -> str:
    # PyPI stopped serving the 1.0.0 archive (only 0.0.1, without task files, is listed since late 2026), so a
    # mirror or a copy of BIG-bench's repository is the way to the data.
    return (f"fetch {SDIST_NAME} from a mirror that still has it and put it at {archive}, or copy the task files of "
            f"BIG-bench's repository (google/BIG-bench, bigbench/benchmark_tasks/NAME/task.json) to "
            f"{archive.parent / 'tasks'}/NAME/task.json (set {BIGBENCH_DIR_ENV} to use another folder), and rerun")


def _ensure_sdist() -> Path:
    archive = bigbench_dir() / SDIST_NAME
    if not archive.is_file():
        _download(archive)
    return archive


def _download(archive: Path) -> None:
    """`pip download` into a scratch folder beside the archive; its sdist, checked, is renamed into place."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bigbench-download-", dir=archive.parent) as scratch:
        # -q: pip's own errors (no index, metadata failed) still reach the terminal, its progress does not.
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
                   "--progress-bar", "off", "--dest", scratch, SDIST_REQUIREMENT]
        status = run_child(command, stdout=subprocess.DEVNULL)
        fetched = Path(scratch) / SDIST_NAME
        if status != 0 or not fetched.is_file():
            raise BakingError(f"pip could not find {SDIST_REQUIREMENT} or would not keep it (exit status {status}, "
                              f"no {SDIST_NAME}; pip's message is above); {_manual_download_hint(archive)}")
        if sha256_file(fetched) != SDIST_SHA256:
            raise BakingError(f"downloaded {SDIST_NAME} has the wrong sha256; {_manual_download_hint(archive)}")
        os.replace(fetched, archive)


def _verify_sdist(archive: Path) -> None:
    if sha256_file(archive) != SDIST_SHA256:
        raise BakingError(
            f"{archive} is incomplete or corrupt (sha256 mismatch); delete it and rerun to download it again, "
            f"or {_manual_download_hint(archive)}"
        )


def _extract_tasks(archive: Path, names: list[str]) -> None:
    """One streaming pass: write each wanted task.json atomically, and list all task names."""
    _verify_sdist(archive)
    wanted = set(names)
    found: set[str] = set()
    known: list[str] = []
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                match = _TASK_MEMBER.match(member.name)
                if not match or not member.isfile():
                    continue
                name = match.group(1)
                known.append(name)
                if name in wanted:
                    _write_atomically(task_file(name), tar.extractfile(member).read())
                    found.add(name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BakingError(f"cannot extract task files from {archive} ({e}); delete it and rerun to download it again") from None
    _write_atomically(bigbench_dir() / INDEX_FILE, json.dumps(sorted(known), indent=0).encode())
    for name in names:
        if name not in found:
            raise _unknown_task(name, known)


def _write_atomically(path: Path, data: bytes) -> None:
    write_bytes(path, data)  # utils.atomic: the user's umask, not mkstemp's 0600
