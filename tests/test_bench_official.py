"""bench/official_step.py against a stand-in for the official code: the same interface (GradMemGPTConfig,
GradMemGPT(config)(inputs, labels=...)["loss"]) and module names that shadow ours."""
import argparse
import sys
import textwrap

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import official_step  # noqa: E402
import second_order_step  # noqa: E402

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
    return argparse.Namespace(**{"n_pairs": 2, "batch_size": 4, "repeats": 2, "warmup": 0, **kw})


def test_the_official_step_is_timed_on_our_batch_in_its_own_process(official_repo):
    results = official_step.measure_official(official_repo, [2, 5], small_args())
    assert sorted(results) == [2, 5]
    for r in results.values():
        assert "error" not in r, r
        assert 0 < r["min_s"] <= r["median_s"] and r["peak_mb"] > 0


def test_a_folder_without_the_official_code_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no grad_memgpt.py there"):
        official_step.measure_official(str(tmp_path), [2], small_args())


def test_targets_are_judged_against_the_measured_official_figures(capsys):
    row = lambda t, mb: {"median_s": t, "peak_mb": mb}
    rows = [(("second", "eager", 2, "last_step", 0), row(2.0, 5000)),
            (("second", "eager", 2, "last_step", 4), row(3.0, 1200)),
            (("second", "eager", 5, "last_step", 4), row(9.0, 1300))]
    official = {"source": "measured here", "s": {2: (2.5, 2.5), 5: (6.0, 6.0)}, "mb": {2: (6000, 6000), 5: (15000, 15000)}}
    second_order_step.report_targets(rows, official)
    out = capsys.readouterr().out
    assert "(measured here): K=2: 2.500 s/step, 6,000 MB; K=5: 6.000 s/step, 15,000 MB" in out
    assert "2.000 s/step = 0.80x the official time (target <= 0.8x: met)" in out
    assert "1200 MB = 0.20x the official memory (target <= 0.3x: met) at 3.000 s/step = 1.20x" in out
    assert "(target <= 1.0x: missed)" in out
    assert "1300 MB = 0.09x the official K=5 memory (target <= 0.15x: met), at 9.000 s/step = 1.50x" in out
    second_order_step.report_targets(rows, second_order_step.ISSUE_FIGURES)
    out = capsys.readouterr().out
    assert "(issue 17, 2-core CPU): K=2: 2.130-2.270 s/step, 5,000-5,400 MB; K=5: 12,000-15,000 MB" in out
    assert "2.000 s/step = 0.88-0.94x the official time" in out
    assert "1300 MB = 0.09-0.11x the official K=5 memory (target <= 0.15x: met), at 9.000 s/step\n" in out
