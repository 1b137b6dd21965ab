"""Attention with a differentiable backward, for second-order GradMem.

Importing this package registers, in transformers' ``AttentionInterface`` (with the eager additive
mask in ``AttentionMaskInterface``):

- ``gradmem_manual``: ``torch.autograd.Function`` pair with a hand-derived backward and
  backward-of-backward; CPU and GPU (``manual.py``).
- ``gradmem_triton``: flash-style Triton kernels for the forward, backward and backward-of-backward,
  computing in float32; CUDA, or CPU under ``TRITON_INTERPRET=1`` for tests (``triton_attention.py``,
  imported on first use).

Select one with ``--attn_implementation gradmem_manual`` or ``GradMemConfig(attn_implementation=...)``.
"""
import os

from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from attn_double_bwd.manual import manual_attention, reference_attention

IMPLEMENTATIONS = ("gradmem_manual", "gradmem_triton")


CAUSAL_BANDS = 3  # query bands of a causal module's gradmem_manual attention (manual.py)


def gradmem_manual_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers calling convention: q ``[B, H, T, D]``, k/v ``[B, Hkv, S, D]`` -> ``([B, T, H, D], None)``.
    A causal module (``module.is_causal``) with a mask runs in ``CAUSAL_BANDS`` query bands."""
    bias = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    bands = CAUSAL_BANDS if bias is not None and getattr(module, "is_causal", False) else 1
    out = manual_attention(query, key, value, bias, scaling, dropout, training=module.training, causal_bands=bands)
    return out.transpose(1, 2).contiguous(), None


def gradmem_triton_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Same convention as ``gradmem_manual_attention``; no dropout."""
    if dropout and module.training:
        raise ValueError("gradmem_triton has no attention dropout: set the backbone's dropout to 0 or use gradmem_manual.")
    if not query.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("gradmem_triton runs on CUDA; on CPU use gradmem_manual, or set TRITON_INTERPRET=1 "
                           "(slow, meant for tests).")
    from attn_double_bwd.triton_attention import triton_attention

    bias = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    out = triton_attention(query.float(), key.float(), value.float(), bias, scaling).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


for _name, _fn in (("gradmem_manual", gradmem_manual_attention), ("gradmem_triton", gradmem_triton_attention)):
    AttentionInterface.register(_name, _fn)
    AttentionMaskInterface.register(_name, ALL_MASK_ATTENTION_FUNCTIONS["eager"])

__all__ = ["IMPLEMENTATIONS", "manual_attention", "reference_attention"]
