"""What we write gets the user's umask (0644 files and 0755 folders under umask 022), like any plain write:
mkstemp/mkdtemp would make them 0600/0700, unreadable to a group or a web server sharing the bake."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

from lm_eval_baking.utils import atomic

UMASKS = [0o022, 0o027]


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def wrong_modes(root: Path, mask: int) -> list[str]:
    """Every file or folder under `root` (itself included) whose mode is not what a plain write would give."""
    wrong = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        if path.is_file() and mode & 0o111:
            expected = 0o777 & ~mask  # an executable a library wrote on purpose
        if mode != expected:
            wrong.append(f"{path.relative_to(root.parent)}: {oct(mode)} (expected {oct(expected)})")
    return wrong


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_atomic_writes_get_the_umask(tmp_path, mask):
    with umask(mask):
        atomic.write_text(tmp_path / "out" / "a.txt", "a")
        atomic.write_bytes(tmp_path / "out" / "b.bin", b"b")
        atomic.write_json(tmp_path / "out" / "c.json", {"c": 1})
        atomic.write_jsonl(tmp_path / "out" / "d.jsonl", [{"d": 1}])
        with atomic.atomic_path(tmp_path / "out" / "e.bin") as tmp:  # a library writing to the path we give it
            Path(tmp).write_bytes(b"e")
        for replace in (False, True):  # a new folder, then one replacing it
            with atomic.staged_directory(tmp_path / "out" / "folder", replace=replace) as staging:
                (staging / "sub").mkdir()
                atomic.write_text(staging / "sub" / "f.txt", "f")
    assert wrong_modes(tmp_path / "out", mask) == []


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_extracted_bigbench_files_get_the_umask(tmp_path, monkeypatch, mask):
    import io
    import json
    import tarfile

    from lm_eval_baking.evals import bigbench

    monkeypatch.setattr(bigbench, "bigbench_dir", lambda: tmp_path / "cache" / "bigbench")
    archive = tmp_path / "bigbench.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = json.dumps({"examples": []}).encode()
        member = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/some_task/task.json")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    monkeypatch.setattr(bigbench, "_ensure_sdist", lambda: archive)
    monkeypatch.setattr(bigbench, "_verify_sdist", lambda path: None)
    with umask(mask):
        bigbench.ensure_bigbench_tasks(["some_task"])
    assert wrong_modes(tmp_path / "cache" / "bigbench", mask) == []


def test_a_bake_folder_gets_the_umask(tiny_model_dir, question_file, tmp_path):
    """A whole bake (adapter weights, checkpoints, data, record, card, manifest) under a umask other than 022."""
    from conftest import tiny_config

    from lm_eval_baking import bake

    mask = 0o027
    with umask(mask):
        output = bake(tiny_config(tiny_model_dir, question_file, epochs=1), tmp_path / "bakes" / "pirate",
                      progress=False).output
    assert wrong_modes(Path(output), mask) == []


def test_a_symlink_in_a_staged_folder_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "secret").write_text("s")
    (outside / "secret").chmod(0o600)
    with umask(0o022):
        with atomic.staged_directory(tmp_path / "out", replace=False) as staging:
            (staging / "link").symlink_to(outside)
            (staging / "script").write_text("#!/bin/sh\n")
            (staging / "script").chmod(0o700)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    assert stat.S_IMODE((outside / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out" / "script").stat().st_mode) == 0o755
