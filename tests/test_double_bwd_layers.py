import shutil

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

import double_bwd_layers
from backbones import BackboneConfig, build_backbone
from double_bwd_layers import (DoubleBwdLlamaMLP, DoubleBwdLlamaRMSNorm, reference_rms_norm, reference_swiglu, rms_norm,
                               swiglu, use_double_bwd_layers)
from grad_memgpt import GradMemConfig, GradMemGPT
from tests.helpers import TOKENIZER, kv_batch, tiny_lm

# torch.compile's CPU backend builds C++: without a compiler the compiled kernels cannot run
needs_compiler = pytest.mark.skipif(not double_bwd_layers.cpp_compiler_found(),
                                    reason="torch.compile on CPU needs a C++ compiler (g++ or clang++)")


def _inputs(*shapes, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("shape", [(7,), (2, 3, 5)], ids=str)
def test_swiglu_gradcheck_and_gradgradcheck(shape):
    g, u = _inputs(shape, shape)
    assert gradcheck(swiglu, (g, u))
    assert gradgradcheck(swiglu, (g, u))


@pytest.mark.parametrize("eps", [1e-6, 0.3])
@pytest.mark.parametrize("shape", [(1, 4), (2, 3, 6)], ids=str)
def test_rms_norm_gradcheck_and_gradgradcheck(shape, eps):
    x, w = _inputs(shape, shape[-1:])
    f = lambda x, w: rms_norm(x, w, eps)  # noqa: E731
    assert gradcheck(f, (x, w))
    assert gradgradcheck(f, (x, w))


@pytest.mark.parametrize("which", ["swiglu", "rms_norm"])
@pytest.mark.parametrize("outputs_used", ["both", "first", "second"])
def test_double_backward_matches_autograd_when_only_some_gradients_are_used(which, outputs_used):
    """The outer loss may use only dg (or dx) or only du (or dw): the unused cotangent arrives as None."""
    if which == "swiglu":
        a, b = _inputs((3, 5), (3, 5))
        ours, ref = swiglu, reference_swiglu
    else:
        a, b = _inputs((3, 5), (5,))
        ours, ref = (lambda x, w: rms_norm(x, w, 1e-5)), (lambda x, w: reference_rms_norm(x, w, 1e-5))
    probe = torch.randn(3, 5, dtype=torch.float64)
    results = []
    for f in (ours, ref):
        first = torch.autograd.grad((f(a, b) * probe).sum(), (a, b), create_graph=True)
        used = {"both": first, "first": first[:1], "second": first[1:]}[outputs_used]
        outer = sum((x.sin() * x).sum() for x in used)
        results.append(first + torch.autograd.grad(outer, (a, b, probe.requires_grad_()), allow_unused=True))
        probe = probe.detach()
    for x, y in zip(*results):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


def test_forwards_match_the_references_in_float32():
    g, u = (t.float() for t in _inputs((4, 8), (4, 8)))
    torch.testing.assert_close(swiglu(g, u), reference_swiglu(g, u))
    w = torch.randn(8)
    torch.testing.assert_close(rms_norm(g, w, 1e-6), reference_rms_norm(g, w, 1e-6))


def test_a_third_derivative_raises_rather_than_being_wrong():
    g, u = _inputs((3,), (3,))
    (dg,) = torch.autograd.grad(swiglu(g, u).sum(), g, create_graph=True)
    (hg,) = torch.autograd.grad(dg.sum(), g, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(hg.sum(), g)


def test_swapping_keeps_parameters_and_skips_other_architectures():
    torch.manual_seed(0)
    plain = build_backbone(BackboneConfig(n_layer=2, n_head=2, n_embd=16, double_bwd_layers=False), TOKENIZER)
    assert {type(m) for m in plain.modules()} >= {LlamaMLP, LlamaRMSNorm}
    keys = list(plain.state_dict())
    n_modules = 2 + (2 * 2 + 1)  # an MLP per layer; 2 norms per layer and the final one
    assert use_double_bwd_layers(plain) == n_modules
    assert list(plain.state_dict()) == keys
    assert not any(type(m) in (LlamaMLP, LlamaRMSNorm) for m in plain.modules())
    assert sum(isinstance(m, (DoubleBwdLlamaMLP, DoubleBwdLlamaRMSNorm)) for m in plain.modules()) == n_modules
    gpt2 = build_backbone(BackboneConfig(base_model="gpt2", n_layer=1, n_head=2, n_embd=16), TOKENIZER)
    assert use_double_bwd_layers(gpt2) == 0


def test_half_precision_norms_keep_transformers_forward():
    torch.manual_seed(0)
    norm = LlamaRMSNorm(8).to(torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    expected = norm(x)
    norm.__class__ = DoubleBwdLlamaRMSNorm
    assert torch.equal(norm(x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_swapped_backbone_gives_the_same_logits_and_gradients(dtype):
    batch = kv_batch(3)
    outs = []
    for swapped in (False, True):
        lm = tiny_lm(n_layer=2, dtype=dtype, double_bwd_layers=swapped)
        assert any(isinstance(m, DoubleBwdLlamaMLP) for m in lm.modules()) == swapped
        logits = lm(batch["context_input_ids"]).logits
        outs.append((logits, *torch.autograd.grad(logits.square().mean(), list(lm.parameters()))))
    tol = dict(rtol=1e-11, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("options", [
    dict(inner_loss_memory="final"), dict(inner_loss_memory="last_step", inner_loss_weight=0.5, use_write_head=True),
    dict(grad_mode="first"), dict(recompute_inner_steps=True, recompute_chunks=2, inner_optimizer="adam")], ids=str)
def test_second_order_gradmem_gradients_are_unchanged(options):
    """The meta-gradient through K=2 WRITE steps, with transformers' modules and with the hand-derived ones."""
    batch = kv_batch(3)
    grads = []
    for swapped in (False, True):
        torch.manual_seed(0)
        model = GradMemGPT(tiny_lm(n_layer=2, double_bwd_layers=swapped), GradMemConfig(K=2, inner_lr=1.0, **options))
        grads.append(torch.autograd.grad(model(**batch).loss, list(model.parameters()), allow_unused=True))
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("which", ["swiglu", "rms_norm"])
@pytest.mark.parametrize("outputs_used", ["both", "first", "second"])
def test_compiled_kernels_give_the_eager_kernels_results(which, outputs_used, monkeypatch):
    """``compiled=True`` runs the same kernels through torch.compile: forward, backward and backward-of-backward
    agree with the eager kernels, for every pattern of used cotangents, and every one of them ran compiled."""
    asked = []  # the compiled flag of every kernel lookup
    lookup = double_bwd_layers.kernels
    monkeypatch.setattr(double_bwd_layers, "kernels", lambda compiled: asked.append(compiled) or lookup(compiled))
    if which == "swiglu":
        a, b = _inputs((2, 3, 5), (2, 3, 5))
        f = swiglu
    else:
        a, b = _inputs((2, 3, 5), (5,))
        f = lambda x, w, compiled: rms_norm(x, w, 1e-5, compiled)  # noqa: E731
    probe = torch.randn(2, 3, 5, dtype=torch.float64)
    results = []
    for compiled in (False, True):
        y = f(a, b, compiled)
        first = torch.autograd.grad((y * probe).sum(), (a, b), create_graph=True)
        used = {"both": first, "first": first[:1], "second": first[1:]}[outputs_used]
        outer = sum((x.sin() * x).sum() for x in used)
        results.append((y, *first, *torch.autograd.grad(outer, (a, b), allow_unused=True)))
        assert asked and set(asked) == {compiled}  # forward, backward and backward-of-backward
        asked.clear()
    for x, y in zip(*results):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


@needs_compiler
def test_compiled_kernels_run_eagerly_under_a_dispatch_mode():
    """torch.compile cannot run under a Python dispatch mode such as FlopCounterMode (the benchmark's op census):
    there the same kernels run eagerly."""
    from torch.utils.flop_counter import FlopCounterMode

    g, u = _inputs((2, 3, 5), (2, 3, 5))
    x, w = _inputs((2, 3, 5), (5,), seed=1)
    f = lambda compiled: (swiglu(g, u, compiled) * rms_norm(x, w, 1e-5, compiled)).sin().sum()  # noqa: E731
    with FlopCounterMode(display=False):
        assert double_bwd_layers.kernels(True) is double_bwd_layers.KERNELS
        inner = torch.autograd.grad(f(True), (g, u, x, w), create_graph=True)
        ours = torch.autograd.grad(sum(t.square().sum() for t in inner), (g, u, x, w))
    assert double_bwd_layers.kernels(True) is double_bwd_layers.compiled_kernels()  # outside the mode
    inner = torch.autograd.grad(f(False), (g, u, x, w), create_graph=True)
    for a, b in zip(ours, torch.autograd.grad(sum(t.square().sum() for t in inner), (g, u, x, w))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@needs_compiler
def test_second_order_gradmem_gradients_are_unchanged_by_compiled_kernels():
    batch = kv_batch(3)
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        lm = tiny_lm(n_layer=2, double_bwd_layers=False)
        assert use_double_bwd_layers(lm, compiled=compiled) == 7  # 2 MLPs, 2 RMSNorms a layer and the last
        model = GradMemGPT(lm, GradMemConfig(K=2, inner_lr=1.0, inner_loss_memory="last_step", inner_loss_weight=0.5,
                                             use_write_head=True))
        grads.append(torch.autograd.grad(model(**batch).loss, list(model.parameters()), allow_unused=True))
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_compiling_the_kernels_needs_the_hand_derived_layers():
    assert all(m.compiled_kernels for m in build_backbone(BackboneConfig(n_layer=1, n_head=2, n_embd=16,
                                                                         compile_double_bwd_layers=True),
                                                          TOKENIZER).modules()
               if isinstance(m, (DoubleBwdLlamaMLP, DoubleBwdLlamaRMSNorm)))
    with pytest.raises(ValueError, match="set double_bwd_layers too"):
        BackboneConfig(double_bwd_layers=False, compile_double_bwd_layers=True)


def test_compiled_kernels_without_a_compiler_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="need a C\\+\\+ compiler on CPU"):
        use_double_bwd_layers(tiny_lm(double_bwd_layers=False), compiled=True)
