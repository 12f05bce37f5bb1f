"""Distribution strategies by name: ``ddp`` and DeepSpeed ZeRO 1/2/3, on CUDA and on CPU (gloo).

Lightning's ``DeepSpeedStrategy`` refuses CPU, yet DeepSpeed itself trains on its CPU accelerator
with gloo. ``FleetDeepSpeedStrategy`` lifts the refusal (three CUDA-only steps are skipped when the
accelerator is the CPU) and is registered under Lightning's own ``deepspeed*`` names, so one config
with ``strategy: deepspeed_stage_2`` runs on a laptop CPU and on GPU nodes, switched by
``--trainer.accelerator``. The model never imports this module (docs/contributing.md: parallelism apart from the model).

On the CPU the strategy also makes DeepSpeed use its CPU accelerator (gloo), whatever devices the
machine has; on CUDA, Lightning's own path runs unchanged (NCCL, one device per rank). The batch keys
of the DeepSpeed config come from :func:`fsdtrain.batching.plan_batches` and
``gradient_clipping`` from ``trainer.gradient_clip_val``. With optimizer offload the run needs
DeepSpeed's CPU Adam (:func:`adamw_class`), a C++ op built on first use (JIT, about a minute).
"""

from __future__ import annotations

import torch
from lightning.pytorch.accelerators.cuda import CUDAAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy, StrategyRegistry
from lightning.pytorch.strategies.ddp import DDPStrategy

from fsdtrain.batching import BatchPlan, plan_batches
from fsdtrain.errors import ConfigError
from fsdtrain.train.deepspeed_internals import BUFFER_DTYPE, DATA_TYPES, cpu_accelerator, cpu_initialize_args
from fsdtrain.train.lightning_internals import defined_train_dataloader, init_deepspeed_distributed
from fsdtrain.train.safe_resume import check_checkpoint_files, install_safe_loading

__all__ = ["FleetDeepSpeedStrategy", "register_strategies", "adamw_class", "STRATEGY_NAMES"]

STRATEGY_NAMES = ("ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload")


class FleetDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that also runs on DeepSpeed's CPU accelerator (gloo).

    ``batch_plan``: the run's :class:`~fsdtrain.batching.BatchPlan`, handed over by the CLI once the
    Trainer exists; DeepSpeed's batch keys are written from it. Without one (a Trainer built by hand)
    the strategy makes the plan from the Trainer's own numbers.

    Overrides Lightning's private ``_format_config``, ``_format_batch_size_and_grad_accum_config`` and
    ``_setup_model_and_optimizer`` and copies parts of ``setup_environment``/``setup_distributed``: each
    listed, with why, in :mod:`fsdtrain.train.lightning_internals` (DeepSpeed's own names:
    :mod:`fsdtrain.train.deepspeed_internals`), and checked by tests/test_framework_internals.py.
    """

    strategy_name = "fleet_deepspeed"
    batch_plan: BatchPlan | None = None

    def _on_cpu(self) -> bool:
        return not isinstance(self.accelerator, CUDAAccelerator)

    @property
    def offloads_optimizer(self) -> bool:
        """Whether ZeRO keeps the optimizer state (and runs the optimizer step) on the CPU or NVMe."""
        zero = (self.config or {}).get("zero_optimization") or {}
        return (zero.get("offload_optimizer") or {}).get("device", "none") != "none"

    def setup_environment(self) -> None:
        self._select_deepspeed_accelerator()
        if not self._on_cpu():
            super().setup_environment()
            return
        # DeepSpeedStrategy.setup_environment only adds a CUDA check before the DDP set-up.
        DDPStrategy.setup_environment(self)

    def _select_deepspeed_accelerator(self) -> None:
        """DeepSpeed picks its accelerator from the machine; Lightning's ``--trainer.accelerator`` decides here."""
        from deepspeed.accelerator import get_accelerator, set_accelerator

        found = get_accelerator().device_name()
        if self._on_cpu() and found != "cpu":
            set_accelerator(cpu_accelerator())  # gloo, tensors on the CPU
        elif not self._on_cpu() and found != "cuda":
            raise ConfigError(
                f"--trainer.accelerator is {type(self.accelerator).__name__} but DeepSpeed's accelerator is {found!r}: "
                "unset DS_ACCELERATOR (or set it to cuda) or train with --trainer.accelerator cpu"
            )

    def _format_config(self) -> None:
        super()._format_config()
        # DeepSpeed >= 0.19 casts only the parameters to bf16/fp16 and keeps buffers in fp32 unless told
        # otherwise; BatchNorm then fails on mixed dtypes and the encoder's normalisation would feed fp32 into
        # bf16 convolutions. Cast the buffers with the weights, as module.bfloat16() (older DeepSpeed) did.
        for key in ("bf16", "fp16"):
            if (self.config.get(key) or {}).get("enabled"):
                self.config.setdefault(DATA_TYPES, {}).setdefault(BUFFER_DTYPE, key)

    @staticmethod
    def _micro_batch(trainer) -> int:
        """``data.batch_size``, else the train loader's batch size, else 1 (a loader that yields ready-made
        batches; DeepSpeed reads the micro batch only for its own throughput log)."""
        micro = getattr(trainer.datamodule, "batch_size", None)
        if isinstance(micro, int):
            return micro
        loader = defined_train_dataloader(trainer)  # as DeepSpeedStrategy._auto_select_batch_size, without its crash on batch_size=None
        return getattr(getattr(loader, "batch_sampler", None), "batch_size", None) or 1

    def _format_batch_size_and_grad_accum_config(self) -> None:
        """Writes the batch keys from the one batch plan and ``gradient_clipping`` from the Trainer."""
        if self.lightning_module is None:
            return
        trainer = self.lightning_module.trainer
        plan = self.batch_plan or plan_batches(
            micro_batch=self._micro_batch(trainer),
            world_size=self.world_size,
            accumulation=trainer.accumulate_grad_batches,
            global_batch=getattr(trainer.datamodule, "global_batch_size", None),
        )
        wanted = {**plan.deepspeed_config(), "gradient_clipping": float(trainer.gradient_clip_val or 0.0)}
        for key, value in wanted.items():
            if key in self.config and self.config[key] != value:
                raise ConfigError(
                    f"the DeepSpeed config sets {key}={self.config[key]!r}, but this run has {key}={value!r} "
                    f"({plan.describe()}, trainer.gradient_clip_val {trainer.gradient_clip_val}): leave {key} out of the "
                    "DeepSpeed config; fsdtrain sets it from data.batch_size, trainer.accumulate_grad_batches and "
                    "trainer.gradient_clip_val"
                )
        self.config.update(wanted)

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            super().setup_distributed()
            return
        from lightning.fabric.utilities.seed import reset_seed

        # skips _validate_device_index_selection, which only knows CUDA device indices
        reset_seed()
        self.set_world_ranks()
        init_deepspeed_distributed(self)

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        if not self._on_cpu():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=cpu_initialize_args(),  # CPU: no device index
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Loads a checkpoint as Lightning does, without unpickling code (fsdtrain/train/safe_resume.py): every
        file is read with ``weights_only=True`` before DeepSpeed opens it (a crafted file is refused in one
        line), and DeepSpeed's engine then reads them with ``weights_only=True`` too."""
        check_checkpoint_files(checkpoint_path)
        if self.deepspeed_engine is not None:
            install_safe_loading(self.deepspeed_engine)
        return super().load_checkpoint(checkpoint_path, weights_only=True)


def adamw_class(strategy: Strategy) -> type[torch.optim.Optimizer]:
    """The AdamW implementation for ``strategy``: DeepSpeed's CPU Adam (AdamW mode) where ZeRO offloads the
    optimizer (DeepSpeed refuses a torch optimizer there), ``torch.optim.AdamW`` everywhere else.

    Both take the same parameter groups and ``lr``/``betas``/``eps``/``weight_decay``. CPU Adam is a C++
    op that DeepSpeed builds on first use (needs a C++ compiler and ninja; cached under
    ``~/.cache/torch_extensions``).
    """
    if isinstance(strategy, FleetDeepSpeedStrategy) and strategy.offloads_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam
    return torch.optim.AdamW


def register_strategies() -> None:
    """Points Lightning's ``deepspeed*`` strategy names at :class:`FleetDeepSpeedStrategy`."""
    for name, params in {
        "deepspeed": {},
        "deepspeed_stage_1": {"stage": 1},
        "deepspeed_stage_2": {"stage": 2},
        "deepspeed_stage_2_offload": {"stage": 2, "offload_optimizer": True},
        "deepspeed_stage_3": {"stage": 3},
        "deepspeed_stage_3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    }.items():
        StrategyRegistry.register(name, FleetDeepSpeedStrategy, description=f"fsdtrain {name} (CPU or CUDA)", override=True, **params)
