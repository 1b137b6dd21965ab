import pytest
import torch

from full_context import FullContextLM
from helpers import assert_generate_matches_teacher_forced_argmax, exact_match_after_training, kv_batch, tiny_lm
from rmt import RMT, RMTConfig


def make_rmt(seed=0, **cfg):
    torch.manual_seed(seed)
    return RMT(tiny_lm(seed=seed), RMTConfig(**cfg))


def test_rmt_write_needs_no_autograd_grad_and_runs_under_no_grad(monkeypatch):
    model = make_rmt(K=2, mem_residual=True)
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: pytest.fail("RMT called autograd.grad"))
    with torch.no_grad():
        memory = model.write(kv_batch(3)["context_input_ids"])
    assert memory.shape == (3, 8, 16) and not memory.requires_grad


@pytest.mark.parametrize("model_fn", [lambda: make_rmt(K=2, n_ctrl_tokens=1, mem_proj_mode="proj_rw"),
                                      lambda: FullContextLM(tiny_lm())], ids=["rmt", "full_context"])
def test_padding_invariance(model_fn):
    model = model_fn()
    batch = kv_batch(3)
    ctx = batch["context_input_ids"]
    padded = torch.nn.functional.pad(ctx, (0, 16))  # the same samples, 16 more pads each
    with torch.no_grad():
        a = model.read(model.write(ctx), batch["query_input_ids"])
        b = model.read(model.write(padded), batch["query_input_ids"])
        if isinstance(model, RMT):
            torch.testing.assert_close(model.write(ctx), model.write(padded), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-12, atol=1e-12)


def test_rmt_trailing_memory_follows_the_last_real_token():
    model = make_rmt(K=1)
    ctx = kv_batch(2, n_pairs=3)["context_input_ids"]
    short = ctx.clone()
    short[1, 5:] = 0  # sample 1 keeps only its first 5 tokens
    with torch.no_grad():
        alone = model.write(short[1:2, :5])
        batched = model.write(short)
    torch.testing.assert_close(batched[1], alone[0], rtol=1e-12, atol=1e-12)


RMT_OPTIONS = [dict(), dict(K=2), dict(n_ctrl_tokens=2), dict(mem_proj_mode="proj"), dict(mem_proj_mode="proj_rw"),
               dict(recon_loss_weight=0.5), dict(recon_loss_weight=0.5, use_write_head=True),
               dict(mem_residual=True, K=2), dict(freeze_backbone=True, mem_proj_mode="proj"), dict(K=0)]


@pytest.mark.parametrize("options", RMT_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_rmt_every_option_runs_forward_and_backward(options):
    model = make_rmt(**options)
    out = model(**kv_batch(3))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    cfg = model.config
    assert "mem_init" in trained
    assert any(n.startswith("lm.") for n in trained) == (not cfg.freeze_backbone)
    for name, on in [("ctrl", cfg.n_ctrl_tokens and cfg.K), ("write_proj.weight", cfg.mem_proj_mode != "none" and cfg.K),
                     ("read_proj.weight", cfg.mem_proj_mode == "proj_rw"), ("mem_norm.weight", cfg.mem_residual),
                     ("write_head.weight", cfg.use_write_head)]:
        if on:
            assert name in trained, name
    if cfg.recon_loss_weight:
        assert "recon_loss" in out.stats


def test_rmt_invalid_options_raise():
    for bad in [dict(mem_proj_mode="per_sample"), dict(use_write_head=True), dict(K=-1)]:
        with pytest.raises(ValueError, match="RMTConfig"):
            RMTConfig(**bad)


def models():
    return {"rmt": make_rmt(K=1, mem_proj_mode="proj"), "full_context": FullContextLM(tiny_lm()),
            "mamba": FullContextLM(tiny_lm("mamba"))}


@pytest.mark.parametrize("name", ["rmt", "full_context", "mamba"])
def test_generate_agrees_with_teacher_forced_argmax(name):
    assert_generate_matches_teacher_forced_argmax(models()[name], kv_batch(3))


def test_state_bytes_per_context():
    m = models()
    assert m["rmt"].state_bytes_per_context() == 8 * 16 * 8  # M x d float64 values
    # KV cache: 2 x layers x length x d, float64
    assert m["full_context"].state_bytes_per_context(100) == 2 * 1 * 100 * 16 * 8
    mamba = m["mamba"].lm.config
    assert m["mamba"].state_bytes_per_context(100) == 1 * mamba.intermediate_size * (16 + 4) * 8


def test_save_and_load_baselines(tmp_path):
    for name, model in models().items():
        model.save_pretrained(tmp_path / name)
        loaded = type(model).from_pretrained(tmp_path / name).double()
        batch = kv_batch(2)
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits)


@pytest.mark.parametrize("name", ["rmt", "full_context", "mamba"])
def test_each_baseline_overfits_a_batch_of_eight(name):
    torch.manual_seed(0)
    lm = tiny_lm("mamba" if name == "mamba" else "llama", n_layer=2, n_embd=32, dtype=torch.float32)
    model = RMT(lm, RMTConfig(n_mem_tokens=4)) if name == "rmt" else FullContextLM(lm)
    assert exact_match_after_training(model, kv_batch(8, n_pairs=2, seed=3), steps=400, lr=3e-3) == 1.0
