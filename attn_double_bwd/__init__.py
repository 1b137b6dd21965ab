"""Attention with a differentiable backward, for second-order GradMem.

Importing this package registers, in transformers' ``AttentionInterface`` (with the eager additive
mask in ``AttentionMaskInterface``):

- ``gradmem_manual``: ``torch.autograd.Function`` pair with a hand-derived backward and
  backward-of-backward; CPU and GPU (``manual.py``).

Select one with ``--attn_implementation gradmem_manual`` or ``GradMemConfig(attn_implementation=...)``.
"""
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from attn_double_bwd.manual import manual_attention, reference_attention

IMPLEMENTATIONS = ("gradmem_manual",)


def gradmem_manual_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers calling convention: q ``[B, H, T, D]``, k/v ``[B, Hkv, S, D]`` -> ``([B, T, H, D], None)``."""
    bias = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    out = manual_attention(query, key, value, bias, scaling, dropout, training=module.training)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("gradmem_manual", gradmem_manual_attention)
AttentionMaskInterface.register("gradmem_manual", ALL_MASK_ATTENTION_FUNCTIONS["eager"])

__all__ = ["IMPLEMENTATIONS", "manual_attention", "reference_attention"]
