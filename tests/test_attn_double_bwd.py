import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import attn_double_bwd
from attn_double_bwd.manual import _Attention, _causal_bands, hides_later_keys, manual_attention, reference_attention
from grad_memgpt import GradMemConfig, GradMemGPT
from helpers import kv_batch, tiny_lm


def qkv(B=2, H=2, H_kv=2, T=5, S=6, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return make(B, H, T, D), make(B, H_kv, S, D), make(B, H_kv, S, D)


def causal_padding_bias(B, T, S, pad_last=1):
    """Additive mask: causal with the last query at the last key, and the last ``pad_last`` keys of sample 0 hidden."""
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T).expand(B, 1, T, S).clone()
    allowed[0, :, :, S - pad_last:] = False
    allowed[0, :, :, 0] = True  # every row keeps a key
    return torch.zeros(B, 1, T, S, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_gradcheck_and_gradgradcheck(dropout, bias, scale):
    q, k, v = qkv()
    b = causal_padding_bias(2, 5, 6) if bias else None
    keep = (torch.rand(2, 2, 5, 6, generator=torch.Generator().manual_seed(1)) >= 0.3).double() / 0.7 if dropout else None
    f = lambda q, k, v: _Attention.apply(q, k, v, b, scale if scale else 0.5, keep)  # noqa: E731
    assert gradcheck(f, (q, k, v))
    assert gradgradcheck(f, (q, k, v))
    torch.testing.assert_close(f(q, k, v), reference_attention(q, k, v, b, scale if scale else 0.5, keep))


def test_grouped_query_heads_match_the_reference_to_second_order():
    q, k, v = qkv(H=4, H_kv=2)
    bias = causal_padding_bias(2, 5, 6)
    f = lambda q, k, v: manual_attention(q, k, v, bias)  # noqa: E731
    assert gradgradcheck(f, (q, k, v))
    out, ref = f(q, k, v), reference_attention(q, k, v, bias)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    g1 = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
    g2 = torch.autograd.grad((ref * w).sum(), (q, k, v), create_graph=True)
    hvp1 = torch.autograd.grad(sum((g * g).sum() for g in g1), (q, k, v))
    hvp2 = torch.autograd.grad(sum((g * g).sum() for g in g2), (q, k, v))
    for a, b in zip(hvp1 + g1, hvp2 + g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)])
@pytest.mark.parametrize("dropout", [False, True])
def test_second_order_through_a_subset_of_the_gradients_matches_the_reference(used, dropout):
    """The inner loop's loss may reach only some of (dQ, dK, dV): the others' cotangents are None."""
    q, k, v = qkv()
    bias = causal_padding_bias(2, 5, 6)
    keep = (torch.rand(2, 2, 5, 6, generator=torch.Generator().manual_seed(1)) >= 0.3).double() / 0.7 if dropout else None
    w = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)  # dO depends on parameters too
    directions = torch.randn(3, 2, 2, 6, 4, dtype=torch.float64)

    def hvp(attention):
        grads = torch.autograd.grad((attention(q, k, v, bias, 0.5, keep) * w).sum(), (q, k, v), create_graph=True)
        loss = sum((grads[i] * directions[i, :, :, : grads[i].shape[2]]).sum() for i in used)
        return torch.autograd.grad(loss, (q, k, v, w), allow_unused=True, materialize_grads=True)

    for ours, ref in zip(hvp(_Attention.apply), hvp(reference_attention)):
        torch.testing.assert_close(ours, ref)


def test_dropout_mask_is_drawn_once_and_reused_by_both_backwards():
    q, k, v = qkv()
    torch.manual_seed(7)
    out = manual_attention(q, k, v, dropout=0.4, training=True)
    torch.manual_seed(7)
    keep = (torch.rand(2, 2, 5, 6) >= 0.4).double() / 0.6
    ref = reference_attention(q, k, v, keep=keep)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v), create_graph=True)
    hvp = torch.autograd.grad(sum(x.sum() for x in g), (q, k, v))
    hvp_ref = torch.autograd.grad(sum(x.sum() for x in g_ref), (q, k, v))
    for a, b in zip(g + hvp, g_ref + hvp_ref):
        torch.testing.assert_close(a, b)
    assert torch.equal(manual_attention(q, k, v, dropout=0.4, training=False), reference_attention(q, k, v))


@pytest.mark.parametrize(("t", "s"), [(7, 7), (5, 9), (1, 4)])
@pytest.mark.parametrize("n_bands", [1, 2, 3, 5, 10])
def test_causal_bands_cover_the_queries_and_stop_at_the_last_key_each_band_sees(t, s, n_bands):
    bands = _causal_bands(t, s, n_bands)
    assert len(bands) == min(n_bands, t)
    assert bands[0][0] == 0 and bands[-1][1] == t and bands[-1][2] == s
    assert all(b1 == a2 for (_, b1, _), (a2, _, _) in zip(bands, bands[1:]))
    assert all(a < b and e == s - t + b for a, b, e in bands)


@pytest.mark.parametrize("n_bands", [2, 3, 5])
@pytest.mark.parametrize("shape", [dict(T=5, S=6), dict(T=6, S=6), dict(T=4, S=9, H=4, H_kv=2)], ids=["T<S", "T=S", "gqa"])
@pytest.mark.parametrize("dropout", [False, True])
def test_causal_bands_match_the_reference_to_second_order(n_bands, shape, dropout):
    q, k, v = qkv(**shape)
    B, H, T, _ = q.shape
    S = k.shape[2]
    bias = causal_padding_bias(B, T, S)
    keep = (torch.rand(B, H, T, S, generator=torch.Generator().manual_seed(1)) >= 0.3).double() / 0.7 if dropout else None
    groups = H // k.shape[1]
    expand = lambda x: x.repeat_interleave(groups, dim=1)  # noqa: E731
    bands = _causal_bands(T, S, n_bands)
    f = lambda q, k, v: _Attention.apply(q, k, v, bias, 0.5, keep, bands)  # noqa: E731
    assert gradcheck(lambda q, k, v: f(q, expand(k), expand(v)), (q, k, v))
    assert gradgradcheck(lambda q, k, v: f(q, expand(k), expand(v)), (q, k, v))
    w = torch.randn(B, H, T, 4, dtype=torch.float64, requires_grad=True)
    for used in [(0,), (1, 2), (0, 1, 2)]:  # the cotangents of the gradients left out arrive as None
        results = []
        for attention in (f, lambda q, k, v: reference_attention(q, k, v, bias, 0.5, keep)):
            out = attention(q, expand(k), expand(v))
            grads = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
            loss = sum(grads[i].square().sum() for i in used)
            results.append((out, *grads, *torch.autograd.grad(loss, (q, k, v, w), allow_unused=True, materialize_grads=True)))
        for ours, ref in zip(*results):
            torch.testing.assert_close(ours, ref)


def test_causal_bands_refuse_a_mask_that_shows_later_keys():
    q, k, v = qkv()
    causal = causal_padding_bias(2, 5, 6)
    assert hides_later_keys(causal, _causal_bands(5, 6, 3))
    full = torch.zeros(2, 1, 5, 6, dtype=torch.float64)  # bidirectional: every query sees every key
    assert not hides_later_keys(full, _causal_bands(5, 6, 3)) and hides_later_keys(full, _causal_bands(5, 6, 1))
    for bias in (full, None):
        with pytest.raises(ValueError, match="causal_bands=1"):
            manual_attention(q, k, v, bias, causal_bands=3)
    torch.testing.assert_close(manual_attention(q, k, v, full), reference_attention(q, k, v, full))


def test_gradmem_runs_its_causal_attention_in_bands(monkeypatch):
    seen = []

    def recording(*args, causal_bands=1, **kwargs):
        seen.append(causal_bands)
        return manual_attention(*args, causal_bands=causal_bands, **kwargs)

    monkeypatch.setattr(attn_double_bwd, "manual_attention", recording)
    model = GradMemGPT(tiny_lm(), GradMemConfig(K=1, attn_implementation="gradmem_manual"))
    model(**kv_batch(2)).loss.backward()
    assert seen and set(seen) == {attn_double_bwd.CAUSAL_BANDS}


@pytest.mark.parametrize("options", [dict(), dict(inner_optimizer="adam", n_ctrl_tokens=1), dict(K=3, last_K_second_order=2)],
                         ids=["sgd", "adam-ctrl", "last2of3"])
def test_second_order_gradmem_step_matches_eager(options):
    batch = kv_batch(3)
    grads = []
    for impl in ("dtype_preserving", "gradmem_manual"):  # eager attention in float64 vs the manual kernel
        torch.manual_seed(0)
        model = GradMemGPT(tiny_lm(), GradMemConfig(**{"K": 2, "inner_lr": 1.0, **options}, attn_implementation=impl))
        assert model.lm.config._attn_implementation == impl
        grads.append(torch.autograd.grad(model(**batch).loss, list(model.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("options", [
    dict(), dict(inner_optimizer="adam"), dict(K=3, last_K_second_order=1), dict(grad_mode="first"),
    dict(mem_proj_mode="per_sample", inner_clip_norm=0.5), dict(use_write_head=True, n_ctrl_tokens=1, inner_loss_weight=0.3),
    dict(attn_implementation="gradmem_manual", K=3), dict(recompute_chunks=2), dict(recompute_chunks=3, inner_optimizer="adam"),
    dict(K=3, last_K_second_order=1, inner_optimizer="adam", recompute_chunks=2)],
    ids=str)
def test_inner_step_recomputation_gives_identical_gradients(options):
    batch = kv_batch(3)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        if not recompute:
            options = {k: v for k, v in options.items() if k != "recompute_chunks"}
        model = GradMemGPT(tiny_lm(), GradMemConfig(**{"K": 2, "inner_lr": 1.0, **options}, recompute_inner_steps=recompute))
        out = model(**batch)
        grads.append(torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True))
        stats = out.stats
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert stats["inner_loss"].shape == (model.config.K,)


def test_recomputation_replays_the_dropout_of_each_step():
    torch.manual_seed(0)
    lm = tiny_lm()
    lm.config.attention_dropout = 0.3
    for layer in lm.model.layers:
        layer.self_attn.attention_dropout = 0.3
    batch = kv_batch(2)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GradMemGPT(lm, GradMemConfig(K=2, inner_lr=1.0, recompute_inner_steps=recompute,
                                             attn_implementation="gradmem_manual")).train()
        torch.manual_seed(123)
        grads.append(torch.autograd.grad(model(**batch).loss, [model.mem_init])[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-13)


# --- gradmem_triton: fp32 against the reference, on CUDA when there is one, else on CPU through
# TRITON_INTERPRET=1 (conftest sets it only when CUDA is absent: CPU tensors need the interpreter) ----------

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [dict(T=20, S=37, D=8), dict(T=16, S=16, D=16, H=4, H_kv=2), dict(T=3, S=5, D=4, B=1)],
                         ids=["ragged", "gqa", "tiny"])
def test_triton_matches_reference_to_second_order(shape):
    from attn_double_bwd.triton_attention import triton_attention

    q, k, v = (t.detach().float().to(TRITON_DEVICE).requires_grad_() for t in qkv(**{"B": 2, "H": 2, "H_kv": 2, **shape}))
    bias = causal_padding_bias(q.shape[0], q.shape[2], k.shape[2], pad_last=2).float().to(TRITON_DEVICE)
    out, ref = triton_attention(q, k, v, bias), reference_attention(q, k, v, bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    g = torch.Generator().manual_seed(2)
    # the incoming gradient d_out = w is an input of the backward too: double backward returns grad_do for it
    w = torch.randn(out.shape, generator=g).to(TRITON_DEVICE).requires_grad_()
    g1 = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
    g2 = torch.autograd.grad((ref * w).sum(), (q, k, v), create_graph=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-6)
    u = [torch.randn(t.shape, generator=g).to(TRITON_DEVICE) for t in g1]
    h1 = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g1, u)), (q, k, v, w))
    h2 = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g2, u)), (q, k, v, w))
    for a, b in zip(h1, h2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


def test_second_order_gradmem_step_with_triton_matches_eager():
    batch = {k: v.to(TRITON_DEVICE) for k, v in kv_batch(2).items()}
    grads = []
    for impl in ("eager", "gradmem_triton"):
        torch.manual_seed(0)
        model = GradMemGPT(tiny_lm(dtype=torch.float32), GradMemConfig(K=2, inner_lr=1.0, attn_implementation=impl))
        model.to(TRITON_DEVICE)
        grads.append(torch.autograd.grad(model(**batch).loss, list(model.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    from attn_double_bwd import gradmem_triton_attention

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv()
    module = torch.nn.Module()
    with pytest.raises(RuntimeError, match="gradmem_triton runs on CUDA; on CPU use gradmem_manual"):
        gradmem_triton_attention(module, q, k, v, None)
