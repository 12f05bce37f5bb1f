"""``fsdtrain eval``: a weights file + shard directories -> per-country metrics vs baselines; or, with
no weights (``--baselines``), the kinematic baselines alone on any dataset."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from fsdtrain.data.datamodule import load_manifests
from fsdtrain.data.stream import FleetStream, Source, init_loader_worker
from fsdtrain.errors import ConfigError, DataError
from fsdtrain.eval.metrics import MetricTable, sample_errors
from fsdtrain.eval.report import build_report
from fsdtrain.eval.viz import save_plots, window_at
from fsdtrain.format.manifest import Manifest
from fsdtrain.format.windows import WindowSpec
from fsdtrain.model.driving import DrivingTransformer, ModelConfig, constant_velocity
from fsdtrain.model.ego_mlp import EgoStatusMLP, ctra
from fsdtrain.model.heads import GLOBAL_HEAD
from fsdtrain.progress import Progress
from fsdtrain.residency import resolve_site_zone
from fsdtrain.store.gate import AuditLog, ZoneGate
from fsdtrain.weights.files import load_weights, read_metadata
from fsdtrain.weights.metadata import WeightsMeta

__all__ = ["DEVICES", "EvalDevice", "load_predictors", "load_window", "evaluate"]

# without a model, frames are decoded at this size: the stream reads one camera of each clip (it checks
# and decodes what it reads), the baselines never look at it, and datasets of any resolution mix
_BASELINE_IMAGE_SIZE = (16, 16)
#: ``--device`` values: auto is cuda when a CUDA device is visible, else cpu
DEVICES = ("auto", "cpu", "cuda")
# what the networks read from a batch: only these go to the device (targets and baselines stay on the CPU)
_MODEL_INPUTS = ("images", "ego_hist", "command", "intrinsics", "cam_to_ego")


@dataclass(frozen=True)
class EvalDevice:
    """Where ``fsdtrain eval`` runs the networks, and how batches get there.

    On CUDA the loader pins batches in page-locked memory and they are copied with ``non_blocking``
    (the copy overlaps the host's work), and the networks run under bf16 autocast where the GPU has
    bf16, as training runs them (``bf16-mixed``). Predictions come back to the CPU as float32 before
    any metric, so the metrics and the baselines are the same code on either device; on the CPU
    nothing is cast (float32 throughout).

    Attributes:
        device: the torch device of the networks.
        pin_memory: page-locked batches and ``non_blocking`` copies (CUDA only).
        autocast_dtype: the autocast dtype of the networks, or None for none.
    """

    device: torch.device
    pin_memory: bool = False
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def choose(cls, name: str, *, cuda_available: bool | None = None, bf16_supported: bool | None = None) -> EvalDevice:
        """The placement for ``--device name``.

        Args:
            name: ``auto`` (cuda when a CUDA device is visible), ``cpu`` or ``cuda``.
            cuda_available: whether a CUDA device is visible; None asks torch.
            bf16_supported: whether that device computes in bf16 (Ampere and later); None asks torch.

        Raises:
            ConfigError: an unknown name, or ``cuda`` where no CUDA device is visible.
        """
        if name not in DEVICES:
            raise ConfigError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
        has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        if name == "cuda" and not has_cuda:
            raise ConfigError("--device cuda: no CUDA device is visible to torch; use --device cpu (or auto: cuda when there is one)")
        if name == "cpu" or not has_cuda:
            return cls(torch.device("cpu"))
        bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return cls(torch.device("cuda"), pin_memory=True, autocast_dtype=torch.bfloat16 if bf16 else None)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The networks' inputs of ``batch`` on this device."""
        return {k: batch[k].to(self.device, non_blocking=self.pin_memory) for k in _MODEL_INPUTS}

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast region the networks run in (none on the CPU)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def load_predictors(weights: str, head: str | None = None) -> tuple[DrivingTransformer, EgoStatusMLP, WeightsMeta]:
    """Model and ego-status baseline from a weights file (plus, optionally, a head-only file fine-tuned
    on it: fsdtrain/weights/head_only.py), in eval mode, plus its metadata."""
    if head is not None:
        from fsdtrain.weights.head_only import load_with_head

        state, meta = load_with_head(weights, head)
    else:
        state, meta = load_weights(weights)
        if meta.is_head_only:
            raise ConfigError(f"{weights} is a head-only file; give the backbone weights as --ckpt and it as --head")
    meta.require("net", "cameras", "window")
    window = WindowSpec(**meta.window)
    dt = 1.0 / window.future_hz
    # every weight is in the file: the encoder's starting-weights file of the run is not needed (and
    # is usually not on the machine that evaluates)
    config = ModelConfig(**{**meta.net, "encoder_weights": None})
    net = DrivingTransformer(config, cameras=len(meta.cameras), history=window.history, future_steps=window.future_steps, future_dt=dt)
    base = EgoStatusMLP(history=window.history, future_steps=window.future_steps, future_dt=dt, heads=net.heads.names)
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    base.load_state_dict({k[len("baseline.") :]: v for k, v in state.items() if k.startswith("baseline.")})
    return net.eval(), base.eval(), meta


def load_window(path: str) -> WindowSpec:
    """``data.window`` from a YAML file of its fields (as configs/data/demo_window.yaml)."""
    try:
        with open(path, encoding="utf-8") as f:
            fields = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"--window {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--window {path}: not YAML ({str(exc).splitlines()[0]})") from None
    known = list(WindowSpec.__dataclass_fields__)
    if not isinstance(fields, dict):
        raise ConfigError(f"--window {path}: expected a mapping of data.window fields ({', '.join(known)})")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"--window {path}: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(known)}")
    return WindowSpec(**fields)


@torch.no_grad()
def evaluate(
    weights: str | None, data: list[str], *, batch_size: int = 8, site_zone: str | None = None, audit_log: str | None = None,
    num_workers: int = 1, plots: str | None = None, plots_per_country: int = 4, head: str | None = None,
    window: WindowSpec | None = None, device: str | EvalDevice = "cpu", progress: Progress | None = None,
    samples: list[dict] | None = None,
) -> dict:  # fmt: skip
    """Every window of ``data`` through the model (routed heads), the global head (for countries
    with their own head), the ego-status MLP, constant velocity and constant turn rate and
    acceleration (CTRA); without ``weights``, through the two kinematic baselines alone.

    Args:
        weights: weights file written by fit/finetune, or None for the baselines alone (no model,
            no ego-status MLP: it is trained with a model).
        data: shard directory URLs.
        batch_size: windows per batch.
        site_zone: zone this job runs in (default ``$FSDTRAIN_SITE_ZONE`` or ``global``).
        audit_log: JSONL file that records every clip and shard index read.
        num_workers: loader processes decoding video (0: in this process).
        plots: local folder for PNG pictures of the model's prediction (bird's-eye plot + front
            camera, :func:`fsdtrain.eval.viz.window_figure`), or None for none. They hold camera
            frames, which stay at this site: every shard was checked against the site zone before
            it was read, and the pictures are written only to this local folder.
        plots_per_country: pictures per country: its first windows in stream order.
        head: head-only file to put on ``weights`` (the backbone weights it was fine-tuned from).
        window: how windows are cut, without ``weights`` only (default: the data config's defaults);
            with ``weights``, their metadata's windows, those the model was trained on.
        device: where the networks run: ``cpu``, ``cuda``, ``auto`` (:meth:`EvalDevice.choose`) or a placement.
        progress: told the number of windows, then each batch's (a bar, or plain log lines).
        samples: a list that receives the windows ``plots`` draws (with or without ``plots``), each
            ``{"window", "traj", "logits"}`` on the CPU, for a caller that draws them elsewhere (W&B).

    Returns:
        The report dict (docs/report-format.md).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"--num-workers must be an integer >= 0, got {num_workers!r}")
    place = device if isinstance(device, EvalDevice) else EvalDevice.choose(device)
    if plots_per_country < 0:
        raise ConfigError(f"plots_per_country={plots_per_country} must be >= 0")
    if plots is not None and "://" in str(plots):
        raise ConfigError(f"plots={plots}: give a local folder, not a URL (the pictures hold camera frames)")
    if weights is None:
        if head is not None:
            raise ConfigError("--head goes on a model: give its backbone weights as --ckpt")
        if plots is not None:
            raise ConfigError("--plots draws a model's predictions: give --ckpt, or drop --plots for the baselines alone")
    elif window is not None:
        raise ConfigError("--window is for --baselines: a model is evaluated on the windows it was trained on (its metadata)")
    gate = ZoneGate(site_zone, audit=AuditLog(audit_log, job="eval") if audit_log else None)
    gate.check_urls(data)  # before anything is read: no request to a bucket of a zone this site may not read
    site = resolve_site_zone(site_zone)
    net = base = None
    if weights is not None:
        for path in (weights, head) if head is not None else (weights,):  # from the metadata, before any tensor is read
            read_metadata(path).check_site(site, "fsdtrain eval")
        net, base, meta = load_predictors(weights, head)
        net, base = net.to(place.device), base.to(place.device)
        window = WindowSpec(**meta.window)
    window = window if window is not None else WindowSpec()
    manifests = load_manifests(data, gate)  # each manifest's zone, before the first shard byte
    cameras = meta.cameras if net is not None else _one_camera(manifests)
    # every window once, in one process: the default reading (no shuffle, no balancing across ranks)
    stream = FleetStream(
        Source.all(manifests), window, cameras=cameras, batch_size=batch_size, gate=gate,
        image_size=None if net is not None else _BASELINE_IMAGE_SIZE,
    )  # fmt: skip
    stream.set_distributed(0, 1, num_workers)
    table = MetricTable()
    clips: dict[str, set[str]] = defaultdict(set)
    hz = window.future_hz
    own_heads = set(net.heads.names) - {GLOBAL_HEAD} if net is not None else set()
    plotted: dict[str, int] = defaultdict(int)
    if progress is not None:
        progress.set_total(len(stream))  # from the manifests alone
    loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, worker_init_fn=init_loader_worker, pin_memory=place.pin_memory)
    for batch in loader:
        if progress is not None:
            progress.advance(len(batch["clip_id"]), f"{batch['country'][-1]} clip {batch['clip_id'][-1]}")
        batch = _real_windows(batch)
        if not batch["valid"].numel():
            continue
        _check_finite(batch)
        countries = list(batch["country"])
        for c, clip in zip(countries, batch["clip_id"]):
            clips[c].add(clip)
        target = batch["future"]
        if net is not None:
            x = place.inputs(batch)
            route = net.heads.route(countries, device=place.device)
            with place.autocast():
                fused, ego_token = net.encode(x["images"], x["ego_hist"], x["command"], intrinsics=x["intrinsics"], cam_to_ego=x["cam_to_ego"])
                traj, logits = _host(*net.decode(fused, ego_token, x["ego_hist"], route))  # [B, K, S, 3], [B, K]
            table.add(countries, "model", sample_errors(traj, logits, target, hz))
            if plots is not None or samples is not None:
                take = _plot_indices(countries, plotted, plots_per_country)
                if take and plots is not None:
                    save_plots(plots, batch, traj, logits, indices=take, cameras=cameras)
                if take and samples is not None:
                    for i in take:  # copies: a view would keep the whole batch's frames alive
                        drawn = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in window_at(batch, i).items()}
                        samples.append({"window": drawn, "traj": traj[i].clone(), "logits": logits[i].clone()})
            has_own = np.array([c in own_heads for c in countries])
            if has_own.any():
                with place.autocast():
                    g_traj, g_logits = _host(*net.decode(fused, ego_token, x["ego_hist"], route, head=GLOBAL_HEAD))
                table.add(countries, "global_head", sample_errors(g_traj, g_logits, target, hz), mask=has_own)
            with place.autocast():
                b_traj, b_logits = _host(*base(x["ego_hist"], x["command"], route))
            table.add(countries, "ego_mlp", sample_errors(b_traj, b_logits, target, hz))
        for name, predict in (("constant_velocity", constant_velocity), ("ctra", ctra)):
            path = predict(batch["ego_hist"], window.future_steps, 1.0 / hz)[:, None]  # one mode: [B, 1, S, 3]
            table.add(countries, name, sample_errors(path, torch.zeros(path.shape[:2]), target, hz))
    checkpoint = "" if weights is None else weights if head is None else f"{weights} + {head}"
    return build_report(table, clips, checkpoint=checkpoint, data=data)


def _host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Predictions as float32 on the CPU, where the metrics are computed (a no-op for CPU float32)."""
    return tuple(t.float().cpu() for t in tensors)


def _one_camera(manifests: list[Manifest]) -> list[str]:
    """The first camera every dataset has: the stream reads one camera per clip, and without a model
    one is enough (the baselines read only the ego history)."""
    common = [c for c in manifests[0].cameras if all(c in m.cameras for m in manifests[1:])]
    if not common:
        cams = "; ".join(f"{m.url}: {', '.join(m.cameras)}" for m in manifests)
        raise DataError(f"the datasets share no camera ({cams}); evaluate them one at a time")
    return common[:1]


def _real_windows(batch: dict) -> dict:
    """The batch without the repeats a stream makes up (``valid`` False), so each window counts once.
    The stream here is neither equalized nor skipping bad clips, so it makes none; this keeps the
    report right should that change."""
    valid = batch["valid"]
    if bool(valid.all()):
        return batch
    keep = valid.nonzero().flatten().tolist()
    return {k: v[valid] if isinstance(v, torch.Tensor) else [v[i] for i in keep] for k, v in batch.items()}


def _check_finite(batch: dict) -> None:
    """A window whose ego history or ground truth holds NaN or inf would make every metric NaN: one line naming its clip."""
    for name, what in (("ego_hist", "ego history"), ("future", "future path (ground truth)")):
        bad = ~torch.isfinite(batch[name].flatten(1)).all(1)  # [B]
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise DataError(f"clip {batch['clip_id'][i]} (frame {int(batch['frame'][i])}): its {what} holds NaN or inf (ego.npy); fix or drop the clip")


def _plot_indices(countries: list[str], plotted: dict[str, int], limit: int) -> list[int]:
    """Windows of a batch still to be drawn, at most ``limit`` per country; counts them in ``plotted``."""
    take = []
    for i, c in enumerate(countries):
        if plotted[c] < limit:
            plotted[c] += 1
            take.append(i)
    return take
