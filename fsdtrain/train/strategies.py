"""Distribution strategies by name: ``ddp`` and DeepSpeed ZeRO 1/2/3, on CUDA and on CPU (gloo).

Lightning's ``DeepSpeedStrategy`` refuses CPU, yet DeepSpeed itself trains on its CPU accelerator
with gloo. ``FleetDeepSpeedStrategy`` lifts the refusal (three CUDA-only steps are skipped when the
accelerator is the CPU) and is registered under Lightning's own ``deepspeed*`` names, so one config
with ``strategy: deepspeed_stage_2`` runs on a laptop CPU and on GPU nodes, switched by
``--trainer.accelerator``. The model never imports this module (STYLE.md: parallelism apart).
"""

from __future__ import annotations

import argparse

from lightning.pytorch.accelerators.cuda import CUDAAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry
from lightning.pytorch.strategies.ddp import DDPStrategy

__all__ = ["FleetDeepSpeedStrategy", "register_strategies", "STRATEGY_NAMES"]

STRATEGY_NAMES = ("ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload")


class FleetDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that also runs on DeepSpeed's CPU accelerator (gloo)."""

    strategy_name = "fleet_deepspeed"

    def _on_cpu(self) -> bool:
        return not isinstance(self.accelerator, CUDAAccelerator)

    def setup_environment(self) -> None:
        if not self._on_cpu():
            super().setup_environment()
            return
        # DeepSpeedStrategy.setup_environment only adds a CUDA check before the DDP set-up.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            super().setup_distributed()
            return
        from lightning.fabric.utilities.seed import reset_seed

        # skips _validate_device_index_selection, which only knows CUDA device indices
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        if not self._on_cpu():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=-1),  # CPU: no device index
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer


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
