"""``DrivingTransformer``: multi-camera video + ego state -> K future trajectories per sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fsdtrain.errors import ConfigError
from fsdtrain.model.encoder import ImageEncoder
from fsdtrain.model.fusion import FUSIONS, RayEmbedding, make_fusion
from fsdtrain.model.heads import GLOBAL_HEAD, HeadBank, TrajectoryHead

__all__ = ["ModelConfig", "DrivingTransformer", "constant_velocity", "kinematic_anchor"]

N_COMMANDS = 3
POS_SCALE_M = 5.0  # head outputs are residuals in units of this many metres
YAW_SCALE_RAD = 0.5


@dataclass
class ModelConfig:
    """What the network is (shapes of the data come from the data config).

    Args:
        encoder: timm model name of the image encoder, shared by all cameras and frames.
        encoder_weights: optional local weights file for the encoder (no hub downloads).
        d_model: token width.
        depth: fusion transformer layers (with ``fusion: factorized``, each is a spatial and a temporal layer).
        num_heads: attention heads.
        grid: token grid ``[h, w]`` each image is pooled to.
        feature_level: the encoder's feature map to pool (-1: last, stride 32; -2: stride 16, the
            later stages are not built).
        modes: trajectory modes K per head.
        heads: head bank: ``global`` plus country codes that get their own head.
        dropout: dropout in the fusion transformer.
        freeze_bn: freeze the encoder's BatchNorm layers (statistics and affine parameters), as is
            usual when fine-tuning pretrained weights with small per-GPU batches. Meant for
            pretrained weights (``encoder_weights`` or ``init_from``): on a random init it would
            freeze unit statistics and the zero-initialized residual gammas of timm ResNets.
        ray_embedding: add a ray embedding to the image tokens: per grid cell, the unit viewing ray
            and camera origin in the ego frame (from the batch's ``intrinsics`` and ``cam_to_ego``)
            through a small MLP.
        fusion: ``joint`` (one transformer over all camera x frame tokens; cost quadratic in cameras
            x frames) or ``factorized`` (attention within each frame, then across frames; for many
            cameras or long histories).
        activation_checkpointing: recompute each fusion layer's activations in the backward pass
            instead of storing them (less memory, ~1 more forward of fusion compute).
    """

    encoder: str = "test_resnet"
    encoder_weights: str | None = None
    d_model: int = 128
    depth: int = 2
    num_heads: int = 4
    grid: list[int] = field(default_factory=lambda: [2, 4])
    feature_level: int = -1
    modes: int = 3
    heads: list[str] = field(default_factory=lambda: [GLOBAL_HEAD])
    dropout: float = 0.0
    freeze_bn: bool = False
    ray_embedding: bool = False
    fusion: str = "joint"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"model.fusion: unknown fusion {self.fusion!r}; known: {', '.join(FUSIONS)}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model {self.d_model} must be divisible by model.num_heads {self.num_heads}"
            )
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ConfigError(f"model.grid must be [h, w] with positive sizes, got {self.grid}")
        if self.modes < 1 or self.depth < 0:
            raise ConfigError("model.modes must be >= 1 and model.depth >= 0")


def constant_velocity(ego_hist: torch.Tensor, future_steps: int, future_dt: float) -> torch.Tensor:
    """Straight ahead at the current speed: ``ego_hist`` [B, T, 6] -> [B, S, 3] (x, y, yaw)."""
    speed = ego_hist[:, -1, 4]  # [B]
    t = torch.arange(1, future_steps + 1, device=ego_hist.device, dtype=ego_hist.dtype) * future_dt  # [S]
    out = torch.zeros(ego_hist.shape[0], future_steps, 3, device=ego_hist.device, dtype=ego_hist.dtype)
    out[..., 0] = speed[:, None] * t
    return out


def kinematic_anchor(residual: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Head residuals [..., S, 3] (scaled units) + anchor [B, S, 3] broadcast over modes -> metres/radians."""
    scale = residual.new_tensor([POS_SCALE_M, POS_SCALE_M, YAW_SCALE_RAD])
    while anchor.dim() < residual.dim():
        anchor = anchor.unsqueeze(1)
    return anchor + residual * scale


class DrivingTransformer(nn.Module):
    """Image encoder -> token fusion -> head bank (docs/model.md). Pure PyTorch + timm.

    Backbone = everything before the head bank (``backbone_parameters``); country fine-tuning freezes
    it and trains one head.
    """

    def __init__(
        self, config: ModelConfig, *, cameras: int, history: int, future_steps: int, future_dt: float
    ) -> None:
        super().__init__()
        self.config = config
        self.cameras, self.history = cameras, history
        self.future_steps, self.future_dt = future_steps, future_dt
        D = config.d_model
        self.encoder = ImageEncoder(
            config.encoder,
            d_model=D,
            grid=tuple(config.grid),
            feature_level=config.feature_level,
            weights=config.encoder_weights,
            freeze_bn=config.freeze_bn,
        )
        self.rays = RayEmbedding(D) if config.ray_embedding else None
        self.ego_embed = nn.Sequential(nn.Linear(history * 6, D), nn.GELU(), nn.Linear(D, D))
        self.command_embed = nn.Embedding(N_COMMANDS, D)
        self.fusion = make_fusion(
            config.fusion,
            d_model=D,
            depth=config.depth,
            num_heads=config.num_heads,
            cameras=cameras,
            frames=history,
            tokens_per_image=self.encoder.tokens_per_image,
            dropout=config.dropout,
            checkpointing=config.activation_checkpointing,
        )
        self.heads = HeadBank(
            config.heads,
            lambda: TrajectoryHead(
                d_model=D, num_heads=config.num_heads, modes=config.modes, future_steps=future_steps
            ),
        )

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("heads.")]

    def encode(
        self,
        images: torch.Tensor,
        ego_hist: torch.Tensor,
        command: torch.Tensor,
        *,
        intrinsics: torch.Tensor | None = None,
        cam_to_ego: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone: -> fused tokens [B, 2 + N_cam*T*P, D] and the fused ego token [B, D].

        ``intrinsics`` [B, N_cam, 3, 3] (for the size of ``images``) and ``cam_to_ego``
        [B, N_cam, 4, 4] are needed when ``model.ray_embedding`` is on, and ignored otherwise.
        """
        B, N, T = images.shape[:3]
        if N != self.cameras or T != self.history:
            raise ConfigError(
                f"model built for {self.cameras} cameras x {self.history} frames, batch has {N} x {T}"
            )
        tokens = self.encoder(images.flatten(0, 2))  # [B*N*T, P, D]
        tokens = tokens.view(B, N, T, *tokens.shape[1:])  # [B, N, T, P, D]
        if self.rays is not None:
            tokens = tokens + self._ray_tokens(intrinsics, cam_to_ego, B, images.shape[-2:])[:, :, None]
        ego = self.ego_embed(ego_hist.flatten(1))  # [B, D]
        cmd = self.command_embed(command)  # [B, D]
        fused = self.fusion(tokens, torch.stack([ego, cmd], dim=1))  # [B, 2 + N*T*P, D]
        return fused, fused[:, 0]

    def _ray_tokens(
        self, intrinsics: torch.Tensor | None, cam_to_ego: torch.Tensor | None, B: int, image_size: torch.Size
    ) -> torch.Tensor:
        """Ray embedding [B, N_cam, P, D] (the same for every frame: the rig is fixed in a window)."""
        if intrinsics is None or cam_to_ego is None:
            raise ConfigError(
                "model.ray_embedding is on, so the model needs the cameras' intrinsics and cam_to_ego "
                "(the batch's 'intrinsics' and 'cam_to_ego'); pass them to encode()/forward() or set model.ray_embedding: false"
            )
        N = self.cameras
        if intrinsics.shape != (B, N, 3, 3) or cam_to_ego.shape != (B, N, 4, 4):
            raise ConfigError(
                f"intrinsics {list(intrinsics.shape)} / cam_to_ego {list(cam_to_ego.shape)} must be "
                f"[{B}, {N}, 3, 3] / [{B}, {N}, 4, 4] (batch x cameras)"
            )
        return self.rays(intrinsics, cam_to_ego, image_size=tuple(image_size), grid=self.encoder.grid)

    def decode(
        self,
        fused: torch.Tensor,
        ego_token: torch.Tensor,
        ego_hist: torch.Tensor,
        route: torch.Tensor,
        *,
        head: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The head bank on backbone outputs -> trajectories [B, K, S, 3], logits [B, K]."""
        if head is None:
            residual, logits = self.heads(route, fused, ego_token)
        else:
            residual, logits = self.heads.run_head(head, fused, ego_token)
        anchor = constant_velocity(ego_hist, self.future_steps, self.future_dt)
        return kinematic_anchor(residual, anchor), logits

    def forward(
        self,
        images: torch.Tensor,
        ego_hist: torch.Tensor,
        command: torch.Tensor,
        route: torch.Tensor,
        *,
        head: str | None = None,
        intrinsics: torch.Tensor | None = None,
        cam_to_ego: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicts K trajectories per sample.

        Args:
            images: uint8 [B, N_cam, T, 3, H, W].
            ego_hist: [B, T, 6] in the current ego frame.
            command: int64 [B].
            route: head index per sample (``self.heads.route(countries)``).
            head: run this one head for every sample instead of routing.
            intrinsics: ``K`` [B, N_cam, 3, 3] for images of size H x W (needed with ``ray_embedding``).
            cam_to_ego: ``T_cam_to_ego`` [B, N_cam, 4, 4] (needed with ``ray_embedding``).

        Returns:
            trajectories [B, K, S, 3] (x, y, yaw in metres/radians) and mode logits [B, K].
        """
        fused, ego_token = self.encode(
            images, ego_hist, command, intrinsics=intrinsics, cam_to_ego=cam_to_ego
        )
        return self.decode(fused, ego_token, ego_hist, route, head=head)
