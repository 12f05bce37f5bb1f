"""The private Lightning and DeepSpeed names fsdtrain needs still exist in the installed versions.

Every name listed in fsdtrain/train/lightning_internals.py, fsdtrain/train/deepspeed_internals.py and
fsdtrain/weights/deepspeed_keys.py is checked as the kind of thing fsdtrain uses: a method with the
parameters fsdtrain's override or call relies on, an attribute the framework's ``__init__`` sets, a
class importable under the name pickle records, a DeepSpeed checkpoint key still written by the
DeepSpeed function that writes it (its source; DeepSpeed's constants where it has them). A failure
names the internal and the fsdtrain code that needs it. Also: no fsdtrain subclass of a framework
class defines an underscore name its framework bases have too, unless the list has it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

from fsdtrain.train import deepspeed_internals, lightning_internals
from fsdtrain.train.lightning_internals import Internal
from fsdtrain.weights.deepspeed_keys import KEYS, DeepSpeedKey

INTERNALS = lightning_internals.INTERNALS + deepspeed_internals.INTERNALS


def _resolve(dotted: str):
    """The object at ``dotted``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _instance(owner: str, tmp_path):
    """An instance of a framework class whose ``__init__`` sets the attributes listed for it."""
    if owner == "lightning.pytorch.callbacks.ModelCheckpoint":
        from lightning.pytorch.callbacks import ModelCheckpoint

        return ModelCheckpoint(dirpath=str(tmp_path))
    if owner == "lightning.pytorch.Trainer":
        from lightning.pytorch import Trainer

        return Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(tmp_path),
        )  # fmt: skip
    if owner == "torch.utils.data.DataLoader":
        from torch.utils.data import DataLoader

        return DataLoader([])
    raise AssertionError(f"tests/test_framework_internals.py: add a way to make a {owner} to check its attributes")


def _problem(e: Internal, tmp_path) -> str | None:
    """Why ``e`` no longer holds in the installed framework (None: it does)."""
    gone = f"{e.name} is gone: {e.where} {e.need}"
    try:
        if e.kind == "attribute":
            obj = _instance(e.owner, tmp_path)
            for part in e.attr.split("."):
                obj = getattr(obj, part)
            return None
        obj = _resolve(e.name)
    except (ImportError, AttributeError):
        return gone
    if e.kind == "method" and not callable(obj):
        return f"{e.name} is no longer a method: {e.where} {e.need}"
    if e.kind == "class" and not inspect.isclass(obj):
        return f"{e.name} is no longer a class: {e.where} {e.need}"
    if e.params is not None:
        params = tuple(inspect.signature(obj).parameters)
        if params != e.params:
            return f"{e.name} now takes {params}, fsdtrain relies on {e.params}: {e.where} {e.need}"
    missing = [text for text in e.contains if text not in inspect.getsource(obj)]
    if missing:
        return f"{e.name} changed (no longer has {missing[0]!r}): {e.where} {e.need}"
    return None


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda e: e.name)
def test_framework_internal_still_exists(internal: Internal, tmp_path):
    problem = _problem(internal, tmp_path)
    assert problem is None, problem


def _key_problem(key: DeepSpeedKey) -> str | None:
    """Why DeepSpeed no longer writes ``key`` as fsdtrain reads it (None: it does)."""
    need = f"fsdtrain/weights/checkpoint_files.py {key.need}"
    if key.constant is not None:
        from deepspeed.checkpoint import constants

        value = getattr(constants, key.constant, None)
        if value != key.value:
            return f"{key.name}: DeepSpeed's deepspeed.checkpoint.constants.{key.constant} is {value!r}, not {key.value!r}: {need}"
    if key.kind == "pickle":
        try:
            cls = _resolve(key.value)
        except (ImportError, AttributeError):
            return f"{key.name} is gone: {need}"
        pickled = f"{cls.__module__}.{cls.__qualname__}"
        if pickled != key.value:
            return f"{key.name} is now pickled as {pickled!r}: {need}"
    for writer in key.writers:
        try:
            source = inspect.getsource(_resolve(writer))
        except (ImportError, AttributeError):
            return f"{writer}, which writes {key.name}, is gone: {need}"
        if key.contains:
            missing = [text for text in key.contains if text not in source]
            if missing:
                return f"{key.name}: {writer} changed (no longer has {missing[0]!r}): {need}"
        elif not any(text in source for text in (key.constant, key.value) if text):
            return f"{key.name} is gone from {writer}: {need}"
    return None


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.name)
def test_deepspeed_checkpoint_key_still_written(key: DeepSpeedKey):
    problem = _key_problem(key)
    assert problem is None, problem


def test_the_checks_name_a_missing_internal_and_its_user(tmp_path):
    wrong = Internal(
        "lightning.pytorch.callbacks.ModelCheckpoint", "_save_checkpoint_gone", "method",
        "fsdtrain/train/checkpoints.py FleetCheckpoint", "overrides it", "none", params=("self",),
    )  # fmt: skip
    assert _problem(wrong, tmp_path) == (
        "lightning.pytorch.callbacks.ModelCheckpoint._save_checkpoint_gone is gone: fsdtrain/train/checkpoints.py FleetCheckpoint overrides it"
    )
    moved = Internal("lightning.pytorch.callbacks.ModelCheckpoint", "_last_step_gone", "attribute", "x.py X", "reads it", "none")
    assert "is gone: x.py X reads it" in _problem(moved, tmp_path)
    params = Internal(
        "lightning.pytorch.callbacks.ModelCheckpoint", "_save_checkpoint", "method", "x.py X", "overrides it", "none", params=("self", "trainer")
    )
    assert "now takes ('self', 'trainer', 'filepath')" in _problem(params, tmp_path)
    key = DeepSpeedKey("zero_stage_gone", "optimizer states", "key", ("deepspeed.runtime.engine.DeepSpeedEngine._save_zero_checkpoint",), None, "reads it")
    assert _key_problem(key) == (
        "DeepSpeed optimizer states key 'zero_stage_gone' is gone from deepspeed.runtime.engine.DeepSpeedEngine._save_zero_checkpoint: "
        "fsdtrain/weights/checkpoint_files.py reads it"
    )


# --- fsdtrain's own underscore names must not shadow the framework's unknowingly -------------------

_FRAMEWORKS = ("lightning.", "deepspeed.", "torch.")
_SELF_ATTR = re.compile(r"self\.(_[A-Za-z]\w*)")


def _underscore_names(cls: type) -> set[str]:
    """Single-underscore names a class defines or sets on ``self`` (its own code only)."""
    names = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__") and n != "_abc_impl"}  # ABCMeta's, on every ABC
    try:
        names |= set(_SELF_ATTR.findall(inspect.getsource(cls)))
    except (OSError, TypeError):
        pass
    return names


def _fsdtrain_framework_subclasses() -> list[type]:
    found = []
    for package in ("fsdtrain.train", "fsdtrain.data"):
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if inspect.isclass(obj) and obj.__module__ == module.__name__ and any(b.__module__.startswith(_FRAMEWORKS) for b in obj.__mro__):
                    found.append(obj)
    return found


def test_fsdtrain_subclasses_shadow_no_unlisted_framework_names():
    listed = {e.attr.split(".")[0] for e in INTERNALS if e.kind in ("method", "attribute")}
    classes = _fsdtrain_framework_subclasses()
    assert any(c.__name__ == "FleetCheckpoint" for c in classes) and any(c.__name__ == "FleetDeepSpeedStrategy" for c in classes)
    clashes = []
    for cls in classes:
        own = set().union(*(_underscore_names(c) for c in cls.__mro__ if c.__module__.startswith("fsdtrain.")))
        for base in cls.__mro__:
            if base.__module__.startswith(_FRAMEWORKS):
                for name in sorted((own & _underscore_names(base)) - listed):
                    clashes.append(f"{cls.__module__}.{cls.__qualname__}.{name} is also {base.__module__}.{base.__qualname__}.{name}")
    assert not clashes, (
        "fsdtrain code defines or uses underscore names of its framework base classes; rename them, or list them "
        "(with why) in fsdtrain/train/lightning_internals.py or deepspeed_internals.py:\n" + "\n".join(sorted(set(clashes)))
    )
