"""The settings that decide the rest of a run, kept in every checkpoint (:class:`ResumeRecord`):
a checkpoint written with other settings is refused."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import pytorch_lightning as pl


def _flatten(value: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


class ResumeRecord(pl.Callback):
    """Keeps, in every checkpoint, the settings that decide the rest of a run (``settings``: the
    resolved ``optim`` option, i.e. the optimizer and its values and the LipschitzLR rule and its
    values), and says whether a checkpoint's record matches this run's (:meth:`check`).

    Args:
        settings: Plain nested dicts and values, keyed as in the config (``{"optim": {...}}``).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def state_dict(self) -> Dict[str, Any]:
        return {"settings": self.settings}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        pass  # the settings are this run's; check() compared them before fit

    def check(self, state: Optional[Mapping[str, Any]]) -> None:
        """Raise ValueError naming the first differing settings (``None``: a checkpoint without a record)."""
        if not state or "settings" not in state:
            return
        theirs, ours = _flatten(state["settings"], ""), _flatten(self.settings, "")
        differ = [key for key in sorted(set(theirs) | set(ours)) if theirs.get(key, "<unset>") != ours.get(key, "<unset>")]
        if differ:
            shown = "; ".join(f"{key}={theirs.get(key, '<unset>')!r} there, {ours.get(key, '<unset>')!r} here"
                              for key in differ[:3])
            raise ValueError(f"it was trained with other settings ({shown})")

    @staticmethod
    def find(checkpoint: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        """The record's state in a checkpoint dict, or None."""
        for key, state in (checkpoint.get("callbacks") or {}).items():
            if str(key).startswith(ResumeRecord.__qualname__):
                return state
        return None
