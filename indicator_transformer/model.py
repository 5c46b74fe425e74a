"""The indicator transformer: a window of L feature vectors -> the standardised forward return.

    x (B, L, F) -> Linear(F, D) + learned position (1, L, D) -> N pre-norm encoder layers
      -> LayerNorm -> last position (B, D) -> Linear(D, 1) -> (B,)

The head reads the last position only: with the full window visible to every position through
attention, the last one is where the most recent bar is and where the prediction is made.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class IndicatorTransformer(nn.Module):
    """Transformer encoder over indicator windows predicting one number per window."""

    def __init__(self, n_features: int, window: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_features = n_features
        self.window = window
        self.input = nn.Linear(n_features, cfg.d_model)
        self.position = nn.Parameter(torch.zeros(1, window, cfg.d_model))
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.d_model, nhead=cfg.heads, dim_feedforward=cfg.d_model * cfg.ff_mult,
            dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the fast path only matters for padded batches, which we never
        # have, and it warns with norm_first=True.
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)
        nn.init.normal_(self.position, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, F) -> (B,) standardised forward-return prediction."""
        h = self.input(x) + self.position          # (B, L, D)
        h = self.encoder(h)                         # (B, L, D)
        h = self.norm(h[:, -1])                     # (B, D)
        return self.head(h).squeeze(-1)             # (B,)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
