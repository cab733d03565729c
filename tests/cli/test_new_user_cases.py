"""Bad input as a new user types it: every command with mistakes of its own kind, through the CLI.

Each case must end in one `lm-eval-baking: error:` line, exit status 2, no traceback, and every file that
was on disk before (the user's and our bakes) unchanged byte for byte. docs/reliability.md ("Tried as a new
user") lists the cases with the line each prints; to print that table again:

    NEW_USER_TABLE=/tmp/table.md python -m pytest tests/cli/test_new_user_cases.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lm_eval_baking.cli import main

from conftest import PIRATE

TINY = ["--model", "{tiny}", "--questions", "{questions}", "--samples-per-question", "2",
        "--heldout-samples-per-question", "1", "--max-new-tokens", "8", "--epochs", "1", "--batch-size", "4",
        "--lora-rank", "4", "--lora-alpha", "8", "--precision", "fp32", "--quiet"]
BAKE = ["bake", "--prompt", PIRATE, *TINY, "--output", "{tmp}/out"]


def _files(tmp: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _recipe(**changes) -> str:
    recipe = {"model": "{tiny}", "output": "{tmp}/run", "bake": {"max_new_tokens": 8},
              "stages": [{"name": "pirate", "prompt": PIRATE}]}
    recipe.update(changes)
    return json.dumps(recipe)


# (name, argv, files to create first: None makes a folder). Placeholders: {tiny} the tiny model,
# {questions} a good question file, {bake} a finished bake, {tmp} this case's folder.
CASES = [
    # bake: the prompt
    ("--prompt-file that does not exist", ["bake", "--prompt-file", "{tmp}/nope.txt", *TINY, "--output", "{tmp}/out"], {}),
    ("--prompt-file a folder", ["bake", "--prompt-file", "{tmp}/p", *TINY, "--output", "{tmp}/out"], {"p": None}),
    ("--prompt-file of whitespace", ["bake", "--prompt-file", "{tmp}/p.txt", *TINY, "--output", "{tmp}/out"],
     {"p.txt": " \n\t\n"}),
    ("--prompt-file not UTF-8", ["bake", "--prompt-file", "{tmp}/p.txt", *TINY, "--output", "{tmp}/out"],
     {"p.txt": b"\xff\xfe\x00pirate\x80"}),
    ("--prompt and --prompt-file together", ["bake", "--prompt", PIRATE, "--prompt-file", "{tmp}/p.txt", *TINY,
                                             "--output", "{tmp}/out"], {"p.txt": PIRATE}),
    # bake: numbers
    ("--samples-per-question 0", [*BAKE, "--samples-per-question", "0"], {}),
    ("--samples-per-question -3", [*BAKE, "--samples-per-question", "-3"], {}),
    ("--heldout-fraction 1.5", [*BAKE, "--heldout-fraction", "1.5"], {}),
    ("--temperature -1", [*BAKE, "--temperature", "-1"], {}),
    ("--temperature nan", [*BAKE, "--temperature", "nan"], {}),
    ("--lora-rank 0", [*BAKE, "--lora-rank", "0"], {}),
    ("--lora-alpha -4", [*BAKE, "--lora-alpha", "-4"], {}),
    ("--lora-dropout 1.5", [*BAKE, "--lora-dropout", "1.5"], {}),
    ("--epochs 0", [*BAKE, "--epochs", "0"], {}),
    ("--batch-size 0", [*BAKE, "--batch-size", "0"], {}),
    ("--top-k 0", [*BAKE, "--top-k", "0"], {}),
    ("--max-new-tokens 0", [*BAKE, "--max-new-tokens", "0"], {}),
    ("--kl-chunk-size 0", [*BAKE, "--kl-chunk-size", "0"], {}),
    ("--generation-batch-size 0", [*BAKE, "--generation-batch-size", "0"], {}),
    ("--learning-rate -0.01", [*BAKE, "--learning-rate", "-0.01"], {}),
    ("--learning-rate nan", [*BAKE, "--learning-rate", "nan"], {}),
    ("--checkpoint-seconds -5", [*BAKE, "--checkpoint-seconds", "-5"], {}),
    ("--precision fp8", [*BAKE, "--precision", "fp8"], {}),
    ("--device cuda on a machine without a GPU", [*BAKE, "--device", "cuda"], {}),
    ("--target-modules naming no module of the model", [*BAKE, "--target-modules", "no_such_proj"], {}),
    # bake: the model
    ("--model a folder that does not exist", ["bake", "--prompt", PIRATE, *TINY, "--output", "{tmp}/out",
                                              "--model", "{tmp}/no-model"], {}),
    ("--model a folder with a config and no weights", ["bake", "--prompt", PIRATE, *TINY, "--output", "{tmp}/out",
                                                       "--model", "{tmp}/m"], {"m/config.json": "{\"model_type\": \"llama\"}"}),
    ("--model a folder whose config.json is not JSON", ["bake", "--prompt", PIRATE, *TINY, "--output", "{tmp}/out",
                                                        "--model", "{tmp}/m"], {"m/config.json": "{model_type: llama"}),
    # bake: questions, output, resume
    ("--questions with one question", [*BAKE, "--questions", "{tmp}/q.txt"], {"q.txt": "What is rain?\n"}),
    ("--questions an empty .jsonl", [*BAKE, "--questions", "{tmp}/q.jsonl"], {"q.jsonl": ""}),
    ("--questions a .json that is an object", [*BAKE, "--questions", "{tmp}/q.json"], {"q.json": "{\"a\": 1}"}),
    ("--output an existing file", ["bake", "--prompt", PIRATE, *TINY, "--output", "{tmp}/out.txt"],
     {"out.txt": "mine"}),
    ("--task that lm_eval does not know", ["bake", "--task", "no_such_task", *TINY[:2], "--output", "{tmp}/out"], {}),
    # strength
    ("strength --strength nan", ["strength", "{bake}", "--strength", "nan", "--output", "{tmp}/half"], {}),
    ("strength on a folder that is not an adapter", ["strength", "{tmp}/notes", "--strength", "0.5",
                                                     "--output", "{tmp}/half"], {"notes/a.txt": "x"}),
    ("strength --epoch 99 (no such checkpoint)", ["strength", "{bake}", "--strength", "0.5", "--epoch", "99",
                                                  "--output", "{tmp}/half"], {}),
    # report and check
    ("report on a path that does not exist", ["report", "{tmp}/no-results", "--output", "{tmp}/rep"], {}),
    ("report on an empty folder", ["report", "{tmp}/empty", "--output", "{tmp}/rep"], {"empty": None}),
    ("report --max-forgetting-drop-pct -5", ["report", "{bake}", "--output", "{tmp}/rep",
                                             "--max-forgetting-drop-pct", "-5"], {}),
    ("report --forgetting-threshold (the flag's old name)", ["report", "{bake}", "--output", "{tmp}/rep",
                                                             "--forgetting-threshold", "5"], {}),
    ("check with no threshold", ["check", "{bake}"], {}),
    ("check on a results file with no results in it", ["check", "{tmp}/results_x.json", "--max-kl", "1"],
     {"results_x.json": "{\"results\": {}}"}),
    ("check --min-quality nan", ["check", "{bake}", "--min-quality", "nan"], {}),
    ("check --baseline that does not exist", ["check", "{bake}", "--baseline", "{tmp}/none.json",
                                              "--max-kl", "1"], {}),
    ("check --min without '='", ["check", "{bake}", "--min", "baking_mckl:quality"], {}),
    ("check on a results file that is a JSON list", ["check", "{tmp}/r.json", "--max-kl", "1"], {"r.json": "[1, 2]"}),
    # pipeline
    ("pipeline on a recipe that does not exist", ["pipeline", "{tmp}/none.yaml"], {}),
    ("pipeline on a recipe that is a YAML list", ["pipeline", "{tmp}/r.yaml"], {"r.yaml": "- a\n- b\n"}),
    ("pipeline on a recipe that is not YAML", ["pipeline", "{tmp}/r.yaml"], {"r.yaml": "model: [default\n"}),
    ("pipeline recipe with an unknown top-level key", ["pipeline", "{tmp}/r.yaml"],
     {"r.yaml": _recipe(colour="blue")}),
    ("pipeline recipe with no stages", ["pipeline", "{tmp}/r.yaml"], {"r.yaml": _recipe(stages=[])}),
    ("pipeline recipe with two stages of one name", ["pipeline", "{tmp}/r.yaml"],
     {"r.yaml": _recipe(stages=[{"name": "a", "prompt": PIRATE}, {"name": "a", "prompt": "Be French."}])}),
    ("pipeline recipe with cycles 0", ["pipeline", "{tmp}/r.yaml"], {"r.yaml": _recipe(cycles=0)}),
    # sequence, forgetting, drift-data
    ("sequence --cycles 0", ["sequence", "--output", "{tmp}/seq", "--prompt", PIRATE, "--prompt", "Be French.", "--cycles", "0",
                             *TINY], {}),
    ("sequence --replay-weight -1", ["sequence", "--output", "{tmp}/seq", "--prompt", PIRATE, "--prompt", "Be French.",
                                     "--replay-weight", "-1", *TINY], {}),
    ("forgetting --adapters a folder that does not exist", ["forgetting", "--adapters", "{tmp}/none",
                                                            "--model", "{tiny}", "--output", "{tmp}/f"], {}),
    ("forgetting --limit 0", ["forgetting", "--adapters", "{bake}", "--model", "{tiny}", "--limit", "0",
                              "--output", "{tmp}/f"], {}),
    ("drift-data --turns 0", ["drift-data", "{bake}", "--turns", "0"], {}),
    ("drift-data --persona that does not exist", ["drift-data", "{bake}", "--persona", "klingon"], {}),
    ("drift-data --probes-at beyond the last turn", ["drift-data", "{bake}", "--turns", "5", "--probes-at", "1", "9"],
     {}),
    ("pursue --max-rounds 0", ["pursue", "--prompt", PIRATE, *TINY, "--output", "{tmp}/p", "--max-rounds", "0"], {}),
    ("pursue --min-improvement nan", ["pursue", "--prompt", PIRATE, *TINY, "--output", "{tmp}/p",
                                      "--min-improvement", "nan"], {}),
    ("check-matrix on a bake folder", ["check-matrix", "{bake}"], {}),
    ("check-matrix --min-share 2", ["check-matrix", "{tmp}/none", "--min-share", "2"], {}),
    ("cross-task with one task only", ["cross-task", "--tasks", "no_such_task", "--output", "{tmp}/x",
                                       *TINY[:2]], {}),
    ("model with a name that is neither a folder nor cached", ["model", "{tmp}/no-such-model"], {}),
    ("drift-data on a folder that is not a bake", ["drift-data", "{tmp}/notes"], {"notes/a.txt": "x"}),
]

_TABLE: list[tuple[str, str]] = []


def _fill(value: str, places: dict[str, str]) -> str:
    for key, path in places.items():
        value = value.replace("{" + key + "}", path)
    return value


def snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    target = os.environ.get("NEW_USER_TABLE")
    if target:
        rows = [f"| {name} | `{line}` |" for name, line in _TABLE]
        Path(target).write_text("| input | what you see |\n| --- | --- |\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("name,argv,files", CASES, ids=[case[0] for case in CASES])
def test_a_new_users_mistake_gets_one_line_and_changes_nothing(name, argv, files, tmp_path, tiny_model_dir,
                                                               question_file, small_bake, capsys):
    _files(tmp_path, files)
    places = {"tiny": str(tiny_model_dir), "questions": str(question_file), "bake": str(small_bake),
              "tmp": str(tmp_path)}
    args = [_fill(a, places) for a in argv]
    for path in tmp_path.glob("*.yaml"):
        path.write_text(_fill(path.read_text(), places))
    before = snapshot(tmp_path, small_bake, tiny_model_dir, Path(question_file).parent)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusals (a choice or a type): also one line and status 2
        code = e.code
    err = capsys.readouterr().err.strip()
    assert snapshot(tmp_path, small_bake, tiny_model_dir, Path(question_file).parent) == before
    line = err.splitlines()[-1] if err else ""
    _TABLE.append((name, line.replace("|", "\\|").replace(str(tmp_path), "D").replace(str(small_bake), "BAKE")
                   .replace(str(tiny_model_dir), "MODEL")))
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert line.startswith(("lm-eval-baking: error: ", "usage: ", "lm-eval-baking ")), err
    if line.startswith("lm-eval-baking: error: "):
        assert len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob(".*.partial")), "a refused command left a work folder that blocks a rerun"
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
