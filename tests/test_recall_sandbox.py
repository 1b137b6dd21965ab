import pytest
import torch

from conftest import ROOT
from helpers import directional_fd
from recall_sandbox import compare
from recall_sandbox.data import RecallDataConfig, context_window, sample_sequences, unit_ar1
from recall_sandbox.evaluate import accuracy_by_offset, recall_scores, retrievable_pairs, train
from recall_sandbox.linear_rnns import DeltaNet, GatedDeltaNet, LinearAttention, Mesa
from recall_sandbox.ttt import TTT, TTTConfig

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of tiny ops per sequence: a second thread only adds contention (30x slower on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequences(batch_size=3, seq_len=7, d_key=5, d_value=4, key_corr=0.0, seed=0):
    cfg = RecallDataConfig(d_key=d_key, d_value=d_value, seq_len=seq_len, key_corr=key_corr)
    return sample_sequences(cfg, batch_size, generator=torch.Generator().manual_seed(seed), dtype=F64)


def states(memory, keys, values):
    """The memory's state after each write."""
    state, out = memory.initial_state(keys.shape[0], keys), []
    for t in range(keys.shape[1]):
        state = memory.write(state, keys, values, t)
        out.append(state)
    return out


# ------------------------------------------------------------------ data

def test_sequences_lie_on_the_unit_sphere_with_the_asked_correlation():
    g = torch.Generator().manual_seed(0)
    x = unit_ar1(512, 50, 20, 0.7, generator=g, dtype=F64)  # [B, L, d]
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(512, 50, dtype=F64))
    lag1 = (x[:, 1:] * x[:, :-1]).sum(-1).mean().item()
    lag2 = (x[:, 2:] * x[:, :-2]).sum(-1).mean().item()
    # renormalisation shifts E[x_i . x_{i-1}] by O(1/d) (-0.005 at d = 20); the standard error is ~0.001
    assert abs(lag1 - 0.7) < 0.015 and abs(lag2 - 0.49) < 0.02
    keys, values = sample_sequences(RecallDataConfig(d_key=20, d_value=20, seq_len=50, key_corr=0.7), 512,
                                    generator=g, dtype=F64)
    assert abs((keys[:, 1:] * keys[:, :-1]).sum(-1).mean().item() - 0.7) < 0.015
    assert abs((values[:, 1:] * values[:, :-1]).sum(-1).mean().item()) < 0.01  # values stay independent
    assert abs(values.mean().item()) < 0.01  # directions uniform: no preferred coordinate


def test_context_window_holds_the_last_pairs_and_their_ages():
    keys, values = sequences(seq_len=8)
    k, v, ages = context_window(keys, values, 1, 3)
    assert torch.equal(k, keys[:, :2]) and torch.equal(v, values[:, :2]) and ages.tolist() == [1, 0]
    k, v, ages = context_window(keys, values, 6, 3)
    assert torch.equal(k, keys[:, 4:7]) and ages.tolist() == [2, 1, 0]


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="key_corr and value_corr must lie in"):
        RecallDataConfig(key_corr=1.0)
    with pytest.raises(ValueError, match="needs inner_lr < lr_max"):
        TTTConfig(lr_mode="key", inner_lr=2.0)
    with pytest.raises(ValueError, match="momentum and nesterov belong to optimizer='sgd'"):
        TTTConfig(optimizer="adam", momentum=0.9)
    with pytest.raises(ValueError, match="trained variants must be among"):
        compare.CompareConfig(trained=("lstm",))


# ------------------------------------------------------------------ linear RNNs against references

@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_deltanet_equals_ttt_sgd_on_the_squared_loss_with_beta_twice_the_lr(beta):
    keys, values = sequences()
    delta = DeltaNet(5, 4, beta=beta)
    ttt = TTT(TTTConfig(d_key=5, d_value=4, context_size=1, optimizer="sgd", inner_lr=beta / 2, p=2.0), dtype=F64)
    for w, (params, _, _) in zip(states(delta, keys, values), states(ttt, keys, values)):
        torch.testing.assert_close(params[0], w, rtol=1e-12, atol=1e-13)
    assert delta.read(w, keys).sub(values).abs().max() > 1e-3  # the recall is not trivially exact


def test_linear_attention_and_gated_deltanet_follow_their_matrix_recurrences():
    keys, values = sequences()
    assert torch.allclose(states(LinearAttention(5, 4), keys, values)[-1], keys.transpose(1, 2) @ values)
    alpha, beta = 0.8, 0.6
    w = torch.zeros(3, 5, 4, dtype=F64)
    for t, ours in enumerate(states(GatedDeltaNet(5, 4, beta=beta, alpha=alpha), keys, values)):
        k, v = keys[:, t, :, None], values[:, t, None, :]  # [B, d_key, 1], [B, 1, d_value]
        w = alpha * (torch.eye(5, dtype=F64) - beta * k @ k.transpose(1, 2)) @ w + beta * k @ v
        torch.testing.assert_close(ours, w, rtol=1e-12, atol=1e-13)


def test_mesa_sherman_morrison_equals_the_explicit_inverse_and_ridge_solution():
    keys, values = sequences(seq_len=12, key_corr=0.7)
    gamma, lam = 0.8, 0.5
    for t, (w, inv) in enumerate(states(Mesa(5, 4, gamma=gamma, lam=lam), keys, values)):
        decay = gamma ** torch.arange(t, -1, -1, dtype=F64)  # gamma^{t-i}, i = 0..t
        k, v = keys[:, :t + 1], values[:, :t + 1]
        p = gamma ** (t + 1) / lam * torch.eye(5, dtype=F64) + (k.transpose(1, 2) * decay) @ k
        torch.testing.assert_close(inv, torch.linalg.inv(p), rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(w, torch.linalg.solve(p, (k.transpose(1, 2) * decay) @ v), rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ TTT

TORCH_OPTIMIZERS = [
    ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ({"optimizer": "adam"}, torch.optim.Adam, {}),
    ({"optimizer": "adamw", "weight_decay": 0.1}, torch.optim.AdamW, {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("fields,torch_cls,kwargs", TORCH_OPTIMIZERS, ids=lambda x: getattr(x, "__name__", None))
def test_ttt_state_follows_torch_optim_on_the_windowed_loss(fields, torch_cls, kwargs):
    keys, values = sequences(batch_size=1)
    ttt = TTT(TTTConfig(d_key=5, d_value=4, context_size=3, inner_lr=0.05, **fields), dtype=F64)
    with torch.no_grad():
        ttt.init_params[0].normal_()
    w = ttt.init_params[0].detach().clone().requires_grad_()
    opt = torch_cls([w], lr=0.05, **kwargs)
    for t, (params, _, _) in enumerate(states(ttt, keys, values)):
        k, v = keys[0, max(0, t - 2):t + 1], values[0, max(0, t - 2):t + 1]
        opt.zero_grad()
        (k @ w - v).pow(2).sum().backward()
        opt.step()
        torch.testing.assert_close(params[0][0], w.detach(), rtol=1e-12, atol=1e-13)


OPTIMIZER_OPTIONS = [{"optimizer": "sgd"}, {"optimizer": "sgd", "momentum": 0.8, "nesterov": True},
                     {"optimizer": "adam", "eps": 1e-6}, {"optimizer": "adamw", "eps": 1e-6, "weight_decay": 0.2}]


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("lr_mode,p", [("scalar", 2.0), ("key", 3.0)])
@pytest.mark.parametrize("options", OPTIMIZER_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_gradients_through_the_inner_steps_match_finite_differences(model, lr_mode, p, options):
    torch.manual_seed(0)
    keys, values = sequences(batch_size=2, seq_len=5, d_key=3, d_value=3)
    ttt = TTT(TTTConfig(d_key=3, d_value=3, context_size=3, model=model, hidden=4, lr_mode=lr_mode, p=p,
                        inner_lr=0.2, **options), dtype=F64)
    log_temperature = torch.tensor(1.0, dtype=F64, requires_grad=True)
    params = [*ttt.parameters(), log_temperature]
    with torch.no_grad():  # away from the symmetric start (zero W_0, equal weights, zero lr slope)
        for q in ttt.parameters():
            q.add_(0.3 * torch.randn_like(q))
    loss_fn = lambda: recall_scores(ttt, keys, values, log_temperature=log_temperature)[0]  # noqa: E731
    grads = torch.autograd.grad(loss_fn(), params)
    directions = [torch.randn_like(q) for q in params]
    fd = directional_fd(loss_fn, params, directions, eps=1e-6)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions)).item()
    assert abs(analytic - fd) <= 1e-6 * abs(fd) + 1e-10


@pytest.mark.parametrize("lr_mode", ["scalar", "key"])
def test_the_learned_inner_lr_moves_in_a_short_training_run(lr_mode):
    # inner lr 0.6 on a 2-pair squared loss overshoots (the newest pair alone is written exactly at ~0.5):
    # BPTT must lower it, and recall must improve
    data = RecallDataConfig(d_key=8, d_value=8, seq_len=12, context_size=2)
    ttt = TTT(TTTConfig(d_key=8, d_value=8, context_size=2, inner_lr=0.6, lr_mode=lr_mode))
    history = train(ttt, data, steps=30, batch_size=16, lr=0.05)
    assert history[-1]["inner_lr"] < 0.75 * history[0]["inner_lr"]
    first, last = history[:3], history[-3:]
    assert sum(h["loss"] for h in last) < 0.8 * sum(h["loss"] for h in first)
    assert sum(h["accuracy"] for h in last) > sum(h["accuracy"] for h in first) + 0.1


# ------------------------------------------------------------------ recall metrics

def test_recall_metrics_count_by_offset_and_time():
    correct = torch.zeros(2, 3, 3, dtype=torch.bool)  # [b, t, i]: query i answered right after write t
    correct[0, 0, 0] = correct[0, 1, 0] = correct[0, 2, 2] = correct[0, 2, 1] = True
    correct[1, 1, 1] = correct[1, 2, 2] = True
    # offsets t - i: sample 0 has 0, 1, 0, 1 right; sample 1 has 0, 0. Queries per offset: 6, 4, 2
    torch.testing.assert_close(accuracy_by_offset(correct), torch.tensor([4 / 6, 2 / 4, 0.0]))
    torch.testing.assert_close(accuracy_by_offset(correct, at_step=2), torch.tensor([1.0, 0.5, 0.0]))
    after_1 = accuracy_by_offset(correct, at_step=1)
    assert after_1[:2].tolist() == [0.5, 0.5] and after_1[2].isnan()
    torch.testing.assert_close(retrievable_pairs(correct), torch.tensor([0.5, 1.0, 1.5]))


def test_exact_writers_recall_what_they_must():
    keys, values = sequences(batch_size=4, seq_len=10, d_key=6, d_value=6)
    with torch.no_grad():
        _, delta = recall_scores(DeltaNet(6, 6, beta=1.0), keys, values)
        _, mesa = recall_scores(Mesa(6, 6, gamma=1.0, lam=1e6), keys, values)
    assert accuracy_by_offset(delta)[0] == 1.0  # beta = 1 with unit keys stores the newest pair exactly
    # undiscounted, nearly unregularised least squares interpolates up to d pairs, then must fail
    torch.testing.assert_close(retrievable_pairs(mesa)[:6], torch.arange(1.0, 7.0))
    assert retrievable_pairs(mesa)[-1] < 10


# ------------------------------------------------------------------ the comparison CLI and its notebook

@pytest.fixture(scope="module")
def tiny_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall") / "results"
    argv = ["--d", "4", "--seq_len", "6", "--context_size", "2", "--n_eval", "8", "--train_steps", "2",
            "--train_batch", "2", "--ttt_lrs", "0.1", "--trained", "sgd", "adam", "--out_dir", str(out)]
    assert compare.main(argv) == 0
    return out


def test_comparison_writes_the_csv_table_and_plots(tiny_comparison):
    rows = compare.read_rows(tiny_comparison / "recall_sandbox.csv")
    assert tuple(rows[0]) == compare.COLUMNS
    models = ["ttt_sgd_lr0.1", "linear_attention", "deltanet", "gated_deltanet", "mesa_g0.9", "ttt_sgd_trained",
              "ttt_adam_trained"]
    for key_corr in ("0.0", "0.7"):
        mine = [r for r in rows if r["key_corr"] == key_corr]
        assert list(dict.fromkeys(r["model"] for r in mine)) == models
        for model in models:
            metrics = [r["metric"] for r in mine if r["model"] == model]
            extra = ["window_weight"] * 2 + ["inner_lr"] if model.endswith("_trained") else []
            assert metrics == ["acc_by_offset"] * 6 + ["retrievable"] * 6 + extra
        assert all(0 <= float(r["value"]) <= 1 for r in mine if r["metric"] == "acc_by_offset")
        retrievable = [float(r["value"]) for r in mine if r["metric"] == "retrievable" and r["model"] == "deltanet"]
        assert all(0 <= n <= t + 1 for t, n in enumerate(retrievable))
    assert "| mesa_g0.9 |" in (tiny_comparison / "recall_sandbox.md").read_text()
    for name in ("recall_sandbox_offset.png", "recall_sandbox_retrievable.png"):
        assert (tiny_comparison / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_cli_rejects_unknown_variants_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(["--trained", "lstm", "--out_dir", str(tmp_path / "r")])
    assert e.value.code == 2 and "trained variants must be among" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # a Jupyter kernel takes 4-10 s to start on 2 shared cores
def test_recall_sandbox_notebook_redraws_the_plots(tiny_comparison, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    (tiny_comparison / "recall_sandbox_offset.png").unlink()
    monkeypatch.setenv("RECALL_SANDBOX_CSV", str(tiny_comparison / "recall_sandbox.csv"))
    nb = nbformat.read(ROOT / "notebooks" / "recall_sandbox.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert (tiny_comparison / "recall_sandbox_offset.png").exists()
    outputs = [o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o for o in outputs) == 2
    assert any("| deltanet |" in o.get("text/markdown", "") for o in outputs)
