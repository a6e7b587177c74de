"""The WINGS layer as the paper writes it (docs/method.md, "Model"): learners, router, and their sum.

In a WINGS layer the attention block's output a becomes
    a + w_v * L_v(x, X_v) + w_t * L_t(x, X_t)        ("wings")
    a + L_v(x, X_v)                                  ("visual": align stage, ablation)
where x is the attention's own normalised input, X_v the projector's visual features and X_t the LLM's input
token embeddings at text positions. A learner is a LoRRA attention (low-rank residual attention):
    Q = x + x A_q B_q,   K = X + X A_k B_k,   V = X + X A_v B_v        (rotary on Q and K at true positions)
    L(x, X) = softmax(Q K^T / sqrt(D) + M) V A_o B_o                   (per head; M: which keys a token sees)
The visual learner sees the visual keys, the textual learner the text keys, both causal by true position. The
router turns the main attention's per-head mass on visual keys m into (w_v, w_t) = softmax(W m + b).

These forwards are the specification. The model runs the same maths reordered for speed (`fused.py`: all layers'
key projections at once, rank-space mixing); tests/model/test_fused.py holds the two equal, outputs and gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class LowRankDown(nn.Linear):
    """A (d -> r), trunc-normal(init_std) at initialisation."""

    def __init__(self, hidden_size: int, rank: int, init_std: float = 0.02):
        super().__init__(hidden_size, rank, bias=False)
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = getattr(self, "init_std", 0.02)  # (nn.Linear.__init__ calls this before init_std is set)
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)


class LowRankUp(nn.Linear):
    """B (r -> d), zero at initialisation: a new learner adds exactly nothing."""

    def __init__(self, rank: int, hidden_size: int):
        super().__init__(rank, hidden_size, bias=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


class LowRankResidual(nn.Module):
    """`x + x A B` (or `x A B` alone when `residual=False`)."""

    def __init__(self, hidden_size: int, rank: int, residual: bool = True, init_std: float = 0.02):
        super().__init__()
        self.down = LowRankDown(hidden_size, rank, init_std)  # A
        self.up = LowRankUp(rank, hidden_size)  # B
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = self.up(self.down(x))
        return x + low_rank if self.residual else low_rank


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, Llama convention: x cos + rotate_half(x) sin."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


@dataclass
class LearnerKeys:
    """What one learner attends to: its key input X (B, T, d) with the rotary cos/sin of the keys' positions
    (B, T, D), and which keys each of the L queries may see: an additive mask (B, 1, L, T) of 0 / -inf (None: plainly
    causal, T = L) and, per query, whether any key is admissible (B, L) (None: every query has one)."""

    inputs: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None
    has_key: torch.Tensor | None = None


class LowRankResidualAttention(nn.Module):
    """LoRRA: multi-head attention whose q/k/v are the inputs plus low-rank residuals; output `O A_o B_o`."""

    def __init__(self, hidden_size: int, num_heads: int, rank: int, init_std: float = 0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = LowRankResidual(hidden_size, rank, True, init_std)
        self.key = LowRankResidual(hidden_size, rank, True, init_std)
        self.value = LowRankResidual(hidden_size, rank, True, init_std)
        self.output = LowRankResidual(hidden_size, rank, False, init_std)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: LearnerKeys) -> torch.Tensor:
        """L(x, X) for x (B, L, d) with the rotary cos/sin of its positions (B, L, D); result (B, L, d).

        A query without any admissible key gets 0 (its softmax would be over nothing).
        """

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, n, d) -> (B, H, n, D)
            return t.view(*t.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

        queries = rotate(heads(self.query(x)), cos.unsqueeze(1), sin.unsqueeze(1))
        key_states = rotate(heads(self.key(keys.inputs)), keys.cos.unsqueeze(1), keys.sin.unsqueeze(1))
        values = heads(self.value(keys.inputs))
        scores = queries @ key_states.transpose(-1, -2) / math.sqrt(self.head_dim)
        if keys.mask is not None:
            scores = scores + keys.mask
        else:  # plainly causal: query i sees keys 0..i
            length = scores.shape[-1]
            scores = scores.masked_fill(
                ~torch.ones(length, length, dtype=torch.bool, device=x.device).tril(), -math.inf
            )
        attended = (torch.softmax(scores.float(), dim=-1).to(values.dtype) @ values).transpose(1, 2).flatten(2)
        output = self.output(attended)
        return output if keys.has_key is None else output * keys.has_key.unsqueeze(-1).to(output.dtype)


class RouterProjection(nn.Linear):
    """The router's W m + b (H -> 2): W = 0 and b = [logit(w0), 0] at initialisation."""

    def __init__(self, num_heads: int, init_visual_weight: float = 0.9):
        if not 0.0 < init_visual_weight < 1.0:
            raise ValueError(f"the router's initial visual weight must be in (0, 1), got {init_visual_weight}.")
        super().__init__(num_heads, 2)
        self.init_visual_weight = init_visual_weight
        self.reset_parameters()

    def initial_bias(self) -> torch.Tensor:
        w0 = getattr(self, "init_visual_weight", 0.5)  # (nn.Linear.__init__ calls reset_parameters first)
        return torch.tensor([math.log(w0 / (1.0 - w0)), 0.0])

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        with torch.no_grad():
            self.bias.copy_(self.initial_bias())


class Router(nn.Module):
    """Per token, mixes the learners from the main attention's per-head mass on visual tokens: softmax(W m + b).

    Starts with W = 0 and b = [logit(w0), 0]: every token that sees an image gets w_v = w0, w_t = 1 - w0.
    """

    def __init__(self, num_heads: int, init_visual_weight: float = 0.9):
        super().__init__()
        self.proj = RouterProjection(num_heads, init_visual_weight)

    def forward(self, visual_mass: torch.Tensor, has_visual_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_v, w_t), each (B, L, 1) in fp32; a token with no visual token before it gets w_v = 0, w_t = 1."""
        weights = torch.softmax(self.proj(visual_mass.to(self.proj.weight.dtype)).float(), dim=-1)
        has_visual = has_visual_key.unsqueeze(-1)
        visual_weight = torch.where(has_visual, weights[..., :1], 0.0)
        textual_weight = torch.where(has_visual, weights[..., 1:], 1.0)
        return visual_weight, textual_weight


class WingsLayer(nn.Module):
    """The learners and router of one decoder layer: `a + w_v L_v(x, X_v) + w_t L_t(x, X_t)`."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        rank: int,
        mode: str,
        init_std: float = 0.02,
        router_init_visual_weight: float = 0.9,
    ):
        super().__init__()
        self.visual_learner = LowRankResidualAttention(hidden_size, num_heads, rank, init_std)
        self.textual_learner = (
            LowRankResidualAttention(hidden_size, num_heads, rank, init_std) if mode == "wings" else None
        )
        self.router = Router(num_heads, router_init_visual_weight) if mode == "wings" else None

    def forward(
        self,
        x: torch.Tensor,
        attention_output: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        visual: LearnerKeys | None,
        text: LearnerKeys,
        visual_mass: torch.Tensor | None,
        has_visual_key: torch.Tensor | None,
    ) -> torch.Tensor:
        """`a` plus the learners, for x (B, L, d) at positions with rotary cos/sin (B, L, D).

        `visual` is None when no visual key exists (then w_v = 0, w_t = 1); `visual_mass` (B, L, H) and
        `has_visual_key` (B, L) are the router's input: the attention mass on visual keys, and whether a visual key
        is at or before the token.
        """
        if self.router is None:  # "visual": the visual learner alone, at full weight
            return attention_output if visual is None else attention_output + self.visual_learner(x, cos, sin, visual)
        textual = self.textual_learner(x, cos, sin, text)
        if visual is None:
            return attention_output + textual
        if visual_mass is None:  # no visual key anywhere (a text-only training batch): no mass on them
            visual_mass = x.new_zeros(*x.shape[:2], self.router.proj.in_features)
        visual_weight, textual_weight = self.router(visual_mass, has_visual_key)
        visual_part = visual_weight.to(x.dtype) * self.visual_learner(x, cos, sin, visual)
        return attention_output + visual_part + textual_weight.to(x.dtype) * textual
