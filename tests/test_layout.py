"""The package's architecture, checked: layers import only downwards, no cycles, light commands without torch,
every CLI option explained."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_baking"
# What each layer may import (besides itself). utils, errors and constants are the floor.
FLOOR = {"utils", "errors", "constants"}
ALLOWED = {
    "utils": FLOOR,
    "errors": FLOOR,
    "constants": FLOOR,
    "core": FLOOR,
    "artifacts": FLOOR | {"core"},
    "training": FLOOR | {"core", "artifacts"},
    "evals": FLOOR | {"core", "artifacts"},
    "results": FLOOR | {"core", "artifacts"},
    "compose": FLOOR | {"core", "artifacts", "training", "evals"},
    "workflows": FLOOR | {"core", "artifacts", "training", "evals", "results", "compose"},
    "cli": FLOOR | {"core", "artifacts", "training", "evals", "results", "compose", "workflows"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken, line) for every import in the file, at any depth (function-level too)."""
    tree = ast.parse(path.read_text("utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names = [a.name for a in node.names]
            found.append((base, names, node.lineno))
            # `from . import x` imports the submodule x.
            found += [(f"{base}.{n}", [], node.lineno) for n in names
                      if (PACKAGE.parent / Path(*f"{base}.{n}".split("."))).with_suffix(".py").is_file()
                      or (PACKAGE.parent / Path(*f"{base}.{n}".split("."))).is_dir()]
    return [(m, names, line) for m, names, line in found if m == "lm_eval_baking" or m.startswith("lm_eval_baking.")]


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "paired_comparison" not in p.parts)


def test_layers_import_only_downwards():
    upward = []
    for path in sources():
        importer = module_name(path)
        if importer == "lm_eval_baking":
            continue  # the package's face re-exports lazily from every layer
        for target, _, line in imports_of(path):
            allowed = ALLOWED[layer(importer)] | {layer(importer)}
            if layer(target) not in allowed:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer(importer)}) imports {target}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in sources():
        importer = module_name(path)
        if importer == "lm_eval_baking":
            continue
        graph[importer] = {t for t, _, _ in imports_of(path) if t != importer and t != "lm_eval_baking"}
    # Importing a module imports its packages' __init__ too, which only hold docstrings: no edges through them.
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        visiting.add(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_reaches_into_another_modules_internals():
    private = [f"{path.relative_to(PACKAGE.parent)}:{line} takes {name} from {target}"
               for path in sources() for target, names, line in imports_of(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)


def test_subpackage_faces_hold_no_code():
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "cli":
            continue  # the command's entry point
        body = [n for n in ast.parse(init.read_text("utf-8")).body if not isinstance(n, ast.Expr)]
        assert not body, f"{init} should only hold its docstring (importing it must stay free)"


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in sources()
            if (n := len(p.read_text("utf-8").splitlines())) > 400]
    assert not long, "\n".join(long)


def test_verdict_names_exit_codes_and_the_forgetting_bound_have_one_home():
    """Verdict strings, the verdict exit-code table and the forgetting bound (3.4%) are written as literals
    only in core/verdicts.py; everything else imports them."""
    home = PACKAGE / "core" / "verdicts.py"
    found = []
    for path in sources():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            value = node.value if isinstance(node, ast.Constant) else None
            if value == 3.4 and isinstance(value, float) or value in ("PASS", "FAIL", "INCONCLUSIVE"):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {value!r}")
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EXIT_CODES" for t in node.targets):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: EXIT_CODES defined")
    assert not found, "\n".join(found)


def _is_docs_formula(node: ast.AST) -> bool:
    """`(a / b) ** 2`: the CI half-width (or effect) scaled to a doc count."""
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.left, ast.BinOp)
            and isinstance(node.left.op, ast.Div) and isinstance(node.right, ast.Constant) and node.right.value == 2)


def test_the_check_record_and_the_docs_formula_have_one_home():
    """The record of a judged value (a class with a verdict and a bound) is core.verdicts.Check, the docs that
    would resolve an INCONCLUSIVE are core.verdicts.docs_to_resolve and said by resolve_text; the docs a
    paired test needs to detect a change (power) are core.stats.docs_needed. Nothing else holds either."""
    home = PACKAGE / "core" / "verdicts.py"
    formula_homes = {(home, "docs_to_resolve"), (PACKAGE / "core" / "stats.py", "docs_needed")}
    found = []
    for path in sources():
        where = path.relative_to(PACKAGE.parent)
        tree = ast.parse(path.read_text("utf-8"))
        allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and (path, f.name) in formula_homes
                   for n in ast.walk(f)}
        found += [f"{where}:{n.lineno}: a docs formula" for n in ast.walk(tree)
                  if _is_docs_formula(n) and id(n) not in allowed]
        if path == home:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                fields = {f.target.id for f in node.body
                          if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)}
                # A file's record (a JsonRecord: forgetting.json's verdict beside its lm_eval --limit) is not
                # the record of one judged value.
                is_file_record = any(isinstance(b, ast.Name) and b.id == "JsonRecord" for b in node.bases)
                if node.name == "Check" or ("verdict" in fields and fields & {"limit", "bound", "threshold"}
                                            and not is_file_record):
                    found.append(f"{where}:{node.lineno}: class {node.name} records a verdict against a bound")
            if isinstance(node, ast.JoinedStr) and any(
                    isinstance(v, ast.Constant) and "docs would resolve" in str(v.value) for v in node.values):
                found.append(f"{where}:{node.lineno}: says the docs to resolve itself (use resolve_text)")
    assert not found, "\n".join(found)


# Numeric defaults shared by many modules, and the one module that may define each (every other one imports it).
# A default is a parameter's default, a module or class constant, or a `setting(...)` / `field(...)` default.
DEFAULT_HOMES = {
    3.4: "core/verdicts.py",   # MAX_FORGETTING_DROP_PCT
    0.95: "core/stats.py",     # CONFIDENCE
    2000: "core/stats.py",     # RESAMPLES
    0.05: "core/stats.py",     # ALPHA
    0.8: "core/stats.py",      # POWER
}


def numeric_defaults(tree: ast.AST):
    """(value, line) of every numeric default the module defines."""
    def number(node):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = number(node.operand)
            return None if value is None else -value
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        return None

    candidates = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arguments):
            candidates += [d for d in node.defaults + node.kw_defaults if d is not None]
        elif isinstance(node, (ast.Module, ast.ClassDef)):
            for statement in node.body:
                if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
                    value = statement.value
                    if isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("setting", "field"):
                        candidates += value.args[:1] + [k.value for k in value.keywords if k.arg == "default"]
                    elif isinstance(value, ast.Tuple):
                        candidates += value.elts
                    else:
                        candidates.append(value)
    return [(value, node.lineno) for node in candidates if (value := number(node)) is not None]


def test_each_shared_numeric_default_is_defined_in_one_module():
    """3.4 (the forgetting bound), 0.95, 2000, 0.05 and 0.8 (the statistics' defaults) are defined as a default
    only in their home; a second definition would let two commands drift apart."""
    found = []
    for path in sources():
        where = str(path.relative_to(PACKAGE))
        for value, line in numeric_defaults(ast.parse(path.read_text("utf-8"))):
            home = next((h for v, h in DEFAULT_HOMES.items() if v == value and type(v) is type(value)), None)
            if home is not None and home != where:
                found.append(f"{where}:{line}: default {value!r} belongs in {home}")
    assert not found, "\n".join(found)


def test_the_layout_check_finds_a_second_default():
    tree = ast.parse("LIMIT = 3.4\ndef f(x=2000, *, c=0.95): ...\nclass S:\n    p: float = setting(0.05, help='x')\n")
    assert sorted(v for v, _ in numeric_defaults(tree)) == [0.05, 0.95, 3.4, 2000]


def test_argparse_lives_in_the_cli_only():
    outside = [str(p.relative_to(PACKAGE.parent)) for p in sources()
               if "cli" not in p.relative_to(PACKAGE).parts and "argparse" in p.read_text("utf-8")]
    assert not outside


@pytest.mark.parametrize("command", [
    ["tasks-path"],
    ["report", "{results}", "--output", "{tmp}/report"],
    ["check", "{results}", "--min-quality", "0.5"],
    ["compare", "--help"],  # a real compare without torch: tests/cli/test_compare_cli.py
    ["bake", "--help"],
])
def test_light_commands_run_without_torch(command, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "results_x.json").write_text(
        '{"results": {"baking_mckl": {"quality,none": 0.9, "quality_ci_low,none": 0.85, '
        '"quality_ci_high,none": 0.95, "kl_per_token,none": 0.05}}, "lm_eval_version": "0.4.13", '
        '"config": {"model_args": "pretrained=base,peft=adapters/x"}}')
    argv = [part.format(results=results, tmp=tmp_path) for part in command]
    script = ("import sys\nfrom lm_eval_baking.cli import main\n"
              "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\nprint('exit', code)\n")
    run = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "exit 0" in run.stdout


def test_every_cli_option_says_what_it_does():
    from lm_eval_baking.cli import build_parser

    parser = build_parser()
    unexplained = []
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = (action.help or "").strip()
            if len(text.split("(default")[0].strip()) < 8:
                unexplained.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {text!r}")
    assert not unexplained, "\n".join(unexplained)


def test_every_help_page_renders():
    """argparse %-formats help text, so one bare '%' breaks `--help` for the whole program."""
    from lm_eval_baking.cli import build_parser

    parser = build_parser()
    assert "usage" in parser.format_help()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.choices.items():
        assert name in sub.format_help()
