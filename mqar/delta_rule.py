"""The delta rule (DeltaNet, Schlag et al. 2021; Yang et al. 2024), step by step and chunkwise-parallel.

Per head, with the state written as ``M = S^T [dk, dv]`` (keys in, values out):

    M_t = M_{t-1} + beta_t k_t (v_t - M_{t-1}^T k_t)^T     i.e.  S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T
    o_t = M_t^T q_t

Chunkwise (the WY form of Yang et al. 2024): inside a chunk of C steps starting from state M,

    A = I + strict_lower(diag(beta) K K^T)             [C, C], unit lower triangular
    W = A^{-1} diag(beta) K,   U = A^{-1} diag(beta) V  (within-chunk, no dependence on M)
    U~ = U - W M                                        the pseudo-values: row t is beta_t (v_t - M_{t-1}^T k_t)
    O = Q M + lower(Q K^T) U~                           (diagonal included)
    M' = M + K^T U~

so the only sequential work is one small matrix product per chunk. Every operation is ordinary
differentiable PyTorch (the triangular solve included), so double backward works for GradMem.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def delta_rule_recurrent(q, k, v, beta, initial_state=None):
    """Reference, one step at a time. ``q, k [B, H, T, dk]``, ``v [B, H, T, dv]``, ``beta [B, H, T]``.
    Returns ``o [B, H, T, dv]`` and the final state ``M [B, H, dk, dv]``."""
    B, H, T, dk = k.shape
    M = k.new_zeros(B, H, dk, v.shape[-1]) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        k_t = k[:, :, t]  # [B, H, dk]
        error = v[:, :, t] - torch.einsum("bhkv,bhk->bhv", M, k_t)  # [B, H, dv]
        M = M + beta[:, :, t, None, None] * k_t[..., :, None] * error[..., None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", M, q[:, :, t]))
    return torch.stack(outputs, dim=2), M


def delta_rule_chunked(q, k, v, beta, chunk_size: int = 64, initial_state=None):
    """Same result as ``delta_rule_recurrent``, ``chunk_size`` steps at a time (see the module docstring).
    The sequence is zero-padded to a multiple of ``chunk_size``; a padded step has ``beta = 0`` and
    ``k = 0``, so it leaves the state alone."""
    B, H, T, dk = k.shape
    dv = v.shape[-1]
    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, pad))
    q, k, v = (x.reshape(B, H, n, C, -1) for x in (q, k, v))  # [B, H, n, C, d]
    beta = beta.reshape(B, H, n, C, 1)
    k_beta = k * beta
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    A = eye + torch.tril(k_beta @ k.transpose(-1, -2), diagonal=-1)  # [B, H, n, C, C]
    W = torch.linalg.solve_triangular(A, k_beta, upper=False, unitriangular=True)  # [B, H, n, C, dk]
    U = torch.linalg.solve_triangular(A, v * beta, upper=False, unitriangular=True)  # [B, H, n, C, dv]
    QK = torch.tril(q @ k.transpose(-1, -2))  # [B, H, n, C, C]
    M = k.new_zeros(B, H, dk, dv) if initial_state is None else initial_state
    outputs = []
    for c in range(n):
        U_new = U[:, :, c] - W[:, :, c] @ M  # [B, H, C, dv]
        outputs.append(q[:, :, c] @ M + QK[:, :, c] @ U_new)
        M = M + k[:, :, c].transpose(-1, -2) @ U_new
    return torch.stack(outputs, dim=2).reshape(B, H, n * C, dv)[:, :, :T], M


def fla_available(device: torch.device) -> bool:
    """flash-linear-attention's Triton kernel runs only on CUDA, where the package is installed."""
    if device.type != "cuda":
        return False
    try:
        import fla.ops.delta_rule  # noqa: F401
    except ImportError:
        return False
    return True


def delta_rule_fla(q, k, v, beta):
    """flash-linear-attention's ``chunk_delta_rule`` (CUDA), in our ``[B, H, T, d]`` layout, scale 1
    (the keys and queries come normalised). Not twice differentiable: first-order training only."""
    from fla.ops.delta_rule import chunk_delta_rule

    def to_fla(x):
        return x.transpose(1, 2).contiguous()  # [B, T, H, d]

    o, _ = chunk_delta_rule(to_fla(q), to_fla(k), to_fla(v), beta.transpose(1, 2).contiguous(), scale=1.0,
                            initial_state=None, output_final_state=False)
    return o.transpose(1, 2)
