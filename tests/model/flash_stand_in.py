"""A pure-torch stand-in for the `flash_attn` (FlashAttention 2) and `flash_attn_interface` (3) packages, on CPU.

Same entry points, signatures and limits as the real packages where transformers reaches them: `flash_attn_func`
and `flash_attn_varlen_func` with (B, L, H, D) / (total, H, D) layouts, grouped KV heads, bottom-right causal
masking, sliding windows, soft-capping, head size at most 256 and equal head sizes of q, k and v. One difference,
on purpose: float32 is accepted too (the real kernels want fp16/bf16), so that CPU tests compare exactly.

`installed(monkeypatch)` puts both packages into `sys.modules` and tells transformers that FlashAttention 2 is
available (it checks for CUDA), for the duration of a test.
"""

from __future__ import annotations

import sys
import types

import torch
from transformers import PreTrainedModel
from transformers import modeling_flash_attention_utils as flash_utils
from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

MAX_HEAD_DIM = 256


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.shape[-1] > MAX_HEAD_DIM:
        raise RuntimeError(f"FlashAttention forward only supports head dimension at most {MAX_HEAD_DIM}")
    if not q.shape[-1] == k.shape[-1] == v.shape[-1]:
        raise RuntimeError("FlashAttention needs query, key and value with the same head dimension")
    if q.shape[-2] % k.shape[-2] or k.shape[-2] != v.shape[-2]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not q.dtype == k.dtype == v.dtype:
        raise RuntimeError("FlashAttention only supports fp16 and bf16 data type (the stand-in: fp32 too)")


def _attend_one(q, k, v, softmax_scale, causal, window_size, softcap) -> torch.Tensor:
    """One sequence: q (Lq, H, D), k/v (Lk, Hk, D) -> (Lq, H, D)."""
    (lq, heads, dim), lk = q.shape, k.shape[0]
    groups = heads // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scale = dim**-0.5 if softmax_scale is None else softmax_scale
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    row = torch.arange(lq)[:, None] + (lk - lq)  # bottom-right alignment, as FlashAttention >= 2.1
    col = torch.arange(lk)[None, :]
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    left, right = window_size
    if causal:
        right = 0
    if right >= 0:
        allowed &= col <= row + right
    if left >= 0:
        allowed &= col >= row - left
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row without any key gives 0, as the kernel does
    return torch.einsum("hqk,khd->qhd", weights, v.float()).to(q.dtype)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    _check(q, k, v)
    if dropout_p or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("the stand-in has no dropout, ALiBi or returned probabilities")
    return torch.stack([_attend_one(*x, softmax_scale, causal, window_size, softcap) for x in zip(q, k, v)])


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    _check(q, k, v)
    if dropout_p or alibi_slopes is not None or return_attn_probs or block_table is not None:
        raise NotImplementedError("the stand-in has no dropout, ALiBi, returned probabilities or block tables")
    out = torch.empty_like(q)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        out[q0:q1] = _attend_one(q[q0:q1], k[k0:k1], v[k0:k1], softmax_scale, causal, window_size, softcap)
    return out


def flash_attn_with_kvcache(*args, **kwargs):
    raise NotImplementedError("the stand-in has no paged KV cache kernel")


def fa3_flash_attn_func(
    q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False
):
    return flash_attn_func(q, k, v, 0.0, softmax_scale, causal, window_size, softcap)


def fa3_flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    deterministic=False,
):
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        0.0,
        softmax_scale,
        causal,
        window_size,
        softcap,
    )


def installed(monkeypatch) -> None:
    """Install the stand-in packages for one test (pytest's `monkeypatch` undoes everything afterwards)."""
    fa2 = types.ModuleType("flash_attn")
    fa2.__version__ = "2.8.3"
    fa2.flash_attn_func, fa2.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    fa2.flash_attn_with_kvcache = flash_attn_with_kvcache
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.pad_input, padding.unpad_input = _pad_input, _unpad_input
    fa2.bert_padding = padding
    fa3 = types.ModuleType("flash_attn_interface")
    fa3.flash_attn_func, fa3.flash_attn_varlen_func = fa3_flash_attn_func, fa3_flash_attn_varlen_func
    fa3.flash_attn_with_kvcache = flash_attn_with_kvcache
    for name, module in (("flash_attn", fa2), ("flash_attn.bert_padding", padding), ("flash_attn_interface", fa3)):
        monkeypatch.setitem(sys.modules, name, module)
    # transformers checks for CUDA (and the installed distribution) before it imports flash_attn; the loaded
    # functions are cached per backend name.
    monkeypatch.setattr(flash_utils, "is_flash_attn_2_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(PreTrainedModel, "_flash_attn_can_dispatch", lambda self, *args, **kwargs: True)
    monkeypatch.setattr(flash_utils, "_loaded_implementation", None)
