"""Every private (or undocumented) name of DeepSpeed that fsdtrain needs, why, and the public API checked instead.

Two lists: :data:`INTERNALS`, what the training code uses (below), and :data:`CHECKPOINT_KEYS`, the
file names, keys, pickled classes and padding rules of ZeRO checkpoints that ``fsdtrain export`` reads
without DeepSpeed (they live in :mod:`fsdtrain.weights.deepspeed_keys`, as ``fsdtrain.weights`` may
not import ``fsdtrain.train``). The code uses the names through the constants and helpers here and
there. tests/test_framework_internals.py checks each against the installed DeepSpeed and fails naming
the fsdtrain code that needs it; ``deepspeed`` is bounded to the tested minor version in pyproject.toml.

Replaced by public APIs (no longer needed):

- the ``ds_id`` attribute DeepSpeed gives ZeRO-3 parameters, which ``ExportWeights``
  (fsdtrain/train/callbacks.py) tested to decide whether to gather them: it asks Lightning's public
  ``DeepSpeedStrategy.zero_stage_3`` now.

Lightning's DeepSpeedStrategy internals are in :mod:`fsdtrain.train.lightning_internals`.
Importing this module does not import DeepSpeed.
"""

from __future__ import annotations

import argparse
from typing import Any

from fsdtrain.train.lightning_internals import Internal
from fsdtrain.weights.deepspeed_keys import KEYS as CHECKPOINT_KEYS

__all__ = ["INTERNALS", "CHECKPOINT_KEYS", "DATA_TYPES", "BUFFER_DTYPE", "cpu_initialize_args", "cpu_accelerator"]

DATA_TYPES = "data_types"
"""DeepSpeed config section of dtypes; ``BUFFER_DTYPE`` in it (DeepSpeed >= 0.19) casts the module's buffers."""
BUFFER_DTYPE = "buffer_dtype"

_STRATEGY = "fsdtrain/train/strategies.py FleetDeepSpeedStrategy"
_SAFE_RESUME = "fsdtrain/train/safe_resume.py install_safe_loading"
_ENGINE = "deepspeed.runtime.engine.DeepSpeedEngine"

INTERNALS: tuple[Internal, ...] = (
    Internal(
        "deepspeed.runtime.engine.DeepSpeedEngine", "_set_distributed_vars", "source", f"{_STRATEGY}._setup_model_and_optimizer",
        "passes deepspeed.initialize args with device_rank=-1 on the CPU, which this method reads to select no "
        "CUDA device (Lightning passes the CUDA device index there)",
        "none: deepspeed.initialize has no device argument, and which fields of `args` it reads is undocumented",
        contains=("args.device_rank", "if device_rank >= 0:"),
    ),
    Internal(
        "deepspeed.accelerator.cpu_accelerator", "CPU_Accelerator", "class", f"{_STRATEGY}._select_deepspeed_accelerator",
        "hands an instance to the public deepspeed.accelerator.set_accelerator when --trainer.accelerator is the CPU",
        "DS_ACCELERATOR=cpu is the documented switch, but DeepSpeed reads it once, when it first picks an "
        "accelerator, before the Trainer's accelerator is known",
    ),
    Internal(
        "deepspeed.runtime.config.DeepSpeedConfig", "_initialize_params", "source", f"{_STRATEGY}._format_config",
        f"sets {DATA_TYPES}.{BUFFER_DTYPE} under bf16/fp16 so that DeepSpeed casts buffers with the weights "
        "(BatchNorm and the encoder's normalisation cannot mix fp32 buffers with bf16 weights)",
        "none: the config key is the only switch; DeepSpeed < 0.19 cast buffers itself and had no key",
        contains=(f"data_types_params.get({BUFFER_DTYPE.upper()}",),
    ),
    Internal(
        "deepspeed.runtime", "constants", "source", f"{_STRATEGY}._format_config",
        f"writes the config keys {DATA_TYPES!r} and {BUFFER_DTYPE!r} by these names",
        "none (the names are DeepSpeed's config schema)",
        contains=(f'{DATA_TYPES.upper()} = "{DATA_TYPES}"', f'{BUFFER_DTYPE.upper()} = "{BUFFER_DTYPE}"'),
    ),
    Internal(
        _ENGINE, "_configure_checkpointing", "source", _SAFE_RESUME,
        "replaces the checkpoint_engine this method sets by a subclass of TorchCheckpointEngine that loads with "
        "weights_only=True (DeepSpeed's own engines all unpickle)",
        "none: the DeepSpeed config chooses only among DeepSpeed's engines; DeepSpeed documents the engine as replaceable",
        contains=("self.checkpoint_engine = create_checkpoint_engine(",),
    ),
    Internal(
        _ENGINE, "_load_checkpoint", "source", _SAFE_RESUME,
        "relies on DeepSpeed reading the model states through self.checkpoint_engine (so the replaced engine's load applies)",
        "none",
        contains=("checkpoint_engine=self.checkpoint_engine",),
    ),
    Internal(
        _ENGINE, "_get_all_zero_checkpoint_state_dicts", "source", _SAFE_RESUME,
        "relies on DeepSpeed reading the optimizer shards through self.checkpoint_engine.load",
        "none",
        contains=("self.checkpoint_engine.load(",),
    ),
    Internal(
        "deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine.TorchCheckpointEngine", "load", "method", _SAFE_RESUME,
        "overrides it in a subclass to load with weights_only=True and DeepSpeed's classes allowed by name",
        "none: it calls torch.load(weights_only=False)",
        params=("self", "path", "map_location"),
    ),
    Internal(
        _ENGINE, "_take_model_step", "source", "fsdtrain/train/finite.py FiniteTraining",
        "reads engine.skipped_steps, which this method counts up when the ZeRO optimizer skipped a step for "
        "non-finite gradients, to stop the run after such a step",
        "was_step_applied() is public but also False between accumulation boundaries; the gradients themselves are "
        "partitioned inside the ZeRO optimizer",
        contains=("self.skipped_steps += 1",),
    ),
)  # fmt: skip


def cpu_initialize_args() -> argparse.Namespace:
    """``args`` for ``deepspeed.initialize`` on the CPU: ``device_rank=-1`` selects no device index."""
    return argparse.Namespace(device_rank=-1)


def cpu_accelerator() -> Any:
    """DeepSpeed's CPU accelerator (gloo, tensors on the CPU), for ``deepspeed.accelerator.set_accelerator``."""
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    return CPU_Accelerator()
