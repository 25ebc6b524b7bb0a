"""Stop signals and lost DDP peers: how ``python -m lipschitz_lightning.train`` stops.

A stop signal (SIGTERM from a scheduler, ``timeout`` or ``kill``; SIGINT from Ctrl-C) is a clean
stop: the running batch finishes, ``on_exception.ckpt`` is written, one line says how to resume,
and the exit status is 143 (130). Schedulers and terminals signal the whole process group, so:

- DataLoader workers ignore both signals (:func:`workers_ignore_stop_signals`): only the main
  process acts on them; the workers are shut down by it as at the end of any run (and exit by
  themselves when it is gone).
- In a multirun the job that got the signal writes its checkpoint and the sweep ends there
  (:data:`sweep`): the next jobs do not run and are listed.
- A DDP rank blocked in a collective for a peer that stopped answering cannot run Python's
  signal handlers (they run between bytecodes of the main thread): :class:`StopWatch` ends such a
  rank when a stop signal finds it blocked, instead of letting it sit until the collective's
  timeout (``trainer.strategy.timeout``) or the scheduler's SIGKILL.
- A collective that fails because a peer died or timed out is one ``error:`` line
  (:func:`peer_failure`), not a traceback from deep inside the backward pass.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_BLOCKABLE = hasattr(signal, "pthread_sigmask")


# --------------------------------------------------------------------------- DataLoader workers


class IgnoreStopSignals:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT, then runs ``then``
    (the loader's own ``worker_init_fn``, e.g. Lightning's seeding under
    ``seed_everything(workers=True)``). Picklable when ``then`` is (spawn-started workers)."""

    def __init__(self, then: Optional[Callable[[int], Any]] = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if _BLOCKABLE:  # blocked by workers_ignore_stop_signals while the worker was started
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if self.then is not None:
            self.then(worker_id)


@contextmanager
def workers_ignore_stop_signals(loader: Any) -> Iterator[None]:
    """Worker processes that ``loader`` starts inside this block ignore SIGTERM and SIGINT.

    The loader's ``worker_init_fn`` is wrapped by :class:`IgnoreStopSignals` only while the
    workers start (whatever Lightning or the user set is kept and runs after it), and the stop
    signals are blocked meanwhile in the starting thread: a worker inherits that mask, so a
    signal sent to the group while it starts stays pending in it (and is discarded when it
    ignores the signal) instead of killing it, and one meant for this process is delivered here
    once the workers run.
    """
    if not getattr(loader, "num_workers", 0):
        yield
        return
    inner = loader.worker_init_fn
    loader.worker_init_fn = IgnoreStopSignals(inner)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if _BLOCKABLE else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        loader.worker_init_fn = inner


# --------------------------------------------------------------------------- Ctrl-C


class CtrlCStopsAfterThisBatch:
    """Ctrl-C during fit finishes the running batch, writes the checkpoint and stops, exactly as
    SIGTERM does (Lightning's handler: it stops at a batch boundary, so the run resumes exactly);
    a second Ctrl-C interrupts at once."""

    received = False

    def __enter__(self) -> None:
        type(self).received = False
        self._previous = signal.getsignal(signal.SIGINT)
        if self._previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        type(self).received = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.warning("Ctrl-C: stopping after this batch and writing the checkpoint (Ctrl-C again to stop at once)")
        os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc: Any) -> None:
        if signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._previous)


def stop_status(ctrl_c: bool) -> int:
    """The exit status of a stop: 130 for Ctrl-C (SIGINT), 143 for SIGTERM (128 + signal number)."""
    return 128 + (signal.SIGINT if ctrl_c else signal.SIGTERM)


# --------------------------------------------------------------------------- multirun


class SweepState:
    """A multirun's stop: set by the job that got the stop signal, read by the jobs after it
    (Hydra's basic launcher runs them one after the other in this process)."""

    def __init__(self) -> None:
        self.stopped_by: Optional[str] = None  # "SIGTERM" or "Ctrl-C"
        self.status = 0

    def stop(self, how: str, status: int) -> None:
        if self.stopped_by is None:
            self.stopped_by, self.status = how, status
            # The sweep now only skips the jobs left and lists them: a further SIGTERM or Ctrl-C (a
            # second Ctrl-C, a group-wide signal repeated by a scheduler) has nothing left to stop, and
            # would otherwise interrupt Hydra's launcher between jobs with a traceback.
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_IGN)


sweep = SweepState()


# --------------------------------------------------------------------------- DDP ranks blocked on a peer

# How long a stop signal may find the main thread at one and the same instruction before the rank
# is taken to be blocked in a collective (a peer stopped answering). A healthy rank runs Python's
# handler within milliseconds; the default leaves room under SLURM's KillWait (30 s) for the line.
STUCK_AFTER_S = 10.0


def _distributed() -> bool:
    try:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    except Exception:  # noqa: BLE001 - any doubt: not distributed
        return False


def child_pids(parent: Optional[int] = None) -> List[int]:
    """The processes whose parent is ``parent`` (this process), from ``/proc`` (Linux; else none)."""
    parent = os.getpid() if parent is None else parent
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def kill_children() -> None:
    """SIGKILL this process's children: DDP ranks Lightning started, DataLoader workers. For a
    process that exits without its normal shutdown (a frozen peer would otherwise stay)."""
    for pid in child_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class StopWatch:
    """While active, a stop signal that finds the main thread blocked (at the same instruction for
    ``stuck_after`` seconds) in a distributed run ends this process: its line on stderr, its
    child processes killed, exit 143 (130).

    Python runs signal handlers in the main thread between bytecodes; a rank blocked in a
    collective waiting for a peer that stopped answering runs none until the collective's
    timeout (Lightning's own SIGTERM handler even starts with a broadcast to the other ranks).
    The signal's byte on ``signal.set_wakeup_fd`` wakes this watcher thread instead.

    Args:
        line: ``line(how)`` is the line to print (``how``: ``"SIGTERM"`` or ``"Ctrl-C"``).
        stuck_after: Seconds the main thread may stay where it is.
    """

    def __init__(self, line: Callable[[str], str], stuck_after: float = STUCK_AFTER_S) -> None:
        self.line = line
        self.stuck_after = stuck_after
        self._read = self._write = -1
        self._previous_fd = -1
        self._active = False

    def __enter__(self) -> "StopWatch":
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "set_wakeup_fd"):
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(self._read)
            os.close(self._write)
            return self
        self._active = True
        self._main = threading.main_thread().ident
        threading.Thread(target=self._watch, name="stop-signal-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._active:
            return
        self._active = False
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # the watcher's read returns b"" and it ends

    def _where(self) -> Any:
        frame = sys._current_frames().get(self._main)
        return None if frame is None else (id(frame), frame.f_code, frame.f_lasti)

    def _stuck(self) -> bool:
        where = self._where()
        deadline = time.monotonic() + self.stuck_after
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if not self._active or self._where() != where:
                return False
        return True

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:
                os.close(self._read)
                return
            signums = [b for b in data if b in STOP_SIGNALS]
            if not signums or not _distributed() or not self._stuck():
                continue
            how = "Ctrl-C" if signums[0] == signal.SIGINT else "SIGTERM"
            try:
                sys.stderr.write(self.line(how) + "\n")
                sys.stderr.flush()
            finally:
                kill_children()
                os._exit(stop_status(how == "Ctrl-C"))


# --------------------------------------------------------------------------- failed collectives

_TIMEOUT_WORDS = ("timed out", "timeout", "time out")
# Messages of gloo, NCCL and the rendezvous store when a peer is gone or does not answer.
_PEER_WORDS = ("connection reset", "connection closed", "broken pipe", "connection refused", "pair closure",
               "gloo", "nccl", "clients joined", "socket", "peer")


def peer_failure(exc: BaseException) -> Optional[str]:
    """``"timeout"`` or ``"lost"`` when ``exc`` (or an exception it was raised from or while
    handling) is a collective or rendezvous that failed on a peer; None for anything else."""
    try:
        from torch.distributed import DistError
    except ImportError:  # pragma: no cover - torch without distributed
        DistError = ()  # type: ignore[assignment,misc]
    try:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
    except ImportError:  # pragma: no cover
        initialized = False
    seen, kind = set(), None
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:  # to the first failure: what went wrong first
        seen.add(id(current))
        message = str(current).lower()
        # A plain RuntimeError only in a distributed run: gloo's and NCCL's errors are of that type.
        if isinstance(current, DistError) or (initialized and isinstance(current, RuntimeError) and (
                any(w in message for w in _PEER_WORDS) or _raised_in_torch_distributed(current))):
            kind = "timeout" if any(w in message for w in _TIMEOUT_WORDS) else "lost"
        current = current.__cause__ or current.__context__
    return kind


def _raised_in_torch_distributed(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename


def rank() -> int:
    """This process's global rank (0 outside DDP)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    try:
        from pytorch_lightning.utilities import rank_zero_only

        return int(getattr(rank_zero_only, "rank", 0) or 0)
    except ImportError:  # pragma: no cover
        return 0


def peer_failure_line(kind: str, timeout: Optional[float], resume: str) -> str:
    """The one line of a DDP run that lost a peer."""
    who = f"DDP rank {rank()}"
    if kind == "timeout":
        waited = f" {timeout:g} s" if timeout else ""
        what = (f"{who} waited{waited} for a peer that stopped answering (a hung or stopped process, or a lost "
                f"node; the limit is trainer.strategy.timeout)")
    else:
        what = f"{who} lost its connection to a peer (that process ended: killed, out of memory, or its node failed; see its log)"
    return f"error: {what}; resume with: {resume}"
