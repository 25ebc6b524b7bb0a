"""The run's ``ModelCheckpoint`` (``conf/callbacks/default.yaml``), made safe against kills
between the files of one epoch's save and against a moved run folder (see :class:`RunCheckpoint`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lipschitz_lightning.app.checkpoint_files import LAST, ON_EXCEPTION, log
from lipschitz_lightning.app.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError


def _name_pattern(template: Optional[str]) -> Optional[re.Pattern]:
    """A regex for the file names a ModelCheckpoint ``filename`` template produces (with version suffix)."""
    if not template:
        return None
    parts = re.split(r"\{[^}]*\}", template)
    body = ".+?".join(re.escape(part) for part in parts)
    return re.compile(rf"^{body}(-v\d+)?\.ckpt$")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a run folder that may be killed at any moment and moved.

    * A folder found at another path (moved, or mounted elsewhere) keeps its best-epoch tracking:
      the checkpoint's paths are taken relative to its old folder and looked up in this one.
    * On resume, best checkpoints that no longer exist are forgotten, and files of this callback's
      name pattern that it does not track are deleted: a kill between the save of a new best
      checkpoint and the removal of the old one (or before ``last.ckpt``) leaves neither an orphan
      beyond ``save_top_k`` nor a reference to a deleted file; the killed epoch is trained again.
    * ``commit_after_epoch_logs=True`` (``last.ckpt``): the checkpoint written at an epoch's end
      is renamed into place only after Lightning has logged that epoch's values (at the next
      epoch's start, at the end of training, or on an interruption), so a ``last.ckpt`` never
      claims an epoch whose TensorBoard points a kill lost. Needs :class:`AtomicCheckpointIO`.

    Args:
        commit_after_epoch_logs: See above.
        **kwargs: ``ModelCheckpoint``'s.
    """

    def __init__(self, *args: Any, commit_after_epoch_logs: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commit_after_epoch_logs = commit_after_epoch_logs

    # ------------------------------------------------------------------ moved folders, orphans

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) != os.path.realpath(self.dirpath):
            def moved(path: Any) -> Any:
                if not isinstance(path, str) or not path:
                    return path
                try:
                    relative = os.path.relpath(path, saved)
                except ValueError:
                    return path
                return path if relative.startswith("..") else os.path.join(self.dirpath, relative)

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
            state["dirpath"] = self.dirpath
        super().load_state_dict(state)
        self._forget_missing()

    def _forget_missing(self) -> None:
        if not self.best_k_models:
            if self.best_model_path and self.monitor is not None and not os.path.isfile(self.best_model_path):
                self.best_model_path = ""
            return
        kept = {path: score for path, score in self.best_k_models.items() if os.path.isfile(path)}
        if len(kept) == len(self.best_k_models):
            return
        self.best_k_models = kept
        if not kept:
            self.best_model_path, self.best_model_score = "", None
            self.kth_best_model_path, self.kth_value = "", torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
            return
        pick_best = min if self.mode == "min" else max
        self.best_model_path = pick_best(kept, key=kept.get)
        self.best_model_score = kept[self.best_model_path]
        pick_kth = max if self.mode == "min" else min
        self.kth_best_model_path = pick_kth(kept, key=kept.get)
        self.kth_value = kept[self.kth_best_model_path]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if not trainer.ckpt_path or not trainer.is_global_zero or self.monitor is None or self.save_top_k == 0:
            return
        pattern = _name_pattern(self.filename)
        if pattern is None or not self.dirpath or not os.path.isdir(self.dirpath):
            return
        tracked = {os.path.realpath(p) for p in self.best_k_models}
        resumed = os.path.realpath(trainer.ckpt_path)
        for name in sorted(os.listdir(self.dirpath)):
            path = os.path.join(self.dirpath, name)
            real = os.path.realpath(path)
            if pattern.match(name) and real not in tracked and real != resumed and name not in (LAST, ON_EXCEPTION):
                try:
                    os.remove(path)
                    log.info(f"removed {name}: a best checkpoint the interrupted run did not record")
                except OSError:
                    pass

    # ------------------------------------------------------------------ last.ckpt after the epoch's logs

    def _checkpoint_io(self, trainer: pl.Trainer) -> Optional[AtomicCheckpointIO]:
        io = getattr(trainer.strategy, "checkpoint_io", None)
        return io if isinstance(io, AtomicCheckpointIO) else None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        io = self._checkpoint_io(trainer)
        if not self.commit_after_epoch_logs or io is None:
            super()._save_checkpoint(trainer, filepath)
            return
        trainer.save_checkpoint(filepath, self.save_weights_only, storage_options={"commit": False})
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        self._pending_commit = True

    def _commit(self, trainer: pl.Trainer) -> None:
        if not getattr(self, "_pending_commit", False):
            return
        self._pending_commit = False
        io = self._checkpoint_io(trainer)
        if io is not None and trainer.is_global_zero:
            io.commit(self._last_checkpoint_saved)
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._commit(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._commit(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # The epoch's checkpoint is whole (written before the exception): keep it, unless the
        # failure was the save itself.
        if isinstance(exception, CheckpointSaveError):
            io = self._checkpoint_io(trainer)
            if io is not None:
                io.discard()
            self._pending_commit = False
            return
        self._commit(trainer)
