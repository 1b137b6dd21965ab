import csv
import math

import pytest

import capacity_sweep
from conftest import ROOT

TINY = capacity_sweep.SweepConfig(models=("gradmem_k1", "rmt", "full_context"), pairs=(1, 2, 8), seeds=(0,),
                                  n_mem_tokens=2, n_layer=1, n_head=2, n_embd=16, vocab_size=4, n_train=200, n_valid=16,
                                  max_steps=2, eval_steps=2, parallel=2)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = capacity_sweep.SweepConfig(**{**TINY.__dict__, "out_dir": str(tmp / "results"), "runs_dir": str(tmp / "runs")})
    return cfg, capacity_sweep.sweep(cfg)


def test_sweep_writes_well_formed_rows_and_plots(swept):
    cfg, rows = swept
    path = capacity_sweep.Path(cfg.out_dir)
    with open(path / "capacity.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert tuple(written[0]) == capacity_sweep.COLUMNS and len(written) == len(rows)
    ok = [r for r in written if r["status"] == "ok"]
    # gradmem_k1 evaluates at K_test 1 and 2; rmt and full context once; pairs 1 and 2 train
    assert sorted((r["model"], r["n_pairs"], r["K_test"]) for r in ok) == sorted(
        [("gradmem_k1", n, k) for n in ("1", "2") for k in ("1", "2")] + [(m, n, "") for m in ("rmt", "full_context") for n in ("1", "2")])
    assert all(0 <= float(r["exact_match"]) <= 1 and int(r["steps"]) == 2 and float(r["wall_time_s"]) > 0 for r in ok)
    # the curriculum: each chain's 2-pair run starts from its 1-pair run, the 8-pair run from the 2-pair run
    assert {(r["n_pairs"], r["init_from"]) for r in written if r["model"] == "rmt"} == {
        ("1", ""), ("2", "rmt_N1_s0"), ("8", "rmt_N2_s0")}
    # 8 pairs from a 4-key alphabet cannot be generated: a failed row per model, not a silent omission
    failed = [r for r in written if r["status"] != "ok"]
    assert sorted(r["model"] for r in failed) == ["full_context", "gradmem_k1", "rmt"]
    assert all(r["n_pairs"] == "8" and "distinct keys" in r["status"] and math.isnan(float(r["exact_match"])) for r in failed)
    table = (path / "capacity.md").read_text()
    assert "| rmt |" in table and "| 1 / 2 |" in table and table.count("1 failed") == 3
    for png in ("capacity.png", "k_extrapolation.png"):
        assert (path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_invocation_skips_what_is_done(swept, capsys):
    cfg, rows = swept
    again = capacity_sweep.sweep(cfg)
    assert "runs recorded, 0 to go" in capsys.readouterr().out and len(again) == len(rows)


def test_collect_results_notebook_rebuilds_the_plots(swept, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cfg, _ = swept
    csv_path = capacity_sweep.Path(cfg.out_dir) / "capacity.csv"
    (csv_path.parent / "capacity.png").unlink()
    monkeypatch.setenv("CAPACITY_CSV", str(csv_path))
    nb = nbformat.read(ROOT / "notebooks" / "collect_results.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert (csv_path.parent / "capacity.png").exists()
    outputs = [o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o for o in outputs)
    assert any("| rmt |" in o.get("text/markdown", "") for o in outputs)


def test_curriculum_waits_for_the_previous_pair_count_and_skips_failed_runs():
    cfg = capacity_sweep.SweepConfig(pairs=(1, 2, 4), seeds=(0,))
    row = lambda n, status: {"model": "rmt", "n_pairs": str(n), "seed": "0", "status": status}
    assert capacity_sweep._init_from(cfg, [], ("rmt", 1, 0)) == ""
    assert capacity_sweep._init_from(cfg, [row(1, "ok")], ("rmt", 4, 0)) is None
    assert capacity_sweep._init_from(cfg, [row(1, "ok"), row(2, "failed (exit 1)")], ("rmt", 4, 0)) == "rmt_N1_s0"
    assert capacity_sweep._init_from(cfg, [row(1, "diverged"), row(2, "diverged")], ("rmt", 4, 0)) == ""
    no_curriculum = capacity_sweep.SweepConfig(pairs=(1, 2, 4), seeds=(0,), curriculum=False)
    assert capacity_sweep._init_from(no_curriculum, [], ("rmt", 4, 0)) == ""


def test_unknown_model_names_fail_before_any_run():
    with pytest.raises(ValueError, match="unknown sweep model 'lstm'"):
        capacity_sweep.model_flags("lstm", TINY)


def test_tuple_flags_parse(monkeypatch):
    seen = []
    monkeypatch.setattr(capacity_sweep, "sweep", seen.append)
    capacity_sweep.main(["--models", "gradmem_k3", "rmt", "--pairs", "1", "4", "16", "--seeds", "0", "2", "--no-curriculum"])
    cfg = seen[0]
    assert (cfg.models, cfg.pairs, cfg.seeds, cfg.curriculum) == (("gradmem_k3", "rmt"), (1, 4, 16), (0, 2), False)


def test_a_run_that_diverges_is_recorded_as_diverged(tmp_path):
    # a huge learning rate: the weights overflow after a step or two, then every step is non-finite until
    # training gives up (20 in a row)
    cfg = capacity_sweep.SweepConfig(**{**TINY.__dict__, "out_dir": str(tmp_path / "results"),
                                        "runs_dir": str(tmp_path / "runs"), "learning_rate": 1e30, "max_steps": 30,
                                        "eval_steps": 30})
    (row,) = capacity_sweep.run_one("rmt", 1, 0, cfg)
    assert row["status"] == "diverged" and math.isnan(float(row["exact_match"]))
