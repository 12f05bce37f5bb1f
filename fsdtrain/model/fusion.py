"""Fusion: one transformer over all camera x time image tokens plus ego-state and command tokens."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenFusion"]


class TokenFusion(nn.Module):
    """Adds camera, frame and 2-D position embeddings, then runs a pre-norm transformer (SDPA).

    Args:
        d_model: token width.
        depth: transformer layers.
        num_heads: attention heads.
        cameras, frames, tokens_per_image: sizes of the embedding tables.
        dropout: dropout inside the transformer.
    """

    def __init__(self, *, d_model: int, depth: int, num_heads: int, cameras: int, frames: int, tokens_per_image: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cam_emb = nn.Parameter(torch.zeros(cameras, d_model))
        self.frame_emb = nn.Parameter(torch.zeros(frames, d_model))
        self.pos_emb = nn.Parameter(torch.zeros(tokens_per_image, d_model))
        for p in (self.cam_emb, self.frame_emb, self.pos_emb):
            nn.init.trunc_normal_(p, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout, batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, image_tokens: torch.Tensor, extra_tokens: torch.Tensor) -> torch.Tensor:
        """``image_tokens`` [B, N_cam, T, P, D], ``extra_tokens`` [B, E, D] -> [B, E + N_cam*T*P, D]
        (extra tokens first)."""
        B, N, T, P, D = image_tokens.shape
        x = image_tokens + self.cam_emb[:N, None, None] + self.frame_emb[None, :T, None] + self.pos_emb[None, None, :P]
        x = torch.cat([extra_tokens, x.reshape(B, N * T * P, D)], dim=1)  # [B, E + N*T*P, D]
        return self.norm(self.blocks(x))
