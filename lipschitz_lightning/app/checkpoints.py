"""The checkpoint files of a run: loaded without running code, written atomically, picked by
the training progress recorded inside them. The names below are this module's (the configs'
``_target_`` and run folders written before name them here); each part lives in its own module:

* reading (:mod:`~lipschitz_lightning.app.checkpoint_files`): :func:`load` is the one
  ``torch.load`` of a checkpoint a user hands in (``weights_only=True``: tensors and plain values
  only, so a crafted file cannot run code when it is read); :func:`pick_resume` chooses the
  checkpoint ``resume=<run folder>`` continues from: the one with the most training progress
  (global step, batches done), not the newest file; when ``last.ckpt`` or ``on_exception.ckpt``
  is unreadable (truncated, 0 bytes), the newest intact checkpoint of the folder (an
  ``epoch_NNN.ckpt``), saying which.
* writing (:mod:`~lipschitz_lightning.app.checkpoint_io`): :class:`AtomicCheckpointIO` is the
  trainer's ``CheckpointIO`` plugin (``conf/trainer/default.yaml``): a checkpoint is written to
  ``<name>.tmp-<pid>`` in its own folder, flushed and fsynced, then renamed over the old file
  (``os.replace``), so a kill or a full disk leaves the previous checkpoint intact; a failed save
  is one line (:class:`CheckpointSaveError`) naming the checkpoint that is intact. Once the run
  has saved past an ``on_exception.ckpt``, that file is retired (deleted): a later ``resume=``
  cannot rewind to it.
* :class:`RunCheckpoint` (:mod:`~lipschitz_lightning.app.run_checkpoint`) is Lightning's
  ``ModelCheckpoint`` made safe against kills between the files of one epoch's save and against
  a moved run folder (see the class).
* :class:`ResumeRecord` (:mod:`~lipschitz_lightning.app.resume_record`) stores the settings that
  decide the rest of a run (the optim option: optimizer and LipschitzLR rule with all their
  values) and refuses a checkpoint written with others.
"""

from __future__ import annotations

# Also named here, as before the split, outside __all__: UnsafeCheckpointError, info_of, progress_of (preflight
# reads them as checkpoints.<name>), newest_intact and the file names.
from lipschitz_lightning.app.checkpoint_files import (
    LAST,
    ON_EXCEPTION,
    TEMP_MARK,
    CheckpointInfo,
    UnsafeCheckpointError,
    info_of,
    inspect,
    load,
    newest_intact,
    pick_resume,
    progress_of,
    remove_stale_temps,
)
from lipschitz_lightning.app.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError
from lipschitz_lightning.app.resume_record import ResumeRecord
from lipschitz_lightning.app.run_checkpoint import RunCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointInfo",
    "CheckpointSaveError",
    "ResumeRecord",
    "RunCheckpoint",
    "inspect",
    "load",
    "pick_resume",
    "remove_stale_temps",
]
