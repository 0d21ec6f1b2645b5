"""A callback for the resume tests: SIGKILL this process before training step ``KILL_AT_STEP``
(an environment variable; unset: do nothing), i.e. right after the checkpoint of the step before."""

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def __init__(self) -> None:
        self.step = int(os.environ.get("KILL_AT_STEP", "-1"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
