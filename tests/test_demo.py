import demo


def test_demo_trains_both_stages_within_its_budget_and_evaluates(tmp_path, capsys):
    # a 3-second budget: the 1-pair stage uses it up, the 2-pair stage starts from its weights and gets the
    # one-second minimum; the numbers are not the point, the wiring is
    assert demo.main(["--train_minutes", "0.05", "--seed", "1", "--exp_path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stage warmup_1_pair:" in out and "stage 2_pairs:" in out and "exact_match:" in out
    stage2 = (tmp_path / "s1" / "2_pairs" / "config.json").read_text()
    assert str(tmp_path / "s1" / "warmup_1_pair" / "best") in stage2 and '"task_n_pairs": 2' in stage2
