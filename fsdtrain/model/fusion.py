"""Fusion of camera x time image tokens with ego-state and command tokens, and the token embeddings.

Two fusions, chosen by name (``FUSIONS``, ``make_fusion``): ``joint`` attends over every token at
once; ``factorized`` alternates attention within a frame and attention across frames, which bounds
the cost when cameras and frames grow. Both add camera, frame and 2-D position embeddings; the
optional ray embedding (``RayEmbedding``) encodes where each token looks in the ego frame.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fsdtrain.errors import ConfigError

__all__ = [
    "FUSIONS",
    "make_fusion",
    "TokenFusion",
    "JointFusion",
    "FactorizedFusion",
    "RayEmbedding",
    "grid_rays",
]


class TokenFusion(nn.Module):
    """Base of the fusions: camera, frame and 2-D position embeddings, final norm, and the
    transformer layer (pre-norm, GELU, SDPA attention), optionally activation-checkpointed.

    Args:
        d_model: token width.
        depth: transformer layers (a factorized layer is one spatial plus one temporal layer).
        num_heads: attention heads.
        cameras, frames, tokens_per_image: sizes of the embedding tables.
        dropout: dropout inside the transformer.
        checkpointing: in training, recompute each layer's activations in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) instead of storing them: less memory, about
            one more forward pass of compute.
    """

    def __init__(
        self,
        *,
        d_model: int,
        depth: int,
        num_heads: int,
        cameras: int,
        frames: int,
        tokens_per_image: int,
        dropout: float = 0.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.num_heads, self.dropout, self.checkpointing = (
            d_model,
            num_heads,
            dropout,
            checkpointing,
        )
        self.cam_emb = nn.Parameter(torch.zeros(cameras, d_model))
        self.frame_emb = nn.Parameter(torch.zeros(frames, d_model))
        self.pos_emb = nn.Parameter(torch.zeros(tokens_per_image, d_model))
        for p in (self.cam_emb, self.frame_emb, self.pos_emb):
            nn.init.trunc_normal_(p, std=0.02)
        self.norm = nn.LayerNorm(d_model)

    def make_layer(self) -> nn.TransformerEncoderLayer:
        return nn.TransformerEncoderLayer(
            self.d_model,
            self.num_heads,
            4 * self.d_model,
            self.dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )

    def run_layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def embed(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, N_cam, T, P, D] -> the same plus camera, frame and position embeddings."""
        N, T, P = image_tokens.shape[1:4]
        return (
            image_tokens
            + self.cam_emb[:N, None, None]
            + self.frame_emb[None, :T, None]
            + self.pos_emb[None, None, :P]
        )

    def forward(self, image_tokens: torch.Tensor, extra_tokens: torch.Tensor) -> torch.Tensor:
        """``image_tokens`` [B, N_cam, T, P, D], ``extra_tokens`` [B, E, D] -> [B, E + N_cam*T*P, D]:
        extra tokens first, then image tokens in (camera, frame, grid cell) order."""
        raise NotImplementedError


class JointFusion(TokenFusion):
    """One transformer over all ``L = E + N_cam*T*P`` tokens (extra + image tokens).

    Cost per layer: attention ``O(L^2 * D)`` compute and ``O(L^2)`` score memory (SDPA's fused
    kernels avoid materializing it on GPU), MLP ``O(L * D^2)``. Quadratic in cameras x frames:
    6 cameras x 4 frames x 32 cells = 768 tokens is cheap; 8 x 16 x 128 = 16k tokens is not.
    """

    def __init__(self, *, depth: int, **kwargs) -> None:
        super().__init__(depth=depth, **kwargs)
        # An nn.TransformerEncoder only as a container, so parameter names stay those of earlier weight
        # files (``blocks.layers.<i>.``); the layers are run one by one (for checkpointing).
        self.blocks = nn.TransformerEncoder(self.make_layer(), depth, enable_nested_tensor=False)

    def forward(self, image_tokens: torch.Tensor, extra_tokens: torch.Tensor) -> torch.Tensor:
        B, N, T, P, D = image_tokens.shape
        x = self.embed(image_tokens)  # [B, N, T, P, D]
        x = torch.cat([extra_tokens, x.reshape(B, N * T * P, D)], dim=1)  # [B, E + N*T*P, D]
        for layer in self.blocks.layers:
            x = self.run_layer(layer, x)
        return self.norm(x)


class FactorizedFusion(TokenFusion):
    """Divided space-time attention (as in TimeSformer): each layer is a spatial layer over the
    ``S = E + N_cam*P`` tokens of one frame (every camera's cells plus a per-frame copy of the extra
    tokens), then a temporal layer over the ``T`` frames of each of those ``S`` tokens. One layer
    already connects every token to every other (camera c frame t -> camera c' frame t -> frame t').
    The extra tokens' per-frame copies start equal (plus the frame embedding) and are averaged over
    frames at the end.

    Cost per layer: attention ``O(T*S*(S + T) * D)`` compute and ``O(T*S^2 + S*T^2)`` score memory,
    against ``O((T*S)^2 * D)`` and ``O((T*S)^2)`` for joint: ``T*S / (S + T) ~ min(T, S)`` times less
    (about 16x for 8 cameras x 16 frames x 128 cells). It grows linearly with frames while ``T < S``,
    still quadratically with the tokens of one frame (cameras x cells). The MLPs cost
    ``O(2 * T*S * D^2)``, twice the joint ones (two sub-layers per layer), as do the parameters.
    """

    def __init__(self, *, depth: int, **kwargs) -> None:
        super().__init__(depth=depth, **kwargs)
        self.spatial = nn.ModuleList([self.make_layer() for _ in range(depth)])
        self.temporal = nn.ModuleList([self.make_layer() for _ in range(depth)])

    def forward(self, image_tokens: torch.Tensor, extra_tokens: torch.Tensor) -> torch.Tensor:
        B, N, T, P, D = image_tokens.shape
        E = extra_tokens.shape[1]
        S = E + N * P
        x = self.embed(image_tokens).transpose(1, 2).reshape(B, T, N * P, D)  # [B, T, N*P, D]
        extra = extra_tokens[:, None] + self.frame_emb[None, :T, None]  # [B, T, E, D]
        x = torch.cat([extra, x], dim=2)  # [B, T, S, D]
        for spatial, temporal in zip(self.spatial, self.temporal):
            x = self.run_layer(spatial, x.reshape(B * T, S, D)).view(B, T, S, D)
            x = x.transpose(1, 2).reshape(B * S, T, D)  # [B*S, T, D]
            x = self.run_layer(temporal, x).view(B, S, T, D).transpose(1, 2)  # [B, T, S, D]
        x = self.norm(x)
        extra = x[:, :, :E].mean(dim=1)  # [B, E, D]
        image = x[:, :, E:].reshape(B, T, N, P, D).transpose(1, 2).reshape(B, N * T * P, D)  # [B, N*T*P, D]
        return torch.cat([extra, image], dim=1)  # [B, E + N*T*P, D]


FUSIONS: dict[str, type[TokenFusion]] = {"joint": JointFusion, "factorized": FactorizedFusion}
"""Fusions by name (``model.fusion``)."""


def make_fusion(name: str, **kwargs) -> TokenFusion:
    """The fusion ``name`` (a key of ``FUSIONS``) built with the ``TokenFusion`` arguments."""
    cls = FUSIONS.get(name)
    if cls is None:
        raise ConfigError(f"model.fusion: unknown fusion {name!r}; known: {', '.join(FUSIONS)}")
    return cls(**kwargs)


def grid_rays(
    intrinsics: torch.Tensor, cam_to_ego: torch.Tensor, *, image_size: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """Unit viewing ray, in the ego frame, of the centre of each token grid cell.

    Pixels follow the OpenCV pixel-centre convention of ``fsdtrain.synth.rig``: the image spans
    ``[-0.5, W - 0.5]``, so cell ``j`` of ``gw`` has its centre at ``u = (j + 0.5) * W / gw - 0.5``.

    Args:
        intrinsics: ``K`` [B, N_cam, 3, 3] for images of ``image_size``.
        cam_to_ego: ``T_cam_to_ego`` [B, N_cam, 4, 4].
        image_size: ``(H, W)`` of the images the model sees.
        grid: ``(gh, gw)`` token grid.

    Returns:
        [B, N_cam, gh*gw, 3] float32 unit directions, cells row-major as the encoder's tokens.
    """
    (H, W), (gh, gw) = image_size, grid
    dev = intrinsics.device
    v = (torch.arange(gh, device=dev, dtype=torch.float32) + 0.5) * (H / gh) - 0.5  # [gh]
    u = (torch.arange(gw, device=dev, dtype=torch.float32) + 0.5) * (W / gw) - 0.5  # [gw]
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1).reshape(gh * gw, 3)  # [P, 3] homogeneous
    # in fp32 even under autocast: K^-1 of a focal length of hundreds of pixels needs the precision
    with torch.autocast(device_type=dev.type, enabled=False):
        K_inv = torch.linalg.inv(intrinsics.float())  # [B, N, 3, 3]
        R = cam_to_ego.float()[..., :3, :3]  # [B, N, 3, 3]
        d = pix @ (R @ K_inv).transpose(-1, -2)  # [B, N, P, 3] = R K^-1 pix
        return d / d.norm(dim=-1, keepdim=True)


class RayEmbedding(nn.Module):
    """Per camera and grid cell: the unit viewing ray and the camera origin in the ego frame
    (6 numbers, from ``K`` and ``T_cam_to_ego``) through a small MLP into ``d_model``.

    It tells the fusion where each token looks, so the model is not tied to one rig's camera ids
    (the learned camera embedding still distinguishes cameras).
    """

    def __init__(self, d_model: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(
        self,
        intrinsics: torch.Tensor,
        cam_to_ego: torch.Tensor,
        *,
        image_size: tuple[int, int],
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """``K`` [B, N_cam, 3, 3], ``T_cam_to_ego`` [B, N_cam, 4, 4] -> [B, N_cam, gh*gw, D]."""
        rays = grid_rays(intrinsics, cam_to_ego, image_size=image_size, grid=grid)  # [B, N, P, 3]
        origin = cam_to_ego[..., None, :3, 3].float().expand_as(rays)  # [B, N, P, 3] metres
        features = torch.cat([rays, origin], dim=-1)  # [B, N, P, 6]
        return self.mlp(features.to(self.mlp[0].weight.dtype))
