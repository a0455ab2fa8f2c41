"""Attention-MIL heads over bags of tile features: gated ABMIL, CLAM-SB, TransMIL, mean-pool.

A bag is one slide's tile features, (N, D) float32. Every head takes a batch of bags
``x`` (B, N, D) with an optional bool ``mask`` (B, N) (True = real tile, False = padding)
and returns a :class:`MILOutput`: one output per task and one attention map per task.

Multi-task: a shared tile projection (Linear D->hidden, ReLU, dropout) feeds ONE attention
branch per task (ABMIL/CLAM: a gated-attention branch; TransMIL: a class token), and each
branch feeds its own head: logits (B, C) for a classification task, (B,) on the
standardised scale for a regression task, and for a survival task the risk (B,) of a Cox
head (log hazard ratio, higher = worse) or hazard logits (B, K) of a discrete-time head.
Separate branches matter: a tumour-type head and an immune-fraction head want different tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import TrainingDataError

TaskKind = Literal["classification", "regression", "survival"]


@dataclass(frozen=True)
class TaskSpec:
    """One prediction target: a labels column name, its kind and (classification) class names.

    ``classes`` are the label encoder: class ``i`` of the logits is ``classes[i]``.
    ``n_bins`` (survival only): None for a Cox head (one output, the log hazard ratio =
    risk), or the number of discrete-time bins of a hazard head (Zadeh & Schmid 2020).
    """

    name: str
    kind: TaskKind
    classes: tuple[str, ...] | None = None
    n_bins: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "regression", "survival"):
            raise TrainingDataError(
                f"task {self.name!r}: kind must be 'classification', 'regression' or "
                f"'survival', not {self.kind!r}"
            )
        if self.n_bins is not None and (self.kind != "survival" or self.n_bins < 2):
            raise TrainingDataError(
                f"task {self.name!r}: n_bins is for survival tasks only and must be >= 2"
            )
        if self.kind == "classification":
            if self.classes is None or len(self.classes) < 2:
                raise TrainingDataError(
                    f"classification task {self.name!r} needs at least 2 classes, "
                    f"got {self.classes!r}"
                )
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        elif self.classes is not None:
            raise TrainingDataError(f"{self.kind} task {self.name!r} takes no classes")

    @property
    def n_outputs(self) -> int:
        """Width of this task's head: the number of classes (or discrete-time bins), else 1."""
        if self.classes is not None:
            return len(self.classes)
        return self.n_bins or 1


@dataclass
class MILOutput:
    """What a MIL head returns for a batch of B bags of N tiles.

    ``outputs[task]``: logits (B, C) for classification, (B,) standardised values for
    regression. ``attention[task]``: (B, N), each row sums to 1 over the real tiles and is
    0 on padding. ``extra_loss``: a scalar to add to the task losses while training (CLAM's
    weighted instance loss), else None.
    """

    outputs: dict[str, Tensor]
    attention: dict[str, Tensor]
    extra_loss: Tensor | None = None

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.outputs.items())
        extra = "" if self.extra_loss is None else ", with extra loss"
        return f"MILOutput({shapes}{extra})"


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dim (tiles), restricted to ``mask``; masked tiles get exactly 0.

    ``scores`` is (B, ..., N) and ``mask`` (B, N). A bag with no real tile gets all zeros.
    Written out (max, exp, sum, divide) in float32 rather than with ``softmax``: torch's CPU
    softmax backward depends on the thread count, so training would differ (~1e-8) between
    machines; this form does not.
    """
    x = scores.float()
    if x.shape[-1] == 0:
        return scores.clone()
    if mask is None:
        keep = torch.ones_like(x, dtype=torch.bool)
    else:
        keep = mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[-1]).expand_as(x)
    floor = torch.finfo(x.dtype).min
    top = x.detach().masked_fill(~keep, floor).amax(dim=-1, keepdim=True)
    shifted = torch.where(keep, x - top, torch.full_like(x, -torch.inf))
    weights = shifted.exp()
    total = weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return (weights / total).to(scores.dtype)


class MILModel(nn.Module):
    """Base of every head: the shared tile projection and one head per task.

    Subclasses implement :meth:`pool`, which turns projected tiles (B, N, hidden) into one
    pooled vector per task (B, T, hidden) and attention (B, T, N).
    """

    arch: str = ""

    def __init__(
        self, in_dim: int, tasks: Sequence[TaskSpec], hidden: int = 256, dropout: float = 0.25
    ) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if not tasks:
            raise TrainingDataError("a MIL model needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise TrainingDataError(f"task names must be unique, got {names}")
        self.in_dim = int(in_dim)
        self.hidden = int(hidden)
        self.tasks = tasks
        self.projection = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList(nn.Linear(hidden, t.n_outputs) for t in tasks)

    def pool(
        self, h: Tensor, mask: Tensor | None, targets: Mapping[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Projected tiles (B, N, hidden) -> pooled (B, T, hidden), attention (B, T, N), extra loss."""
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        targets: Mapping[str, Tensor] | None = None,
    ) -> MILOutput:
        """Run the head on bags ``x`` (B, N, D) with optional ``mask`` (B, N), True = real tile.

        ``targets`` (classification task -> (B,) int64 class index, -1 = unknown) is only
        used by heads with an instance-level loss (CLAM-SB); others ignore it.
        """
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"expected bags of shape (B, N, {self.in_dim}), got {tuple(x.shape)}")
        if mask is not None:
            mask = mask.to(dtype=torch.bool)
        h = self.projection(x)
        pooled, attention, extra = self.pool(h, mask, targets)
        outputs = {}
        for i, (task, head) in enumerate(zip(self.tasks, self.heads, strict=True)):
            out = head(pooled[:, i])
            outputs[task.name] = out if task.n_outputs > 1 else out.squeeze(-1)
        maps = {task.name: attention[:, i] for i, task in enumerate(self.tasks)}
        return MILOutput(outputs, maps, extra)


class GatedAttention(nn.Module):
    """Gated attention (Ilse et al. 2018), one branch per task, fused into two matmuls.

    score_t(h) = w_t . (tanh(V_t h) * sigmoid(U_t h)) + b_t for each task t.
    """

    def __init__(self, hidden: int, attn_dim: int, n_tasks: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_tasks, self.attn_dim = n_tasks, attn_dim
        self.value = nn.Linear(hidden, attn_dim * n_tasks)
        self.gate = nn.Linear(hidden, attn_dim * n_tasks)
        self.dropout = nn.Dropout(dropout)
        bound = 1.0 / math.sqrt(attn_dim)
        self.weight = nn.Parameter(torch.empty(n_tasks, attn_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, h: Tensor) -> Tensor:
        """Tiles (B, N, hidden) -> unnormalised attention scores (B, T, N)."""
        b, n, _ = h.shape
        gated = torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))
        gated = self.dropout(gated).view(b, n, self.n_tasks, self.attn_dim)
        return torch.einsum("bnta,ta->btn", gated, self.weight) + self.bias.view(1, -1, 1)


class ABMIL(MILModel):
    """Gated-attention MIL (Ilse et al. 2018) with one attention branch per task."""

    arch = "abmil"

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[TaskSpec],
        hidden: int = 256,
        dropout: float = 0.25,
        attn_dim: int = 128,
    ) -> None:
        super().__init__(in_dim, tasks, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, len(self.tasks), dropout)

    def pool(
        self, h: Tensor, mask: Tensor | None, targets: Mapping[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        scores = self.attention(h)
        attention = masked_softmax(scores, mask)
        pooled = torch.einsum("btn,bnh->bth", attention, h)
        return pooled, attention, self.instance_loss(h, scores, mask, targets)

    def instance_loss(
        self, h: Tensor, scores: Tensor, mask: Tensor | None, targets: Mapping[str, Tensor] | None
    ) -> Tensor | None:
        """No instance-level loss for plain ABMIL."""
        return None


class CLAMSB(ABMIL):
    """CLAM single-branch (Lu et al. 2021): gated attention plus instance-level clustering.

    While targets are given, for every classification task the ``k_sample`` most- and
    least-attended tiles of a bag are pseudo-labelled for that task's instance classifier
    of the bag's class (top = positive, bottom = negative); with ``subtyping`` the top tiles
    are also negatives for the other classes' classifiers. The cross-entropy of those
    pseudo-labels, times ``inst_weight``, is returned as ``extra_loss``.
    """

    arch = "clam_sb"

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[TaskSpec],
        hidden: int = 256,
        dropout: float = 0.25,
        attn_dim: int = 128,
        k_sample: int = 8,
        inst_weight: float = 0.3,
        subtyping: bool = True,
    ) -> None:
        super().__init__(in_dim, tasks, hidden, dropout, attn_dim)
        self.k_sample, self.inst_weight, self.subtyping = k_sample, inst_weight, subtyping
        self.class_tasks = [i for i, t in enumerate(self.tasks) if t.kind == "classification"]
        # One 2-way instance classifier per class, fused: Linear(hidden, 2 * C) per task.
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(hidden, 2 * self.tasks[i].n_outputs) for i in self.class_tasks
        )

    def instance_loss(
        self, h: Tensor, scores: Tensor, mask: Tensor | None, targets: Mapping[str, Tensor] | None
    ) -> Tensor | None:
        """``inst_weight`` x the cross-entropy of the pseudo-labelled top and bottom tiles
        (see the class docstring), averaged over tasks; None when no bag has a known class
        and enough tiles."""
        if not targets or not self.class_tasks:
            return None
        n_real = (
            mask.sum(dim=1)
            if mask is not None
            else torch.full((h.shape[0],), h.shape[1], device=h.device)
        )
        losses = []
        for i, classifier in zip(self.class_tasks, self.instance_classifiers, strict=True):
            y = targets.get(self.tasks[i].name)
            if y is None:
                continue
            known = y >= 0
            if not bool(known.any()):
                continue
            k = min(self.k_sample, int(n_real[known].min()) // 2)
            if k < 1:
                continue
            losses.append(
                self._task_instance_loss(
                    h[known],
                    scores[known, i],
                    None if mask is None else mask[known],
                    y[known],
                    classifier,
                    k,
                )
            )
        if not losses:
            return None
        return self.inst_weight * torch.stack(losses).mean()

    def _task_instance_loss(
        self,
        h: Tensor,
        scores: Tensor,
        mask: Tensor | None,
        y: Tensor,
        classifier: nn.Linear,
        k: int,
    ) -> Tensor:
        """Instance loss of one task for bags with known class ``y`` (B,); scores (B, N)."""
        b = h.shape[0]
        high, low = scores, -scores
        if mask is not None:
            high = scores.masked_fill(~mask, float("-inf"))
            low = (-scores).masked_fill(~mask, float("-inf"))
        top = high.topk(k, dim=1).indices
        bottom = low.topk(k, dim=1).indices
        idx = torch.cat([top, bottom], dim=1)  # (B, 2k)
        picked = h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        n_classes = classifier.out_features // 2
        logits = classifier(picked).view(b, 2 * k, n_classes, 2).float()
        # In-class classifier: top tiles positive, bottom tiles negative.
        own = logits.gather(2, y.view(b, 1, 1, 1).expand(b, 2 * k, 1, 2)).squeeze(2)
        own_target = torch.cat([torch.ones(b, k), torch.zeros(b, k)], dim=1).to(y)
        per_bag = (
            F.cross_entropy(own.reshape(-1, 2), own_target.reshape(-1), reduction="none")
            .view(b, 2 * k)
            .mean(dim=1)
        )
        if self.subtyping:
            # Other classes' classifiers: this bag's top tiles are not of their class.
            other = torch.ones(b, n_classes, dtype=torch.bool, device=h.device)
            other[torch.arange(b, device=h.device), y] = False
            top_logits = logits[:, :k].reshape(-1, 2)
            per_class = F.cross_entropy(top_logits, y.new_zeros(len(top_logits)), reduction="none")
            per_class = per_class.view(b, k, n_classes).mean(dim=1)
            per_bag = (per_bag + (per_class * other).sum(dim=1)) / n_classes
        return per_bag.mean()


class PPEG(nn.Module):
    """Pyramid position encoding (Shao et al. 2021): depthwise 7/5/3 convs on the tiles laid
    row-major on a ceil(sqrt(N))^2 square (zero-padded), added to the tokens."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden) for k in (7, 5, 3)
        )

    def forward(self, tiles: Tensor) -> Tensor:
        """Tile tokens (B, N, hidden) -> same shape with the positional term added."""
        b, n, c = tiles.shape
        side = max(1, math.ceil(math.sqrt(n)))
        grid = F.pad(tiles, (0, 0, 0, side * side - n)).transpose(1, 2).reshape(b, c, side, side)
        encoded = grid + sum(conv(grid) for conv in self.convs)
        return encoded.flatten(2).transpose(1, 2)[:, :n]


class TransformerLayer(nn.Module):
    """Pre-norm multi-head self-attention with a residual (TransMIL's TransLayer, full
    attention instead of Nystrom). Can return the first ``n_query`` tokens' attention."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise TrainingDataError(f"hidden={hidden} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(
        self, x: Tensor, key_mask: Tensor | None, n_query: int = 0
    ) -> tuple[Tensor, Tensor | None]:
        """Tokens (B, L, hidden), key_mask (B, L) True = attend -> tokens, and with
        ``n_query`` > 0 the attention (B, heads, n_query, L) of the first n_query tokens."""
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn_mask = None if key_mask is None else key_mask.view(b, 1, 1, n)
        mixed = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.out(mixed.transpose(1, 2).reshape(b, n, c))
        if not n_query:
            return x, None
        logits = (q[:, :, :n_query] @ k.transpose(-1, -2)) / math.sqrt(c // self.heads)
        if key_mask is not None:
            logits = logits.masked_fill(~attn_mask, torch.finfo(logits.dtype).min)
        return x, logits.float().softmax(dim=-1)


class TransMIL(MILModel):
    """TransMIL (Shao et al. 2021): two self-attention layers over [class tokens; tiles] with
    a PPEG positional encoding between them. One class token per task; a task's attention
    is its class token's last-layer attention to the tiles, averaged over heads and
    renormalised over the real tiles. Full softmax attention (not Nystrom): compute grows
    as N^2, slow for bags of thousands of tiles on a CPU; pass
    ``max_tiles`` when training on CPU, or use a GPU. ``ppeg=False`` drops the positional encoding
    (then the output does not depend on tile order or on batch padding)."""

    arch = "transmil"

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[TaskSpec],
        hidden: int = 256,
        dropout: float = 0.25,
        heads: int = 8,
        ppeg: bool = True,
    ) -> None:
        super().__init__(in_dim, tasks, hidden, dropout)
        self.class_tokens = nn.Parameter(torch.randn(1, len(self.tasks), hidden) * 0.02)
        # No dropout inside attention: it would force PyTorch's slow unfused kernel on CPU.
        self.layer1 = TransformerLayer(hidden, heads, dropout=0.0)
        self.layer2 = TransformerLayer(hidden, heads, dropout=0.0)
        self.ppeg = PPEG(hidden) if ppeg else None
        self.norm = nn.LayerNorm(hidden)

    def pool(
        self, h: Tensor, mask: Tensor | None, targets: Mapping[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        b, n, _ = h.shape
        t = len(self.tasks)
        tokens = torch.cat([self.class_tokens.expand(b, -1, -1).to(h.dtype), h], dim=1)
        key_mask = None
        if mask is not None:
            key_mask = torch.cat([mask.new_ones(b, t), mask], dim=1)
        tokens, _ = self.layer1(tokens, key_mask)
        if self.ppeg is not None:
            tiles = tokens[:, t:]
            if mask is not None:
                tiles = tiles * mask.unsqueeze(-1).to(tiles.dtype)
            tokens = torch.cat([tokens[:, :t], self.ppeg(tiles)], dim=1)
        tokens, weights = self.layer2(tokens, key_mask, n_query=t)
        tile_attention = weights[..., t:].mean(dim=1)  # (B, T, N)
        if mask is not None:
            tile_attention = tile_attention * mask.unsqueeze(1)
        attention = tile_attention / tile_attention.sum(-1, keepdim=True).clamp_min(1e-12)
        return self.norm(tokens[:, :t]), attention, None


class MeanPool(MILModel):
    """Baseline: the mean of the projected tiles feeds every task head; uniform attention."""

    arch = "meanpool"

    def pool(
        self, h: Tensor, mask: Tensor | None, targets: Mapping[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        b, n, _ = h.shape
        if mask is None:
            weights = h.new_full((b, n), 1.0 / max(n, 1))
        else:
            m = mask.to(h.dtype)
            weights = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        pooled = torch.einsum("bn,bnh->bh", weights, h)
        t = len(self.tasks)
        return pooled.unsqueeze(1).expand(-1, t, -1), weights.unsqueeze(1).expand(-1, t, -1), None


HeadBuilder = Callable[..., MILModel]
"""``builder(in_dim, tasks, *, hidden, dropout, **arch_kwargs) -> MILModel``; a
:class:`MILModel` subclass is one."""


@dataclass(frozen=True)
class _Head:
    builder: HeadBuilder
    description: str


_HEADS: dict[str, _Head] = {
    cls.arch: _Head(cls, description)
    for cls, description in (
        (ABMIL, "gated attention"),
        (CLAMSB, "gated attention plus CLAM's instance clustering loss"),
        (TransMIL, "self-attention with a class token per task"),
        (MeanPool, "mean of the tiles, a baseline"),
    )
}

ARCHITECTURES: tuple[str, ...] = tuple(_HEADS)
"""The built-in MIL heads; :func:`known_heads` adds those registered with
:func:`register_head`."""


def register_head(name: str, builder: HeadBuilder, *, description: str = "") -> None:
    """Make ``name`` a MIL head: :func:`build_model`, ``models.train(..., arch=name)`` and
    ``models.cross_validate`` then build it with ``builder(in_dim, tasks, *, hidden,
    dropout, **arch_kwargs)``, which returns a :class:`MILModel` (a subclass that implements
    :meth:`MILModel.pool`, or the subclass itself). A checkpoint stores the name, not the
    code: register the head again in a process that loads one. Re-registering a name of
    yours replaces it; the built-in names (:data:`ARCHITECTURES`) cannot be replaced.
    ``description`` (one line) is shown where heads are listed.
    """
    if not isinstance(name, str) or not name.strip():
        raise TrainingDataError(f"a MIL head name must be a non-empty string, got {name!r}")
    if name in ARCHITECTURES:
        raise TrainingDataError(
            f"{name!r} is a built-in MIL head and cannot be replaced: register yours under "
            "another name"
        )
    if not callable(builder):
        raise TrainingDataError(
            f"the builder of MIL head {name!r} must be callable, got {type(builder).__name__}"
        )
    _HEADS[name] = _Head(builder, " ".join(description.split()))


def known_heads() -> list[str]:
    """Names of the MIL heads: the built-ins, then those registered with :func:`register_head`
    in the order they were registered."""
    return list(_HEADS)


def _describe_heads() -> str:
    return "; ".join(f"{n}: {h.description}" if h.description else n for n, h in _HEADS.items())


def build_model(
    arch: str,
    in_dim: int,
    tasks: Sequence[TaskSpec],
    hidden: int = 256,
    dropout: float = 0.25,
    **arch_kwargs: object,
) -> MILModel:
    """Build a MIL head by name (one of :func:`known_heads`) for ``in_dim``-d tile features.

    ``arch_kwargs`` go to the head: ``attn_dim`` (abmil, clam_sb), ``k_sample``,
    ``inst_weight``, ``subtyping`` (clam_sb), ``heads``, ``ppeg`` (transmil).
    """
    head = _HEADS.get(arch)
    if head is None:
        raise TrainingDataError(
            f"unknown MIL architecture {arch!r}; choose one of {', '.join(_HEADS)} "
            f"({_describe_heads()}), or add yours with models.register_head"
        )
    model = head.builder(in_dim, tasks, hidden=hidden, dropout=dropout, **arch_kwargs)
    if not isinstance(model, MILModel):
        raise TrainingDataError(
            f"the builder of MIL head {arch!r} returned a {type(model).__name__}, not a "
            "models.MILModel: subclass MILModel and implement pool()"
        )
    return model
