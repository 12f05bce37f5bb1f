"""tests/eval check the evaluation itself; the W&B run ``fsdtrain eval`` logs is tested in tests/train/test_wandb.py."""

import pytest


@pytest.fixture(autouse=True)
def _no_wandb_run(monkeypatch):
    """``fsdtrain eval`` logs an offline W&B run by default (beside ``--out``, else in the current folder,
    the repository when tests run): here the evaluation is the subject, so W&B is off."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
