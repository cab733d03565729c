"""Nothing of the user's is ever deleted (issue 22's data-loss cases 1-4, and a property test over random trees).

Ownership is the manifest (artifacts/manifest.py): a folder without a valid one is never ours, `--overwrite`
replaces only a folder whose every entry its manifest lists, a failed bake keeps its work folder, and an output
is never one of its inputs. Files on disk are compared byte for byte before and after.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given, settings, strategies as st

from lm_eval_baking.artifacts.manifest import foreign_entries, owned_directory, read_manifest, write_owned_json
from lm_eval_baking.artifacts.outputs import check_output
from lm_eval_baking.cli import main
from lm_eval_baking.constants import MANIFEST
from lm_eval_baking.errors import BakingError

from conftest import PIRATE, TINY_BAKE, one_line, run, tiny_config

def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `folder`, by relative path."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_weights(monkeypatch):
    """Fails the test if a model's weights load: every refusal here comes before any model work."""
    import lm_eval_baking.core.models as models

    def refuse(*_, **__):
        raise AssertionError("the model's weights were loaded before the output was checked")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.fixture
def own_bake(small_bake, tmp_path) -> Path:
    """A copy of a finished bake (with its manifest), so a test may add files to it."""
    folder = tmp_path / "bake"
    shutil.copytree(small_bake, folder)
    assert read_manifest(folder) is not None and foreign_entries(folder) == []
    return folder


# ---------------------------------------------------------------------------- case 1: ownership by file name

def test_case1_a_folder_with_our_record_names_but_no_manifest_is_never_replaced(
        tiny_model_dir, question_file, tmp_path, capsys, no_weights, small_bake):
    """mkdir -p P/chapters; echo '{}' >P/report.json; echo t >P/thesis.txt; lm-eval-baking bake ... -o P --overwrite"""
    folder = tmp_path / "P"
    (folder / "chapters").mkdir(parents=True)
    (folder / "report.json").write_text("{}\n")
    (folder / "thesis.txt").write_text("t\n")
    before = snapshot(folder)
    commands = [
        ["bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file, *TINY_BAKE,
         "--output", folder, "--overwrite"],
        ["strength", small_bake, "--strength", "0.5", "--output", folder, "--overwrite"],
        ["report", small_bake, "--output", folder],
    ]
    for command in commands:
        code, _, err = run(capsys, *command)
        line = one_line(err)
        assert code == 2 and "has no lm-eval-baking manifest, so nothing in it is replaced" in line, line
        assert "thesis.txt" in line and "--overwrite" not in line
    assert snapshot(folder) == before


def test_case1_a_damaged_or_foreign_manifest_does_not_make_a_folder_ours(tmp_path):
    folder = tmp_path / "P"
    folder.mkdir()
    (folder / "thesis.txt").write_text("t")
    for manifest in ("not json", json.dumps({"tool": "other", "entries": {}}),
                     json.dumps({"tool": "lm-eval-baking", "format": "lm-eval-baking/manifest", "format_version": 1,
                                 "kind": "bake", "entries": {"../../etc/passwd": {"size": 1}}})):
        (folder / MANIFEST).write_text(manifest)
        with pytest.raises(BakingError, match="did not make"):
            check_output(folder, overwrite=True, what="bake")
    assert (folder / "thesis.txt").read_text() == "t"


# ---------------------------------------------------------------------------- case 2: a failed --resume

def test_case2_a_failed_resume_keeps_the_work_folder_byte_for_byte(tiny_model_dir, question_file, tmp_path, capsys,
                                                                     monkeypatch):
    from lm_eval_baking.training.baker import PromptBaker

    output = tmp_path / "bake"
    argv = ["bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file, *TINY_BAKE,
            "--output", output]
    train_epoch = PromptBaker.train_epoch

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PromptBaker, "train_epoch", interrupted)
    assert run(capsys, *argv)[0] == 130
    partial = tmp_path / ".bake.partial"
    assert (partial / "data" / "train.jsonl").is_file() and (partial / "data" / "heldout.jsonl").is_file()
    before = snapshot(partial)

    monkeypatch.setattr(PromptBaker, "train_epoch", train_epoch)
    monkeypatch.setattr(PromptBaker, "_step", lambda self, batch: float("nan"))  # the resumed training fails
    code, _, err = run(capsys, *argv, "--resume")
    line = one_line(err)
    assert code == 2 and "the loss became nan" in line and f"the work so far is kept in {partial}" in line
    assert snapshot(partial) == before, "a failed --resume changed its work folder"
    code, _, err = run(capsys, *argv)  # without --resume or --overwrite, nothing discards it either
    assert code == 2 and "pass --resume to continue it, or --overwrite to start over" in one_line(err)
    assert snapshot(partial) == before and not output.exists()


def test_case2_a_bake_refused_at_its_final_rename_keeps_its_work_and_resumes(tiny_model_dir, question_file,
                                                                            tmp_path, capsys, monkeypatch):
    """A file of the user's that appears at --output during a bake is kept, and so are the hours of training."""
    from lm_eval_baking.training.baker import PromptBaker

    output = tmp_path / "bake"
    argv = ["bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file, *TINY_BAKE,
            "--output", output]
    train_epoch = PromptBaker.train_epoch

    def user_writes_meanwhile(self, *args, **kwargs):
        output.mkdir(exist_ok=True)
        (output / "notes.txt").write_text("mine")
        return train_epoch(self, *args, **kwargs)

    monkeypatch.setattr(PromptBaker, "train_epoch", user_writes_meanwhile)
    code, _, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2 and "is a folder lm-eval-baking did not make (it holds notes.txt)" in line, line
    assert "the work so far is kept in" in line and "rerun with --resume" in line
    assert snapshot(output) == {"notes.txt": b"mine"} and (tmp_path / ".bake.partial" / "resume").is_dir()
    (output / "notes.txt").rename(tmp_path / "notes.txt")
    monkeypatch.setattr(PromptBaker, "train_epoch", train_epoch)
    code, out, _ = run(capsys, *argv, "--resume")
    assert code in (0, 1) and "(resumed at epoch 2, step 0)" in out and read_manifest(output).kind == "bake"


# ---------------------------------------------------------------------------- case 3: an input as the output

@pytest.mark.parametrize("where, relation", [("same", "is the input"), ("inside", "is inside the input"),
                                             ("holding", "holds the input")])
def test_case3_strength_never_writes_over_its_own_input(where, relation, own_bake, capsys, no_weights):
    """lm-eval-baking strength --strength 0.5 -o BAKE --overwrite BAKE"""
    output = {"same": own_bake, "inside": own_bake / "half", "holding": own_bake.parent}[where]
    before = snapshot(own_bake.parent)
    code, _, err = run(capsys, "strength", "--strength", "0.5", "-o", output, "--overwrite", own_bake)
    line = one_line(err)
    assert code == 2 and f"--output {output} {relation} {own_bake}" in line, line
    assert snapshot(own_bake.parent) == before


def test_case3_no_command_writes_over_an_input(own_bake, tiny_model_dir, question_file, tmp_path, capsys,
                                               no_weights):
    outside = tmp_path / "out"
    outside.mkdir()
    questions = outside / "questions.txt"
    shutil.copyfile(question_file, questions)
    prompt = outside / "prompt.txt"
    prompt.write_text(PIRATE)
    before = snapshot(tmp_path)
    tiny = ["--model", tiny_model_dir, *TINY_BAKE]
    commands = {  # each reads an input from inside (or at) its --output
        "bake --questions": ["bake", "--prompt", PIRATE, "--questions", questions, *tiny, "-o", outside,
                             "--overwrite"],
        "bake --prompt-file": ["bake", "--prompt-file", prompt, "--questions", question_file, *tiny, "-o", outside],
        "pursue": ["pursue", "--prompt", PIRATE, "--questions", questions, *tiny, "-o", outside, "--overwrite"],
        "sequence": ["sequence", "--prompt", PIRATE, "--questions", questions, *tiny, "-o", outside, "--overwrite"],
        "report": ["report", own_bake, "-o", own_bake / "report"],
        "forgetting": ["forgetting", "--adapters", own_bake, "-o", own_bake, "--model", tiny_model_dir],
        "cross-task": ["cross-task", "--tasks", "a", "b", "--bake", f"a={own_bake}", "-o", tmp_path],
    }
    for name, command in commands.items():
        code, _, err = run(capsys, *command)
        line = one_line(err)
        assert code == 2 and "the input" in line and "choose an --output apart from every input" in line, name
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- case 4: files added to a bake

def test_case4_overwrite_keeps_files_the_user_added_to_a_bake(own_bake, tiny_model_dir, question_file, capsys,
                                                              no_weights):
    (own_bake / "lm_eval").mkdir()
    (own_bake / "lm_eval" / "results_2026-01-01.json").write_text('{"results": {}}')
    (own_bake / "data" / "my_notes.md").write_text("kept inside our data folder")
    before = snapshot(own_bake)
    code, _, err = run(capsys, "bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file,
                       *TINY_BAKE, "--output", own_bake, "--overwrite")
    line = one_line(err)
    assert code == 2 and "holds files lm-eval-baking did not write (data/my_notes.md, lm_eval/)" in line, line
    assert "--overwrite" not in line
    assert snapshot(own_bake) == before


def test_case4_an_edited_file_of_ours_is_the_users(own_bake, capsys, small_bake, tmp_path):
    export = tmp_path / "half"
    assert run(capsys, "strength", small_bake, "--strength", "0.5", "-o", export)[0] == 0
    (export / "baking.json").write_text('{"mine": true}')
    code, _, err = run(capsys, "strength", small_bake, "--strength", "0.25", "-o", export, "--overwrite")
    assert code == 2 and "baking.json (changed since lm-eval-baking wrote it)" in one_line(err)
    assert (export / "baking.json").read_text() == '{"mine": true}'


def test_case4_a_bake_with_user_files_is_still_reused_untouched(own_bake, tiny_model_dir, question_file):
    from lm_eval_baking import bake

    (own_bake / "notes.txt").write_text("mine")
    before = snapshot(own_bake)
    result = bake(tiny_config(tiny_model_dir, question_file, epochs=1), own_bake, progress=False)
    assert result.reused and snapshot(own_bake) == before


def test_overwrite_replaces_exactly_what_the_manifest_lists(small_bake, tmp_path, capsys):
    export = tmp_path / "half"
    assert run(capsys, "strength", small_bake, "--strength", "0.5", "-o", export)[0] == 0
    first = read_manifest(export)
    assert first.kind == "strength export" and "adapter_model.safetensors" in first.entries
    assert run(capsys, "strength", small_bake, "--strength", "0.25", "-o", export, "--overwrite")[0] == 0
    assert json.loads((export / "baking.json").read_text())["half_baking"]["strength"] == 0.25
    assert foreign_entries(export) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------- the property test
# Random trees of user files (nested, named like our records and our manifest) in, inside and beside an output
# of ours, then a command that writes that output with --overwrite, interrupted at a random write step, then
# the same command again: every user file survives byte for byte. Seed policy: the "ci" profile of conftest.py
# (derandomize=True, no database), so every run draws the same PROPERTY_EXAMPLES cases.
PROPERTY_EXAMPLES = 200

USER_NAMES = ["thesis.txt", "report.json", "baking.json", "pipeline.json", "pursuit.json", "adapter_config.json",
              "adapter_model.safetensors", "README.md", MANIFEST, "results_2026.json", "state.json"]
USER_DIRS = ["chapters", "data", "checkpoints", "lm_eval", "round-1", "pursued", ".round-1.partial"]
OUR_NAMES = ["baking.json", "README.md", "adapter_config.json", "data/heldout.jsonl", "checkpoints/epoch-1/a.bin"]

user_file = st.tuples(st.lists(st.sampled_from(USER_DIRS), max_size=2), st.sampled_from(USER_NAMES),
                      st.binary(max_size=32))


def _write_user_files(root: Path, files) -> dict[Path, bytes]:
    written = {}
    for dirs, name, content in files:
        path = root.joinpath(*dirs, name)
        if any(p in written for p in path.parents) or any(path in p.parents for p in written):
            continue  # a file where a folder is (or the reverse): not a tree
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written[path] = content
    return written


class Interrupted(Exception):
    pass


def _interrupting(at: int | None, error: str, stack: ExitStack) -> None:
    """Raise `error` at the `at`-th write step (a rename, a temp file or folder, a copy, a deletion)."""
    if at is None:
        return
    calls = [0]
    errors = {"interrupt": KeyboardInterrupt, "disk full": lambda: OSError(errno.ENOSPC, "No space left on device"),
              "crash": lambda: Interrupted("crash")}

    def step(original):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise errors[error]()
            return original(*args, **kwargs)
        return wrapped

    for module, name in ((os, "replace"), (tempfile, "mkdtemp"), (tempfile, "mkstemp"), (shutil, "copyfile"),
                         (shutil, "rmtree")):
        stack.enter_context(mock.patch.object(module, name, step(getattr(module, name))))


def _command(kind: str, target: Path, bake_dir: Path, meanwhile: dict[Path, bytes], written: dict[Path, bytes]):
    from lm_eval_baking.artifacts.lora import export_strength
    from lm_eval_baking.results.report import build_report

    if kind == "staged":
        check_output(target, overwrite=True, what="bake")
        with owned_directory(target, "bake") as staging:
            for path, content in list(meanwhile.items()):  # the user adds a file while the command runs
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                written[path] = meanwhile.pop(path)
            for name in OUR_NAMES:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_text(f"new {name}")
    elif kind == "incremental":  # a pursuit: its record, then a round baked into it
        check_output(target, overwrite=True, what="pursuit")
        write_owned_json(target, "pursuit", "pursuit.json", {"status": "running"})
        with owned_directory(target / "round-1", "bake") as staging:
            (staging / "baking.json").write_text("{}")
    elif kind == "strength":
        export_strength(bake_dir, 0.5, target, overwrite=True)
    elif kind == "report":
        build_report([bake_dir], target)
    else:  # the CLI, which turns errors into one line
        main(["strength", str(bake_dir), "--strength", "0.5", "-o", str(target), "--overwrite"])


@settings(max_examples=PROPERTY_EXAMPLES, derandomize=True, database=None, deadline=None)
@given(state=st.sampled_from(["missing", "empty", "user's", "ours", "ours with user files", "ours before manifests"]),
       ours=st.lists(st.sampled_from(OUR_NAMES), min_size=1, max_size=4, unique=True),
       inside=st.lists(user_file, min_size=1, max_size=5), beside=st.lists(user_file, max_size=3),
       command=st.sampled_from(["staged", "incremental", "strength", "report", "cli strength"]),
       at=st.none() | st.integers(1, 12), error=st.sampled_from(["interrupt", "disk full", "crash"]),
       nested=st.booleans(), meanwhile=st.booleans())
@example(state="ours with user files", ours=["baking.json"], inside=[(["data"], "thesis.txt", b"t")], beside=[],
         command="staged", at=None, error="crash", nested=False, meanwhile=False)  # case 4, whatever the seed
@example(state="ours with user files", ours=["README.md"], inside=[(["round-1"], "notes.md", b"n")], beside=[],
         command="strength", at=None, error="crash", nested=True, meanwhile=False)  # inside a nested bake of ours
@example(state="ours", ours=["README.md"], inside=[([], "notes.md", b"n")], beside=[], command="staged", at=None,
         error="crash", nested=False, meanwhile=True)  # a file added while the command runs
def test_every_user_file_survives_any_command_interrupted_anywhere(small_bake, tmp_path, capsys, state, ours,
                                                                   inside, beside, command, at, error, nested,
                                                                   meanwhile):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    target = root / "out"
    if state != "missing":
        target.mkdir()
    if state.startswith("ours"):
        with owned_directory(target, "bake") as staging:
            for name in ours:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_text(f"old {name}")
        if nested:  # a bake of ours inside it (a pursuit's round-1), judged by its own manifest
            with owned_directory(target / "round-1", "bake") as staging:
                (staging / "baking.json").write_text("{}")
        if state == "ours before manifests":
            (target / MANIFEST).unlink()
    kept = _write_user_files(root / "beside", beside)
    if state in ("user's", "ours with user files"):
        kept.update(_write_user_files(target, inside))
    if state == "ours before manifests":
        kept.update({p: p.read_bytes() for p in target.rglob("*") if p.is_file()})

    added = {target / "late" / "draft.txt": b"written during the command"} if meanwhile else {}
    for attempt in ("interrupted", "again"):
        with ExitStack() as stack:
            _interrupting(at if attempt == "interrupted" else None, error, stack)
            try:
                _command(command, target, small_bake, added, kept)
                finished = True
            except (BakingError, OSError, Interrupted, KeyboardInterrupt):
                finished = False
        capsys.readouterr()
        for path, content in kept.items():
            assert path.is_file() and path.read_bytes() == content, f"{attempt}: {path.relative_to(root)} was lost"
        if finished and command != "cli strength" and target.exists():
            assert read_manifest(target) is not None and foreign_entries(target) == []
    shutil.rmtree(root)
