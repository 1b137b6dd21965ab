"""``gradmem_manual``: softmax attention whose backward is itself differentiable, by hand.

Second-order GradMem differentiates through the backward pass of every inner step, so attention's
backward must have a backward. PyTorch's fused kernels have none; eager attention has one but lets
autograd keep every intermediate and re-derive the softmax. Here the forward keeps ``P`` and the
backward keeps ``dP`` and reuses them. With ``s`` the scale, ``M`` the dropout mask scaled by
1/(1-p) (ones without dropout) and row vectors broadcast along keys:

    forward            S = s Q K^T + bias,  P = softmax(S),  O = (P * M) V
    backward           dV = (P * M)^T dO,  dP = M * (dO V^T),  delta = rowsum(P * dP),
                       dS = P * (dP - delta),  dQ = s dS K,  dK = s dS^T Q
    backward-of-backward, for cotangents (gQ, gK, gV) of (dQ, dK, dV):
                       G = s (gQ K^T + Q gK^T),  c = rowsum(G * P)
                       gdP = P * (G - c)                                    (cotangent of dP)
                       gP  = G * (dP - delta) - c * dP + M * (dO gV^T)      (cotangent of P)
                       gS  = P * (gP - rowsum(gP * P))
                       grad Q  = s dS gK + s gS K
                       grad K  = s dS^T gQ + s gS^T Q + ...  (see _AttentionBackward.backward)
                       grad V  = (M * gdP)^T dO
                       grad dO = (P * M) gV + (M * gdP) V

Shapes: q ``[B, H, T, D]``, k and v ``[B, H, S, D]`` (grouped-query heads are expanded by the
wrapper), bias broadcastable to ``[B, H, T, S]``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, keep):
        """``keep``: the dropout mask already scaled by 1/(1-p), or None."""
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        if bias is not None:
            scores = scores + bias
        p = torch.softmax(scores, dim=-1)  # [B, H, T, S]
        pk = p if keep is None else p * keep
        out = torch.matmul(pk, v)
        ctx.save_for_backward(q, k, v, p, keep)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, p, keep = ctx.saved_tensors
        dq, dk, dv = _AttentionBackward.apply(q, k, v, d_out, p, keep, ctx.scale)
        return dq, dk, dv, None, None, None


class _AttentionBackward(torch.autograd.Function):
    """(q, k, v, dO) -> (dQ, dK, dV); its own backward is the Hessian-vector product."""

    @staticmethod
    def forward(ctx, q, k, v, d_out, p, keep, scale: float):
        pk = p if keep is None else p * keep
        dv = torch.matmul(pk.transpose(-2, -1), d_out)
        dp = torch.matmul(d_out, v.transpose(-2, -1))
        if keep is not None:
            dp = dp * keep
        delta = (p * dp).sum(-1, keepdim=True)  # [B, H, T, 1]
        ds = p * (dp - delta)
        dq = torch.matmul(ds, k) * scale
        dk = torch.matmul(ds.transpose(-2, -1), q) * scale
        ctx.save_for_backward(q, k, v, d_out, p, keep, dp, delta, ds)
        ctx.scale = scale
        return dq, dk, dv

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dq, g_dk, g_dv):
        q, k, v, d_out, p, keep, dp, delta, ds = ctx.saved_tensors
        s = ctx.scale
        zeros = torch.zeros_like
        g_dq = zeros(q) if g_dq is None else g_dq
        g_dk = zeros(k) if g_dk is None else g_dk
        g_dv = zeros(v) if g_dv is None else g_dv
        # cotangent of dS from dQ = s dS K and dK = s dS^T Q
        g_ds = (torch.matmul(g_dq, k.transpose(-2, -1)) + torch.matmul(q, g_dk.transpose(-2, -1))) * s
        grad_q = torch.matmul(ds, g_dk) * s
        grad_k = torch.matmul(ds.transpose(-2, -1), g_dq) * s
        # dS = P * (dP - delta), delta = rowsum(P * dP)
        c = (g_ds * p).sum(-1, keepdim=True)
        g_dp = p * (g_ds - c)
        g_p = g_ds * (dp - delta) - c * dp
        # dV = (P * M)^T dO  and  dP = M * (dO V^T)
        g_p_from_dv = torch.matmul(d_out, g_dv.transpose(-2, -1))
        if keep is not None:
            g_p_from_dv = g_p_from_dv * keep
            g_dp = g_dp * keep
        g_p = g_p + g_p_from_dv
        pk = p if keep is None else p * keep
        grad_d_out = torch.matmul(pk, g_dv) + torch.matmul(g_dp, v)
        grad_v = torch.matmul(g_dp.transpose(-2, -1), d_out)
        # P = softmax(S), S = s Q K^T + bias
        g_s = p * (g_p - (g_p * p).sum(-1, keepdim=True))
        grad_q = grad_q + torch.matmul(g_s, k) * s
        grad_k = grad_k + torch.matmul(g_s.transpose(-2, -1), q) * s
        return grad_q, grad_k, grad_v, grad_d_out, None, None, None


def manual_attention(q, k, v, bias=None, scale: float | None = None, dropout: float = 0.0, training: bool = False):
    """Attention with a hand-written, twice-differentiable backward. Returns ``[B, H, T, D]``.

    The dropout mask is drawn here, once, and kept: the backward and the backward-of-backward see
    the very mask the forward used.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[1] != q.shape[1]:  # grouped-query heads: share each K/V head across its query heads
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    keep = None
    if dropout > 0 and training:
        shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        keep = (torch.rand(shape, device=q.device) >= dropout).to(q.dtype) / (1 - dropout)
    return _Attention.apply(q, k, v, bias, scale, keep)


def reference_attention(q, k, v, bias=None, scale: float | None = None, keep=None):
    """Plain autograd attention, the reference the kernel is tested against."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    p = torch.softmax(scores, dim=-1)
    return torch.matmul(p if keep is None else p * keep, v)
