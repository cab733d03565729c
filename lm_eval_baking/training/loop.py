"""The state bake()'s training loop carries from step to step (the loop itself is in bake.py).

PromptBaker.train_epoch calls `after_step` after every optimiser step: a mid-epoch held-out KL every
--eval-every steps, a trainer checkpoint when one is due, and the stop a first Ctrl-C asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..core.kl import KLEstimate
from .baker import PromptBaker
from .config import BakeConfig, ResumeSettings
from .record import BestCheckpoint, Stopwatch
from .workdir import StopRequest, WorkDir, rng_state, trainable_state


@dataclass
class TrainingLoop:
    """What the training loop carries between steps: the measurements so far and when the trainer was saved."""

    work: WorkDir
    model: object
    baker: PromptBaker
    heldout: list
    watch: Stopwatch
    workers: object
    config: BakeConfig
    settings: ResumeSettings
    progress: bool
    tracker: BestCheckpoint
    epochs: list[dict] = field(default_factory=list)
    stop: StopRequest = field(default_factory=StopRequest)
    last_save: float = 0.0

    def measure(self, epoch: int, step: int) -> KLEstimate:
        with self.watch.phase("evaluation"):
            kl = self.baker.heldout_kl(self.heldout)
        self.tracker.observe(epoch, step, kl, self.model)
        return kl

    def save_trainer(self, epoch: int, step: int, losses: list[float]) -> None:
        if self.workers.sharded:
            return  # nothing could resume it (see bake.bake); its gathers would also have to run on every process
        self.work.save_trainer({
            "epoch": epoch, "step": step, "losses": list(losses), "epochs": self.epochs,
            "lora": trainable_state(self.model), "optimizer": self.baker.optimizer.state_dict(), "rng": rng_state(),
            "seconds": dict(self.watch.seconds), "tracker": self.tracker.state(),
        })

    def after_step(self, epoch: int, steps_per_epoch: int, step: int, losses: list[float]) -> None:
        """PromptBaker.train_epoch's after_step: a mid-epoch measurement, a trainer save when due, a Ctrl-C."""
        done = (epoch - 1) * steps_per_epoch + step
        measured = bool(self.config.eval_every) and done % self.config.eval_every == 0 and step < steps_per_epoch
        if measured:
            kl = self.measure(epoch, step)
            if self.progress:
                tqdm.write(f"epoch {epoch} step {step}: held-out KL/token {kl.per_token:.4f}")
        if measured or self.stop.requested or time.monotonic() - self.last_save >= self.settings.checkpoint_seconds:
            self.save_trainer(epoch, step, losses)
            self.last_save = time.monotonic()
        self.stop_if_asked()

    def stop_if_asked(self) -> None:
        if self.stop.requested:
            raise KeyboardInterrupt(f"training state saved in {self.work.path}")
