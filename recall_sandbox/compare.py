"""The recall comparison: TTT (fixed inner lrs, and meta-learned by BPTT), linear attention, DeltaNet, gated
DeltaNet and the Mesa layer on unit-sphere sequences, uncorrelated and with correlated keys.

Each memory runs over the same ``n_eval`` evaluation sequences per key correlation. Rows of the CSV
(long format: ``metric``, ``x``, ``value``):

- ``acc_by_offset``, x = offset: fraction of queries answered right after the last write (t = L-1), by how
  many writes ago the pair was stored;
- ``retrievable``, x = t: mean number of stored pairs answered right after write t;
- for trained TTTs, ``inner_lr`` (x = 0, the mean over keys) and ``window_weight`` (x = age) after training.

The plots and the markdown table are drawn from the CSV alone.

    python -m recall_sandbox --help
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cli import add_config_args, check_config, config_from_args, option
from io_utils import atomic_file
from sweeps import read_rows, write_rows

from .data import RecallDataConfig
from .evaluate import accuracy_by_offset, evaluate, retrievable_pairs, train
from .linear_rnns import DeltaNet, GatedDeltaNet, LinearAttention, Mesa
from .ttt import TTT, TTTConfig

COLUMNS = ("key_corr", "model", "metric", "x", "value", "d", "seq_len", "context_size", "n_eval")
# the trained TTT variants (TTTConfig fields that differ from the defaults; inner_lr is where BPTT starts)
TRAINED = {
    "sgd": {"optimizer": "sgd", "lr_mode": "key"},
    "adam": {"optimizer": "adam", "lr_mode": "scalar", "inner_lr": 0.02},
    "mlp": {"optimizer": "sgd", "lr_mode": "key", "model": "mlp"},
}
TABLE_OFFSETS = (0, 1, 2, 4, 9, 19, 49)


@dataclass
class CompareConfig:
    d: int = option(20, "key and value dimension")
    seq_len: int = option(100, "pairs per sequence (L)")
    context_size: int = option(5, "TTT inner-loss window (C)")
    key_corrs: tuple[float, ...] = option((0.0, 0.7), "AR(1) correlations of consecutive keys to compare")
    ttt_lrs: tuple[float, ...] = option((0.03, 0.1, 0.3), "inner lrs of the untrained TTT (SGD, squared loss, "
                                        "uniform window weights, W_0 = 0)")
    trained: tuple[str, ...] = option(("sgd", "adam"), f"TTT variants meta-learned by BPTT: {tuple(TRAINED)}")
    train_inner_lr: float = option(0.1, "inner lr where BPTT starts for the SGD variants")
    train_steps: int = option(100, "BPTT steps (Adam) per trained variant")
    train_batch: int = option(16, "sequences per BPTT step")
    outer_lr: float = option(0.03, "Adam lr of BPTT")
    delta_beta: float = option(1.0, "DeltaNet and gated DeltaNet beta")
    gated_alpha: float = option(0.95, "gated DeltaNet decay alpha")
    mesa_gamma: float = option(0.9, "Mesa discount gamma")
    mesa_lambda: float = option(1.0, "Mesa R_0 = lambda I")
    n_eval: int = option(1024, "evaluation sequences per key correlation")
    seed: int = option(0, "seed of the training data; evaluation uses seed + 1")
    threads: int = option(1, "torch CPU threads")
    out_dir: str = option("results", "folder for recall_sandbox.csv, .md and the plots")

    def __post_init__(self):
        self.key_corrs, self.ttt_lrs, self.trained = tuple(self.key_corrs), tuple(self.ttt_lrs), tuple(self.trained)
        check_config("CompareConfig", [
            (all(name in TRAINED for name in self.trained), f"trained variants must be among {tuple(TRAINED)}"),
            (all(0 <= c < 1 for c in self.key_corrs), "key_corrs must lie in [0, 1)"),
            (all(lr > 0 for lr in self.ttt_lrs), "ttt_lrs must be > 0"),
            (self.train_steps >= 0 and self.train_batch >= 1 and self.n_eval >= 1,
             "train_steps must be >= 0, train_batch and n_eval >= 1"),
        ])

    def data(self, key_corr: float) -> RecallDataConfig:
        return RecallDataConfig(d_key=self.d, d_value=self.d, seq_len=self.seq_len, context_size=self.context_size,
                                key_corr=key_corr)


def fixed_memories(cfg: CompareConfig) -> dict:
    """The memories evaluated as they are: the untrained TTTs and the linear RNNs."""
    memories = {f"ttt_sgd_lr{lr:g}": TTT(TTTConfig(d_key=cfg.d, d_value=cfg.d, context_size=cfg.context_size,
                                                   inner_lr=lr)) for lr in cfg.ttt_lrs}
    memories["linear_attention"] = LinearAttention(cfg.d, cfg.d)
    memories["deltanet"] = DeltaNet(cfg.d, cfg.d, beta=cfg.delta_beta)
    memories["gated_deltanet"] = GatedDeltaNet(cfg.d, cfg.d, beta=cfg.delta_beta, alpha=cfg.gated_alpha)
    memories[f"mesa_g{cfg.mesa_gamma:g}"] = Mesa(cfg.d, cfg.d, gamma=cfg.mesa_gamma, lam=cfg.mesa_lambda)
    return memories


def trained_ttt(cfg: CompareConfig, name: str) -> TTT:
    fields = {"inner_lr": cfg.train_inner_lr, **TRAINED[name]}
    return TTT(TTTConfig(d_key=cfg.d, d_value=cfg.d, context_size=cfg.context_size, **fields))


def memory_rows(cfg: CompareConfig, key_corr: float, model: str, correct: torch.Tensor, extra=()) -> list[dict]:
    """CSV rows of one memory: accuracy by offset at the last write, retrievable pairs over time, ``extra``
    ``(metric, x, value)`` triples."""
    base = {"key_corr": key_corr, "model": model, "d": cfg.d, "seq_len": cfg.seq_len,
            "context_size": cfg.context_size, "n_eval": cfg.n_eval}
    last = accuracy_by_offset(correct, at_step=cfg.seq_len - 1)
    triples = [("acc_by_offset", o, a) for o, a in enumerate(last.tolist())]
    triples += [("retrievable", t, r) for t, r in enumerate(retrievable_pairs(correct).tolist())]
    return [{**base, "metric": m, "x": x, "value": f"{v:.6g}"} for m, x, v in [*triples, *extra]]


def compare(cfg: CompareConfig) -> list[dict]:
    """Run every memory at every key correlation; write ``recall_sandbox.csv``, the table and the plots."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    rows = []
    for key_corr in cfg.key_corrs:
        data = cfg.data(key_corr)
        evaluate_on = dict(n_sequences=cfg.n_eval, seed=cfg.seed + 1)
        for model, memory in fixed_memories(cfg).items():
            rows += memory_rows(cfg, key_corr, model, evaluate(memory, data, **evaluate_on))
        for name in cfg.trained:
            torch.manual_seed(cfg.seed)  # the MLP's random A_0
            memory, start = trained_ttt(cfg, name), time.time()
            history = train(memory, data, steps=cfg.train_steps, batch_size=cfg.train_batch, lr=cfg.outer_lr,
                            seed=cfg.seed)
            with torch.no_grad():
                learned = [("window_weight", age, w) for age, w in enumerate(memory.window_weights().tolist())]
                if history:
                    learned.append(("inner_lr", 0, history[-1]["inner_lr"]))
            rows += memory_rows(cfg, key_corr, f"ttt_{name}_trained", evaluate(memory, data, **evaluate_on), learned)
            print(f"key_corr {key_corr:g}: trained ttt_{name} in {time.time() - start:.0f} s"
                  + (f", final loss {history[-1]['loss']:.3f}" if history else ""), flush=True)
    write_rows(out / "recall_sandbox.csv", rows, COLUMNS)
    rows = read_rows(out / "recall_sandbox.csv")
    with atomic_file(out / "recall_sandbox.md") as tmp:
        tmp.write_text(summary_table(rows))
    plot_accuracy_by_offset(rows, out / "recall_sandbox_offset.png")
    plot_retrievable(rows, out / "recall_sandbox_retrievable.png")
    return rows


def curves(rows: list[dict], metric: str) -> dict:
    """``{key_corr: {model: (xs, values)}}`` of one metric, in the CSV's model order."""
    out: dict = {}
    for r in rows:
        if r["metric"] == metric:
            xs, vs = out.setdefault(float(r["key_corr"]), {}).setdefault(r["model"], ([], []))
            xs.append(int(r["x"]))
            vs.append(float(r["value"]))
    return out


def _plot(rows, metric, path, xlabel, ylabel) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curves(rows, metric)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (key_corr, models) in zip(axes[0], sorted(panels.items())):
        for i, (model, (xs, vs)) in enumerate(models.items()):
            ax.plot(xs, vs, label=model, color=plt.cm.tab10(i % 10), **_line_style(model))
        ax.set_title(f"key correlation {key_corr:g}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _line_style(model: str) -> dict:
    """Untrained TTTs dashed, trained TTTs thick, linear RNNs plain."""
    if model.startswith("ttt_") and model.endswith("_trained"):
        return {"linewidth": 2.4}
    return {"linestyle": "--", "linewidth": 1.2} if model.startswith("ttt_") else {"linewidth": 1.2}


def plot_accuracy_by_offset(rows: list[dict], path) -> None:
    """Recall accuracy after the last write against the offset, one panel per key correlation."""
    _plot(rows, "acc_by_offset", path, "offset (writes since the pair was stored)", "recall accuracy after write L-1")


def plot_retrievable(rows: list[dict], path) -> None:
    """Pairs answered right after each write, one panel per key correlation."""
    _plot(rows, "retrievable", path, "write t", "correctly retrievable pairs")


def summary_table(rows: list[dict]) -> str:
    """Markdown: accuracy at a few offsets after the last write, and the retrievable pairs then, per correlation."""
    acc, retrievable = curves(rows, "acc_by_offset"), curves(rows, "retrievable")
    lines = []
    for key_corr, models in sorted(acc.items()):
        offsets = [o for o in TABLE_OFFSETS if o < len(next(iter(models.values()))[0])]
        lines += [f"key correlation {key_corr:g}, accuracy by offset after the last write:", "",
                  "| model | " + " | ".join(f"offset {o}" for o in offsets) + " | retrievable pairs at the end |",
                  "|---" * (len(offsets) + 2) + "|"]
        for model, (_, vs) in models.items():
            end = retrievable[key_corr][model][1][-1]
            lines.append(f"| {model} | " + " | ".join(f"{vs[o]:.3f}" for o in offsets) + f" | {end:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recall_sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, CompareConfig)
    try:
        cfg = config_from_args(CompareConfig, p.parse_args(argv))
    except ValueError as e:
        p.error(str(e))
    compare(cfg)
    print(summary_table(read_rows(Path(cfg.out_dir) / "recall_sandbox.csv")))
    print(f"wrote {Path(cfg.out_dir) / 'recall_sandbox.csv'}, recall_sandbox.md and the plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
