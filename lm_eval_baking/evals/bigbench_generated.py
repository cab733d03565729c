"""BIG-bench's arithmetic tasks, written by BIG-bench's own generator where the 1.0.0 archive cannot be had.

PyPI no longer serves any file of bigbench 1.0.0, the archive with BIG-bench's task files (evals/bigbench.py).
bigbench 0.0.1, still on PyPI (358 KB, no task files), ships the script BIG-bench's arithmetic task files were
made with, `bigbench/benchmark_tasks/arithmetic/generate_examples.py`: seeded (random.seed(42)), so it writes the
same 20 subtasks (`{1..5}_digit_{addition,subtraction,multiplication,division}`) on every machine. They are
BIG-bench's real files: the default model scores the same, doc for doc, on generated files as on 1.0.0's.

So for a missing `arithmetic/...` task we pip-download that sdist (through pip, so a user's index, mirror and
proxy settings apply; pip checks the pinned sha256 before it runs anything of it, and we check it again), take
out only the generator, run it with this Python in a scratch folder, check every file it wrote, and only then
move each missing task.json into place atomically. We run BIG-bench's script; we never copy its code.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import BakingError
from ..utils.atomic import write_bytes, write_text
from ..utils.hashing import sha256_file
from ..utils.processes import run_child
from ..utils.text import quoted

GENERATOR_REQUIREMENT = "bigbench==0.0.1"
GENERATOR_SDIST = "bigbench-0.0.1.tar.gz"
GENERATOR_SHA256 = "b9e26039040dff2815f2fa5dc20ca0c8dc02052cecded82ad7eb17dbd9e8f182"
GENERATOR_MEMBER = "bigbench-0.0.1/bigbench/benchmark_tasks/arithmetic/generate_examples.py"
GENERATED_FAMILY = "arithmetic"
# What the generator writes, as BIG-bench names the subtasks (the 1.0.0 archive has the same names).
GENERATED_TASKS = tuple(f"{GENERATED_FAMILY}/{digits}_digit_{op}" for digits in range(1, 6)
                        for op in ("addition", "subtraction", "multiplication", "division"))


def is_generated(name: str) -> bool:
    """Whether BIG-bench task `name` is one BIG-bench's arithmetic generator makes (or should: typos included)."""
    return name.startswith(GENERATED_FAMILY + "/")


def generate_tasks(names: list[str], tasks_dir: Path, index: Path) -> None:
    """Write `<tasks_dir>/<name>/task.json` for `names` (and every other generated task still missing).

    Nothing is written unless the generator ran and every file asked for came out whole. `index`, the list of
    known task names, gets the generated names added when it exists; it is not made here, since a list of the
    arithmetic tasks alone would reject every other (archive or hand-placed) task by name.
    """
    for name in names:
        if name not in GENERATED_TASKS:
            close = difflib.get_close_matches(name, GENERATED_TASKS, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"the names are {GENERATED_FAMILY}/N_digit_OP"
            raise BakingError(f"no BIG-bench task {quoted(name)} among those BIG-bench's arithmetic generator "
                              f"writes (N 1 to 5, OP addition, subtraction, multiplication or division); {hint}")
    try:
        _extend_index(index, list(_generate(names, tasks_dir)))
    except OSError as e:  # a read-only or full data folder, a Python that cannot start
        raise BakingError(f"cannot write BIG-bench's arithmetic tasks into {tasks_dir} ({quoted(str(e), 120)}); "
                          "make that folder writable (or use another data folder) and rerun") from None


def _generate(names: list[str], tasks_dir: Path) -> dict[str, bytes]:
    """Generate, check, then write every missing generated task; {name: bytes} of all the generator wrote."""
    tasks_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bigbench-generate-", dir=tasks_dir.parent) as scratch:
        scratch = Path(scratch)
        sdist = download_generator(scratch, tasks_dir)
        if sha256_file(sdist) != GENERATOR_SHA256:
            raise BakingError(f"the downloaded {GENERATOR_SDIST} has the wrong sha256 (want {GENERATOR_SHA256}); "
                              f"check your package index or mirror, {_fallback(tasks_dir)}")
        script = _extract_generator(sdist, scratch / "generate_examples.py", tasks_dir)
        written = _run_generator(script, scratch / "out", tasks_dir)
        files = {name: data for name in GENERATED_TASKS if (data := _checked(written, name)) is not None}
        for name in names:
            if name not in files:
                raise BakingError(f"BIG-bench's arithmetic generator wrote no readable {name}/task.json; "
                                  f"{_fallback(tasks_dir)}")
        for name, data in files.items():
            target = tasks_dir / name / "task.json"
            if not target.is_file():  # a file already there (hand-placed, or from the archive) is kept
                write_bytes(target, data)
    return files


def download_generator(scratch: Path, tasks_dir: Path) -> Path:
    """`pip download` the pinned bigbench 0.0.1 sdist into `scratch`; its path."""
    requirements = scratch / "requirements.txt"
    requirements.write_text(f"{GENERATOR_REQUIREMENT} --hash=sha256:{GENERATOR_SHA256}\n", "utf-8")
    log = scratch / "pip.log"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--progress-bar", "off",
               "--require-hashes", "-r", str(requirements), "--dest", str(scratch / "dest")]
    with open(log, "wb") as out:
        code = run_child(command, stdout=out, stderr=subprocess.STDOUT)
    sdist = scratch / "dest" / GENERATOR_SDIST
    if code != 0 or not sdist.is_file():
        raise BakingError(f"pip could not download {GENERATOR_REQUIREMENT}, which holds BIG-bench's arithmetic "
                          f"generator (exit status {code}: {quoted(_last_error(log), 120)}); check that `pip download "
                          f"--no-deps {GENERATOR_REQUIREMENT}` works here (index, proxy), {_fallback(tasks_dir)}")
    return sdist


def _extract_generator(sdist: Path, script: Path, tasks_dir: Path) -> Path:
    try:
        with tarfile.open(sdist, mode="r:gz") as tar:
            member = tar.extractfile(GENERATOR_MEMBER)
            if member is None:
                raise KeyError(GENERATOR_MEMBER)
            script.write_bytes(member.read())
    except KeyError:
        raise BakingError(f"{GENERATOR_SDIST} has no {GENERATOR_MEMBER}; {_fallback(tasks_dir)}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BakingError(f"cannot read {GENERATOR_SDIST} ({quoted(str(e), 120)}); {_fallback(tasks_dir)}") from None
    return script


def _run_generator(script: Path, out: Path, tasks_dir: Path) -> Path:
    """Run the generator in `out` (it writes `<subtask>/task.json` into its working folder); `out`."""
    out.mkdir()
    log = out.parent / "generator.log"
    with open(log, "wb") as f:
        # -I: no PYTHON* variables, no user site: only the script and the standard library it imports.
        code = run_child([sys.executable, "-I", str(script)], stdout=f, stderr=subprocess.STDOUT, cwd=out)
    if code != 0:
        raise BakingError(f"BIG-bench's arithmetic generator failed (exit status {code}: "
                          f"{quoted(_last_error(log), 120)}); nothing was written; {_fallback(tasks_dir)}")
    return out


def _checked(written: Path, name: str) -> bytes | None:
    """The bytes of the generated `name`/task.json when it is a BIG-bench task with examples, else None."""
    path = written / name.removeprefix(GENERATED_FAMILY + "/") / "task.json"
    try:
        data = path.read_bytes()
        task = json.loads(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    examples = task.get("examples") if isinstance(task, dict) else None
    return data if isinstance(examples, list) and examples else None


def _extend_index(index: Path, names: list[str]) -> None:
    if not index.is_file():
        return
    try:
        known = json.loads(index.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # rebuilt by the next extraction from the archive
    if isinstance(known, list) and not set(names) <= set(known):
        write_text(index, json.dumps(sorted({*known, *names}), indent=0))


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text("utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def _fallback(tasks_dir: Path) -> str:
    return (f"or copy BIG-bench's arithmetic task files (google/BIG-bench, "
            f"bigbench/benchmark_tasks/arithmetic/NAME/task.json) to {tasks_dir}/arithmetic/NAME/task.json, and rerun")
