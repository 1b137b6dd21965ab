"""``gradmem_triton``: flash-style Triton kernels for attention, its backward, and its backward-of-backward.

Nothing of size ``[T, S]`` is stored: every kernel recomputes ``P = exp(s Q K^T + bias - lse)`` tile by
tile from the log-sum-exp the forward saves. Notation and formulas as in ``manual.py`` (no dropout here):

    forward                 O = P V, lse = logsumexp(S)           one program per query block
    backward                delta = rowsum(dO * O)
                            dQ = s sum_j dS K                      one program per query block
                            dK = s sum_i dS^T Q, dV = sum_i P^T dO one program per key block
    backward-of-backward    pass 1, per query block: c = rowsum(G * P), e = rowsum(gP * P) = a - c delta
                            pass 2, per query block: grad Q, grad dO;  per key block: grad K, grad V

Runs on CUDA; on CPU under ``TRITON_INTERPRET=1`` (slow, for tests). Read top to bottom: kernels, the
``autograd.Function`` pair, the wrapper; the reference is ``manual.reference_attention``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG = -1.0e30  # finite "minus infinity": keeps exp() and max() free of inf - inf


@triton.jit
def _tile(ptr, off_r, off_c, stride_r, stride_c, n_r, n_c):
    return tl.load(ptr + off_r[:, None] * stride_r + off_c[None, :] * stride_c,
                   mask=(off_r[:, None] < n_r) & (off_c[None, :] < n_c), other=0.0)


@triton.jit
def _row(ptr, bh, stride, offs_m, T):
    """A per-query-row statistic (lse, delta, c, e) for rows ``offs_m`` of head ``bh``."""
    return tl.load(ptr + bh * stride + offs_m, mask=offs_m < T, other=0.0)


@triton.jit
def _scores(q, k, bias_ptr, offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS: tl.constexpr):
    """``[BLOCK_M, BLOCK_N]`` scores s q k^T + bias, out-of-range keys at NEG."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    if HAS_BIAS:
        s += _tile(bias_ptr, offs_m, offs_n, sbt, sbs, T, S)
    return tl.where(offs_n[None, :] < S, s, NEG)


@triton.jit
def _fwd_kernel(Q, K, V, BIAS, O, LSE, scale,
                sqb, sqh, sqt, skb, skh, sks, sbb, sbh, sbt, sbs, slb,
                H, T, S, D,
                HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    bias_ptr = BIAS + b * sbb + h * sbh
    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        v = _tile(V + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        s = _scores(q, k, bias_ptr, offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], out,
             mask=(offs_m[:, None] < T) & (offs_d[None, :] < D))
    tl.store(LSE + bh * slb + offs_m, m_i + tl.log(l_i), mask=offs_m < T)


@triton.jit
def _bwd_dq_kernel(Q, K, V, BIAS, DO, LSE, DELTA, DQ, scale,
                   sqb, sqh, sqt, skb, skh, sks, sbb, sbh, sbt, sbs, slb,
                   H, T, S, D,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    do = _tile(DO + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    lse = _row(LSE, bh, slb, offs_m, T)
    delta = _row(DELTA, bh, slb, offs_m, T)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        v = _tile(V + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        p = tl.exp(_scores(q, k, BIAS + b * sbb + h * sbh, offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS) - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds, k, input_precision="ieee")
    tl.store(DQ + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], dq * scale,
             mask=(offs_m[:, None] < T) & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, BIAS, DO, LSE, DELTA, DK, DV, scale,
                     sqb, sqh, sqt, skb, skh, sks, sbb, sbh, sbt, sbs, slb,
                     H, T, S, D,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _tile(K + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
    v = _tile(V + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, T, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
        do = _tile(DO + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
        lse = _row(LSE, bh, slb, offs_m, T)
        delta = _row(DELTA, bh, slb, offs_m, T)
        p = tl.exp(_scores(q, k, BIAS + b * sbb + h * sbh, offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS) - lse[:, None])
        p = tl.where(offs_m[:, None] < T, p, 0.0)
        dv += tl.dot(tl.trans(p), do, input_precision="ieee")
        ds = p * (tl.dot(do, tl.trans(v), input_precision="ieee") - delta[:, None])
        dk += tl.dot(tl.trans(ds), q, input_precision="ieee")
    mask = (offs_n[:, None] < S) & (offs_d[None, :] < D)
    tl.store(DK + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], dk * scale, mask=mask)
    tl.store(DV + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], dv, mask=mask)


@triton.jit
def _hvp_tile(q, k, v, do, gq, gk, gv, lse, delta, bias_ptr, offs_m, offs_n, sbt, sbs, T, S, scale,
              HAS_BIAS: tl.constexpr):
    """The ``[BLOCK_M, BLOCK_N]`` pieces of the backward-of-backward: P, dS, G, dP and dO gV^T."""
    p = tl.exp(_scores(q, k, bias_ptr, offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS) - lse[:, None])
    p = tl.where(offs_m[:, None] < T, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    ds = p * (dp - delta[:, None])
    g = (tl.dot(gq, tl.trans(k), input_precision="ieee") + tl.dot(q, tl.trans(gk), input_precision="ieee")) * scale
    do_gv = tl.dot(do, tl.trans(gv), input_precision="ieee")
    return p, ds, g, dp, do_gv


@triton.jit
def _hvp_cotangents(p, g, dp, do_gv, delta, c, e):
    """Cotangents of dP (gdP) and of the scores (gS) for one tile, given the row statistics c and e."""
    g_dp = p * (g - c[:, None])
    g_p = g * (dp - delta[:, None]) - c[:, None] * dp + do_gv
    return g_dp, p * (g_p - e[:, None])


@triton.jit
def _hvp_rows_kernel(Q, K, V, BIAS, DO, GQ, GK, GV, LSE, DELTA, C, E, scale,
                     sqb, sqh, sqt, skb, skh, sks, sbb, sbh, sbt, sbs, slb,
                     H, T, S, D,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 1: the row statistics c = rowsum(G P) and e = rowsum(gP P) = a - c delta."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    do = _tile(DO + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    gq = _tile(GQ + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    lse = _row(LSE, bh, slb, offs_m, T)
    delta = _row(DELTA, bh, slb, offs_m, T)
    c = tl.zeros([BLOCK_M], tl.float32)
    a = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        v = _tile(V + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        gk = _tile(GK + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        gv = _tile(GV + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        p, ds, g, dp, do_gv = _hvp_tile(q, k, v, do, gq, gk, gv, lse, delta, BIAS + b * sbb + h * sbh,
                                        offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS)
        c += tl.sum(g * p, 1)
        a += tl.sum(p * (g * (dp - delta[:, None]) + do_gv), 1)
    tl.store(C + bh * slb + offs_m, c, mask=offs_m < T)
    tl.store(E + bh * slb + offs_m, a - c * delta, mask=offs_m < T)


@triton.jit
def _hvp_q_kernel(Q, K, V, BIAS, DO, GQ, GK, GV, LSE, DELTA, C, E, GRAD_Q, GRAD_DO, scale,
                  sqb, sqh, sqt, skb, skh, sks, sbb, sbh, sbt, sbs, slb,
                  H, T, S, D,
                  HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 2, per query block: grad Q = s (dS gK + gS K), grad dO = P gV + gdP V."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    do = _tile(DO + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    gq = _tile(GQ + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
    lse = _row(LSE, bh, slb, offs_m, T)
    delta = _row(DELTA, bh, slb, offs_m, T)
    c = _row(C, bh, slb, offs_m, T)
    e = _row(E, bh, slb, offs_m, T)
    grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    grad_do = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        v = _tile(V + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        gk = _tile(GK + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        gv = _tile(GV + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
        p, ds, g, dp, do_gv = _hvp_tile(q, k, v, do, gq, gk, gv, lse, delta, BIAS + b * sbb + h * sbh,
                                        offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS)
        g_dp, g_s = _hvp_cotangents(p, g, dp, do_gv, delta, c, e)
        grad_q += (tl.dot(ds, gk, input_precision="ieee") + tl.dot(g_s, k, input_precision="ieee")) * scale
        grad_do += tl.dot(p, gv, input_precision="ieee") + tl.dot(g_dp, v, input_precision="ieee")
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
    tl.store(GRAD_Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], grad_q, mask=mask)
    tl.store(GRAD_DO + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], grad_do, mask=mask)


@triton.jit
def _hvp_kv_kernel(Q, K, V, BIAS, DO, GQ, GK, GV, LSE, DELTA, C, E, GRAD_K, GRAD_V, scale,
                   sqb, sqh, sqt, skb, skh, sks, sbb, sbh, sbt, sbs, slb,
                   H, T, S, D,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 2, per key block: grad K = s (dS^T gQ + gS^T Q), grad V = gdP^T dO."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _tile(K + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
    v = _tile(V + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
    gk = _tile(GK + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
    gv = _tile(GV + b * skb + h * skh, offs_n, offs_d, sks, 1, S, D)
    grad_k = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    grad_v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, T, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
        do = _tile(DO + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
        gq = _tile(GQ + b * sqb + h * sqh, offs_m, offs_d, sqt, 1, T, D)
        lse = _row(LSE, bh, slb, offs_m, T)
        delta = _row(DELTA, bh, slb, offs_m, T)
        c = _row(C, bh, slb, offs_m, T)
        e = _row(E, bh, slb, offs_m, T)
        p, ds, g, dp, do_gv = _hvp_tile(q, k, v, do, gq, gk, gv, lse, delta, BIAS + b * sbb + h * sbh,
                                        offs_m, offs_n, sbt, sbs, T, S, scale, HAS_BIAS)
        g_dp, g_s = _hvp_cotangents(p, g, dp, do_gv, delta, c, e)
        grad_k += (tl.dot(tl.trans(ds), gq, input_precision="ieee") + tl.dot(tl.trans(g_s), q, input_precision="ieee")) * scale
        grad_v += tl.dot(tl.trans(g_dp), do, input_precision="ieee")
    mask = (offs_n[:, None] < S) & (offs_d[None, :] < D)
    tl.store(GRAD_K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], grad_k, mask=mask)
    tl.store(GRAD_V + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], grad_v, mask=mask)


# ---------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------

BLOCK_M = BLOCK_N = 16


def _launch_args(q, k, bias, lse):
    """Strides and sizes shared by every kernel (q-like and k-like tensors are contiguous)."""
    B, H, T, D = q.shape
    S = k.shape[2]
    if bias is None:
        bias_strides = (0, 0, 0, 0)
    else:
        bias_strides = tuple(st if n > 1 else 0 for st, n in zip(bias.stride(), bias.shape))
    common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), *bias_strides,
              lse.stride(0), H, T, S, D)
    meta = dict(HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                BLOCK_D=max(16, triton.next_power_of_2(D)))
    return common, meta, (triton.cdiv(T, BLOCK_M), B * H), (triton.cdiv(S, BLOCK_N), B * H)


def _bias_or_dummy(bias, q):
    return bias if bias is not None else q.new_zeros(1)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float):
        B, H, T, D = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(B * H, T, device=q.device, dtype=torch.float32)
        common, meta, grid_q, _ = _launch_args(q, k, bias, lse)
        _fwd_kernel[grid_q](q, k, v, _bias_or_dummy(bias, q), out, lse, scale, *common, **meta)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        # out only supplies delta = rowsum(dO * O); its dependence on q, k, v is in the HVP formulas
        dq, dk, dv = _TritonAttentionBackward.apply(q, k, v, d_out.contiguous(), out.detach(), lse, bias, ctx.scale)
        return dq, dk, dv, None, None


class _TritonAttentionBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, d_out, out, lse, bias, scale: float):
        delta = (d_out.float() * out.float()).sum(-1).reshape(lse.shape)  # [B*H, T]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common, meta, grid_q, grid_k = _launch_args(q, k, bias, lse)
        b = _bias_or_dummy(bias, q)
        _bwd_dq_kernel[grid_q](q, k, v, b, d_out, lse, delta, dq, scale, *common, **meta)
        _bwd_dkdv_kernel[grid_k](q, k, v, b, d_out, lse, delta, dk, dv, scale, *common, **meta)
        ctx.save_for_backward(q, k, v, d_out, lse, delta, bias)
        ctx.scale = scale
        return dq, dk, dv

    @staticmethod
    def backward(ctx, g_dq, g_dk, g_dv):
        q, k, v, d_out, lse, delta, bias = ctx.saved_tensors
        g_dq = torch.zeros_like(q) if g_dq is None else g_dq.contiguous()
        g_dk = torch.zeros_like(k) if g_dk is None else g_dk.contiguous()
        g_dv = torch.zeros_like(v) if g_dv is None else g_dv.contiguous()
        c, e = torch.empty_like(lse), torch.empty_like(lse)
        grad_q, grad_do = torch.empty_like(q), torch.empty_like(d_out)
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        common, meta, grid_q, grid_k = _launch_args(q, k, bias, lse)
        b = _bias_or_dummy(bias, q)
        args = (q, k, v, b, d_out, g_dq, g_dk, g_dv, lse, delta, c, e)
        _hvp_rows_kernel[grid_q](*args, ctx.scale, *common, **meta)
        _hvp_q_kernel[grid_q](*args, grad_q, grad_do, ctx.scale, *common, **meta)
        _hvp_kv_kernel[grid_k](*args, grad_k, grad_v, ctx.scale, *common, **meta)
        return grad_q, grad_k, grad_v, grad_do, None, None, None, None


def triton_attention(q, k, v, bias=None, scale: float | None = None):
    """Attention through the Triton kernels; q ``[B, H, T, D]``, k/v ``[B, Hkv, S, D]``, bias
    broadcastable to ``[B, H, T, S]``. Differentiable twice."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if bias is not None:
        bias = bias.to(torch.float32).expand(q.shape[0], -1, q.shape[2], k.shape[2])
    return _TritonAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), bias, scale)
