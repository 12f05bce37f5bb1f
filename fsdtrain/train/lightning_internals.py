"""Every private (or undocumented) name of Lightning (and of torch's DataLoader) that fsdtrain needs, why, and the public API checked instead.

Lightning keeps these out of its public API, so a minor release may rename or remove them without a
deprecation. fsdtrain reads and calls them only through the helpers below; the methods it overrides
are listed in :data:`INTERNALS` and the overriding classes' docstrings point here. For each name,
tests/test_framework_internals.py checks that the installed Lightning still has it, as the kind of
thing fsdtrain uses (a method with the same parameters, an attribute its ``__init__`` sets, a body
fsdtrain copies still doing the same steps), and fails naming the fsdtrain code that needs it. The
test also fails when a fsdtrain subclass of a Lightning class defines an underscore name the
framework class has too and this list does not. ``lightning`` is bounded to the tested minor
version in pyproject.toml.

Replaced by public APIs (no longer needed):

- DeepSpeed's ``ds_id`` parameter attribute in ``ExportWeights`` (fsdtrain/train/callbacks.py):
  whether the parameters are ZeRO-3 partitioned is ``DeepSpeedStrategy.zero_stage_3``.

DeepSpeed's own internals are in :mod:`fsdtrain.train.deepspeed_internals`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsdtrain.weights.deepspeed_keys import LEGACY_LIGHTNING_PREFIX

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.strategies import DeepSpeedStrategy

__all__ = [
    "Internal",
    "INTERNALS",
    "save_as_model_checkpoint",
    "mark_saved",
    "last_checkpoint_saved",
    "defined_train_dataloader",
    "init_deepspeed_distributed",
    "subcommand_parser",
    "own_stop_signals",
]


@dataclass(frozen=True)
class Internal:
    """One private name of a framework that fsdtrain needs.

    Attributes:
        owner: importable dotted path of the framework class (or module) that has it.
        attr: the name on ``owner``; dotted for a chain read from an instance (``fit_loop._data_source``).
        kind: ``method`` (on the class; ``params``: the parameter names fsdtrain's override or call
            relies on), ``attribute`` (set on an instance by the framework's ``__init__``), ``class``
            (importable under this name) or ``source`` (a framework function whose body fsdtrain copies
            or relies on: ``contains`` must still be in its source).
        where: the fsdtrain file and code that needs it.
        need: what for; the test's message is ``{owner}.{attr} is gone: {where} {need}``.
        public: the public API checked instead, and why it does not do.
        params: for ``method``: the parameter names (``self`` first) fsdtrain relies on.
        contains: text the framework's source of it must still hold (steps a copied or replaced body has).
    """

    owner: str
    attr: str
    kind: str
    where: str
    need: str
    public: str
    params: tuple[str, ...] | None = None
    contains: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.attr}"


_RING = "fsdtrain/data/batch_ring.py RingLoader.__iter__"
_MP_ITER = "torch.utils.data.dataloader._MultiProcessingDataLoaderIter"
_NO_WORKER_API = "none: a DataLoader iterator exposes neither its worker processes nor a way to restart them"
_CKPT = "lightning.pytorch.callbacks.ModelCheckpoint"
_DS = "lightning.pytorch.strategies.DeepSpeedStrategy"
_FLEET_CKPT = "fsdtrain/train/checkpoints.py FleetCheckpoint"
_FLEET_DS = "fsdtrain/train/strategies.py FleetDeepSpeedStrategy"
_SAVE_NOW = (
    "runs ModelCheckpoint's own save sequence (skip check, metric candidates, top-k save, last) in save_now, "
    "at the run's last step or epoch and on SLURM's warning signal (fsdtrain/train/requeue.py)"
)
_NO_SAVE_API = (
    "none: ModelCheckpoint saves only from its own hooks, whose every_n_* triggers cannot be forced; "
    "Trainer.save_checkpoint alone would bypass the callback's naming, last link and pruning"
)

INTERNALS: tuple[Internal, ...] = (
    # --- ModelCheckpoint: atomic publication, the `last` link, saving on demand (fsdtrain/train/checkpoints.py)
    Internal(
        _CKPT, "_save_checkpoint", "method", _FLEET_CKPT,
        "overrides it to publish checkpoints atomically (temporary name, run files, rename)",
        "none: a CheckpointIO plugin is public, but DeepSpeedStrategy.save_checkpoint bypasses it (the engine "
        "writes the shards itself), and Callback.on_save_checkpoint runs before the files exist",
        params=("self", "trainer", "filepath"),
        contains=("trainer.save_checkpoint(", "self._last_global_step_saved =", "self._last_checkpoint_saved =", "after_save_checkpoint("),
    ),
    Internal(
        _CKPT, "_save_last_checkpoint", "method", _FLEET_CKPT,
        "overrides it to move the last.ckpt symlink atomically and prune old checkpoints only after that, and "
        + _SAVE_NOW,
        "none: save_last='link' is public, but it removes the old link before making the new one (not atomic), "
        "and save_top_k's pruning deletes the previous checkpoint before the link has moved",
        params=("self", "trainer", "monitor_candidates"),
    ),
    Internal(_CKPT, "_save_topk_checkpoint", "method", _FLEET_CKPT, _SAVE_NOW, _NO_SAVE_API,
             params=("self", "trainer", "monitor_candidates")),
    Internal(_CKPT, "_monitor_candidates", "method", _FLEET_CKPT, _SAVE_NOW, _NO_SAVE_API, params=("self", "trainer")),
    Internal(_CKPT, "_should_skip_saving_checkpoint", "method", _FLEET_CKPT, _SAVE_NOW, _NO_SAVE_API, params=("self", "trainer")),
    Internal(
        _CKPT, "_last_global_step_saved", "attribute", _FLEET_CKPT,
        "sets it at train start (a resumed run does not save the step it resumed from again) and after each "
        "save; ModelCheckpoint's skip check reads it",
        "none",
    ),
    Internal(
        _CKPT, "_last_checkpoint_saved", "attribute",
        f"{_FLEET_CKPT} and fsdtrain/train/wandb_log.py WandbReview.checkpoint_saved",
        "record and read the path just saved (the last link's target; the checkpoint a W&B model artifact "
        "version refers to)",
        "last_model_path is the last link, moved only after loggers hear of the save; best_model_path is the "
        "path just saved only for an unmonitored top-k save",
    ),
    # --- DeepSpeedStrategy: CPU (gloo) runs and fsdtrain's batch plan (fsdtrain/train/strategies.py)
    Internal(
        _DS, "_format_config", "method", _FLEET_DS,
        "overrides it to have DeepSpeed cast buffers with the weights under bf16/fp16 (data_types.buffer_dtype), "
        "after Lightning has written the precision keys",
        "none: the precision keys come from --trainer.precision inside this method; a hand-written config "
        "could not follow the precision flag",
        params=("self",),
        contains=("self._format_batch_size_and_grad_accum_config()", "_format_precision_config("),
    ),
    Internal(
        _DS, "_format_batch_size_and_grad_accum_config", "method", _FLEET_DS,
        "overrides it to write the batch keys from fsdtrain's one batch plan (fsdtrain/batching.py) and "
        "gradient_clipping from the Trainer, instead of the keys Lightning writes there",
        "none: batch keys given in the strategy's config would not follow data.batch_size and "
        "data.global_batch_size, and Lightning refuses gradient_accumulation_steps there",
        params=("self",),
        contains=("gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "gradient_clipping"),
    ),
    Internal(
        _DS, "_setup_model_and_optimizer", "method", _FLEET_DS,
        "overrides it on the CPU to call deepspeed.initialize as Lightning does, without a CUDA device index",
        "none: Lightning's body passes root_device.index, which the CPU does not have",
        params=("self", "model", "optimizer", "lr_scheduler"),
        contains=("deepspeed.initialize(", "device_rank=self.root_device.index", "dist_init_required=False"),
    ),
    Internal(
        _DS, "_init_deepspeed_distributed", "method", _FLEET_DS,
        "calls it from setup_distributed on the CPU (gloo process group through deepspeed.init_distributed)",
        "deepspeed.init_distributed is public, but this method also sets the node's environment variables "
        "and the backend and timeout the strategy keeps",
        params=("self",),
    ),
    Internal(
        _DS, "setup_distributed", "source", _FLEET_DS,
        "copies its body on the CPU without _validate_device_index_selection (CUDA device indices only); a step "
        "Lightning adds here would be missed",
        "none: super().setup_distributed() fails on the CPU",
        contains=("_validate_device_index_selection(", "reset_seed()", "self.set_world_ranks()", "self._init_deepspeed_distributed()"),
    ),
    Internal(
        _DS, "setup_environment", "source", _FLEET_DS,
        "calls DDPStrategy.setup_environment directly on the CPU, skipping only this method's CUDA check",
        "none: super().setup_environment() refuses any accelerator but CUDA",
        contains=("isinstance(self.accelerator, CUDAAccelerator)", "super().setup_environment()"),
    ),
    Internal(
        "lightning.pytorch.Trainer", "fit_loop._data_source", "attribute", f"{_FLEET_DS}._micro_batch",
        "asks it for the train loader's batch size when data.batch_size is not set (as "
        "DeepSpeedStrategy._auto_select_batch_size does, without its crash on batch_size=None)",
        "Trainer.train_dataloader is None until the fit loop sets up its data, after the strategy writes the "
        "DeepSpeed config; Trainer.datamodule.train_dataloader() misses loaders given to fit() or the LightningModule",
    ),
    Internal(
        "lightning.pytorch.trainer.connectors.data_connector._DataLoaderSource", "is_defined", "method",
        f"{_FLEET_DS}._micro_batch", "calls it on fit_loop._data_source", "as for fit_loop._data_source",
        params=("self",),
    ),
    Internal(
        "lightning.pytorch.trainer.connectors.data_connector._DataLoaderSource", "dataloader", "method",
        f"{_FLEET_DS}._micro_batch", "calls it on fit_loop._data_source", "as for fit_loop._data_source",
        params=("self",),
    ),
    # --- LightningCLI (fsdtrain/train/lightning_cli.py)
    Internal(
        "lightning.pytorch.cli.LightningCLI", "_parser", "method", "fsdtrain/train/lightning_cli.py FleetCLI._resolved_yaml",
        "dumps the resolved config with the subcommand's parser, as SaveConfigCallback writes config.yaml, for "
        "the config.yaml of every checkpoint",
        "LightningCLI.parser is the main parser, whose dump nests the config under the subcommand; the "
        "subcommand parsers are only in the private _subcommand_parsers",
        params=("self", "subcommand"),
    ),
    # --- the training loop's progress (fsdtrain/data/datamodule.py)
    Internal(
        "lightning.pytorch.Trainer", "fit_loop.epoch_loop.batch_progress.current.processed", "attribute",
        "fsdtrain/data/datamodule.py FleetDataModule.state_dict",
        "saves it as the micro-batches this rank has trained in the epoch, the data position of every "
        "checkpoint (read there directly: fsdtrain.data may not import fsdtrain.train)",
        "none: Trainer.global_step counts optimizer steps over all epochs; the loop classes (_FitLoop, "
        "_TrainingEpochLoop) are private in Lightning 2, though these attribute names have no underscore",
    ),
    # --- stop signals: fsdtrain owns SIGTERM (fsdtrain/stopping.py)
    Internal(
        "lightning.pytorch.Trainer", "_signal_connector", "attribute", "fsdtrain/train/lightning_cli.py FleetCLI.instantiate_trainer",
        "replaces it with a connector that installs no handler: Lightning's SIGTERM handler runs a broadcast "
        "inside the signal handler, which deadlocks when the signal lands while the ranks are in another "
        "collective (a checkpoint's barrier); fsdtrain's own handler raises at once and Lightning's interrupt "
        "path tears the ranks down",
        "none: the Trainer has no flag to leave signal handlers alone (plugins=[...] only replaces the cluster "
        "environment, whose requeue flag covers SIGUSR1, not SIGTERM)",
    ),
    Internal(
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector", "register_signal_handlers", "method",
        "fsdtrain/train/lightning_internals.py own_stop_signals", "overrides it to install nothing",
        "as for Trainer._signal_connector", params=("self",),
    ),
    # --- Lightning's name in DeepSpeed checkpoints (fsdtrain/weights/deepspeed_keys.py)
    Internal(
        "lightning.pytorch.utilities.deepspeed", "convert_zero_checkpoint_to_fp32_state_dict", "source",
        "fsdtrain/weights/checkpoint_files.py _zero_state",
        f"strips the {LEGACY_LIGHTNING_PREFIX!r} prefix Lightning < 2.1 put on the module keys of DeepSpeed "
        "checkpoints, as this Lightning converter does",
        "the converter itself imports DeepSpeed and unpickles (fsdtrain/weights/deepspeed_keys.py)",
        contains=(LEGACY_LIGHTNING_PREFIX,),
    ),
    # --- torch's DataLoader: loader workers that never start are forked again (fsdtrain/data/batch_ring.py)
    Internal(
        "torch.utils.data.DataLoader", "_iterator", "attribute", _RING,
        "reads it to reuse a persistent iterator, and clears it when that iterator's workers were killed",
        "none: a DataLoader keeps its persistent iterator to itself",
    ),
    Internal(
        _MP_ITER, "__init__", "source", _RING,
        "reads the worker processes it started (`_workers`) and clears `_worker_pids_set` before killing a stuck one",
        _NO_WORKER_API, contains=("self._workers.append(w)", "self._worker_pids_set = True"),
    ),
    Internal(_MP_ITER, "_shutdown_workers", "method", _RING, "stops and joins the workers after killing a stuck one",
             _NO_WORKER_API, params=("self",)),
    Internal(
        "torch.utils.data._utils.signal_handling", "_remove_worker_pids", "method", _RING,
        "takes the workers out of torch's SIGCHLD check first, which would report the killed one as a failed worker",
        _NO_WORKER_API,
    ),
)  # fmt: skip


# --- helpers: the code reads and calls the names above only through these -------------------------


def save_as_model_checkpoint(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Saves now as ``ModelCheckpoint`` does from its hooks (unless it already saved this step or must not
    save, e.g. in a sanity check): top-k checkpoint, then ``last``. Every rank calls it."""
    if not callback._should_skip_saving_checkpoint(trainer):
        candidates = callback._monitor_candidates(trainer)
        callback._save_topk_checkpoint(trainer, candidates)
        callback._save_last_checkpoint(trainer, candidates)


def mark_saved(callback: ModelCheckpoint, global_step: int, path: str | None = None) -> None:
    """Tells ``callback`` that ``global_step`` is saved (it then skips saving that step), and where (``path``)."""
    callback._last_global_step_saved = global_step
    if path is not None:
        callback._last_checkpoint_saved = path


def last_checkpoint_saved(callback: Any) -> str | None:
    """The path a ``ModelCheckpoint`` saved last ('' before its first save; None for other callbacks)."""
    return getattr(callback, "_last_checkpoint_saved", None)


def defined_train_dataloader(trainer: pl.Trainer) -> Any:
    """The train loader the Trainer will use (from the datamodule, the module or ``fit()``), None when none
    is defined; available before the fit loop sets up its data."""
    source = trainer.fit_loop._data_source
    return source.dataloader() if source.is_defined() else None


def init_deepspeed_distributed(strategy: DeepSpeedStrategy) -> None:
    """Lightning's DeepSpeed process-group set-up (node environment variables, ``deepspeed.init_distributed``)."""
    strategy._init_deepspeed_distributed()


def subcommand_parser(cli: LightningCLI, subcommand: str | None) -> Any:
    """The parser of ``subcommand`` (the main parser for None), the one ``SaveConfigCallback`` dumps with."""
    return cli._parser(subcommand)


def own_stop_signals(trainer: pl.Trainer) -> None:
    """Leaves SIGTERM (and SIGUSR1) to fsdtrain: the Trainer installs no signal handler of its own.

    fsdtrain's handler (fsdtrain/stopping.py) raises ``Stopped`` in the main thread, Lightning's interrupt
    path then kills the ranks it started, and SLURM's warning signal is fsdtrain/train/requeue.py's.
    Lightning's own SIGTERM handler would broadcast from inside the handler, a collective the other ranks
    are not in when the signal lands during a checkpoint's barrier: both would wait forever.
    """
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    class _NoHandlers(_SignalConnector):
        def register_signal_handlers(self) -> None:
            self.received_sigterm = False
            self._original_handlers = {}

    trainer._signal_connector = _NoHandlers(trainer)
