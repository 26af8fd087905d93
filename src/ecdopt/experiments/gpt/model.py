"""A small decoder-only transformer (GPT-2's layout) with optional non-learned attention biases.

The model is GPT-2's pre-LayerNorm decoder: token and learned position embeddings, ``n_layer``
blocks of causal self-attention (torch's ``scaled_dot_product_attention``) and a GELU MLP, each
added to the residual stream, a final LayerNorm and an output layer tied to the token embedding.
Weights start as GPT-2's: N(0, 0.02), the residual output projections N(0, 0.02/√(2·n_layer)),
biases 0.

Symmetry breaking (the attention biases of the ECD authors' "Symmetry Breaking in Transformers"
study): attention is unchanged by Q → RQ, K → RK for any rotation R of a head's query/key space,
and by V → VR, O → Rᵀ O in the value/output space. These continuous symmetries give the
frictionless ECD dynamics conserved "angular momenta" that confine its exploration. Adding a
random, non-learned bias to the queries, q ← q + b_Q, and to the values, v ← v + b_V, breaks
both. Each bias is one vector of the head dimension, shared by every head, position and sequence
of a batch, drawn anew for every training batch and for every layer: b ~ N(mean, std²) per
component (:func:`draw_biases`). A key bias is not offered: q·(k + b_K) − q·k = q·b_K is the same
for every key of a query, so softmax removes it. Held-out losses use the biases' mean
(:func:`mean_biases`), a deterministic model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "BIAS_KINDS",
    "GPT",
    "AttentionBias",
    "BiasSpec",
    "GPTConfig",
    "draw_biases",
    "mean_biases",
]

#: which attention biases are drawn: none, the query's, the value's, or both
BIAS_KINDS = ("none", "q", "v", "qv")


@dataclass(frozen=True)
class GPTConfig:
    """The transformer's shape: ``n_embd`` = ``n_head`` × head dimension."""

    vocab_size: int = 256
    context: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BiasSpec:
    """The symmetry-breaking biases: ``kind`` (none, q, v, qv), each component ~ N(mean, std²)."""

    kind: str = "none"
    mean: float = 0.5
    std: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in BIAS_KINDS:
            raise ValueError(f"kind must be one of {', '.join(BIAS_KINDS)}, got {self.kind!r}")
        if not math.isfinite(self.mean):
            raise ValueError(f"mean must be a finite number, got {self.mean!r}")
        if not (math.isfinite(self.std) and self.std >= 0):
            raise ValueError(f"std must be a finite number >= 0, got {self.std!r}")

    @property
    def query(self) -> bool:
        return "q" in self.kind

    @property
    def value(self) -> bool:
        return "v" in self.kind

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class AttentionBias:
    """One layer's biases: b_Q and b_V of shape (head_dim,), or None when not used."""

    query: Tensor | None = None
    value: Tensor | None = None


def draw_biases(
    spec: BiasSpec, config: GPTConfig, generator: torch.Generator, device: torch.device | str
) -> list[AttentionBias] | None:
    """Fresh biases for one batch: per layer, b ~ N(mean, std²) per component (None: no biases).

    Drawn on the CPU from ``generator`` (the same draws on every device), then moved."""
    if spec.kind == "none":
        return None
    out = []
    for _ in range(config.n_layer):
        q, v = (
            (spec.mean + spec.std * torch.randn(config.head_dim, generator=generator)).to(device)
            if wanted
            else None
            for wanted in (spec.query, spec.value)
        )
        out.append(AttentionBias(query=q, value=v))
    return out


def mean_biases(
    spec: BiasSpec, config: GPTConfig, device: torch.device | str
) -> list[AttentionBias] | None:
    """The biases' mean (every component = ``spec.mean``), for held-out evaluation."""
    if spec.kind == "none":
        return None
    mean = torch.full((config.head_dim,), float(spec.mean), device=device)
    bias = AttentionBias(query=mean if spec.query else None, value=mean if spec.value else None)
    return [bias] * config.n_layer


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``bias`` adds b_Q to the queries and b_V to the values."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: Tensor, bias: AttentionBias | None = None) -> Tensor:
        batch, length, width = x.shape
        q, k, v = (
            t.view(batch, length, self.n_head, self.head_dim).transpose(1, 2)
            for t in self.qkv(x).split(width, dim=2)
        )
        if bias is not None and bias.query is not None:
            q = q + bias.query.to(q.dtype)
        if bias is not None and bias.value is not None:
            v = v + bias.value.to(v.dtype)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: Tensor, bias: AttentionBias | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    """The decoder: ``forward(tokens, biases)`` maps (batch, length) token ids to logits.

    ``biases``: None, or one :class:`AttentionBias` per layer (:func:`draw_biases` per training
    batch, :func:`mean_biases` for evaluation). They are inputs, never parameters.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.context, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied, as GPT-2
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            nn.init.normal_(block.proj.weight, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: Tensor, biases: list[AttentionBias] | None = None) -> Tensor:
        length = tokens.shape[1]
        if length > self.config.context:
            raise ValueError(f"sequence length {length} exceeds the context {self.config.context}")
        if biases is not None and len(biases) != len(self.blocks):
            raise ValueError(f"biases: expected {len(self.blocks)} layers, got {len(biases)}")
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for i, block in enumerate(self.blocks):
            x = block(x, None if biases is None else biases[i])
        return self.head(self.ln_f(x))

    def loss(self, tokens: Tensor, biases: list[AttentionBias] | None = None) -> Tensor:
        """Mean next-token cross-entropy (nats per token) over windows ``tokens`` of length
        context + 1: positions 0..T−1 predict 1..T."""
        logits = self(tokens[:, :-1], biases)
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
