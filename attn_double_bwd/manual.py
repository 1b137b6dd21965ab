"""``gradmem_manual``: softmax attention whose backward is itself differentiable, by hand.

Second-order GradMem differentiates through the backward pass of every inner step, so attention's
backward must have a backward. PyTorch's fused kernels have none; eager attention has one but lets
autograd keep every intermediate and re-derive the softmax. Here the forward keeps ``P`` and the
backward keeps ``dP`` and reuses them. With ``s`` the scale, ``M`` the dropout mask scaled by
1/(1-p) (ones without dropout) and row vectors broadcast along keys:

    forward            S = s Q K^T + bias,  P = softmax(S),  O = (P * M) V
    backward           dV = (P * M)^T dO,  dP = M * (dO V^T),  delta = rowsum(P * dP) = rowsum(dO * O),
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
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)  # [B, H, T, S]
        if bias is not None:
            scores.add_(bias)
        p = torch.softmax(scores, dim=-1)
        out = torch.matmul(p if keep is None else p * keep, v)  # [B, H, T, D]
        ctx.save_for_backward(q, k, v, p, keep, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, p, keep, out = ctx.saved_tensors
        dq, dk, dv = _AttentionBackward.apply(q, k, v, d_out, p, keep, out.detach(), ctx.scale)
        return dq, dk, dv, None, None, None


class _AttentionBackward(torch.autograd.Function):
    """(q, k, v, dO) -> (dQ, dK, dV); its own backward is the Hessian-vector product.

    Both write their ``[B, H, T, S]`` results in place where the formulas allow: the backward makes two such
    buffers (dP, dS), the backward-of-backward two (G, then gdP in its place; gP, then gS in its place).
    """

    @staticmethod
    def forward(ctx, q, k, v, d_out, p, keep, out, scale: float):
        """``out``: the forward's output, for delta = rowsum(P * dP) = rowsum(dO * O), a ``[B, H, T, D]``
        product in place of a ``[B, H, T, S]`` one."""
        dv = torch.matmul(p.transpose(-2, -1) if keep is None else (p * keep).transpose(-2, -1), d_out)
        dp = torch.matmul(d_out, v.transpose(-2, -1))  # [B, H, T, S]
        if keep is not None:
            dp.mul_(keep)
        delta = (d_out * out).sum(-1, keepdim=True)  # [B, H, T, 1]
        ds = (dp - delta).mul_(p)
        dq = torch.matmul(ds, k).mul_(scale)
        dk = torch.matmul(ds.transpose(-2, -1), q).mul_(scale)
        ctx.save_for_backward(q, k, v, d_out, p, keep, dp, delta, ds)
        ctx.scale = scale
        ctx.set_materialize_grads(False)  # a None cotangent skips its terms instead of multiplying zeros
        return dq, dk, dv

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dq, g_dk, g_dv):
        q, k, v, d_out, p, keep, dp, delta, ds = ctx.saved_tensors
        s = ctx.scale
        grad_q, grad_k, grad_v, grad_d_out = [], [], [], []  # terms, summed at the end
        # cotangent of dS from dQ = s dS K and dK = s dS^T Q:  G = s (gQ K^T + Q gK^T)
        g_ds = None
        if g_dq is not None:
            g_ds = torch.matmul(g_dq * s, k.transpose(-2, -1))
            grad_k.append(torch.matmul(ds.transpose(-2, -1), g_dq))
        if g_dk is not None:
            from_dk = torch.matmul(q, (g_dk * s).transpose(-2, -1))
            g_ds = from_dk if g_ds is None else g_ds.add_(from_dk)
            grad_q.append(torch.matmul(ds, g_dk))
        g_p = g_dp = None
        if g_ds is not None:  # through dS = P * (dP - delta), delta = rowsum(P * dP)
            c = _rowdot(g_ds, p)
            g_p = (dp - delta).mul_(g_ds).addcmul_(dp, c, value=-1)  # G (dP - delta) - c dP
            g_dp = g_ds.sub_(c).mul_(p)  # P (G - c), in G's buffer
            if keep is not None:
                g_dp.mul_(keep)
            grad_v.append(torch.matmul(g_dp.transpose(-2, -1), d_out))
            grad_d_out.append(torch.matmul(g_dp, v))
        if g_dv is not None:  # through dV = (P * M)^T dO
            from_dv = torch.matmul(d_out, g_dv.transpose(-2, -1))
            if keep is not None:
                from_dv.mul_(keep)
            g_p = from_dv if g_p is None else g_p.add_(from_dv)
            grad_d_out.append(torch.matmul(p if keep is None else p * keep, g_dv))
        if g_p is not None:  # through P = softmax(S), S = s Q K^T + bias
            g_scores = g_p.sub_(_rowdot(g_p, p)).mul_(p)  # gS, in gP's buffer
            grad_q.append(torch.matmul(g_scores, k))
            grad_k.append(torch.matmul(g_scores.transpose(-2, -1), q))
        scaled = lambda terms: None if not terms else sum(terms).mul_(s)  # noqa: E731
        return scaled(grad_q), scaled(grad_k), _sum(grad_v), _sum(grad_d_out), None, None, None, None


def _rowdot(a, b):
    """rowsum(a * b) over the last dimension, ``[..., 1]``, without an ``a * b`` buffer."""
    return torch.einsum("...s,...s->...", a, b).unsqueeze(-1)


def _sum(terms):
    return None if not terms else sum(terms)


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
