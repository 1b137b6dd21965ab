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

Causal bands. Every formula above is row by row in the queries: a query row's P, dP, G, gP, gS need only
that row and the keys it sees. Under a causal mask, the rows ``[a, b)`` of ``t`` queries (the last ``t``
positions of ``s`` keys) see at most the keys ``[0, s - t + b)``, so with the queries cut into ``n`` bands
each band multiplies only its own key prefix: the ``[T, S]`` work falls to about ``(n + 1) / 2n`` of it, and
the result is the same, since a hidden key's weight is exactly 0. Row outputs (O, dQ, grad Q, grad dO) are
cut band by band and joined; key outputs (dK, dV, grad K, grad V) are sums over the bands' prefixes.

Shapes: q ``[B, H, T, D]``, k and v ``[B, H, S, D]`` (grouped-query heads are expanded by the
wrapper), bias broadcastable to ``[B, H, T, S]``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _causal_bands(t: int, s: int, n_bands: int) -> tuple[tuple[int, int, int], ...]:
    """``(a, b, e)`` for each of ``n_bands`` bands of ``t`` queries at the last ``t`` of ``s`` positions:
    under a causal mask the rows ``[a, b)`` see no key past ``e = s - t + b``. One band is plain attention."""
    n = max(1, min(n_bands, t))
    edges = [t * i // n for i in range(n + 1)]
    return tuple((a, b, s - t + b) for a, b in zip(edges[:-1], edges[1:]))


def _band(x, a, b, e):
    """The ``[.., b - a, e]`` part of a ``[.., T, S]`` tensor (a broadcast dimension of size 1 stays as it is)."""
    if x is None:
        return None
    return x[..., a:b, :e] if x.shape[-2] > 1 else x[..., :e]


def _rows(x, a, b):
    return x[..., a:b, :]


def _keys(x, e):
    return x[..., :e, :]


def _key_sum(terms):
    """Sum of per-band ``[.., e, D]`` terms over nested key prefixes; the last band's covers every key."""
    if not terms:
        return None
    total = terms[-1]
    for term in terms[:-1]:
        _keys(total, term.shape[-2]).add_(term)
    return total


def _row_cat(pieces):
    """Per-band ``[.., b - a, D]`` pieces in row order, as one ``[.., T, D]`` tensor."""
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, keep, bands=None):
        """``keep``: the dropout mask already scaled by 1/(1-p), or None. ``bands``: ``_causal_bands(...)``,
        None for one band (plain attention)."""
        bands = bands or _causal_bands(q.shape[-2], k.shape[-2], 1)
        outs, ps = [], []
        for a, b, e in bands:
            scores = torch.matmul(_rows(q, a, b), _keys(k, e).transpose(-2, -1)).mul_(scale)  # [B, H, b - a, e]
            if bias is not None:
                scores.add_(_band(bias, a, b, e))
            p = torch.softmax(scores, dim=-1)
            m = _band(keep, a, b, e)
            outs.append(torch.matmul(p if m is None else p * m, _keys(v, e)))  # [B, H, b - a, D]
            ps.append(p)
        out = _row_cat(outs)  # [B, H, T, D]
        ctx.save_for_backward(q, k, v, keep, out, *ps)
        ctx.scale, ctx.bands = scale, bands
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, keep, out, *ps = ctx.saved_tensors
        dq, dk, dv = _AttentionBackward.apply(q, k, v, d_out, keep, out.detach(), ctx.scale, ctx.bands, *ps)
        return dq, dk, dv, None, None, None, None


class _AttentionBackward(torch.autograd.Function):
    """(q, k, v, dO) -> (dQ, dK, dV); its own backward is the Hessian-vector product.

    Both write their ``[B, H, T, S]`` results in place where the formulas allow: the backward makes two such
    buffers per band (dP, dS), the backward-of-backward two (G, then gdP in its place; gP, then gS in its place).
    """

    @staticmethod
    def forward(ctx, q, k, v, d_out, keep, out, scale: float, bands, *ps):
        """``out``: the forward's output, for delta = rowsum(P * dP) = rowsum(dO * O), a ``[B, H, T, D]``
        product in place of a ``[B, H, T, S]`` one. ``ps``: each band's P."""
        delta = (d_out * out).sum(-1, keepdim=True)  # [B, H, T, 1]
        dq_rows, dk_terms, dv_terms, dps, dss = [], [], [], [], []
        for (a, b, e), p in zip(bands, ps):
            m, d_o = _band(keep, a, b, e), _rows(d_out, a, b)
            dv_terms.append(torch.matmul((p if m is None else p * m).transpose(-2, -1), d_o))
            dp = torch.matmul(d_o, _keys(v, e).transpose(-2, -1))  # [B, H, b - a, e]
            if m is not None:
                dp.mul_(m)
            ds = (dp - _rows(delta, a, b)).mul_(p)
            dq_rows.append(torch.matmul(ds, _keys(k, e)))
            dk_terms.append(torch.matmul(ds.transpose(-2, -1), _rows(q, a, b)))
            dps.append(dp)
            dss.append(ds)
        ctx.save_for_backward(q, k, v, d_out, keep, delta, *ps, *dps, *dss)
        ctx.scale, ctx.bands = scale, bands
        ctx.set_materialize_grads(False)  # a None cotangent skips its terms instead of multiplying zeros
        return _row_cat(dq_rows).mul_(scale), _key_sum(dk_terms).mul_(scale), _key_sum(dv_terms)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dq, g_dk, g_dv):
        q, k, v, d_out, keep, delta, *saved = ctx.saved_tensors
        n = len(ctx.bands)
        ps, dps, dss = saved[:n], saved[n: 2 * n], saved[2 * n:]
        s = ctx.scale
        grad_q, grad_k, grad_v, grad_d_out = [], [], [], []  # per band: rows of Q and dO, key prefixes of K and V
        for (a, b, e), p, dp, ds in zip(ctx.bands, ps, dps, dss):
            q_b, k_b, v_b, d_o = _rows(q, a, b), _keys(k, e), _keys(v, e), _rows(d_out, a, b)
            m = _band(keep, a, b, e)
            g_q, g_k, g_v, g_d_o = [], [], [], []  # this band's terms
            # cotangent of dS from dQ = s dS K and dK = s dS^T Q:  G = s (gQ K^T + Q gK^T)
            g_ds = None
            if g_dq is not None:
                g_dq_b = _rows(g_dq, a, b)
                g_ds = torch.matmul(g_dq_b * s, k_b.transpose(-2, -1))
                g_k.append(torch.matmul(ds.transpose(-2, -1), g_dq_b))
            if g_dk is not None:
                g_dk_b = _keys(g_dk, e)
                from_dk = torch.matmul(q_b, (g_dk_b * s).transpose(-2, -1))
                g_ds = from_dk if g_ds is None else g_ds.add_(from_dk)
                g_q.append(torch.matmul(ds, g_dk_b))
            g_p = None
            if g_ds is not None:  # through dS = P * (dP - delta), delta = rowsum(P * dP)
                c = _rowdot(g_ds, p)
                g_p = (dp - _rows(delta, a, b)).mul_(g_ds).addcmul_(dp, c, value=-1)  # G (dP - delta) - c dP
                g_dp = g_ds.sub_(c).mul_(p)  # P (G - c), in G's buffer
                if m is not None:
                    g_dp.mul_(m)
                g_v.append(torch.matmul(g_dp.transpose(-2, -1), d_o))
                g_d_o.append(torch.matmul(g_dp, v_b))
            if g_dv is not None:  # through dV = (P * M)^T dO
                g_dv_b = _keys(g_dv, e)
                from_dv = torch.matmul(d_o, g_dv_b.transpose(-2, -1))
                if m is not None:
                    from_dv.mul_(m)
                g_p = from_dv if g_p is None else g_p.add_(from_dv)
                g_d_o.append(torch.matmul(p if m is None else p * m, g_dv_b))
            if g_p is not None:  # through P = softmax(S), S = s Q K^T + bias
                g_scores = g_p.sub_(_rowdot(g_p, p)).mul_(p)  # gS, in gP's buffer
                g_q.append(torch.matmul(g_scores, k_b))
                g_k.append(torch.matmul(g_scores.transpose(-2, -1), q_b))
            for total, terms in ((grad_q, g_q), (grad_k, g_k), (grad_v, g_v), (grad_d_out, g_d_o)):
                if terms:
                    total.append(sum(terms))
        scaled = lambda x: None if x is None else x.mul_(s)  # noqa: E731
        return (scaled(_row_cat(grad_q)), scaled(_key_sum(grad_k)), _key_sum(grad_v), _row_cat(grad_d_out),
                None, None, None, None, *[None] * len(ps))


def _rowdot(a, b):
    """rowsum(a * b) over the last dimension, ``[..., 1]``, without an ``a * b`` buffer."""
    return torch.einsum("...s,...s->...", a, b).unsqueeze(-1)


def hides_later_keys(bias, bands) -> bool:
    """Whether ``bias`` hides from each band every key past its prefix (what ``_causal_bands`` assumes):
    the entries there are -inf or at most half the dtype's lowest value, as transformers' masks write them."""
    if bias is None:
        return len(bands) == 1
    lowest = torch.finfo(bias.dtype).min / 2
    s = bias.shape[-1]
    return all(bool((_band(bias, a, b, s)[..., e:] <= lowest).all()) for a, b, e in bands[:-1])


def manual_attention(q, k, v, bias=None, scale: float | None = None, dropout: float = 0.0, training: bool = False,
                     causal_bands: int = 1):
    """Attention with a hand-written, twice-differentiable backward. Returns ``[B, H, T, D]``.

    The dropout mask is drawn here, once, and kept: the backward and the backward-of-backward see
    the very mask the forward used. ``causal_bands`` > 1 cuts the queries into that many bands that each
    multiply only the keys a causal mask lets them see (see the module docstring); ``bias`` must hide the rest.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[1] != q.shape[1]:  # grouped-query heads: share each K/V head across its query heads
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    bands = _causal_bands(q.shape[-2], k.shape[-2], causal_bands)
    if not hides_later_keys(bias, bands):
        raise ValueError(f"causal_bands={causal_bands} skips the keys a causal mask hides, but this attention mask "
                         "(or its absence) shows some of them: pass a causal mask or causal_bands=1")
    keep = None
    if dropout > 0 and training:
        shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        keep = (torch.rand(shape, device=q.device) >= dropout).to(q.dtype) / (1 - dropout)
    return _Attention.apply(q, k, v, bias, scale, keep, bands)


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
