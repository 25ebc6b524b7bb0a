"""A checkpoint trained under a rule's earlier name (``adam``, now ``auto_adam``) passes the
app's rule check for a run of the same rule under its new name, and still fails for another rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipschitz_lightning.app.preflight import ConfigError, check_checkpoint
from lipschitz_lightning.callbacks import LipschitzLR


class RecordReached:
    """Stands in for the run's resume record: reaching it means the rule check passed."""

    def check(self, stored):
        raise ValueError("the rule check passed")


@pytest.fixture
def old_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "epoch": 1,
                "callbacks": {"LipschitzLR{'rule': 'adam', 'loss': 'softmax_ce', 'head': None}": {"rule": "adam"}}}, path)
    return path


@pytest.mark.parametrize("rule", ["auto_adam", "adam"])
def test_a_checkpoint_of_adam_resumes_as_auto_adam(old_checkpoint: Path, rule: str):
    with pytest.raises(ConfigError, match="the rule check passed"):
        check_checkpoint(str(old_checkpoint), object(), LipschitzLR(rule=rule), object(), RecordReached())


def test_a_checkpoint_of_adam_does_not_resume_another_rule(old_checkpoint: Path):
    with pytest.raises(ConfigError, match=r"was trained with LipschitzLR rule \['auto_adam'\], this run uses sgd"):
        check_checkpoint(str(old_checkpoint), object(), LipschitzLR(rule="sgd"), object(), RecordReached())


OLD_STATE_KEY = "LipschitzLR{'rule': 'adam', 'loss': 'softmax_ce', 'head': None}"  # as earlier versions filed it


@pytest.mark.parametrize("rule", ["auto_adam", "adam"])
def test_the_callback_files_its_state_where_earlier_checkpoints_hold_it(rule: str):
    callback = LipschitzLR(rule=rule)
    assert callback.rule == "auto_adam"  # the registry's name, whichever was passed
    assert callback.state_key == OLD_STATE_KEY  # so Lightning hands it an old checkpoint's state
