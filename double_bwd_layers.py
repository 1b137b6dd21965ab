"""Llama's SwiGLU and RMSNorm with a hand-derived backward that is itself differentiable, for second-order GradMem.

Second-order GradMem differentiates through the backward pass of every WRITE step. Autograd's double backward of
``silu(g) * u`` and of Llama's RMSNorm re-derives each element-wise op of their backwards, one pass over the
activations per op (the SwiGLU's ``[B, S, 4d]`` activations dominate), and keeps every intermediate. Here each layer
is a pair of ``autograd.Function``s, as in ``attn_double_bwd/manual.py``: the forward, and its backward, whose own
backward is written out below. The forward keeps only its inputs.

SwiGLU, ``a = silu(g) u`` element-wise, with ``σ = sigmoid(g)``::

    backward             dg = dA u silu'(g),   du = dA silu(g),          silu'(g)  = σ (1 + g (1 - σ))
    backward-of-backward, for cotangents (Gg, Gu) of (dg, du):
                         grad dA = Gg u silu'(g) + Gu silu(g)
                         grad u  = Gg dA silu'(g)
                         grad g  = dA (Gg u silu''(g) + Gu silu'(g)),     silu''(g) = σ (1 - σ) (2 + g - 2 silu(g))

RMSNorm over the last dim (size n), ``y = w x̂``, ``x̂ = r x``, ``r = (mean(x²) + ε)^(-1/2)`` per row. Its Jacobian
``J = dx̂/dx = r (I - x̂ x̂ᵀ / n)`` is symmetric. With ``v = w dy`` and row means ``⟨a, b⟩ = mean(a b)``::

    backward             dx = J v = r (v - x̂ ⟨v, x̂⟩),   dw = Σ_rows dy x̂
    backward-of-backward, for cotangents (Gx, Gw) of (dx, dw):
                         grad dy = w J Gx + Gw x̂
                         grad w  = Σ_rows dy J Gx
                         grad x  = -r² [x̂ (⟨Gx, v⟩ - 3 ⟨Gx, x̂⟩ ⟨v, x̂⟩) + Gx ⟨v, x̂⟩ + v ⟨Gx, x̂⟩] + J (Gw dy)

The last line is the derivative of ``⟨Gx, J(x) v⟩`` in x (``dr/dx = -r³ x / n``) plus that of ``⟨Gw dy, x̂⟩``.
A third derivative raises (``once_differentiable``): GradMem needs two.

Each formula is a plain function of tensors (``KERNELS``). Run as they are, each of their ops is one pass over a
``[B, S, 4d]`` buffer; ``compiled=True`` runs them through ``torch.compile``, one fused loop per kernel, which at the
reference preset made the second-order step on CPU faster in most rounds (``bench/README.md``, runs 7-8). The
autograd.Functions stay outside the compiled code, so the double backward is the same either way.

``use_double_bwd_layers(lm)`` swaps these into a Hugging Face Llama (and Llama-architecture pretrained models such as
SmolLM2) in place: the modules keep their parameters and state-dict keys. ``reference_swiglu`` and
``reference_rms_norm`` are the plain formulas the tests compare against.
"""
from __future__ import annotations

import functools
import shutil

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

FUSED_DTYPES = (torch.float32, torch.float64)  # Llama's RMSNorm upcasts half inputs: those keep its own forward


# -- element-wise kernels: plain functions of tensors, run as they are or compiled (``compiled_kernels``) -------------
def _swiglu_forward(g, u):
    return F.silu(g).mul_(u)


def _swiglu_backward(d_a, g, u):
    """(dg, du, silu(g)). Each ``[.., 4d]`` buffer is written in place where the formulas allow: on CPU a fresh
    buffer of that size costs more in page faults than the element-wise op that fills it."""
    silu_g = F.silu(g)
    d_g = d_a * u
    torch.ops.aten.silu_backward.grad_input(d_g, g, grad_input=d_g)
    return d_g, d_a * silu_g, silu_g


def _swiglu_hvp(d_a, g, u, silu_g, g_dg, g_du):
    """The backward of ``_swiglu_backward`` for cotangents (Gg, Gu), either of them None: (grad dA, grad g, grad u)."""
    grad_d_a = grad_g = grad_u = None
    if g_dg is not None:
        grad_u = torch.ops.aten.silu_backward(g_dg, g)  # [.., 4d] Gg silu'(g)
        grad_d_a = grad_u * u
        grad_u.mul_(d_a)
        # Gg u silu''(g) = Gg u (2 + g - 2 silu(g)) σ (1 - σ)
        grad_g = torch.add(g, silu_g, alpha=-2).add_(2).mul_(g_dg).mul_(u)
        sigma = torch.sigmoid(g)
        torch.ops.aten.sigmoid_backward.grad_input(grad_g, sigma, grad_input=grad_g)
    if g_du is not None:
        grad_d_a = g_du * silu_g if grad_d_a is None else grad_d_a.addcmul_(g_du, silu_g)
        if grad_g is None:
            grad_g = torch.ops.aten.silu_backward(g_du, g)
        else:  # Gu silu'(g), into σ's buffer
            grad_g.add_(torch.ops.aten.silu_backward.grad_input(g_du, g, grad_input=sigma))
    if grad_g is not None:
        grad_g = grad_g.mul_(d_a)
    return grad_d_a, grad_g, grad_u


def _row_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``⟨a, b⟩``: mean over the last dim, kept for broadcasting."""
    return (a * b).mean(-1, keepdim=True)


def _rms_norm_forward(x, weight, eps: float):
    """(y, r): the normalised ``y`` and the per-row ``r [.., 1]``."""
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x * r), r


def _rms_norm_backward(d_y, x, weight, r):
    x_hat = x * r
    v = d_y * weight
    d_x = torch.addcmul(v, x_hat, _row_mean(v, x_hat), value=-1).mul_(r)
    d_w = (d_y * x_hat).reshape(-1, x.shape[-1]).sum(0)
    return d_x, d_w


def _rms_norm_hvp(d_y, x, weight, r, g_dx, g_dw):
    """The backward of ``_rms_norm_backward`` for cotangents (Gx, Gw), either of them None: (grad dy, grad x,
    grad w)."""
    x_hat = x * r
    grad_d_y = grad_x = grad_w = None
    if g_dx is not None:
        v = d_y * weight
        c_gx, c_v = _row_mean(g_dx, x_hat), _row_mean(v, x_hat)  # [.., 1]
        j_gx = torch.addcmul(g_dx, x_hat, c_gx, value=-1).mul_(r)  # J Gx
        grad_d_y = j_gx * weight
        grad_w = (d_y * j_gx).reshape(-1, x.shape[-1]).sum(0)
        grad_x = x_hat * (_row_mean(g_dx, v) - 3 * c_gx * c_v)
        grad_x.addcmul_(g_dx, c_v).addcmul_(v, c_gx).mul_(-r.square())
    if g_dw is not None:
        grad_d_y = g_dw * x_hat if grad_d_y is None else grad_d_y.addcmul_(g_dw, x_hat)
        b = g_dw * d_y
        j_b = torch.addcmul(b, x_hat, _row_mean(b, x_hat), value=-1).mul_(r)  # J (Gw dy)
        grad_x = j_b if grad_x is None else grad_x.add_(j_b)
    return grad_d_y, grad_x, grad_w


KERNELS = {"swiglu_forward": _swiglu_forward, "swiglu_backward": _swiglu_backward, "swiglu_hvp": _swiglu_hvp,
           "rms_norm_forward": _rms_norm_forward, "rms_norm_backward": _rms_norm_backward,
           "rms_norm_hvp": _rms_norm_hvp}


@functools.cache
def compiled_kernels() -> dict:
    """``KERNELS`` through ``torch.compile``: each becomes one fused loop over its buffers (C++ on CPU, Triton on
    GPU) instead of a pass per op. Compiled on first call, for any shape (``dynamic``); once per dtype."""
    return {name: torch.compile(kernel, dynamic=True, fullgraph=True) for name, kernel in KERNELS.items()}


def cpp_compiler_found() -> bool:
    """Whether torch.compile's CPU backend has a C++ compiler to build its kernels with."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def kernels(compiled: bool) -> dict:
    """The compiled kernels where asked for, except under a Python dispatch mode (``FlopCounterMode``, the
    benchmark's op census), which torch.compile cannot run under: there the same kernels run eagerly."""
    return compiled_kernels() if compiled and _get_current_dispatch_mode() is None else KERNELS


# -- autograd.Functions: forward, and a backward that is itself differentiable ---------------------------------------
class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u, compiled: bool):
        ctx.save_for_backward(g, u)
        ctx.compiled = compiled
        return kernels(compiled)["swiglu_forward"](g, u)

    @staticmethod
    def backward(ctx, d_a):
        g, u = ctx.saved_tensors
        return *_SwiGLUBackward.apply(d_a, g, u, ctx.compiled), None


class _SwiGLUBackward(torch.autograd.Function):
    """(dA, g, u) -> (dg, du); its own backward is the Hessian-vector product."""

    @staticmethod
    def forward(ctx, d_a, g, u, compiled: bool):
        d_g, d_u, silu_g = kernels(compiled)["swiglu_backward"](d_a, g, u)
        ctx.save_for_backward(d_a, g, u, silu_g)
        ctx.compiled = compiled
        ctx.set_materialize_grads(False)
        return d_g, d_u

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dg, g_du):
        if g_dg is None and g_du is None:
            return None, None, None, None
        return *kernels(ctx.compiled)["swiglu_hvp"](*ctx.saved_tensors, g_dg, g_du), None


def swiglu(g: torch.Tensor, u: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """``silu(g) * u`` with the hand-derived backward and double backward above; ``compiled`` runs their
    element-wise kernels through ``torch.compile``."""
    return _SwiGLU.apply(g, u, compiled)


def reference_swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return F.silu(g) * u


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, compiled: bool):
        y, r = kernels(compiled)["rms_norm_forward"](x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        ctx.compiled = compiled
        return y

    @staticmethod
    def backward(ctx, d_y):
        x, weight, r = ctx.saved_tensors
        d_x, d_w = _RMSNormBackward.apply(d_y, x, weight, r, ctx.compiled)
        return d_x, d_w, None, None


class _RMSNormBackward(torch.autograd.Function):
    """(dy, x, w) -> (dx, dw), given x's ``r``; its own backward is the Hessian-vector product."""

    @staticmethod
    def forward(ctx, d_y, x, weight, r, compiled: bool):
        ctx.save_for_backward(d_y, x, weight, r)
        ctx.compiled = compiled
        ctx.set_materialize_grads(False)
        return kernels(compiled)["rms_norm_backward"](d_y, x, weight, r)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_dx, g_dw):
        if g_dx is None and g_dw is None:
            return None, None, None, None, None
        return *kernels(ctx.compiled)["rms_norm_hvp"](*ctx.saved_tensors, g_dx, g_dw), None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, compiled: bool = False) -> torch.Tensor:
    """``weight * x / sqrt(mean(x², -1) + eps)`` with the hand-derived backward and double backward above;
    ``compiled`` runs their element-wise kernels through ``torch.compile``."""
    return _RMSNorm.apply(x, weight, eps, compiled)


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class DoubleBwdLlamaMLP(LlamaMLP):
    """LlamaMLP whose SiLU gate is ``swiglu``."""

    compiled_kernels = False  # set by use_double_bwd_layers

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), self.compiled_kernels))


class DoubleBwdLlamaRMSNorm(LlamaRMSNorm):
    """LlamaRMSNorm through ``rms_norm`` for float32 and float64 inputs (of the weight's dtype)."""

    compiled_kernels = False  # set by use_double_bwd_layers

    def forward(self, hidden_states):
        if hidden_states.dtype not in FUSED_DTYPES or self.weight.dtype != hidden_states.dtype:
            return super().forward(hidden_states)
        return rms_norm(hidden_states, self.weight, self.variance_epsilon, self.compiled_kernels)


def use_double_bwd_layers(lm, compiled: bool = False) -> int:
    """Swap the hand-derived SwiGLU and RMSNorm into every Llama MLP (SiLU-gated) and RMSNorm of ``lm``, in place;
    ``compiled`` runs their element-wise kernels through ``torch.compile``. Returns the number of modules swapped
    (0 for other architectures)."""
    if compiled and not torch.cuda.is_available() and not cpp_compiler_found():
        raise RuntimeError("compiled double_bwd_layers kernels need a C++ compiler on CPU (torch.compile builds C++): "
                           "install g++ or clang++, or drop --compile_double_bwd_layers.")
    swapped = 0
    for module in lm.modules():
        if type(module) is LlamaMLP and module.config.hidden_act == "silu":
            module.__class__ = DoubleBwdLlamaMLP
        elif type(module) is LlamaRMSNorm:
            module.__class__ = DoubleBwdLlamaRMSNorm
        else:
            continue
        module.compiled_kernels = compiled
        swapped += 1
    return swapped
