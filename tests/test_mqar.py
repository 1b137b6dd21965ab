"""MQAR: data invariants, the delta rule (chunked = recurrent), the three models (counts, causality,
save/load, backbones), memory models on MQAR batches, and a tiny model that learns MQAR."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from backbones import BackboneConfig, build_backbone
from full_context import FullContextLM
from grad_memgpt import GradMemConfig, GradMemGPT
from helpers import directional_fd
from mqar.data import (MQARCollator, MQARConfig, MQARDataError, gap_probabilities, generate_mqar_dataset,
                       load_mqar_dataset, main as data_main, sample_examples, _weighted_subset)
from mqar.delta_rule import delta_rule_chunked, delta_rule_fla, delta_rule_recurrent, fla_available
from mqar.modeling import (CONFIGS, DeltaNetConfig, MQARGPTConfig, UnifiedKVConfig, causal_attention,
                           parameter_counts, rotary, seed_configs)
from rmt import RMT, RMTConfig

MODEL_TYPES = tuple(CONFIGS)


def tiny(model_type, dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, **overrides)
    return AutoModelForCausalLM.from_config(CONFIGS[model_type](**kwargs)).to(dtype)


def batch(cfg, n=4, seed=0):
    ids, labels = sample_examples(cfg, np.random.default_rng(seed), n)
    return MQARCollator()([{"input_ids": i.tolist(), "labels": l.tolist(), "n_pairs": cfg.n_pairs}
                           for i, l in zip(ids, labels)])


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_pairs,seq_len,vocab_size,random_non_queries",
                         [(4, 16, 32, False), (8, 64, 128, False), (8, 64, 128, True), (3, 21, 40, True)])
def test_examples_follow_the_zoology_layout(n_pairs, seq_len, vocab_size, random_non_queries):
    cfg = MQARConfig(n_pairs=n_pairs, seq_len=seq_len, vocab_size=vocab_size, random_non_queries=random_non_queries)
    ids, labels = sample_examples(cfg, np.random.default_rng(1), 200)
    assert ids.shape == labels.shape == (200, seq_len)
    C, half = 2 * n_pairs, vocab_size // 2
    for row, lab in zip(ids, labels):
        keys, values = row[0:C:2], row[1:C:2]
        assert len(set(keys)) == n_pairs and len(set(values)) == n_pairs
        assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < vocab_size)).all()
        answer = dict(zip(keys.tolist(), values.tolist()))
        scored = np.flatnonzero(lab != -100)  # HF convention: the label sits one after its query key
        queries = scored - 1
        assert len(scored) == n_pairs and (queries >= C).all() and ((queries - C) % 2 == 0).all()
        assert sorted(row[queries].tolist()) == sorted(keys.tolist())  # every key queried once
        assert [answer[k] for k in row[queries]] == lab[scored].tolist()
        filler = np.setdiff1d(np.arange(C, seq_len), queries)
        if not random_non_queries:
            assert (row[filler] == 0).all()
    if random_non_queries:
        filler_values = ids[:, C:][labels[:, C:] != -100]  # slots after a query key are always filler
        assert len(np.unique(filler_values)) > vocab_size // 2


def test_gap_sampler_matches_numpy_weighted_choice_without_replacement():
    cfg = MQARConfig(n_pairs=4, seq_len=40, vocab_size=64)
    p = gap_probabilities(cfg)  # 16 slots, a = 0.01: P(g) ~ (g + 1)^-0.99
    assert p.shape == (16,) and p[0] / p[1] == pytest.approx(2 ** 0.99)
    n = 6000
    ours = _weighted_subset(np.random.default_rng(0), n, 4, p)
    rng = np.random.default_rng(1)
    ref = np.stack([rng.choice(16, size=4, replace=False, p=p) for _ in range(n)])
    first = np.bincount(ours[:, 0], minlength=16) / n
    assert np.abs(first - p).max() < 0.02  # the first draw follows p itself
    inclusion = lambda draws: np.bincount(draws.ravel(), minlength=16) / n
    assert np.abs(inclusion(ours) - inclusion(ref)).max() < 0.04


def test_impossible_settings_raise_with_the_fix():
    with pytest.raises(MQARDataError, match="seq_len >= 32"):
        MQARConfig(n_pairs=8, seq_len=31, vocab_size=64)
    with pytest.raises(MQARDataError, match="must exceed seq_len"):
        MQARConfig(n_pairs=8, seq_len=64, vocab_size=64)
    with pytest.raises(MQARDataError, match="power_a"):
        MQARConfig(n_pairs=2, seq_len=8, vocab_size=16, power_a=0)
    with pytest.raises(MQARDataError, match="at least one"):
        MQARConfig(n_pairs=0)


def test_splits_are_seeded_and_disjoint():
    cfg = MQARConfig(n_pairs=1, seq_len=4, vocab_size=6)  # 2 keys x 3 values x 1 slot: 6 distinct examples
    ds = generate_mqar_dataset(cfg, 2, 2, 1, seed=0)
    rows = {split: {tuple(r) for r in ds[split]["input_ids"]} for split in ds}
    assert not rows["train"] & rows["valid"] and not rows["train"] & rows["test"] and not rows["valid"] & rows["test"]
    again = generate_mqar_dataset(cfg, 2, 2, 1, seed=0)
    assert all(ds[s]["input_ids"] == again[s]["input_ids"] for s in ds)
    big = MQARConfig(n_pairs=4, seq_len=32, vocab_size=64)
    assert generate_mqar_dataset(big, 5, 1, 1, seed=0)["train"]["input_ids"] != \
        generate_mqar_dataset(big, 5, 1, 1, seed=1)["train"]["input_ids"]
    with pytest.raises(MQARDataError, match="too few distinct examples"):
        generate_mqar_dataset(cfg, 60, 1, 0, seed=0)


def test_cli_writes_a_loadable_dataset_dict(tmp_path, capsys):
    argv = ["--n_pairs", "4", "--seq_len", "24", "--vocab_size", "32", "--n_train", "50", "--n_valid", "5",
            "--n_test", "5", "--out", str(tmp_path)]
    assert data_main(argv) == 0
    ds = load_mqar_dataset(tmp_path / "MQAR-N4-L24-V32_50")
    assert {k: len(v) for k, v in ds.items()} == {"train": 50, "valid": 5, "test": 5}
    b = MQARCollator()([ds["test"][i] for i in range(3)])
    assert b["context_input_ids"].shape == (3, 8) and b["query_input_ids"].shape == b["labels"].shape == (3, 16)
    assert data_main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert data_main(argv[:4] + ["--vocab_size", "24", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(MQARDataError, match="not a saved MQAR dataset"):
        load_mqar_dataset(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# Delta rule
# ---------------------------------------------------------------------------------------------

def delta_inputs(B=2, H=2, T=13, dk=5, dv=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, dk, generator=g, dtype=torch.float64)
    k = F.normalize(torch.randn(B, H, T, dk, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, dv, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    return q, k, v, beta


def test_recurrent_delta_rule_is_the_textbook_update():
    q, k, v, beta = delta_inputs(B=1, H=1, T=4)
    S = torch.zeros(3, 5, dtype=torch.float64)  # S [dv, dk]: S_t = S_{t-1} - beta_t (S_{t-1} k_t - v_t) k_t^T
    for t in range(4):
        kt, vt = k[0, 0, t], v[0, 0, t]
        S = S - beta[0, 0, t] * torch.outer(S @ kt - vt, kt)
        expected = S @ q[0, 0, t]
    o, M = delta_rule_recurrent(q, k, v, beta)
    torch.testing.assert_close(o[0, 0, -1], expected)
    torch.testing.assert_close(M[0, 0], S.T)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 64])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_delta_rule_equals_recurrent(chunk_size, with_initial_state):
    q, k, v, beta = (x.requires_grad_() for x in delta_inputs())
    M0 = torch.randn(2, 2, 5, 3, dtype=torch.float64) if with_initial_state else None
    o_ref, M_ref = delta_rule_recurrent(q, k, v, beta, M0)
    o, M = delta_rule_chunked(q, k, v, beta, chunk_size=chunk_size, initial_state=M0)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(M, M_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(o)
    grads = torch.autograd.grad((o * w).sum() + M.sum(), (q, k, v, beta))
    grads_ref = torch.autograd.grad((o_ref * w).sum() + M_ref.sum(), (q, k, v, beta))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not fla_available(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                    reason="flash-linear-attention's chunk_delta_rule needs CUDA and the fla package")
def test_fla_kernel_equals_chunked():
    q, k, v, beta = (x.float().cuda() for x in delta_inputs(T=100, dk=16, dv=16))
    torch.testing.assert_close(delta_rule_fla(q, k, v, beta), delta_rule_chunked(q, k, v, beta)[0],
                               rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def test_seed_parameter_counts():
    counts = {name: parameter_counts(AutoModelForCausalLM.from_config(c)) for name, c in seed_configs().items()}
    assert counts["mqar_gpt"]["blocks"] == 98_560 == 4 * (4 * 64 * 96 + 64)
    assert counts["mqar_unifiedkv"]["blocks"] == 98_560 == 4 * (3 * 64 * 128 + 64)
    assert counts["mqar_deltanet"]["blocks"] == 98_560 + 4 * 64 * 2  # + the beta projection, d -> heads
    for c in counts.values():  # the LM head is the embedding matrix, as in Zoology
        assert c["embedding"] == 2048 * 64 and c["lm_head"] == 0
        assert c["total"] == c["blocks"] + c["embedding"] + c["final_norm"]
    untied = parameter_counts(AutoModelForCausalLM.from_config(MQARGPTConfig(vocab_size=2048, tie_word_embeddings=False)))
    assert untied["lm_head"] == 2048 * 64 and untied["total"] == counts["mqar_gpt"]["total"] + 2048 * 64
    with_ffn = parameter_counts(AutoModelForCausalLM.from_config(MQARGPTConfig(vocab_size=2048, use_ffn=True)))
    assert with_ffn["blocks"] == 98_560 + 4 * (2 * 64 * 256 + 64)


def test_causal_attention_matches_torch_sdpa():
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_rotary_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 5, 8, dtype=torch.float64), torch.randn(1, 1, 5, 8, dtype=torch.float64)
    pos = torch.arange(5)[None]
    scores = rotary(q, pos, 1e4) @ rotary(k, pos, 1e4).transpose(-1, -2)
    shifted = rotary(q, pos + 11, 1e4) @ rotary(k, pos + 11, 1e4).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted)
    assert not torch.allclose(rotary(q, pos, 1e4), q)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_models_are_causal(model_type):
    lm = tiny(model_type)
    ids = torch.randint(0, 40, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % 40
    a, b = lm(input_ids=ids).logits, lm(input_ids=changed).logits
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_deltanet_model_chunked_equals_recurrent():
    ids = torch.randint(0, 40, (2, 19))
    chunked = tiny("mqar_deltanet", chunk_size=4)(input_ids=ids).logits
    recurrent = tiny("mqar_deltanet", delta_rule_impl="recurrent")(input_ids=ids).logits
    torch.testing.assert_close(chunked, recurrent, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_and_load_as_safetensors_through_the_auto_classes(model_type, tmp_path):
    lm = tiny(model_type, dtype=torch.float32)
    lm.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(lm) and loaded.config.model_type == model_type
    ids = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(loaded(input_ids=ids).logits, lm(input_ids=ids).logits)


def test_loss_follows_the_hugging_face_shift():
    lm = tiny("mqar_gpt")
    ids = torch.randint(0, 40, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, 4] = 7
    logits = lm(input_ids=ids).logits
    expected = F.cross_entropy(logits[:, 3], torch.full((2,), 7))  # position 3 predicts labels[:, 4]
    torch.testing.assert_close(lm(input_ids=ids, labels=labels).loss, expected)


def test_bad_configs_and_calls_raise():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        MQARGPTConfig(d_key=95)
    with pytest.raises(ValueError, match="delta_rule_impl"):
        DeltaNetConfig(delta_rule_impl="cuda")
    with pytest.raises(ValueError, match="even"):
        UnifiedKVConfig(d_kv=6, num_attention_heads=2)
    lm = tiny("mqar_gpt")
    ids = torch.randint(0, 40, (2, 5))
    with pytest.raises(NotImplementedError, match="no decoding cache"):
        lm(input_ids=ids, use_cache=True)
    with pytest.raises(ValueError, match="right padding"):
        lm(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    if not fla_available(torch.device("cpu")):
        with pytest.raises(RuntimeError, match="flash-linear-attention"):
            tiny("mqar_deltanet", delta_rule_impl="fla")(input_ids=ids)


@pytest.mark.parametrize("base_model,model_type", [("mqar_gpt", "mqar_gpt"), ("deltanet", "mqar_deltanet"),
                                                   ("unifiedkv", "mqar_unifiedkv")])
def test_backbones_build_the_seed_models(base_model, model_type):
    lm = build_backbone(BackboneConfig(base_model=base_model, n_layer=4, n_head=2, n_embd=64), vocab_size=2048)
    assert lm.config.model_type == model_type
    assert parameter_counts(lm)["blocks"] == parameter_counts(AutoModelForCausalLM.from_config(
        seed_configs()[model_type]))["blocks"]


def test_state_bytes():
    gpt, delta, ukv = (FullContextLM(AutoModelForCausalLM.from_config(c)) for c in seed_configs().values())
    assert gpt.state_bytes_per_context(64) == 4 * 64 * (96 + 96) * 4  # K and V cache, float32
    assert ukv.state_bytes_per_context(64) == 4 * 64 * 128 * 4  # one cached vector per token
    assert delta.state_bytes_per_context(64) == delta.state_bytes_per_context(1) == 4 * 2 * 48 * 48 * 4
    with pytest.raises(ValueError, match="context_length"):
        gpt.state_bytes_per_context()


# ---------------------------------------------------------------------------------------------
# Memory models on MQAR: WRITE the KV region, READ every query
# ---------------------------------------------------------------------------------------------

MEMORY_CFG = MQARConfig(n_pairs=3, seq_len=14, vocab_size=40)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradmem_second_order_gradient_matches_finite_differences(model_type):
    b = batch(MEMORY_CFG, n=2)
    model = GradMemGPT(tiny(model_type, chunk_size=4) if model_type == "mqar_deltanet" else tiny(model_type),
                       GradMemConfig(n_mem_tokens=2, K=2, inner_lr=0.5, grad_mode="second"))
    loss = lambda: model(**b).loss
    params = [model.mem_init, *model.lm.model.layers[0].mixer.parameters()]
    grads = torch.autograd.grad(loss(), params)
    directions = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, directions)).item()
    assert analytic == pytest.approx(directional_fd(loss, params, directions), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rmt_and_full_context_score_every_query(model_type):
    b = batch(MEMORY_CFG, n=3)
    for model in (RMT(tiny(model_type), RMTConfig(n_mem_tokens=2)), FullContextLM(tiny(model_type))):
        out = model(**b)
        assert out.logits.shape == (3, MEMORY_CFG.seq_len - 6, 40)
        # the loss covers the 3 queries of each example, scored at the query keys
        scored = b["labels"][:, 1:] != -100
        assert scored.sum(1).tolist() == [3, 3, 3]
        ce = F.cross_entropy(out.logits[:, :-1][scored], b["labels"][:, 1:][scored])
        torch.testing.assert_close(out.loss, ce)
    full = FullContextLM(tiny(model_type))(**b).logits
    ids = torch.cat([b["context_input_ids"], b["query_input_ids"]], 1)
    torch.testing.assert_close(full, tiny(model_type)(input_ids=ids).logits[:, 6:])


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------

def query_accuracy(lm, ids, labels):
    with torch.no_grad():
        logits = lm(input_ids=ids).logits
    scored = labels[:, 1:] != -100
    return (logits[:, :-1].argmax(-1) == labels[:, 1:])[scored].float().mean().item()


def learns_mqar(model_type, max_steps, seed=0):
    """Train a 2-layer, 64-dim model on fresh MQAR batches (4 pairs, 16 tokens, 64 ids); return its
    accuracy per query on held-out examples (a model that only copies some context value gets ~0.3).
    An untied LM head: this tiny model learns in ~200 steps with it, ~500 tied."""
    torch.manual_seed(seed)
    cfg = MQARConfig(n_pairs=4, seq_len=16, vocab_size=64)
    config = CONFIGS[model_type](vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 tie_word_embeddings=False)
    lm = AutoModelForCausalLM.from_config(config)
    test_ids, test_labels = (torch.tensor(a, dtype=torch.long) for a in sample_examples(cfg, np.random.default_rng(99), 256))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for step in range(max_steps):
        ids, labels = (torch.tensor(a, dtype=torch.long) for a in sample_examples(cfg, rng, 32))
        loss = lm(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    return query_accuracy(lm, test_ids, test_labels)


def test_tiny_gpt_learns_mqar_with_4_pairs():
    assert learns_mqar("mqar_gpt", max_steps=400) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mqar_deltanet", "mqar_unifiedkv"])
def test_tiny_deltanet_and_unifiedkv_learn_mqar_with_4_pairs(model_type):
    assert learns_mqar(model_type, max_steps=1500) > 0.9


# ---------------------------------------------------------------------------------------------
# The task and the comparison
# ---------------------------------------------------------------------------------------------

def test_task_tokenizer_collator_and_errors(tmp_path):
    from transformers import AutoTokenizer

    from mqar.task import MQARTask, MQARTaskArgs
    from tasks import TaskDataError, task_class

    assert task_class("mqar") is MQARTask
    task = MQARTask(MQARTaskArgs(n_pairs=3, seq_len=14, vocab_size=40, n_train=20, n_valid=4))
    tok = task.tokenizer()
    assert len(tok) == 40 and tok.pad_token_id == 0 and tok.eos_token_id is None
    tok.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).convert_tokens_to_ids(["0", "39"]) == [0, 39]
    splits = task.load_splits(("train", "test"), seed=0)
    b = task.collator(tok)([splits["test"][i] for i in range(4)])
    assert b["context_input_ids"].shape == (4, 6) and b["labels"].shape == (4, 8)
    assert task.score_texts(["x"], [{}]) is None and task.describe() == "mqar N=3 L=14 V=40"
    with pytest.raises(TaskDataError, match="unanswerable"):
        task.collator(tok, max_context_length=5)
    with pytest.raises(MQARDataError, match="seq_len >= 32"):
        MQARTaskArgs(n_pairs=8, seq_len=16)


def tiny_compare_config(tmp_path, **overrides):
    from mqar.compare import CompareConfig

    return CompareConfig(**{**dict(out_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs"), pairs=(2, 4),
                                   min_seq_len=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16, n_mem_tokens=2,
                                   n_train=64, n_valid=8, batch_size=8, warmup_steps=1, max_steps=2, eval_steps=2,
                                   parallel=2), **overrides})


@pytest.mark.parametrize("name,state_bytes", [("gradmem", 2 * 16 * 4), ("deltanet", 1 * 2 * 12 * 12 * 4),
                                              ("unifiedkv", 1 * 8 * 32 * 4)])
def test_one_comparison_run_trains_tests_and_reports_its_state(tmp_path, name, state_bytes):
    from mqar.compare import run_one

    row = run_one(name, 4, 0, tiny_compare_config(tmp_path))
    assert row["status"] == "ok", row["status"]
    assert row["steps"] == 2 and row["state_bytes"] == state_bytes  # after the KV region: 2 x 4 tokens
    assert 0 <= row["query_accuracy"] <= 1 and 0 <= row["sequence_accuracy"] <= row["query_accuracy"] + 1e-9
    assert (tmp_path / "runs" / f"{name}_N4_s0" / "final" / "model.safetensors").is_file()


def test_tables_and_plot_come_from_the_rows(tmp_path):
    from mqar.compare import plot, summary_tables

    row = lambda m, n, q, s, b, status="ok": {"model": m, "n_pairs": str(n), "seq_len": "128", "seed": "0",
                                              "query_accuracy": str(q), "sequence_accuracy": str(s),
                                              "state_bytes": str(b), "status": status}
    rows = [row("gpt", 8, 1.0, 1.0, 12288), row("gpt", 16, 0.5, 0.0, 24576), row("gradmem", 8, 0.75, 0.25, 4096),
            row("gradmem", 16, "nan", "nan", "", "failed: boom")]
    table = summary_tables(rows)
    assert "| gpt | 1.000 / 1.000 | 0.500 / 0.000 |" in table
    assert "| gradmem | 0.750 / 0.250 | -, 1 failed |" in table and "| gpt | 12,288 | 24,576 |" in table
    plot(rows, tmp_path / "mqar.png")
    assert (tmp_path / "mqar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curriculum_waits_for_the_smaller_pair_count():
    from mqar.compare import CompareConfig, init_from

    cfg = CompareConfig(pairs=(8, 16, 32))
    row = lambda n, status: {"model": "gpt", "n_pairs": str(n), "seed": "0", "status": status}
    assert init_from(cfg, [], ("gpt", 8, 0)) == ""
    assert init_from(cfg, [row(8, "ok")], ("gpt", 32, 0)) is None
    assert init_from(cfg, [row(8, "ok"), row(16, "failed: x")], ("gpt", 32, 0)) == "gpt_N8_s0"
    with pytest.raises(ValueError, match="unknown models"):
        CompareConfig(models=("lstm",))


@pytest.mark.slow
def test_comparison_writes_rows_as_runs_finish_and_resumes(tmp_path, capsys):
    from mqar.compare import COLUMNS, compare, read_rows

    cfg = tiny_compare_config(tmp_path)
    rows = compare(cfg)
    written = read_rows(tmp_path / "results" / "mqar.csv")
    assert tuple(written[0]) == COLUMNS and len(written) == len(rows) == 10
    assert all(r["status"] == "ok" for r in written)
    assert {(r["model"], r["n_pairs"], r["init_from"]) for r in written if r["model"] == "rmt"} == {
        ("rmt", "2", ""), ("rmt", "4", "rmt_N2_s0")}
    assert "| deltanet |" in (tmp_path / "results" / "mqar.md").read_text()
    compare(cfg)
    assert "10 runs recorded, 0 to go" in capsys.readouterr().out


def test_run_experiment_trains_gradmem_on_the_mqar_task_from_flags(tmp_path):
    from training import run_experiment

    result = run_experiment(GradMemGPT, ["--exp_path", str(tmp_path / "run"), "--n_pairs", "2", "--seq_len", "10",
                                         "--vocab_size", "24", "--n_train", "16", "--n_valid", "4",
                                         "--base_model", "deltanet", "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
                                         "--n_mem_tokens", "2", "--K", "1", "--per_device_batch_size", "4",
                                         "--max_steps", "2", "--eval_steps", "2", "--warmup_steps", "1",
                                         "--no-show_progress"], task="mqar")
    assert result["step"] == 2 and 0 <= result["token_accuracy"] <= 1
    saved = (tmp_path / "run" / "config.json").read_text()
    assert '"task_name": "mqar"' in saved and '"base_model": "deltanet"' in saved
