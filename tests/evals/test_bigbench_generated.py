"""BIG-bench's arithmetic tasks written by BIG-bench's own generator, and the default groups holding only those.

No network: the bigbench 0.0.1 sdist is a fake built here (a tiny generate_examples.py), handed over by a
stand-in for the pip step; the real pip step is run only where it must fail without an index.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import yaml

from lm_eval_baking.utils.hashing import sha256_file
from lm_eval_baking.core.harness import tasks_path
from lm_eval_baking.errors import BakingError
from lm_eval_baking.evals import bigbench, bigbench_generated
from lm_eval_baking.evals.bigbench_generated import GENERATED_TASKS, GENERATOR_MEMBER, GENERATOR_SDIST

# Writes two subtasks in BIG-bench's format, as BIG-bench's script does: `<subtask>/task.json` in its working folder.
FAKE_GENERATOR = """
import json, os
for name in ("1_digit_addition", "2_digit_addition"):
    os.makedirs(name, exist_ok=True)
    examples = [{"input": f"What is {a} plus {b}?", "target": str(a + b),
                 "target_scores": {str(a + b): 1.0, str(a + b + 1): 0.0, "banana": 0.0}}
                for a in range(5) for b in range(5)]
    with open(os.path.join(name, "task.json"), "w") as f:
        json.dump({"name": name, "examples": examples}, f)
"""
BROKEN_GENERATOR = FAKE_GENERATOR + "\nraise SystemExit('boom: the generator broke')\n"
WANTED = "arithmetic/1_digit_addition"


def fake_sdist(path, script: str):
    data = script.encode()
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo(GENERATOR_MEMBER)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty BIG-bench data folder (no archive, no task files)."""
    folder = tmp_path / "bigbench"
    monkeypatch.setenv(bigbench.BIGBENCH_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def generator(tmp_path, monkeypatch):
    """Serve a fake sdist from the pip step (its sha256 pinned unless `pin=False`); the calls are counted."""
    calls = []

    def serve(script=FAKE_GENERATOR, pin=True):
        sdist = fake_sdist(tmp_path / GENERATOR_SDIST, script)
        if pin:
            monkeypatch.setattr(bigbench_generated, "GENERATOR_SHA256", sha256_file(sdist))

        def download(scratch, tasks_dir):
            calls.append(scratch)
            (scratch / "dest").mkdir()
            copy = scratch / "dest" / GENERATOR_SDIST
            copy.write_bytes(sdist.read_bytes())
            return copy

        monkeypatch.setattr(bigbench_generated, "download_generator", download)
        return calls

    return serve


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def task_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("task.json"))


def test_missing_arithmetic_tasks_are_generated_by_the_script(data_dir, generator):
    calls = generator()
    assert bigbench.ensure_bigbench_tasks([WANTED]) == data_dir / "tasks"
    # Every subtask the generator wrote is kept (the next task asked for needs no second run); no scratch is left.
    assert task_files(data_dir) == ["tasks/arithmetic/1_digit_addition/task.json",
                                    "tasks/arithmetic/2_digit_addition/task.json"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["tasks"], "no index made, no scratch folder left"
    docs = bigbench.convert_task(bigbench.task_file(WANTED))
    assert len(docs) == 25 and docs[0]["choices"][docs[0]["label"]] == "0"
    assert len(calls) == 1
    bigbench.ensure_bigbench_tasks([WANTED, "arithmetic/2_digit_addition"])
    assert len(calls) == 1, "files already there: no second download"


def test_hand_placed_files_are_kept_and_an_existing_index_is_extended(data_dir, generator):
    generator()
    placed = bigbench.task_file("arithmetic/2_digit_addition")
    placed.parent.mkdir(parents=True)
    placed.write_text('{"examples": [{"input": "mine", "target": "1"}]}')
    (data_dir / bigbench.INDEX_FILE).write_text(json.dumps(["date_understanding", WANTED]))

    bigbench.ensure_bigbench_tasks([WANTED])
    assert placed.read_text() == '{"examples": [{"input": "mine", "target": "1"}]}'
    known = json.loads((data_dir / bigbench.INDEX_FILE).read_text())
    assert known == sorted(["date_understanding", WANTED, "arithmetic/2_digit_addition"])


def test_a_wrong_sha256_is_one_line_and_writes_nothing(data_dir, generator):
    generator(pin=False)  # the fake is not the pinned bigbench 0.0.1
    with pytest.raises(BakingError) as error:
        bigbench.ensure_bigbench_tasks([WANTED])
    assert "bigbench-0.0.1.tar.gz has the wrong sha256" in one_line(error)
    assert task_files(data_dir) == [] and sorted(p.name for p in data_dir.iterdir()) == ["tasks"]


def test_a_failing_generator_is_one_line_and_writes_nothing(data_dir, generator):
    generator(BROKEN_GENERATOR)  # it writes its files, then fails: none may reach the data folder
    with pytest.raises(BakingError) as error:
        bigbench.ensure_bigbench_tasks([WANTED])
    text = one_line(error)
    assert "generator failed (exit status 1: boom: the generator broke); nothing was written" in text
    assert "arithmetic/NAME/task.json" in text  # the fix: BIG-bench's own files, by hand
    assert task_files(data_dir) == [] and sorted(p.name for p in data_dir.iterdir()) == ["tasks"]


def test_a_task_the_generator_did_not_write_is_one_line_and_writes_nothing(data_dir, generator):
    generator()  # writes 1- and 2-digit addition only
    with pytest.raises(BakingError) as error:
        bigbench.ensure_bigbench_tasks(["arithmetic/3_digit_addition"])
    assert "wrote no readable arithmetic/3_digit_addition/task.json" in one_line(error)
    assert task_files(data_dir) == []


def test_a_data_folder_that_cannot_be_written_is_one_line(tmp_path, generator, monkeypatch):
    generator()
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv(bigbench.BIGBENCH_DIR_ENV, str(not_a_folder))
    with pytest.raises(BakingError) as error:
        bigbench.ensure_bigbench_tasks([WANTED])
    assert "cannot write BIG-bench's arithmetic tasks into" in one_line(error)


def test_an_unknown_arithmetic_name_is_rejected_before_any_download(data_dir, generator):
    calls = generator()
    with pytest.raises(BakingError) as error:
        bigbench.ensure_bigbench_tasks(["arithmetic/1_digit_additon"])
    assert "did you mean arithmetic/1_digit_addition" in one_line(error)
    assert calls == []


def test_a_non_arithmetic_task_without_the_archive_gets_the_archive_hint(data_dir, generator, monkeypatch):
    calls = generator()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no index: bigbench 1.0.0 cannot be had, as on PyPI today
    with pytest.raises(BakingError) as error:
        bigbench.ensure_bigbench_tasks([WANTED, "date_understanding"])
    text = one_line(error)
    assert bigbench.SDIST_NAME in text and "put it at" in text
    # The arithmetic task asked for beside it was generated; only the archive's task is missing.
    assert len(calls) == 1 and bigbench.task_file(WANTED).is_file()
    assert not bigbench.task_file("date_understanding").exists()


def test_the_real_pip_step_failing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(BakingError) as error:
        bigbench_generated.download_generator(tmp_path, tmp_path / "tasks")
    assert "pip could not download bigbench==0.0.1" in one_line(error)


# The default groups ------------------------------------------------------------

def group_bigbench_names(group: str) -> dict[str, str]:
    """{member task: BIG-bench task} for one of our groups, read from its folder's YAMLs."""
    folder = tasks_path() / group
    members = yaml.safe_load((folder / f"{group}.yaml").read_text())["task"]
    configs = [yaml.safe_load(path.read_text()) for path in folder.glob("*.yaml")]
    configs = {c["task"]: c for c in configs if "dataset_kwargs" in c}
    return {member: configs[member]["dataset_kwargs"]["task_name"] for member in members}


@pytest.mark.parametrize("group", ["baking_forgetting", "baking_fewshot"])
def test_default_groups_hold_only_tasks_pypi_still_gives(group):
    """A member whose data only the bigbench 1.0.0 archive has breaks `forgetting`, `make demo` and the
    cross-task matrix on every fresh machine (PyPI no longer serves the archive): make it a standalone task."""
    names = group_bigbench_names(group)
    assert names and all(name in GENERATED_TASKS for name in names.values()), names


def test_the_pipeline_prefetches_only_the_forgetting_groups_members(monkeypatch):
    from lm_eval_baking.workflows import lm_eval_runs

    asked = []
    monkeypatch.setattr(lm_eval_runs, "ensure_bigbench_tasks", asked.extend)
    lm_eval_runs.ensure_forgetting_data()
    assert sorted(asked) == sorted(group_bigbench_names("baking_forgetting").values())
