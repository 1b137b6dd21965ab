"""bench/official_step.py against a stand-in for the official code: the same interface (GradMemGPTConfig,
GradMemGPT(config)(inputs, labels=...)["loss"]) and module names that shadow ours."""
import argparse
import sys
import textwrap

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import official_step  # noqa: E402
import second_order_step  # noqa: E402
import train_step  # noqa: E402
from sweeps import read_rows  # noqa: E402

STAND_IN = '''
import torch
import attn_double_bwd

assert attn_double_bwd.STAND_IN, "the official package must shadow ours"


class GradMemGPTConfig:
    def __init__(self, base_config, n_mem_tokens, K, lr, grad_mode, use_write_head, add_inner_loss_to_outer,
                 inner_loss_weight, attn_implementation):
        assert (base_config.num_hidden_layers, base_config.hidden_size) == (4, 128), "the reference llama config"
        assert (n_mem_tokens, lr, grad_mode, inner_loss_weight) == (8, 0.04, "second", 0.5), "the preset"
        self.vocab_size, self.K = base_config.vocab_size, K


class GradMemGPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = torch.nn.Embedding(config.vocab_size, 4)

    def forward(self, input_ids, labels=None):
        context, query = input_ids["context_input_ids"], input_ids["query_input_ids"]
        assert context.shape[0] == query.shape[0] == labels.shape[0] and labels.shape == query.shape
        return {"loss": self.emb(context).mean() + self.emb(query).mean()}
'''


@pytest.fixture
def official_repo(tmp_path):
    (tmp_path / "grad_memgpt.py").write_text(textwrap.dedent(STAND_IN))
    (tmp_path / "attn_double_bwd").mkdir()
    (tmp_path / "attn_double_bwd" / "__init__.py").write_text("STAND_IN = True\n")
    return str(tmp_path)


def small_args(**kw):
    """The measuring flags' own defaults (``add_measure_args``), for a tiny batch and two steps."""
    p = argparse.ArgumentParser()
    train_step.add_measure_args(p)
    return argparse.Namespace(**{**vars(p.parse_args([])), "n_pairs": 2, "batch_size": 4, "repeats": 2, "warmup": 0,
                                 **kw})


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_the_official_step_is_timed_on_our_batch_in_its_own_process(official_repo, micro_batches):
    results = official_step.measure_official(official_repo, [2, 5], small_args(breakdown=True), micro_batches)
    assert sorted(results) == [2, 5]
    for r in results.values():
        assert "error" not in r, r
        assert 0 < r["min_s"] <= r["median_s"] and r["peak_mb"] > 0
        assert r["matmul_s"] == 0 < r["other_s"]  # the stand-in has no matrix product


def test_the_official_step_is_profiled_like_ours(official_repo, capsys):
    results = official_step.measure_official(official_repo, [2], small_args(profile=100))  # all its ops
    assert "error" not in results[2], results[2]
    err = capsys.readouterr().err
    assert "profile of the official step at K=2:" in err
    assert "aten::embedding" in err and "Self CPU time total" in err  # its op, in torch.profiler's table


def test_the_official_steps_costliest_ops_are_listed_like_ours(official_repo, capsys):
    results = official_step.measure_official(official_repo, [2], small_args(top_ops=100))
    assert "error" not in results[2], results[2]
    assert results[2]["matmul_s"] == 0 < results[2]["other_s"]  # --top_ops runs the census
    err = capsys.readouterr().err
    assert "profile of the official step at K=2:" in err
    assert any(line.startswith("embedding ") for line in err.splitlines())  # its op, in the census's table


def test_backward_in_parts_weights_each_part_by_its_share_of_the_rows():
    torch.manual_seed(0)
    x, w = torch.randn(7, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64, requires_grad=True)
    rows_loss = lambda rows: ((x[rows] @ w) ** 2).mean()  # noqa: E731
    (whole,) = torch.autograd.grad(rows_loss(slice(None)), w)
    train_step.backward_in_parts(rows_loss, 7, 3)  # parts of 2, 2 and 3 rows
    torch.testing.assert_close(w.grad, whole, rtol=1e-12, atol=0)


def test_op_seconds_splits_matrix_products_from_the_rest():
    w = torch.nn.Parameter(torch.randn(64, 64))
    opt = torch.optim.SGD([w], lr=0.1)
    x = torch.randn(256, 64)
    linear = train_step.op_seconds(lambda: (x @ w).relu().sum().backward(), opt)
    elementwise = train_step.op_seconds(lambda: (x[:, :64] * w[0]).relu().sum().backward(), opt)
    assert linear["matmul_s"] > 0 and linear["other_s"] > 0
    assert elementwise["matmul_s"] == 0 < elementwise["other_s"]
    # the census: x @ w forward and its weight gradient x^T dY, 2 * 256 * 64 * 64 flop each; x needs no gradient
    assert linear["matmul_gflop"] == pytest.approx(2 * 2 * 256 * 64 * 64 / 1e9, rel=0, abs=1e-12)
    assert elementwise["matmul_gflop"] == 0
    assert linear["ops"] > 0 and elementwise["ops"] > 0


def test_op_seconds_prints_the_costliest_ops_by_input_shapes(capsys):
    w = torch.nn.Parameter(torch.randn(64, 64))
    opt = torch.optim.SGD([w], lr=0.1)
    x = torch.randn(256, 64)
    totals = train_step.op_seconds(lambda: (x @ w).relu().sum().backward(), opt, top_ops=100)
    lines = capsys.readouterr().err.splitlines()
    products = [line for line in lines if line.startswith("mm ")]
    assert len(products) == 2  # the forward x w and the weight gradient x^T dY, each once
    assert any(line.endswith("[(256, 64), (64, 64)]") for line in products)
    assert any(line.endswith("[(64, 256), (256, 64)]") for line in products)
    all_pairs = float(lines[-1].split(": ")[1].removesuffix(" ms"))
    assert all_pairs == pytest.approx((totals["matmul_s"] + totals["other_s"]) * 1e3, abs=0.06)  # every op, once
    train_step.op_seconds(lambda: (x @ w).relu().sum().backward(), opt, top_ops=1)
    assert len(capsys.readouterr().err.splitlines()) == 3  # header, the costliest op, the total


def test_timed_steps_count_kernel_time_and_page_faults():
    w = torch.nn.Parameter(torch.randn(8))
    opt = torch.optim.SGD([w], lr=0.1)
    fresh_pages = lambda: (torch.ones(64 * 2**20 // 4) * w[0]).sum().backward()  # noqa: E731  # 64 MB, freed each step
    r = train_step.timed_steps(fresh_pages, opt, warmup=1, repeats=3, device="cpu")
    assert r["minor_faults"] > 1000 and r["kernel_s"] >= 0  # 16,384 pages of 4 KiB unless the allocator kept them


def test_a_folder_without_the_official_code_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no grad_memgpt.py there"):
        official_step.measure_official(str(tmp_path), [2], small_args())


def test_targets_are_judged_against_the_measured_official_figures(capsys):
    row = lambda t, mb: {"median_s": t, "peak_mb": mb}
    rows = [(("second", "eager", 2, "last_step", 0, 1, "compiled"), row(1.9, 5000)),
            (("second", "eager", 2, "last_step", 0, 1, "eager"), row(2.0, 5000)),
            (("second", "eager", 2, "last_step", 4, 1, "eager"), row(3.0, 1200)),
            (("second", "eager", 5, "last_step", 4, 1, "eager"), row(9.0, 1300)),
            (("second", "eager", 2, "last_step", 0, 8, "eager"), row(2.4, 1100)),
            (("second", "eager", 2, "last_step", 0, 4, "eager"), row(2.3, 1700)),
            (("second", "eager", 2, "last_step", 0, 2, "eager"), row(2.1, 2600)),  # faster, but over 0.3x the memory
            (("second", "eager", 5, "last_step", 0, 8, "eager"), row(5.4, 1800))]
    official = {"source": "measured here", "s": {2: (2.5, 2.5), 5: (6.0, 6.0)}, "mb": {2: (6000, 6000), 5: (15000, 15000)}}
    second_order_step.report_targets(rows, official)
    out = capsys.readouterr().out
    assert "(measured here): K=2: 2.500 s/step, 6,000 MB; K=5: 6.000 s/step, 15,000 MB" in out
    assert ("preset (eager, K=2, last_step, recompute off, compiled kernels): 1.900 s/step = 0.76x the official time "
            "(target <= 0.8x: met)") in out
    assert ("the preset with eager kernels (eager, K=2, last_step, recompute off): 2.000 s/step = 0.80x the official "
            "time (target <= 0.8x: met)") in out
    assert ("lean by recomputation: the leanest K=2 last_step setting (eager, K=2, last_step, recompute in 4 "
            "chunk(s)): 1200 MB = 0.20x the official memory (target <= 0.3x: met) at 3.000 s/step = 1.20x its time "
            "(target <= 1.0x: missed)") in out
    assert "1300 MB = 0.09x the official K=5 memory (target <= 0.15x: met), at 9.000 s/step = 1.50x" in out
    assert ("lean by micro-batches: the leanest K=2 last_step setting (eager, K=2, last_step, recompute off, "
            "8 micro-batches): 1100 MB = 0.18x the official memory (target <= 0.3x: met) at 2.400 s/step = 0.96x its "
            "time (target <= 1.0x: met)") in out
    assert "1800 MB = 0.12x the official K=5 memory (target <= 0.15x: met), at 5.400 s/step = 0.90x" in out
    assert ("lean by micro-batches: the fastest K=2 last_step setting within 0.3x the official memory (eager, K=2, "
            "last_step, recompute off, 4 micro-batches): 1700 MB = 0.28x the official memory (target <= 0.3x: met) at "
            "2.300 s/step = 0.92x its time (target <= 1.0x: met)") in out
    assert "lean by recomputation: the fastest" not in out  # its one setting is the leanest
    second_order_step.report_targets(rows, second_order_step.ISSUE_FIGURES)
    out = capsys.readouterr().out
    assert "(issue 17, 2-core CPU): K=2: 2.130-2.270 s/step, 5,000-5,400 MB; K=5: 12,000-15,000 MB" in out
    assert "2.000 s/step = 0.88-0.94x the official time" in out
    assert "1300 MB = 0.09-0.11x the official K=5 memory (target <= 0.15x: met), at 9.000 s/step\n" in out


def test_rounds_are_combined_by_their_medians(capsys):
    census = lambda kernel_s, faults: {"kernel_s": kernel_s, "minor_faults": faults}  # noqa: E731
    rounds = [{"median_s": 3.0, "min_s": 2.9, "peak_mb": 900.0, "device": "cpu", **census(0.5, 9e4)}, {"error": "killed"},
              {"median_s": 2.0, "min_s": 1.8, "peak_mb": 1000.0, "device": "cpu", **census(0.3, 2e5)},
              {"median_s": 2.5, "min_s": 2.4, "peak_mb": 1100.0, "device": "cpu", **census(0.1, 1e5)}]
    combined = second_order_step.over_rounds(rounds)
    assert combined == {"median_s": 2.5, "min_s": 2.4, "peak_mb": 1000.0, "device": "cpu", "low_s": 2.0, "high_s": 3.0,
                        "rounds": 3, **census(0.3, 1e5)}
    assert second_order_step.time_cell(combined) == "2.500 (2.000-3.000)"
    assert second_order_step.census_cells(combined) == "- | - | - | - | 0.300 | 100,000"
    assert second_order_step.over_rounds([{"error": "killed"}, {"error": "oom"}]) == {"error": "killed"}
    figures = second_order_step.official_figures({2: rounds, 5: [{"error": "oom"}]}, "PATH")
    assert figures == {"source": "measured here from PATH", "s": {2: (2.5, 2.5)}, "mb": {2: (1000.0, 1000.0)}}
    table = capsys.readouterr().out.splitlines()
    assert table[-2] == "| 2 | 2.500 (2.000-3.000) | 1000 | - | - | - | - | 0.300 | 100,000 |"
    assert table[-1].count("|") == table[-3].count("|") == 10  # every row as wide as the header


def test_the_csv_holds_each_setting_over_the_rounds_with_its_ratios_to_the_official_step(tmp_path):
    step = lambda t, mb: {"median_s": t, "min_s": t, "peak_mb": mb, "device": "cpu", "kernel_s": 0.1,  # noqa: E731
                          "minor_faults": 1e4}
    whole, micro = ("second", "eager", 2, "last_step", 0, 1, "eager"), ("second", "eager", 2, "last_step", 0, 8, "eager")
    ours = {whole: [step(2.0, 4000.0), step(3.0, 4200.0), step(2.4, 4100.0)], micro: [{"error": "killed"}] * 3,
            ("second", "eager", 5, "last_step", 4, 1, "eager"): [step(9.0, 1300.0)]}
    official = {2: [step(3.0, 5000.0), step(4.0, 5000.0), step(2.5, 5000.0)]}
    rows = second_order_step.csv_rows(ours, official)
    assert [(r["implementation"], r["K"], r["micro_batches"]) for r in rows] == [
        ("ours", 2, 1), ("ours", 2, 8), ("ours", 5, 1), ("official", 2, 1)]
    assert rows[0] == {"implementation": "ours", "grad_mode": "second", "attention": "eager", "K": 2,
                       "inner_loss_memory": "last_step", "recompute_chunks": 0, "micro_batches": 1, "kernels": "eager",
                       "rounds": 3,
                       "median_s": 2.4, "low_s": 2.0, "high_s": 3.0, "min_s": 2.4, "peak_mb": 4100.0, "kernel_s": 0.1,
                       "minor_faults": 1e4, "time_vs_official": 0.8, "memory_vs_official": 0.82, "device": "cpu",
                       "time_vs_official_by_round": 0.75}  # round by round: 2/3, 3/4, 2.4/2.5
    assert rows[1]["error"] == "killed" and "time_vs_official" not in rows[1]
    assert "time_vs_official" not in rows[2]  # no official step at K=5
    path = tmp_path / "second_order.csv"
    second_order_step.write_rows(path, rows, second_order_step.CSV_COLUMNS)
    assert [r["time_vs_official"] for r in read_rows(path)] == ["0.8", "", "", ""]


def test_a_csv_path_that_is_a_folder_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["second_order_step.py", "--csv", str(tmp_path)])
    monkeypatch.setattr(second_order_step, "measure", lambda *a, **k: pytest.fail("measured before validating"))
    with pytest.raises(SystemExit):
        second_order_step.main()
    assert f"--csv {tmp_path} is a folder: give a file path" in capsys.readouterr().err
