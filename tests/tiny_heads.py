"""A small user MIL head for the head-registry tests (models.register_head)."""

from __future__ import annotations

import torch
from torch import nn

from models.mil import MILModel, masked_softmax


class ScoredPool(MILModel):
    """A user head: one attention score per tile (shared by the tasks), scaled by ``scale``."""

    def __init__(self, in_dim, tasks, hidden=256, dropout=0.25, scale=1.0):
        super().__init__(in_dim, tasks, hidden, dropout)
        self.score = nn.Linear(hidden, 1)
        self.scale = scale

    def pool(self, h, mask, targets):
        attention = masked_softmax(self.score(h).squeeze(-1) * self.scale, mask)
        pooled = torch.einsum("bn,bnh->bh", attention, h)
        t = len(self.tasks)
        return pooled.unsqueeze(1).expand(-1, t, -1), attention.unsqueeze(1).expand(-1, t, -1), None
