"""What fsdtrain reads of DeepSpeed's ZeRO checkpoint files, by name, each with the DeepSpeed code that writes it.

:mod:`fsdtrain.weights.checkpoint_files` consolidates ZeRO-1/2/3 shards into fp32 weights for
``fsdtrain export`` without importing DeepSpeed and without unpickling code (docs/checkpoints.md).
It therefore depends on names DeepSpeed writes for its own loader, none of them a documented format:
the ``latest`` file, the shard file names, the keys of the model and optimizer shards, the classes
pickled into them, and how the flat fp32 partitions are padded. They are all here, and only here.

Public alternatives checked:

- ``deepspeed.checkpoint.constants`` names most keys, but importing it imports DeepSpeed (seconds,
  an accelerator probe) in a command that must not need it; tests/test_framework_internals.py checks
  that the values below still equal those constants.
- ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`` (also Lightning's
  ``convert_zero_checkpoint_to_fp32_state_dict``) consolidates the same shards, but imports DeepSpeed
  and loads with ``weights_only=False``, which runs whatever code a checkpoint pickled.

The test checks every entry of :data:`KEYS` against the installed DeepSpeed (its constants and the
source of the functions that write them); ``deepspeed`` is bounded to the tested minor version in
pyproject.toml. This module sits in ``fsdtrain.weights``, below ``fsdtrain.train``:
:mod:`fsdtrain.train.deepspeed_internals` lists it with DeepSpeed's other internals.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DeepSpeedKey",
    "KEYS",
    "LATEST_FILE",
    "MODEL_STATES_SUFFIX",
    "OPTIM_STATES_SUFFIX",
    "MODULE",
    "BUFFER_NAMES",
    "PARAM_SHAPES",
    "FROZEN_PARAM_SHAPES",
    "FROZEN_PARAM_FRAGMENTS",
    "SHARED_PARAMS",
    "OPTIMIZER_STATE_DICT",
    "ZERO_STAGE",
    "PARTITION_COUNT",
    "SINGLE_PARTITION_OF_FP32_GROUPS",
    "PARAM_ALIGNMENT_PADDINGS",
    "FP32_FLAT_GROUPS",
    "LOSS_SCALER_CLASS",
    "DYNAMIC_LOSS_SCALER_CLASS",
    "FRAGMENT_ADDRESS_CLASS",
    "ZERO_STAGE_ENUM_CLASS",
    "ZERO12_ALIGNMENT_FACTOR",
    "LEGACY_LIGHTNING_PREFIX",
]

# --- the checkpoint folder -------------------------------------------------------------------------
LATEST_FILE = "latest"  # <ckpt>/latest holds the tag (sub-folder) of the newest save
MODEL_STATES_SUFFIX = "_model_states.pt"  # <tag>/[zero_pp_rank_R_]mp_rank_00_model_states.pt
OPTIM_STATES_SUFFIX = "_optim_states.pt"  # <tag>/[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt

# --- a model states file ---------------------------------------------------------------------------
MODULE = "module"
BUFFER_NAMES = "buffer_names"
PARAM_SHAPES = "param_shapes"
FROZEN_PARAM_SHAPES = "frozen_param_shapes"
FROZEN_PARAM_FRAGMENTS = "frozen_param_fragments"
SHARED_PARAMS = "shared_params"

# --- an optimizer states file ----------------------------------------------------------------------
OPTIMIZER_STATE_DICT = "optimizer_state_dict"
ZERO_STAGE = "zero_stage"
PARTITION_COUNT = "partition_count"
SINGLE_PARTITION_OF_FP32_GROUPS = "single_partition_of_fp32_groups"  # ZeRO-1/2
PARAM_ALIGNMENT_PADDINGS = "param_alignment_paddings"  # ZeRO-1/2
FP32_FLAT_GROUPS = "fp32_flat_groups"  # ZeRO-3

# --- classes pickled into optimizer shards (pickle names them by __module__.__qualname__) -------------
LOSS_SCALER_CLASS = "deepspeed.runtime.fp16.loss_scaler.LossScaler"
DYNAMIC_LOSS_SCALER_CLASS = "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"  # fp16 with dynamic loss scaling
FRAGMENT_ADDRESS_CLASS = "deepspeed.utils.tensor_fragment.fragment_address"
ZERO_STAGE_ENUM_CLASS = "deepspeed.runtime.zero.config.ZeroStageEnum"

# --- layout of the flat fp32 partitions ------------------------------------------------------------
ZERO12_ALIGNMENT_FACTOR = 2  # ZeRO-1/2 pads each group's flat vector to a multiple of this x world size

# --- Lightning's, found in DeepSpeed checkpoints ---------------------------------------------------
LEGACY_LIGHTNING_PREFIX = "_forward_module."  # module keys of checkpoints written by Lightning < 2.1


@dataclass(frozen=True)
class DeepSpeedKey:
    """One name fsdtrain reads from DeepSpeed's checkpoint files.

    Attributes:
        value: the key, file name part or pickled class name, as it appears in the files.
        file: which file holds it (``folder``, ``model states``, ``optimizer states``).
        kind: ``key`` (a key or name written by ``writers``), ``pickle`` (a class pickled into a shard:
            ``value`` is its ``__module__.__qualname__``) or ``layout`` (a padding rule: ``contains``).
        writers: dotted paths of the DeepSpeed functions that write it.
        constant: its name in ``deepspeed.checkpoint.constants``, where DeepSpeed has one.
        need: what ``fsdtrain/weights/checkpoint_files.py`` reads it for.
        contains: text the writers' source must still hold (default: ``constant`` or ``value``).
    """

    value: str
    file: str
    kind: str
    writers: tuple[str, ...]
    constant: str | None
    need: str
    contains: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"DeepSpeed {self.file} {self.kind} {self.value!r}"


_ENGINE = "deepspeed.runtime.engine.DeepSpeedEngine"
_ZERO12 = "deepspeed.runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer"
_ZERO3 = "deepspeed.runtime.zero.stage3.DeepSpeedZeroOptimizer_Stage3"
_MODEL_STATE_WRITER = (f"{_ENGINE}._common_checkpoint_state",)

KEYS: tuple[DeepSpeedKey, ...] = (
    DeepSpeedKey(LATEST_FILE, "folder", "key", (f"{_ENGINE}.save_checkpoint",), None,
                 "_zero_state and check_checkpoint read the tag of the newest save from it"),
    DeepSpeedKey(MODEL_STATES_SUFFIX, "folder", "key", (f"{_ENGINE}._get_ckpt_name",), "MODEL_FILE_SUFFIX",
                 "_zero_state and check_checkpoint find the model shards by it"),
    DeepSpeedKey(OPTIM_STATES_SUFFIX, "folder", "key", (f"{_ENGINE}._get_rank_zero_ckpt_name",), "OPTIM_FILE_SUFFIX",
                 "_zero_state and check_checkpoint find the optimizer shards (one per rank) by it"),
    DeepSpeedKey(MODULE, "model states", "key", _MODEL_STATE_WRITER, None,
                 "_zero_state reads the buffers from it"),
    DeepSpeedKey(BUFFER_NAMES, "model states", "key", _MODEL_STATE_WRITER, "BUFFER_NAMES",
                 "_zero_state picks the buffers out of the module state by it"),
    DeepSpeedKey(PARAM_SHAPES, "model states", "key", _MODEL_STATE_WRITER, "PARAM_SHAPES",
                 "_zero_state cuts the flat fp32 partitions into parameters by it"),
    DeepSpeedKey(FROZEN_PARAM_SHAPES, "model states", "key", _MODEL_STATE_WRITER, "FROZEN_PARAM_SHAPES",
                 "_zero_state restores frozen parameters (a fine-tune's backbone) by it"),
    DeepSpeedKey(FROZEN_PARAM_FRAGMENTS, "model states", "key", _MODEL_STATE_WRITER, "FROZEN_PARAM_FRAGMENTS",
                 "_zero_state reads the frozen parameters' values from it"),
    DeepSpeedKey(SHARED_PARAMS, "model states", "key", _MODEL_STATE_WRITER, None,
                 "_zero_state restores tied parameters from it"),
    DeepSpeedKey(OPTIMIZER_STATE_DICT, "optimizer states", "key", (f"{_ENGINE}._save_zero_checkpoint",), "OPTIMIZER_STATE_DICT",
                 "_zero_state reads each rank's ZeRO state under it"),
    DeepSpeedKey(ZERO_STAGE, "optimizer states", "key", (f"{_ZERO12}.state_dict", f"{_ZERO3}._rigid_state_dict"), "ZERO_STAGE",
                 "_zero_state tells ZeRO-1/2 from ZeRO-3 shards by it"),
    DeepSpeedKey(PARTITION_COUNT, "optimizer states", "key", (f"{_ZERO12}.state_dict", f"{_ZERO3}._rigid_state_dict"), "PARTITION_COUNT",
                 "_zero_state checks that every rank's shard is there by it"),
    DeepSpeedKey(SINGLE_PARTITION_OF_FP32_GROUPS, "optimizer states", "key", (f"{_ZERO12}.state_dict",), "SINGLE_PARTITION_OF_FP32_GROUPS",
                 "_zero_state reads the ZeRO-1/2 fp32 weights from it"),
    DeepSpeedKey(PARAM_ALIGNMENT_PADDINGS, "optimizer states", "key", (f"{_ZERO12}.state_dict",), "PARAM_ALIGNMENT_PADDINGS",
                 "_zero2_params skips the padding between parameters by it"),
    DeepSpeedKey(FP32_FLAT_GROUPS, "optimizer states", "key", (f"{_ZERO3}._rigid_state_dict",), "FP32_FLAT_GROUPS",
                 "_zero_state reads the ZeRO-3 fp32 weights from it"),
    DeepSpeedKey(LOSS_SCALER_CLASS, "optimizer states", "pickle", (f"{_ZERO12}.state_dict", f"{_ZERO3}._rigid_state_dict"), None,
                 "_load reads this pickled object into an inert stand-in (weights_only=True refuses any class not allowed by name)",
                 contains=("LOSS_SCALER",)),
    DeepSpeedKey(DYNAMIC_LOSS_SCALER_CLASS, "optimizer states", "pickle", (f"{_ZERO12}.state_dict", f"{_ZERO3}._rigid_state_dict"), None,
                 "_load reads it (fp16 runs' loss scaler) into an inert stand-in, as LossScaler",
                 contains=("LOSS_SCALER",)),
    DeepSpeedKey(FRAGMENT_ADDRESS_CLASS, "optimizer states", "pickle", (f"{_ZERO12}.state_dict",), None,
                 "_load reads this pickled object (param_slice_mappings) into an inert stand-in",
                 contains=("PARAM_SLICE_MAPPINGS",)),
    DeepSpeedKey(ZERO_STAGE_ENUM_CLASS, "optimizer states", "pickle", (f"{_ZERO12}.state_dict", f"{_ZERO3}._rigid_state_dict"), None,
                 "_load reads the pickled zero_stage enum as its plain value",
                 contains=("ZeroStageEnum",)),
    DeepSpeedKey("ZeRO-1/2 group padding", "optimizer states", "layout", (f"{_ZERO12}.__init__",), None,
                 f"_zero2_params checks a group's size against a multiple of {ZERO12_ALIGNMENT_FACTOR} x world size",
                 contains=(f"self.nccl_start_alignment_factor = {ZERO12_ALIGNMENT_FACTOR}",
                           "alignment = self.nccl_start_alignment_factor * dist.get_world_size(")),
    DeepSpeedKey("ZeRO-3 parameter padding", "optimizer states", "layout", ("deepspeed.runtime.zero.partition_parameters.Init._padding_size",), None,
                 "_zero3_params splits each parameter into world-size parts, the last one padded",
                 contains=("remainder = param.ds_numel % partition_world_size",)),
)  # fmt: skip
