"""Reliability and safety (issue 7): kills and resumes, untrusted adapters, reproducibility, bad outputs.

Everything runs on the tiny model. The kill tests run the real CLI in a
subprocess; the rest call the API in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lm_eval_baking import BakingError, bake, load_bake_record
from lm_eval_baking.cli import main
from lm_eval_baking.training.config import ResumeSettings
from lm_eval_baking.training.workdir import work_dir_for

from conftest import bake_flags, tiny_config

# A bake long enough to be killed in the middle of training: 30 epochs of 5 steps (~10 s of training).
LONG = dict(epochs=30)
EVERY_STEP = ResumeSettings(checkpoint_seconds=0)


def cli_args(tiny_model_dir, question_file, output, **overrides) -> list[str]:
    """`lm-eval-baking bake` flags for exactly tiny_config(**overrides)."""
    config = tiny_config(tiny_model_dir, question_file, **overrides)
    return ["bake", "--prompt", config.prompt, "--output", str(output), "--quiet", *bake_flags(config)]


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{key} differs"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, question_file, tmp_path_factory):
    """The 30-epoch bake, run start to end: what every resumed run must reproduce."""
    return bake(tiny_config(tiny_model_dir, question_file, **LONG), tmp_path_factory.mktemp("ref") / "pirate",
                progress=False)


def start_cli_bake(tiny_model_dir, question_file, output) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = cli_args(tiny_model_dir, question_file, output, **LONG) + ["--checkpoint-seconds", "0"]
    return subprocess.Popen([sys.executable, "-m", "lm_eval_baking.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(work: Path, process: subprocess.Popen, epochs_done: int = 2, timeout: float = 240) -> None:
    """Block until the bake in `work` has finished `epochs_done` epochs (so it is mid-training)."""
    deadline = time.monotonic() + timeout
    while not (work / "checkpoints" / f"epoch-{epochs_done}").is_dir():
        assert process.poll() is None, f"the bake ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "the bake never reached training"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- resume


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_bake(
        uninterrupted, tiny_model_dir, question_file, tmp_path):
    output = tmp_path / "pirate"
    work = work_dir_for(output)
    process = start_cli_bake(tiny_model_dir, question_file, output)
    wait_for_training(work, process)
    time.sleep(0.2)  # into the next epoch: a checkpoint lands after every step
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "a partial adapter appeared at the output path"
    assert (work / "resume" / "trainer.pt").is_file()

    # Without --resume the leftover work is pointed out, not silently redone or deleted.
    code = main(cli_args(tiny_model_dir, question_file, output, **LONG))
    assert code == 2 and work.is_dir()

    resumed = subprocess.run([sys.executable, "-m", "lm_eval_baking.cli",
                              *cli_args(tiny_model_dir, question_file, output, **LONG), "--resume"],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed at epoch" in resumed.stdout
    assert not work.exists()

    record, reference = load_bake_record(output), load_bake_record(uninterrupted.output)
    assert record["resumes"] and record["resumes"][0]["from"]["epoch"] >= 3
    final, expected = record["kl"]["final_per_token"], reference["kl"]["final_per_token"]
    assert abs(final - expected) <= 0.05 * expected  # the bar...
    assert final == expected  # ...and in fact: same data order, weights, Adam moments and RNG -> same bits
    assert_same_adapter(output, uninterrupted.output)
    assert [e["train_loss"] for e in record["kl"]["per_epoch"]] == \
        [e["train_loss"] for e in reference["kl"]["per_epoch"]]


def test_ctrl_c_saves_the_training_state_and_resume_finishes(uninterrupted, tiny_model_dir, question_file, tmp_path):
    output = tmp_path / "pirate"
    process = start_cli_bake(tiny_model_dir, question_file, output)
    wait_for_training(work_dir_for(output), process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("lm-eval-baking: interrupted;")
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not output.exists()

    result = bake(tiny_config(tiny_model_dir, question_file, **LONG), output, resume=True, progress=False)
    assert result.resumed_from is not None
    assert result.final_kl == uninterrupted.final_kl
    assert_same_adapter(output, uninterrupted.output)


class _Interrupt:
    """Raise KeyboardInterrupt at the n-th held-out KL (1 = the unprompted base's, 2 = after epoch 1...)."""

    def __init__(self, monkeypatch, at: int):
        from lm_eval_baking.training.baker import PromptBaker

        self.calls, original = 0, PromptBaker.heldout_kl

        def heldout_kl(baker, *args, **kwargs):
            self.calls += 1
            if self.calls == at:
                raise KeyboardInterrupt
            return original(baker, *args, **kwargs)

        monkeypatch.setattr(PromptBaker, "heldout_kl", heldout_kl)


def test_leftover_work_needs_resume_or_overwrite_and_the_same_settings(
        tiny_model_dir, question_file, tmp_path, monkeypatch):
    output = tmp_path / "pirate"
    config = tiny_config(tiny_model_dir, question_file, epochs=3)
    with monkeypatch.context() as patch:
        _Interrupt(patch, at=3)  # during the held-out KL after epoch 2
        with pytest.raises(KeyboardInterrupt, match="--resume"):
            bake(config, output, progress=False, resume_settings=EVERY_STEP)
    work = work_dir_for(output)
    assert (work / "checkpoints" / "epoch-1").is_dir() and not output.exists()
    kept = snapshot(work)

    with pytest.raises(BakingError, match=r"interrupted bake .* pass --resume to continue it, or --overwrite"):
        bake(config, output, progress=False)
    other = tiny_config(tiny_model_dir, question_file, epochs=3, learning_rate=0.01)
    with pytest.raises(BakingError, match=r"other settings \(learning_rate: 0\.02 -> 0\.01\).*--overwrite"):
        bake(other, output, resume=True, progress=False)
    assert snapshot(work) == kept, "a refused resume touched the work folder"

    resumed = bake(config, output, resume=True, progress=False)
    assert resumed.resumed_from == {"epoch": 2, "step": 5}  # epoch 2's steps were all saved; only its KL was lost
    fresh = bake(config, tmp_path / "fresh", progress=False)
    assert_same_adapter(output, fresh.output)
    assert not work.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_without_resume_discards_the_leftover_work(tiny_model_dir, question_file, tmp_path, monkeypatch):
    output = tmp_path / "pirate"
    with monkeypatch.context() as patch:
        _Interrupt(patch, at=2)
        with pytest.raises(KeyboardInterrupt):
            bake(tiny_config(tiny_model_dir, question_file, epochs=1), output, progress=False)
    result = bake(tiny_config(tiny_model_dir, question_file, epochs=1, prompt="You are a cat."), output,
                  overwrite=True, progress=False)
    assert result.resumed_from is None and load_bake_record(output)["config"]["prompt"] == "You are a cat."


def test_a_bake_that_can_never_finish_leaves_nothing_behind(tiny_model_dir, question_file, tmp_path, monkeypatch):
    from lm_eval_baking.training.baker import PromptBaker

    # A learning rate of 1e30 is now refused before any work (tests/cli/test_limits.py), so the loss is made to
    # diverge directly: the first step's loss is nan.
    monkeypatch.setattr(PromptBaker, "_step", lambda self, batch: float("nan"))
    with pytest.raises(BakingError, match="lower --learning-rate"):
        bake(tiny_config(tiny_model_dir, question_file, epochs=1), tmp_path / "nan", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_the_same_trajectories_and_bitwise_identical_weights(tiny_model_dir, question_file, tmp_path):
    config = tiny_config(tiny_model_dir, question_file)
    first = bake(config, tmp_path / "a", progress=False)
    second = bake(config, tmp_path / "b", progress=False)
    for name in ("data/train.jsonl", "data/heldout.jsonl", "adapter_model.safetensors",
                 "checkpoints/epoch-1/adapter_model.safetensors"):
        assert (first.output / name).read_bytes() == (second.output / name).read_bytes(), name
    assert_same_adapter(first.output, second.output)
    other_seed = bake(tiny_config(tiny_model_dir, question_file, seed=1), tmp_path / "c", progress=False)
    assert (other_seed.output / "data/train.jsonl").read_bytes() != (first.output / "data/train.jsonl").read_bytes()


def test_the_record_holds_what_a_rerun_needs(tiny_model_dir, question_file, tmp_path):
    record = load_bake_record(bake(tiny_config(tiny_model_dir, question_file, epochs=1), tmp_path / "a",
                                   progress=False).output)
    assert set(record["versions"]) >= {"torch", "transformers", "peft", "lm_eval", "python", "lm_eval_baking"}
    assert record["environment"]["torch_threads"] == torch.get_num_threads()
    assert record["config"]["seed"] == 0 and record["questions"]["sha256"]
    assert len(record["base_model"]["sha256"]) == 64 and len(record["base_model"]["config_sha256"]) == 64


# ---------------------------------------------------------------------------- untrusted adapters


class _Payload:
    """Unpickling this runs code: it touches a marker file. A refused load must never get that far."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_only(bake_dir: Path, target: Path, *, payload: Path | None = None) -> Path:
    """A copy of a bake whose weights are only adapter_model.bin (optionally booby-trapped)."""
    shutil.copytree(bake_dir, target)
    weights = adapter_tensors(target)
    (target / "adapter_model.safetensors").unlink()
    torch.save({**weights, **({"payload": _Payload(payload)} if payload else {})}, target / "adapter_model.bin")
    return target


def test_pickle_only_adapter_is_refused_by_default_everywhere(small_bake, tiny_model_dir, tmp_path):
    from lm_eval_baking.workflows.forgetting import forgetting_matrix
    from lm_eval_baking.artifacts.lora import export_strength, load_chain
    from lm_eval_baking.evals.lm_tasks import mckl_dataset

    marker = tmp_path / "code-ran"
    adapter = pickle_only(small_bake, tmp_path / "pickled", payload=marker)
    refused = r"only pickle weights \(adapter_model.bin\).*--allow-pickle"
    with pytest.raises(BakingError, match=refused):
        load_chain(str(tiny_model_dir), [adapter])
    with pytest.raises(BakingError, match=refused):
        export_strength(adapter, 0.5, tmp_path / "half")
    with pytest.raises(BakingError, match=refused):
        mckl_dataset(peft=str(adapter), pretrained=str(tiny_model_dir))
    with pytest.raises(BakingError, match=refused):
        forgetting_matrix(str(tiny_model_dir), [str(adapter)], ["baking_forgetting"], tmp_path / "forgetting")
    assert main(["strength", str(adapter), "--strength", "0.5", "--output", str(tmp_path / "cli")]) == 2
    assert not marker.exists(), "a refused pickle was unpickled"
    assert not (tmp_path / "half").exists() and not (tmp_path / "cli").exists()


def test_allow_pickle_opts_in_with_the_restricted_unpickler(small_bake, tiny_model_dir, tmp_path):
    from lm_eval_baking.artifacts.lora import load_chain

    adapter = pickle_only(small_bake, tmp_path / "pickled")
    model, _ = load_chain(str(tiny_model_dir), [adapter], allow_pickle=True)
    reference, _ = load_chain(str(tiny_model_dir), [small_bake])
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(ids).logits, reference(ids).logits)
    # Even opted in, weights_only loading rejects a file that carries code.
    trapped = pickle_only(small_bake, tmp_path / "trapped", payload=tmp_path / "code-ran")
    with pytest.raises(Exception):
        load_chain(str(tiny_model_dir), [trapped], allow_pickle=True)
    assert not (tmp_path / "code-ran").exists()


@pytest.fixture(scope="module")
def other_base(tiny_model_dir, tmp_path_factory):
    """The tiny model's architecture with other weights: the same shapes, so PEFT alone would not notice."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config)
    path = tmp_path_factory.mktemp("other-base")
    model.save_pretrained(path)
    for tokenizer_file in Path(tiny_model_dir).glob("*token*"):
        shutil.copy(tokenizer_file, path)
    return path


def test_adapter_on_a_different_base_is_detected(small_bake, other_base, tiny_model_dir):
    from lm_eval_baking.artifacts.lora import load_chain
    from lm_eval_baking.evals.lm_tasks import mckl_dataset

    with pytest.raises(BakingError, match=r"baked on a different base model .*re-bake"):
        load_chain(str(other_base), [small_bake])
    with pytest.raises(BakingError, match=r"baked on a different base model"):
        mckl_dataset(peft=str(small_bake), pretrained=str(other_base))
    assert len(mckl_dataset(peft=str(small_bake), pretrained=str(tiny_model_dir))["test"]) == 3


def test_base_fingerprint_is_cached_by_size_and_mtime(tiny_model_dir, tmp_path, monkeypatch):
    from lm_eval_baking.core import models

    monkeypatch.setenv("LM_EVAL_BAKING_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    real = models.model_fingerprint(base)
    cache_file = tmp_path / "cache" / "fingerprints.json"
    cache = json.loads(cache_file.read_text())
    cache[str(base.resolve())]["sha256"] = "cached"
    cache_file.write_text(json.dumps(cache))
    assert models.model_fingerprint(base) == "cached"  # no re-hash while nothing changed
    weights = next(base.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert models.model_fingerprint(base) == real  # touched: hashed again
    cache_file.write_text("{ damaged")
    assert models.model_fingerprint(base) == real


def test_remote_code_is_not_run_unless_asked_for(tiny_model_dir, tmp_path):
    from lm_eval_baking.core.models import load_model

    model_dir = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "remote-code-ran"
    (model_dir / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.LlamaForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config))
    try:
        load_model(model_dir)
    except BakingError:
        pass
    assert not marker.exists()


# ---------------------------------------------------------------------------- unwritable outputs


def run_cli(args, capsys) -> tuple[int, list[str]]:
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def test_output_under_a_file_is_one_clear_error(tiny_model_dir, question_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code, error = run_cli(cli_args(tiny_model_dir, question_file, blocker / "pirate", epochs=1), capsys)
    assert code == 2 and len(error) == 1
    assert error[0] == f"lm-eval-baking: error: --output {blocker / 'pirate'} lies under {blocker}, which is a file; " \
                       "choose a path in a folder"
    assert blocker.read_text() == "keep me"


@pytest.fixture
def immutable(tmp_path):
    """chattr +i: unwritable even for root (permission bits are not). Skips where chattr is unsupported."""
    folder = tmp_path / "locked"
    folder.mkdir()
    made = []

    def lock(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here")
        made.append(path)

    yield folder, lock
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_read_only_output_location_fails_cleanly_and_damages_nothing(
        small_bake, tiny_model_dir, question_file, immutable, capsys):
    folder, lock = immutable
    existing = folder / "pirate"
    shutil.copytree(small_bake, existing)
    before = snapshot(folder)
    lock(folder)
    for output, extra in ((folder / "new", []), (existing, ["--overwrite"])):
        code, error = run_cli(cli_args(tiny_model_dir, question_file, output, epochs=1, prompt="You are a cat.")
                              + extra, capsys)
        assert code == 2 and len(error) == 1, error
        assert f"cannot be written: {folder} is read-only" in error[0]  # checked before any work
    assert snapshot(folder) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (root only). Skips where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(free - leave, 0))
    return filler


@pytest.mark.parametrize("leave", [0, 24 * 1024, 96 * 1024])
def test_full_disk_fails_cleanly_keeps_the_old_bake_and_resumes(
        small_bake, tiny_model_dir, question_file, small_disk, capsys, leave):
    existing = small_disk / "pirate"
    shutil.copytree(small_bake, existing)
    before = snapshot(existing)
    filler = fill(small_disk, leave)
    args = cli_args(tiny_model_dir, question_file, existing, epochs=3, prompt="You are a cat.") + ["--overwrite"]
    code, error = run_cli(args, capsys)
    assert code == 2 and len(error) == 1, error
    assert error[0].startswith("lm-eval-baking: error: cannot write") and "No space left on device" in error[0]
    assert "--resume" in error[0]
    assert snapshot(existing) == before, "the bake already at --output was damaged"
    filler.unlink()
    code, _ = run_cli(args + ["--resume"], capsys)
    assert code == 0
    assert load_bake_record(existing)["config"]["prompt"] == "You are a cat."
    assert sorted(p.name for p in small_disk.iterdir()) == ["pirate"]
