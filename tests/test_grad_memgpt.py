import itertools

import pytest
import torch
import torch.nn.functional as F

from grad_memgpt import GradMemConfig, GradMemGPT, adam_update
from helpers import (assert_generate_matches_teacher_forced_argmax, assert_ragged_batch_generates_as_one_at_a_time,
                     directional_fd, exact_match_after_training, kv_batch, tiny_lm)
from memory_model import load_memory, save_memory

try:
    import peft  # noqa: F401
    HAVE_PEFT = True
except ImportError:
    HAVE_PEFT = False


def make(base_model="llama", seed=0, **cfg):
    torch.manual_seed(seed)
    return GradMemGPT(tiny_lm(base_model, seed=seed), GradMemConfig(**cfg))


# --- an independent reference implementation of WRITE/READ, written straight on the HF model -----

def reference_context_nll(lm, prefix, ctx):
    """``[B]``: mean CE of each non-pad context token given ``[prefix; c_<t]``."""
    logits = lm(inputs_embeds=torch.cat([prefix, lm.get_input_embeddings()(ctx)], 1)).logits
    P = prefix.shape[1]
    ce = F.cross_entropy(logits[:, P - 1:-1].transpose(1, 2), ctx, reduction="none")
    mask = (ctx != 0).double()
    return (ce * mask).sum(1) / mask.sum(1).clamp(min=1)


def reference_memory(model, state):
    """What the LM reads: the memory ``[B, M, d]``, through the shared or the per-sample linear map."""
    memory = state[0]
    if model.config.mem_proj_mode == "proj":
        return memory @ model.mem_proj.weight.T + model.mem_proj.bias
    if model.config.mem_proj_mode == "per_sample":
        weight, bias = state[1], state[2]  # [B, d, d], [B, d]
        return memory @ weight.transpose(1, 2) + bias[:, None, :]
    return memory


def reference_clip(grads, clip_value=None, clip_norm=None):
    """Clip each element to [-clip_value, clip_value], then rescale each sample's gradient (all inner
    parameters together) to norm at most clip_norm."""
    if clip_value is not None:
        grads = [torch.where(g.abs() > clip_value, clip_value * g.sign(), g) for g in grads]
    if clip_norm is not None:
        scales = []
        for b in range(grads[0].shape[0]):
            norm = torch.cat([g[b].flatten() for g in grads]).norm()
            scales.append(torch.minimum(clip_norm / (norm + 1e-6), torch.ones_like(norm)))
        grads = [torch.stack([g[b] * scales[b] for b in range(len(scales))]) for g in grads]
    return grads


def reference_loss(model, batch, lr, create_graph, clip_value=None, clip_norm=None, inner_loss_weight=0.0,
                   inner_loss_memory="final"):
    """Outer loss with plain SGD inner steps; ``create_graph[k]`` says whether step k is second order.
    The inner-loss term is the WRITE loss at M_K (``final``) or the one step K-1 took (``last_step``)."""
    lm = model.lm
    ctx, qry, labels = batch["context_input_ids"], batch["query_input_ids"], batch["labels"]
    B = ctx.shape[0]
    state = [model.mem_init.expand(B, -1, -1)]
    if model.config.mem_proj_mode == "per_sample":
        state += [model.proj_weight_init.expand(B, -1, -1), model.proj_bias_init.expand(B, -1)]
    for second_order in create_graph:
        write_loss = reference_context_nll(lm, reference_memory(model, state), ctx)
        grads = torch.autograd.grad(write_loss.sum(), state, create_graph=second_order, retain_graph=True)
        grads = reference_clip(grads, clip_value, clip_norm)
        state = [s - lr * g for s, g in zip(state, grads)]
    memory = reference_memory(model, state)
    logits = lm(inputs_embeds=torch.cat([memory, lm.get_input_embeddings()(qry)], 1)).logits[:, memory.shape[1]:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    if inner_loss_weight:
        term = write_loss if inner_loss_memory == "last_step" else reference_context_nll(lm, memory, ctx)
        loss = loss + inner_loss_weight * term.mean()
    return loss


def grads_of(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_second_order_matches_finite_differences():
    model = make(K=2, inner_lr=2.0, grad_mode="second")
    batch = kv_batch(3)
    weight = model.lm.model.layers[0].self_attn.q_proj.weight
    params = [model.mem_init, weight]
    analytic = grads_of(model(**batch).loss, params)
    torch.manual_seed(1)
    for p, g in zip(params, analytic):
        v = torch.randn_like(p)
        fd = directional_fd(lambda: model(**batch).loss, [p], [v])
        assert abs((g * v).sum().item() - fd) <= 1e-6 * abs(fd), (p.shape, fd)
    # the Hessian term matters here: first order would not pass the same check
    model.config.grad_mode = "first"
    first = grads_of(model(**batch).loss, params)
    assert not torch.allclose(first[0], analytic[0], rtol=1e-3)


def test_second_order_matches_reference():
    model = make(K=3, inner_lr=1.0, grad_mode="second")
    batch = kv_batch(3)
    params = [model.mem_init] + list(model.lm.parameters())
    ours = grads_of(model(**batch).loss, params)
    ref = grads_of(reference_loss(model, batch, 1.0, [True] * 3), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_first_order_equals_detached_reference():
    model = make(K=2, inner_lr=1.0, grad_mode="first")
    batch = kv_batch(3)
    params = [model.mem_init] + list(model.lm.parameters())
    ours = grads_of(model(**batch).loss, params)
    ref = grads_of(reference_loss(model, batch, 1.0, [False, False]), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_last_k_second_order_matches_hand_built_reference():
    model = make(K=3, inner_lr=1.0, grad_mode="second", last_K_second_order=1)
    batch = kv_batch(3)
    params = [model.mem_init] + list(model.lm.parameters())
    ours = grads_of(model(**batch).loss, params)
    ref = grads_of(reference_loss(model, batch, 1.0, [False, False, True]), params)
    full = grads_of(reference_loss(model, batch, 1.0, [True] * 3), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours[0], full[0], rtol=1e-4)


@pytest.mark.parametrize("grad_mode,recompute_chunks", [("second", 0), ("second", 1), ("second", 2), ("first", 0)],
                         ids=["second", "second-recompute", "second-recompute-2chunks", "first"])
@pytest.mark.parametrize("inner_loss_memory", ["final", "last_step"])
def test_inner_loss_term_matches_reference(inner_loss_memory, grad_mode, recompute_chunks):
    model = make(K=2, inner_lr=1.0, grad_mode=grad_mode, inner_loss_weight=0.5, inner_loss_memory=inner_loss_memory,
                 recompute_inner_steps=recompute_chunks > 0, recompute_chunks=max(recompute_chunks, 1))
    batch = kv_batch(3)
    params = [model.mem_init] + list(model.lm.parameters())
    out = model(**batch)
    ours = grads_of(out.loss, params)
    ref = grads_of(reference_loss(model, batch, 1.0, [grad_mode == "second"] * 2, inner_loss_weight=0.5,
                                        inner_loss_memory=inner_loss_memory), params)
    other = "final" if inner_loss_memory == "last_step" else "last_step"
    ref_other = grads_of(reference_loss(model, batch, 1.0, [grad_mode == "second"] * 2, inner_loss_weight=0.5,
                                              inner_loss_memory=other), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours[0], ref_other[0], rtol=1e-4)  # the two terms are different objectives
    if inner_loss_memory == "last_step":
        torch.testing.assert_close(out.stats["inner_loss_term"], out.stats["inner_loss"][-1], rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore:inner_optimizer='adam' with K=1")
@pytest.mark.parametrize("inner_loss_memory", ["final", "last_step"])
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_recomputation_gives_identical_gradients(K, inner_optimizer, chunks, inner_loss_memory):
    batch = kv_batch(3)
    grads = []
    for recompute in (False, True):
        model = make(K=K, inner_lr=0.5, inner_optimizer=inner_optimizer, use_write_head=True, inner_loss_weight=0.5,
                     inner_loss_memory=inner_loss_memory, recompute_inner_steps=recompute,
                     recompute_chunks=chunks if recompute else 1)
        grads.append(grads_of(model(**batch).loss, list(model.parameters())))
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)  # chunks of other sizes round differently


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("inner_loss_memory", ["final", "last_step"])
def test_micro_batches_accumulate_to_the_whole_batch_gradient(inner_loss_memory, recompute):
    """Memory saved without recomputation: a step in micro-batches (the training loop's gradient accumulation,
    equal parts, each loss weighted by its share) gives the whole batch's gradient, because every sample writes
    its own memory and every loss is a mean over samples with one answer length each."""
    model = make(K=2, inner_lr=0.5, use_write_head=True, inner_loss_weight=0.5, inner_loss_memory=inner_loss_memory,
                 recompute_inner_steps=recompute)
    batch = kv_batch(4, n_pairs=3)
    params = [p for p in model.parameters() if p.requires_grad]
    whole = grads_of(model(**batch).loss, params)
    parts = [grads_of(model(**{k: v[rows] for k, v in batch.items()}).loss / 2, params)
             for rows in (slice(0, 2), slice(2, 4))]
    for name, w, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], whole, *parts):
        torch.testing.assert_close(a + b, w, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("K,chunks,rebuilt", [(1, 1, 0), (1, 2, 1), (2, 1, 1), (2, 2, 3), (3, 2, 5)])
def test_recomputation_rebuilds_all_but_the_last_chunk_of_the_last_step(K, chunks, rebuilt, monkeypatch):
    """Each second-order chunk runs once forward; every chunk but the last of the last step runs again in the
    backward (K=1 in one chunk rebuilds nothing: recomputation then costs nothing), and only after the
    outer backward has gone through the kept chunk, whose graph is then freed."""
    model = make(K=K, recompute_inner_steps=True, recompute_chunks=chunks)
    inner_step, events, phase = model.inner_step, [], ["forward"]

    def spy(state, *args, create_graph, **kwargs):
        if phase[0] == "backward":
            events.append("rebuild")
        elif create_graph:  # a chunk that keeps its graph: note when the outer backward has gone through it
            state[0].register_hook(lambda g: events.append("kept chunk done") if phase[0] == "backward" else None)
        else:
            events.append("forward only")
        return inner_step(state, *args, create_graph=create_graph, **kwargs)

    monkeypatch.setattr(model, "inner_step", spy)
    loss = model(**kv_batch(4)).loss
    phase[0] = "backward"
    loss.backward()
    assert events.count("forward only") == K * chunks - 1 and events.count("rebuild") == rebuilt
    assert "rebuild" not in events[:events.index("kept chunk done")]


def test_write_skips_columns_that_are_padding_in_every_row(monkeypatch):
    model = make(K=2, inner_lr=1.0, inner_loss_weight=0.5, recompute_inner_steps=True)
    batch = kv_batch(3)
    padded = dict(batch, context_input_ids=F.pad(batch["context_input_ids"], (0, 9)))  # 9 more all-pad columns
    widths, context_nll = [], model.context_nll
    monkeypatch.setattr(model, "context_nll", lambda prefix, ids, head=None: widths.append(ids.shape[1]) or
                        context_nll(prefix, ids, head))
    params = list(model.parameters())
    grads = [grads_of(model(**b).loss, params) for b in (batch, padded)]
    assert set(widths) == {int((batch["context_input_ids"] != 0).sum(1).max())}
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert model.trim_padding(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 1)


def perturb_memory_maps(model):
    """Move the memory maps off their identity start, so that a transposed or skipped map shows."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("mem_proj", "proj_")):
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# Inner gradient norms here: ~0.36 per sample (elements up to ~0.23); with the perturbed per-sample map,
# ~0.033 for the memory and ~0.044 for memory and map together. Each threshold below bites;
# clip_norm=0.36 clips only some samples, and 0.04 clips only if the map's gradient counts.
REFERENCE_GRID = [
    dict(inner_clip_value=0.02),
    dict(inner_clip_norm=0.3),
    dict(inner_clip_norm=0.36),
    dict(inner_clip_value=0.05, inner_clip_norm=0.2),
    dict(mem_proj_mode="proj"),
    dict(mem_proj_mode="per_sample"),
    dict(mem_proj_mode="per_sample", inner_clip_norm=0.04),
    dict(inner_loss_weight=0.7),
    dict(inner_loss_weight=0.7, grad_mode="first"),
    dict(inner_loss_weight=0.7, mem_proj_mode="per_sample", inner_clip_norm=0.04),
]


@pytest.mark.parametrize("options", REFERENCE_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_option_matches_hand_written_reference(options):
    model = make(K=2, inner_lr=1.0, **options).train()
    perturb_memory_maps(model)
    cfg = model.config
    batch = kv_batch(3)
    ref_args = dict(clip_value=cfg.inner_clip_value, clip_norm=cfg.inner_clip_norm)
    create_graph = [cfg.grad_mode == "second"] * 2
    params = list(model.parameters())
    out = model(**batch)
    ref = reference_loss(model, batch, 1.0, create_graph, inner_loss_weight=cfg.inner_loss_weight, **ref_args)
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=0)
    for a, b in zip(grads_of(out.loss, params), grads_of(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if cfg.inner_clip_value or cfg.inner_clip_norm:  # the thresholds bite
        unclipped = reference_loss(model, batch, 1.0, create_graph, inner_loss_weight=cfg.inner_loss_weight)
        assert abs(unclipped.item() - ref.item()) > 1e-6
    if cfg.inner_loss_weight:
        read_only = reference_loss(model, batch, 1.0, create_graph, **ref_args)
        torch.testing.assert_close(out.stats["read_loss"], read_only.detach(), rtol=1e-12, atol=0)
        with torch.no_grad():  # evaluation reports the READ loss alone
            torch.testing.assert_close(model.eval()(**batch).loss, read_only.detach(), rtol=1e-12, atol=0)


def test_grad_mode_none_leaves_mem_init_untrained():
    model = make(K=2, grad_mode="none")
    out = model(**kv_batch(3))
    out.loss.backward()
    assert model.mem_init.grad is None
    assert model.lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_k0_reads_mem_init_and_all_padding_context_is_safe():
    model = make(K=2, inner_optimizer="adam", inner_clip_norm=1.0)
    batch = kv_batch(3)
    memory = model.write(batch["context_input_ids"], K=0)
    torch.testing.assert_close(memory, model.mem_init.expand(3, -1, -1))
    batch["context_input_ids"][1] = 0  # sample 1: nothing but padding
    out = model(**batch)
    torch.testing.assert_close(out.memory[1], model.mem_init)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_samples_are_independent_of_the_batch():
    model = make(K=2, inner_optimizer="adam", inner_clip_norm=0.5, mem_proj_mode="per_sample")
    a, b = kv_batch(3, seed=0), kv_batch(3, n_pairs=5, seed=1)
    mixed = a["context_input_ids"].clone()
    mixed = torch.nn.functional.pad(mixed, (0, b["context_input_ids"].shape[1] - mixed.shape[1]))
    mixed[2] = b["context_input_ids"][2]  # another sample 2, and a longer padded batch
    with torch.no_grad():
        m1 = model.write(a["context_input_ids"])
        m2 = model.write(mixed)
    torch.testing.assert_close(m1[:2], m2[:2], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(m1[2], m2[2])
    alone = model.write(a["context_input_ids"][:1])  # batch size 1: same step for sample 0
    torch.testing.assert_close(alone[0], m1[0].detach(), rtol=1e-12, atol=1e-12)


def test_write_under_no_grad_and_other_k():
    model = make(K=2)
    ctx = kv_batch(2)["context_input_ids"]
    with torch.no_grad():
        m2, stats = model.write(ctx, return_stats=True)
        m5, stats5 = model.write(ctx, K=5, return_stats=True)
    assert not m2.requires_grad and stats["inner_loss"].shape == (2,) and stats5["inner_loss"].shape == (5,)
    torch.testing.assert_close(m2, model.write(ctx).detach())
    assert stats5["inner_loss"][-1] < stats5["inner_loss"][0]  # the inner loop descends
    assert not torch.allclose(m2, m5)
    assert all(p.grad is None for p in model.parameters())


def test_model_weights_do_not_change_in_write():
    model = make(K=3)
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.write(kv_batch(2)["context_input_ids"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_adam_matches_torch_optim_step_for_step():
    torch.manual_seed(0)
    p0 = torch.randn(3, 4, dtype=torch.float64)
    grads = [torch.randn(3, 4, dtype=torch.float64) for _ in range(5)]
    grads[2][0] = 0.0
    ref = p0.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.1, betas=(0.8, 0.99), eps=1e-8)
    ours, state = p0.clone(), None
    for step, g in enumerate(grads):
        ref.grad = g.clone()
        opt.step()
        (update,), state = adam_update([g], state, step, lr=0.1, betas=(0.8, 0.99), eps=1e-8)
        ours = ours - update
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-12, atol=1e-14)


def test_second_order_through_adam_matches_finite_differences():
    # Adam's update m / sqrt(v) is nearly sign(g): a larger inner_eps smooths it, and a smaller FD step
    # keeps the truncation error (which falls as step^2: 7e-5 at 1e-4, 7e-10 at 1e-6) under the bound.
    model = make(K=2, inner_lr=0.05, inner_optimizer="adam", inner_eps=1e-2, inner_clip_norm=3.0)
    batch = kv_batch(2)
    (g,) = grads_of(model(**batch).loss, [model.mem_init])
    v = torch.randn_like(model.mem_init)
    fd = directional_fd(lambda: model(**batch).loss, [model.mem_init], [v], eps=1e-6)
    assert abs((g * v).sum().item() - fd) <= 1e-6 * abs(fd)


def write_path_share(**cfg):
    """|second-order grad - first-order grad| / |first-order grad| of a q_proj weight: the part that flows
    through the WRITE steps."""
    batch, grads = kv_batch(8), []
    for mode in ("first", "second"):
        model = make(n_mem_tokens=2, grad_mode=mode, **cfg)
        weight = model.lm.model.layers[0].self_attn.q_proj.weight
        grads.append(torch.autograd.grad(model(**batch).loss, weight)[0])
    return ((grads[1] - grads[0]).norm() / grads[0].norm()).item()


def test_adam_with_one_write_step_passes_almost_no_gradient_through_write():
    # Adam's first step is ~lr * sign(g), flat in g: hence the warning at construction
    with pytest.warns(UserWarning, match="sign step"):
        adam_k1 = write_path_share(K=1, inner_optimizer="adam", inner_lr=0.5)
    assert adam_k1 < 1e-3 * write_path_share(K=1, inner_lr=1.0)
    assert write_path_share(K=2, inner_optimizer="adam", inner_lr=0.5) > 0.05


OPTION_GRID = [
    dict(grad_mode=g, inner_optimizer=o, mem_proj_mode=p)
    for g, o, p in itertools.product(["none", "first", "second"], ["sgd", "adam"], ["none", "proj", "per_sample"])
] + [
    dict(n_ctrl_tokens=2),
    dict(n_ctrl_tokens=1, grad_mode="first", use_write_head=True, inner_loss_weight=0.3),
    dict(inner_clip_value=0.01, inner_clip_norm=0.1),
    dict(use_write_head=True, inner_loss_weight=0.5),
    dict(use_write_head=True, inner_loss_weight=0.5, inner_loss_memory="last_step", recompute_inner_steps=True),
    dict(grad_mode="none", use_write_head=True, inner_loss_weight=0.5, inner_loss_memory="last_step"),
    dict(gradient_checkpointing=True, inner_loss_weight=0.5, inner_loss_memory="last_step"),
    dict(freeze_backbone=True, inner_loss_weight=0.5, mem_proj_mode="proj"),
    dict(gradient_checkpointing=True, K=2),
    dict(K=3, last_K_second_order=2, n_ctrl_tokens=1),
    pytest.param(dict(use_write_lora=True, write_lora_r=2), marks=pytest.mark.skipif(not HAVE_PEFT, reason="peft not installed")),
    pytest.param(dict(use_write_lora=True, freeze_backbone=True, grad_mode="first", inner_loss_weight=0.5),
                 marks=pytest.mark.skipif(not HAVE_PEFT, reason="peft not installed")),
]


@pytest.mark.parametrize("options", OPTION_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_runs_forward_and_backward(options):
    model = make(**options)
    model.train()
    out = model(**kv_batch(3))
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == kv_batch(3)["query_input_ids"].shape
    out.loss.backward()
    cfg = model.config
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert ("mem_init" in trained) == (cfg.grad_mode != "none")
    assert any(n.startswith("lm.") and "lora_" not in n for n in trained) == (not cfg.freeze_backbone)
    if cfg.n_ctrl_tokens:
        assert "ctrl" in trained
    if cfg.mem_proj_mode == "proj":
        assert "mem_proj.weight" in trained
    if cfg.mem_proj_mode == "per_sample" and cfg.grad_mode != "none":
        assert {"proj_weight_init", "proj_bias_init"} <= trained
    if cfg.use_write_head and (cfg.inner_loss_weight or cfg.grad_mode == "second"):
        assert "write_head.weight" in trained
    if cfg.use_write_lora:
        assert any("lora_" in n for n in trained)
        assert not any("lora_" in n and "lm_head" in n for n in trained)
    assert set(out.stats) >= {"inner_loss", "inner_grad_norm", "mem_norm", "mem_delta", "read_loss"}


@pytest.mark.parametrize("base_model", ["gpt2", "gpt_neox"])
def test_other_backbones_second_order(base_model):
    model = make(base_model, K=2, inner_lr=1.0)
    batch = kv_batch(2)
    (g,) = grads_of(model(**batch).loss, [model.mem_init])
    v = torch.randn_like(model.mem_init)
    fd = directional_fd(lambda: model(**batch).loss, [model.mem_init], [v])
    assert abs((g * v).sum().item() - fd) <= 1e-6 * abs(fd)


def test_lora_is_active_in_write_only():
    if not HAVE_PEFT:
        pytest.skip("peft not installed")
    model = make(use_write_lora=True, write_lora_r=2)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # peft starts B at zero; make the adapter do something
    batch = kv_batch(2)
    with torch.no_grad():
        memory = model.write(batch["context_input_ids"])
        read_with = model.read(memory, batch["query_input_ids"]).logits
        model.lm.enable_adapters()
        read_on = model.read(memory, batch["query_input_ids"]).logits
        model.lm.disable_adapters()
    assert not torch.allclose(read_with, read_on)
    plain = make(use_write_lora=False)
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k})
    with torch.no_grad():
        assert not torch.allclose(plain.write(batch["context_input_ids"]), memory)


def test_invalid_options_raise_at_construction():
    for bad in [dict(grad_mode="third"), dict(last_K_second_order=1, grad_mode="first"), dict(K=-1),
                dict(inner_optimizer="rmsprop"), dict(mem_proj_mode="x"), dict(inner_lr=0),
                dict(use_write_head=True, grad_mode="first"), dict(use_write_lora=True, grad_mode="none"),
                dict(inner_loss_memory="initial"), dict(K=0, inner_loss_weight=0.5, inner_loss_memory="last_step")]:
        with pytest.raises(ValueError, match="GradMemConfig"):
            GradMemConfig(**bad)


def test_generate_agrees_with_teacher_forced_argmax():
    assert_generate_matches_teacher_forced_argmax(make(K=1), kv_batch(3))


def test_generating_a_ragged_batch_equals_one_sample_at_a_time():
    # a large inner step makes each sample's memory, and so its answer, its own
    assert_ragged_batch_generates_as_one_at_a_time(make(K=1, inner_lr=10.0, n_ctrl_tokens=1), kv_batch(4))


def test_save_and_load_pretrained_and_memory(tmp_path):
    model = make(n_ctrl_tokens=1, use_write_head=True, mem_proj_mode="per_sample")
    batch = kv_batch(2)
    model.save_pretrained(tmp_path / "m")
    loaded = GradMemGPT.from_pretrained(tmp_path / "m").double()
    assert loaded.config == model.config
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    torch.testing.assert_close(a.logits, b.logits)
    save_memory(a.memory, tmp_path / "mem.safetensors", n_mem_tokens=8, context="demo")
    memory, meta = load_memory(tmp_path / "mem.safetensors")
    torch.testing.assert_close(memory, a.memory)
    assert meta == {"n_mem_tokens": 8, "context": "demo"}
    assert model.state_bytes_per_context() == 8 * 16 * 8


def test_learns_a_small_kv_task():
    """Overfit 8 samples of 2 pairs to exact match with second-order GradMem."""
    torch.manual_seed(0)
    model = GradMemGPT(tiny_lm(n_layer=2, n_embd=32, dtype=torch.float32), GradMemConfig(K=2, n_mem_tokens=4, inner_lr=0.5))
    assert exact_match_after_training(model, kv_batch(8, n_pairs=2, seed=3), steps=400, lr=3e-3) == 1.0


def test_write_lora_without_peft_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ImportError, match=r"use_write_lora=True needs the optional package peft: `pip install peft`"):
        make(use_write_lora=True)
