"""Resumable bakes: a work folder beside the output that survives a kill.

A bake can run for hours; a SIGKILL, a full disk or a closed laptop must not
cost more than a few minutes of it. `bake()` therefore keeps everything it
has finished in a fixed, hidden folder beside the output,

    .NAME.partial/
        state.json            what is being baked (config, question-file and base-model hashes)
                              and the reference KL once measured
        data/train.jsonl      training trajectories, written as soon as they are sampled
        data/heldout.jsonl    held-out trajectories, written once scored
        checkpoints/epoch-N/  the adapter after each finished epoch
        resume/trainer.pt     LoRA weights, optimiser state, RNG state, position (epoch, step),
                              losses so far and finished epochs' records: one file, replaced
                              atomically, written after every epoch and every
                              `checkpoint_seconds` of training

and only a finished bake is copied into a staging folder and renamed to the
output, so the output path never holds a partial adapter. `--resume` (or
`bake(resume=True)`) picks the folder up again: sampled data are read back
instead of sampled, training restarts after the last step checkpointed, and
because the data order, the LoRA weights, the optimiser moments and the RNG
are all restored, the result is the one an uninterrupted run gives (bitwise on
CPU with the same thread count). A folder made with other settings is refused,
naming the setting that differs.

The folder is locked (flock) while a bake uses it, so two bakes of the same
output cannot interleave their checkpoints.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..constants import (
    CHECKPOINTS_DIR, PARTIAL_SUFFIX, TRAINER_STATE, WORK_FORMAT, WORK_FORMAT_VERSION, WORK_STATE,
)
from ..core.sampling import Trajectory
from ..errors import BakingError
from ..utils.atomic import atomic_path, staged_directory, write_json, write_jsonl
from ..utils.jsonl import read_jsonl
from ..utils.records import check_format_version
from ..utils.text import quoted

STATE = WORK_STATE
TRAINER = Path(TRAINER_STATE)


class OutputWriteError(BakingError):
    """Writing failed (disk full, read-only...): the work folder is kept, so --resume can go on once fixed."""


def work_dir_for(output: str | os.PathLike) -> Path:
    output = Path(output).absolute()
    return output.parent / f".{output.name}{PARTIAL_SUFFIX}"


class WorkDir:
    """The resumable work folder of one bake output (see the module docstring).

    `writer=False` (data-parallel processes other than the main one) reads the
    main process's folder and never writes it.
    """

    def __init__(self, output: str | os.PathLike, *, writer: bool = True):
        self.output = Path(output)
        self.path = work_dir_for(output)
        self.writer = writer
        self._lock_fd: int | None = None
        self._resume_note: dict | None = None

    # ------------------------------------------------------------------ lifecycle

    def exists(self) -> bool:
        return self.path.is_dir()

    def lock(self) -> None:
        """Hold an exclusive lock on the folder until `release()` (or the process ends, even by SIGKILL)."""
        if self._lock_fd is not None or not self.writer:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BakingError(f"another bake is writing {self.output} right now (it holds {self.path}); "
                              "wait for it to finish or stop it first") from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def create(self, identity: dict) -> None:
        """Make a fresh folder for a bake of `identity`, locked."""
        if not self.writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=False)
        except OSError as e:
            raise BakingError(f"cannot write to {self.path.parent} ({e.strerror}); choose a writable --output") from None
        self.lock()
        try:
            write_json(self.path / STATE, {"format": WORK_FORMAT, "format_version": WORK_FORMAT_VERSION,
                                           "identity": identity, "created": time.time(), "resumes": []})
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)  # a folder without its state could never be resumed
            self.release()
            raise

    def discard(self) -> None:
        """Delete the folder (`--overwrite` without `--resume`, or a bake that can never finish)."""
        if self.writer and self.path.exists():
            self.lock()
            shutil.rmtree(self.path)
        self.release()

    def adopt(self, identity: dict) -> dict:
        """Lock a folder left by an earlier run and check it bakes `identity`; returns its state."""
        self.lock()
        state = self.state()
        differences = describe_differences(state["identity"], identity)
        if differences:
            self.release()
            raise BakingError(
                f"the interrupted bake in {self.path} was started with other settings ({differences}); "
                "rerun it with the same settings to --resume, or pass --overwrite (without --resume) to start over"
            )
        return state

    def state(self) -> dict:
        try:
            state = json.loads((self.path / STATE).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            state = None
        if not isinstance(state, dict) or state.get("format") != WORK_FORMAT or not isinstance(state.get("identity"), dict):
            raise BakingError(f"{self.path} is not a resumable bake (its {STATE} is missing or damaged); "
                              "pass --overwrite to start over")
        check_format_version(state, WORK_FORMAT_VERSION, str(self.path / STATE))
        return state

    def update_state(self, **values) -> None:
        if self.writer:
            state = self.state()
            if self._resume_note is not None:
                values = {"resumes": self.resumes(), **values}
                self._resume_note = None
            write_json(self.path / STATE, {**state, **values})

    def note_resume(self, position: dict | None) -> None:
        """Record a resume from `position`, with the next thing saved: a resume that fails before it saves
        anything leaves the folder byte for byte as it found it."""
        self._resume_note = {"time": time.time(), "from": position}

    def resumes(self) -> list[dict]:
        """Every resume of this bake, the one not saved yet included (baking.json's "resumes")."""
        return [*self.state().get("resumes", []), *([self._resume_note] if self._resume_note else [])]

    def _save_resume_note(self) -> None:
        if self._resume_note is not None:
            self.update_state()

    # ------------------------------------------------------------------ sampled data

    def trajectories(self, name: str):
        """The trajectories saved as data/NAME.jsonl, or None when not saved yet."""
        path = self.path / "data" / f"{name}.jsonl"
        if not path.is_file():
            return None
        rows = read_jsonl(path)
        try:
            return [Trajectory.from_dict(row) for row in rows]
        except TypeError:
            raise BakingError(f"{path} is damaged; pass --overwrite to start the bake over") from None

    def save_trajectories(self, name: str, trajectories) -> None:
        if self.writer:
            self._save_resume_note()
            write_jsonl(self.path / "data" / f"{name}.jsonl", (t.to_dict() for t in trajectories))

    # ------------------------------------------------------------------ training state

    def trainer(self) -> dict | None:
        """The last trainer checkpoint, or None. Read with weights_only: a checkpoint cannot run code."""
        path = self.path / TRAINER
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged zip/pickle
            raise BakingError(f"{path} is damaged ({type(e).__name__}); pass --overwrite to start the bake over, "
                              "or delete that file to resume from the last finished epoch's samples") from None

    def save_trainer(self, checkpoint: dict) -> None:
        """Write the trainer checkpoint atomically: a kill mid-write leaves the previous one."""
        if not self.writer:
            return
        self._save_resume_note()
        # Serialised in memory first: torch.save reports a full disk as a RuntimeError ("iostream error"),
        # a plain write as the OSError the caller turns into "free some disk space ... --resume".
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(self.path / TRAINER, fsync=True) as tmp:
            tmp.write_bytes(buffer.getbuffer())

    def save_epoch_adapter(self, model, epoch: int, weights: dict | None = None) -> None:
        """checkpoints/epoch-N; `weights` (from trainable_state, gathered by every process) when sharded."""
        if self.writer:
            self._save_resume_note()
            with staged_directory(self.path / CHECKPOINTS_DIR / f"epoch-{epoch}", replace=True) as staging:
                model.save_pretrained(staging, **({"state_dict": weights} if weights is not None else {}))


def describe_differences(recorded: dict, current: dict) -> str:
    """'learning_rate: 0.02 -> 0.01, questions file changed' for two identities ('' when equal)."""
    parts = []
    for key in sorted(set(recorded) | set(current), key=str):
        old, new = recorded.get(key), current.get(key)
        if old == new:
            continue
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            parts += [f"{quoted(k)}: {quoted(old.get(k), 30)} -> {quoted(new.get(k), 30)}"
                      for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]
        else:
            parts.append(f"{quoted(key).replace('_', ' ')} changed")
    return ", ".join(parts)


def rng_state() -> dict:
    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The LoRA weights (every trainable parameter), by name, whole and on the CPU.

    Under FSDP a parameter is a DTensor holding this process's shard; gathering
    it is a collective, so every process must call this at the same point.
    """
    return {name: _whole(p.detach()).to("cpu", copy=True) for name, p in model.named_parameters()
            if p.requires_grad}


def load_trainable_state(model, weights: dict[str, torch.Tensor]) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(weights):
        raise BakingError("the saved training state does not fit this model's adapter; pass --overwrite to start over")
    with torch.no_grad():
        for name, p in params.items():
            if _is_dtensor(p):  # FSDP: each process keeps its own shard of the whole tensor
                from torch.distributed.tensor import distribute_tensor

                p.copy_(distribute_tensor(weights[name].to(p.to_local().device), p.device_mesh, p.placements))
            else:
                p.copy_(weights[name])


def _is_dtensor(tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


class StopRequest:
    """Turns the first Ctrl-C during training into "finish this step, save, then stop".

    A second Ctrl-C stops at once (the last checkpoint still stands). Only the
    main thread can own signals; elsewhere this does nothing.
    """

    def __init__(self):
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, previous)
            print("\nlm-eval-baking: stopping after this step to save the training state "
                  "(Ctrl-C again stops at once)", flush=True)

        previous = signal.signal(signal.SIGINT, handler) or signal.default_int_handler
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def safetensors_error() -> type:
    from safetensors import SafetensorError

    return SafetensorError


def write_error(error: Exception, work: WorkDir) -> OutputWriteError:
    """A write that failed (disk full, read-only...) as one line; the work folder stays for --resume."""
    where = getattr(error, "filename", None) or work.output
    reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    kept = f"the work done so far is kept in {work.path}; " if work.exists() else ""
    return OutputWriteError(f"cannot write {where} ({reason}); {kept}free some disk space or pick a writable "
                            "--output, then rerun the same command with --resume")


def kept_note(work: WorkDir, message: str) -> str:
    """What a failed bake adds about its work folder, which it never deletes: sampled data and checkpoints
    cost hours, and only an explicit --overwrite discards them (`message` may already say how to start over)."""
    if not work.exists():
        return "nothing was written"
    kept = f"the work so far is kept in {work.path}"
    if "--overwrite" in message:
        return kept
    return f"{kept}: rerun with --resume once that is fixed, or pass --overwrite (without --resume) to start over"
