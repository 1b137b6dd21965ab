import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import kv_dataset_utils as kv
from conftest import ROOT

PAIR = re.compile(r"!([^!:|?]+):([^!:|?]+)!")


def small(cfg=None, n=300, seed=0):
    return kv.generate_kv_dataset(cfg or kv.KVTaskConfig(n_pairs=6), n, 60, 60, seed)


# Upper 0.001 quantiles of the chi-square distribution, by degrees of freedom (standard tables).
CHI2_CRITICAL_0001 = {2: 13.816, 3: 16.266, 4: 18.467, 7: 24.322}


def chi_square(observed, expected) -> float:
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("cfg", [
    kv.KVTaskConfig(n_pairs=6),
    kv.KVTaskConfig(n_pairs=5, key_len=3, value_len=1, vocab_size=10),
    kv.KVTaskConfig(n_pairs=4, n_segments=3, min_segment_len=0, max_segment_len=12, vocab_size=300),
    kv.KVTaskConfig(n_pairs=40, key_len=1, vocab_size=40),  # keys exhaust the key space
], ids=lambda c: c.name)
def test_format_invariants(cfg):
    ds, card = small(cfg)
    alphabet = set(kv.kv_alphabet(cfg.vocab_size))
    for s in ds["train"]:
        ctx, query, target = s["context"], s["query"], s["target"]
        assert ctx.endswith("|") and ctx.count("|") == cfg.n_segments
        pairs = PAIR.findall(ctx)
        assert len(pairs) == cfg.n_pairs
        keys = [k for k, _ in pairs]
        assert len(set(keys)) == len(keys), "keys are unique within a sample"
        assert all(len(k) == cfg.key_len and len(v) == cfg.value_len for k, v in pairs)
        noise = PAIR.sub("", ctx).replace("|", "")
        assert set(noise) <= alphabet and set("".join(keys)) <= alphabet
        assert len(ctx) - len(noise) == cfg.n_pairs * cfg.pair_len + cfg.n_segments
        assert query.startswith("?!") and query.endswith(":") and target.endswith("!|")
        asked = query[2:-1]
        assert dict(pairs)[asked] + "!|" == target


@pytest.mark.parametrize("cfg", [
    kv.KVTaskConfig(n_pairs=6, key_value_separator=False),
    kv.KVTaskConfig(n_pairs=3, key_len=1, value_len=2, vocab_size=16, n_segments=2, max_segment_len=8,
                    key_value_separator=False),
], ids=lambda c: c.name)
def test_format_without_key_value_separator(cfg):
    """``!kv!`` pairs and a ``?!k`` query: the same samples as with ':' for the same seed, the ':' left out."""
    ds, _ = small(cfg)
    with_sep, _ = small(dataclasses.replace(cfg, key_value_separator=True))
    for s, ref in zip(ds["train"], with_sep["train"]):
        assert ":" not in s["context"] + s["query"]
        assert (s["context"], s["query"], s["target"]) == (ref["context"].replace(":", ""), ref["query"][:-1],
                                                           ref["target"])
        assert len(s["context"]) == cfg.max_context_len or cfg.has_noise
        assert s["context"].count("!") == 2 * cfg.n_pairs

def test_noise_lengths_and_pair_positions_vary():
    cfg = kv.KVTaskConfig(n_pairs=3, n_segments=2, min_segment_len=5, max_segment_len=9)
    ds, _ = small(cfg)
    segments = [seg for s in ds["train"] for seg in s["context"].split("|")[:-1]]
    noise_lens = {len(PAIR.sub("", seg)) for seg in segments}
    assert noise_lens == set(range(5, 10))
    starts = {s["context"].index("!") for s in ds["train"]}
    assert len(starts) > 5, "pairs sit at random positions, not always at the start"


@pytest.mark.parametrize("cfg", [
    kv.KVTaskConfig(n_pairs=8),
    kv.KVTaskConfig(n_pairs=4, n_segments=3, min_segment_len=0, max_segment_len=10),
    kv.KVTaskConfig(n_pairs=8, noise_ratio=0.5),
], ids=lambda c: c.name)
def test_queried_pair_is_uniform_over_context_positions(cfg):
    """Which pair is asked for, counted by its order of appearance in the context: chi-square
    against the uniform 1/n_pairs at the 0.001 level."""
    ds, _ = kv.generate_kv_dataset(cfg, 4000, 1, 1, seed=0)
    ranks = [[k for k, _ in PAIR.findall(s["context"])].index(s["query"][2:-1]) for s in ds["train"]]
    observed = np.bincount(ranks, minlength=cfg.n_pairs)
    assert chi_square(observed, np.full(cfg.n_pairs, len(ranks) / cfg.n_pairs)) < CHI2_CRITICAL_0001[cfg.n_pairs - 1]


def test_segment_noise_lengths_are_uniform_within_their_bounds():
    cfg = kv.KVTaskConfig(n_pairs=2, n_segments=3, min_segment_len=2, max_segment_len=6)
    ds, _ = kv.generate_kv_dataset(cfg, 1000, 1, 1, seed=0)
    contexts = ds["train"]["context"]
    assert all(c.count("|") == 3 and c.endswith("|") for c in contexts)
    segments = [seg for c in contexts for seg in c.split("|")[:-1]]
    noise_lens = np.array([len(PAIR.sub("", seg)) for seg in segments])
    assert noise_lens.min() == 2 and noise_lens.max() == 6
    observed = np.bincount(noise_lens - 2, minlength=5)
    assert chi_square(observed, np.full(5, len(segments) / 5)) < CHI2_CRITICAL_0001[4]
    pairs_per_segment = np.array([len(PAIR.findall(seg)) for seg in segments]).reshape(-1, 3).sum(axis=0)
    assert chi_square(pairs_per_segment, np.full(3, 2 * len(contexts) / 3)) < CHI2_CRITICAL_0001[2]


# noise_ratio r: noise characters per context, computed by hand as round(r (7 n_pairs + 1) / (1 - r)).
NOISE_RATIO_TASKS = [(8, 0.25, 19), (8, 0.5, 57), (8, 0.75, 171), (16, 0.25, 38), (16, 0.5, 113), (16, 0.75, 339)]


@pytest.mark.parametrize("n_pairs, ratio, n_noise", NOISE_RATIO_TASKS)
def test_noise_ratio_contexts(n_pairs, ratio, n_noise):
    cfg = kv.KVTaskConfig(n_pairs=n_pairs, noise_ratio=ratio)
    ds, _ = kv.generate_kv_dataset(cfg, 200, 1, 1, seed=0)
    alphabet = set(kv.kv_alphabet(62))
    gaps = []  # for each pair, how many noise characters precede it
    for s in ds["train"]:
        ctx = s["context"]
        pairs = PAIR.findall(ctx)
        assert len(pairs) == n_pairs and len({k for k, _ in pairs}) == n_pairs
        assert all(len(k) == 2 and len(v) == 2 for k, v in pairs)
        noise = PAIR.sub("", ctx)
        assert noise.endswith("|") and set(noise[:-1]) <= alphabet, "only whole pairs and alphabet noise"
        assert len(noise) - 1 == n_noise
        assert abs(n_noise / len(ctx) - ratio) <= 1 / (2 * len(ctx) - 1)
        assert dict(pairs)[s["query"][2:-1]] + "!|" == s["target"]
        gaps += [len(PAIR.sub("", ctx[: m.start()])) for m in PAIR.finditer(ctx)]
    # each pair sits in one of the n_noise + 1 gaps, uniformly: chi-square over 4 bins of gaps
    bins = 4 * np.arange(n_noise + 1) // (n_noise + 1)
    expected = np.bincount(bins, minlength=4) / (n_noise + 1) * len(gaps)
    observed = np.bincount(bins[gaps], minlength=4)
    assert chi_square(observed, expected) < CHI2_CRITICAL_0001[3]


def test_noise_ratio_is_deterministic_per_seed():
    cfg = kv.KVTaskConfig(n_pairs=4, noise_ratio=0.5, vocab_size=30)
    a, _ = kv.generate_kv_dataset(cfg, 300, 20, 20, seed=5, chunk_size=64)
    b, _ = kv.generate_kv_dataset(cfg, 300, 20, 20, seed=5, chunk_size=64)
    c, _ = kv.generate_kv_dataset(cfg, 300, 20, 20, seed=6, chunk_size=64)
    for split in a:
        assert a[split].data.table.equals(b[split].data.table)
        assert a[split]["context"] != c[split]["context"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(noise_ratio=1.0), "out of range: choose 0 <= noise_ratio < 1"),
    (dict(noise_ratio=-0.1), "out of range"),
    (dict(noise_ratio=0.5, n_segments=2), "leave n_segments, min_segment_len and max_segment_len"),
    (dict(noise_ratio=0.5, max_segment_len=10), "leave n_segments"),
    (dict(noise_ratio=0.5, n_pairs=0, max_segment_len=3), "with n_pairs >= 1"),
    (dict(noise_ratio=0.001, n_pairs=1), "rounds to no noise character"),
    (dict(noise_ratio=0.9999, n_pairs=128), "exceed the limit of 65536"),
])
def test_noise_ratio_errors(kwargs, message):
    with pytest.raises(kv.KVDataError, match=message):
        kv.KVTaskConfig(**kwargs)


def test_copy_task():
    cfg = kv.KVTaskConfig(n_pairs=0, min_segment_len=3, max_segment_len=7)
    ds, _ = small(cfg)
    for s in ds["valid"]:
        assert s["target"] == s["context"] and s["query"] == "?"
        assert 4 <= len(s["context"]) <= 8


def test_values_may_repeat_and_are_uniform():
    cfg = kv.KVTaskConfig(n_pairs=64, key_len=2, value_len=1, vocab_size=8)
    ds, _ = small(cfg, n=200)
    values = [v for s in ds["train"] for _, v in PAIR.findall(s["context"])]
    counts = np.unique(values, return_counts=True)[1]
    assert len(counts) == 8 and counts.min() > 0.8 * counts.mean()
    assert any(len(set(v for _, v in PAIR.findall(s["context"]))) < 64 for s in ds["train"])


def test_distinct_integers_is_uniform_in_both_regimes():
    rng = np.random.default_rng(1)
    for k, space in ((3, 1000), (9, 10)):  # rejection regime, Fisher-Yates regime
        draws = kv._distinct_integers(rng, 20000, k, space)
        assert all(len(set(r)) == k for r in draws[:500])
        first = np.bincount(draws[:, 0], minlength=space)[:10] / 20000
        last = np.bincount(draws[:, -1], minlength=space)[:10] / 20000
        assert np.allclose(first, 1 / space, atol=0.3 / space + 0.01)
        assert np.allclose(last, 1 / space, atol=0.3 / space + 0.01)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = kv.KVTaskConfig(n_pairs=4, n_segments=2, min_segment_len=1, max_segment_len=5, vocab_size=100)
    a, card = kv.generate_kv_dataset(cfg, 500, 50, 50, seed=3, chunk_size=128)
    b, _ = kv.generate_kv_dataset(cfg, 500, 50, 50, seed=3, chunk_size=128)
    c, _ = kv.generate_kv_dataset(cfg, 500, 50, 50, seed=4, chunk_size=128)
    for split in a:
        assert a[split].data.table.equals(b[split].data.table)
    assert a["train"]["context"] != c["train"]["context"]
    pa_path = kv.save_dataset_atomically(a, card, tmp_path / "a")
    pb_path = kv.save_dataset_atomically(b, card, tmp_path / "b")
    for f in sorted(pa_path.rglob("*.arrow")):
        assert f.read_bytes() == (pb_path / f.relative_to(pa_path)).read_bytes()


def test_splits_are_independent_streams():
    ds, _ = small(n=500)
    assert ds["valid"]["context"][:5] != ds["train"]["context"][:5]
    assert ds["test"]["context"][:5] != ds["valid"]["context"][:5]


def test_valid_and_test_never_repeat_train_contexts_in_a_small_space():
    # 2 pairs from 4 keys with binary values: 4*3*2*2 = 48 distinct contexts.
    cfg = kv.KVTaskConfig(n_pairs=2, key_len=1, value_len=1, vocab_size=4)
    ds, card = kv.generate_kv_dataset(cfg, 30, 5, 5, seed=0, chunk_size=4)
    train = set(ds["train"]["context"])
    assert not train & set(ds["valid"]["context"])
    assert not (train | set(ds["valid"]["context"])) & set(ds["test"]["context"])
    assert card["splits"]["valid"]["n_regenerated_for_overlap"] > 0
    assert card["splits"]["valid"]["overlap_with_earlier_splits"] == 0
    assert card["overlap_note"].startswith("none")


def test_row_hash_depends_on_the_string_alone():
    strings = ["!ab:c!|", "xyz|", "!ab:c!|", "ÀÁ|", "xyz|"]
    codes = np.zeros((len(strings), 8), np.uint32)
    for i, s in enumerate(strings):
        codes[i, : len(s)] = [ord(c) for c in s]
    mixed = kv._StringChunk(codes).row_hashes()
    alone = {s: kv._StringChunk(codes[i: i + 1]).row_hashes()[0] for i, s in enumerate(strings)}
    wide = np.pad(codes, ((0, 0), (0, 5)))  # trailing zeros are padding, not characters
    assert [alone[s] for s in strings] == mixed.tolist() == kv._StringChunk(wide).row_hashes().tolist()
    assert len(set(alone.values())) == 3
    same_len = kv._StringChunk(codes[[0, 2]]).row_hashes()  # the equal-length layout
    assert same_len.tolist() == [alone["!ab:c!|"]] * 2


@pytest.mark.parametrize("cfg", [
    kv.KVTaskConfig(n_pairs=1, key_len=2, value_len=1, vocab_size=3, max_segment_len=1),
    kv.KVTaskConfig(n_pairs=1, key_len=1, value_len=1, vocab_size=3, n_segments=2, max_segment_len=1),
    kv.KVTaskConfig(n_pairs=0, vocab_size=2, min_segment_len=1, max_segment_len=4),
], ids=lambda c: c.name)
def test_card_overlap_counts_match_exact_string_overlap_on_noisy_tasks(cfg):
    """Tiny noisy spaces: later splits must redraw many contexts, and what remains shared with an
    earlier split is exactly what the card reports (counted here with Python sets)."""
    ds, card = kv.generate_kv_dataset(cfg, 300, 20, 20, seed=0, chunk_size=16)
    seen = set()
    for split in ("train", "valid", "test"):
        contexts = ds[split]["context"]
        shared = sum(c in seen for c in contexts)
        assert card["splits"][split]["overlap_with_earlier_splits"] == shared, split
        seen |= set(contexts)
    assert card["splits"]["valid"]["n_regenerated_for_overlap"] > 0
    any_shared = any(r["overlap_with_earlier_splits"] for r in card["splits"].values())
    assert card["overlap_note"].startswith("none") == (not any_shared)


def test_card_says_when_the_space_is_too_small():
    cfg = kv.KVTaskConfig(n_pairs=1, key_len=1, value_len=1, vocab_size=2)  # 4 contexts
    ds, card = kv.generate_kv_dataset(cfg, 50, 10, 10, seed=0, chunk_size=8)
    assert card["splits"]["valid"]["overlap_with_earlier_splits"] > 0
    assert "too small" in card["overlap_note"]
    assert len(ds["valid"]) == 10


def test_folder_names():
    assert kv.dataset_folder_name(kv.KVTaskConfig(n_pairs=16), 1_000_000) == "N16-K2V2-V62_1M"
    assert kv.dataset_folder_name(kv.KVTaskConfig(n_pairs=8), 100_000) == "N8-K2V2-V62_100K"
    noisy = kv.KVTaskConfig(n_pairs=8, n_segments=2, min_segment_len=100, max_segment_len=200)
    assert kv.dataset_folder_name(noisy, 1500) == "N8-K2V2-V62_S2(100-200)_1500"
    published = [kv.dataset_folder_name(kv.KVTaskConfig(n_pairs=n, noise_ratio=r), 1_000_000)
                 for n in (8, 16) for r in (0.25, 0.5, 0.75)]
    assert published == [f"N{n}-K2V2-V62_noise_{r}_1M" for n in (8, 16) for r in ("0.25", "0.5", "0.75")]
    no_sep = kv.KVTaskConfig(n_pairs=2, key_len=1, value_len=1, vocab_size=16, key_value_separator=False)
    assert kv.dataset_folder_name(no_sep, 50_000) == "N2-K1V1-V16_nosep_50K"


@pytest.mark.parametrize("vocab_size", [62, 512])
def test_tokenizer_round_trips_every_character(vocab_size):
    for tok in (kv.create_tokenizer(vocab_size), kv.load_tokenizer(ROOT / f"tokenizers/kv_alphabet_{vocab_size}")):
        text = kv.kv_alphabet(vocab_size) + kv.RESERVED_CHARS
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) == len(set(ids))
        assert tok.decode(ids) == text
        assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
        assert len(tok) == vocab_size + 8
        encoder = kv.CharEncoder(tok)
        assert encoder.encode([text])[0].tolist() == ids


def test_alphabet_is_fixed_and_prefix_stable():
    assert kv.kv_alphabet(62) == kv.BASE_ALPHABET
    big = kv.kv_alphabet(512)
    assert len(set(big)) == 512 and not set(big) & set(kv.RESERVED_CHARS + "[]")
    assert kv.kv_alphabet(100) == big[:100]


def test_collate_aligns_labels_with_targets():
    tok = kv.create_tokenizer(62)
    ds, _ = small(kv.KVTaskConfig(n_pairs=3))
    samples = [ds["train"][i] for i in range(5)]
    batch = kv.KVCollator(tok)(samples)
    assert batch["context_input_ids"].shape[1] % 8 == 0
    assert batch["query_input_ids"].shape == batch["labels"].shape
    for b, s in enumerate(samples):
        ctx = batch["context_input_ids"][b]
        assert tok.decode(ctx[ctx != 0]) == s["context"]
        q, lab = batch["query_input_ids"][b], batch["labels"][b]
        assert tok.decode(q[q != 0]) == s["query"] + s["target"]
        target_pos = (lab != -100).nonzero().flatten()
        assert tok.decode(lab[target_pos]) == s["target"]
        assert torch.equal(q[target_pos], lab[target_pos])
        assert target_pos[0] == len(s["query"])


def test_collate_truncation_counts_and_warns():
    tok = kv.create_tokenizer(62)
    samples = [{"context": "!ab:cd!!ef:gh!|", "query": "?!ab:", "target": "cd!|"}] * 3
    collate = kv.KVCollator(tok, max_context_length=10)
    with pytest.warns(UserWarning, match="3 contexts and 15 tokens cut"):
        batch = collate(samples)
    assert batch["context_input_ids"].shape == (3, 16)
    assert (batch["context_input_ids"][:, 10:] == 0).all()


def test_error_unknown_characters():
    with pytest.raises(kv.KVDataError, match=r"lacks characters \['é'\].*kv_alphabet_512"):
        kv.KVCollator(kv.create_tokenizer(62))([{"context": "!aé:b!|", "query": "?!a:", "target": "b!|"}])


def test_error_too_many_pairs():
    with pytest.raises(kv.KVDataError, match="n_pairs=17 but only 16 distinct keys.*raise key_len"):
        kv.KVTaskConfig(n_pairs=17, key_len=2, vocab_size=4)


def test_error_missing_path_and_columns(tmp_path):
    with pytest.raises(kv.KVDataError, match="does not exist.*--data_path"):
        kv.load_kv_dataset(tmp_path / "nope")
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"context": ["x"], "query": ["y"]})}).save_to_disk(
        str(tmp_path / "bad"))
    with pytest.raises(kv.KVDataError, match=r"lacks columns \['target'\]"):
        kv.load_kv_dataset(tmp_path / "bad")
    with pytest.raises(kv.KVDataError, match="no tokenizer at"):
        kv.load_tokenizer(tmp_path)


PUBLISHED_TASK = kv.KVTaskConfig(n_pairs=3, n_segments=2, max_segment_len=4)  # contexts hold two '|'


def published_fixture(split_names=("train", "validation", "test"), columns=("context", "query", "target")):
    """Our train/valid/test, renamed as a hub dataset might name them, plus the reference generator's
    ``input_sequence`` column (context + query); of ours, only ``columns`` are kept."""
    import datasets

    ours, _ = kv.generate_kv_dataset(PUBLISHED_TASK, 40, 10, 10, seed=0)
    out = {}
    for name, split in zip(split_names, ours.values()):
        data = {c: split[c] for c in kv.COLUMNS}
        data["input_sequence"] = [c + q for c, q in zip(split["context"], split["query"])]
        out[name] = datasets.Dataset.from_dict({c: data[c] for c in (*columns, "input_sequence")})
    return ours, datasets.DatasetDict(out)


def write_hub_repository(ds, path, card=True):
    """The files of a hub dataset repository: data/<split>-00000-of-00001.parquet and a README whose
    YAML header lists the splits, as push_to_hub writes them."""
    (path / "data").mkdir(parents=True)
    for name, split in ds.items():
        split.to_parquet(path / "data" / f"{name}-00000-of-00001.parquet")
    if card:
        files = "".join(f"  - split: {name}\n    path: data/{name}-*\n" for name in ds)
        (path / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}---\n")


@pytest.mark.parametrize("layout", ["save_to_disk", "hub_repository", "hub_repository_without_card",
                                    "input_sequence_only"])
def test_load_published_layouts(tmp_path, layout):
    columns = ("target",) if layout == "input_sequence_only" else kv.COLUMNS
    ours, published = published_fixture(columns=columns)
    if layout.startswith("hub_repository"):
        write_hub_repository(published, tmp_path / "repo", card=layout == "hub_repository")
        ds = kv.load_kv_dataset(tmp_path / "repo", cache_dir=str(tmp_path / "cache"))
    else:
        published.save_to_disk(str(tmp_path / "repo"))
        ds = kv.load_kv_dataset(tmp_path / "repo")
    assert sorted(ds) == ["test", "train", "valid"]
    for split in ds:
        for column in kv.COLUMNS:
            assert ds[split][column] == ours[split][column], (split, column)


@pytest.mark.parametrize("split_names, columns, message", [
    (("train", "valid", "validation"), kv.COLUMNS, r"two splits that both mean 'valid'"),
    (("train", "validation", "test"), ("context", "query"), r"split 'train' lacks columns \['target'\]"),
    (("train", "validation", "test"), ("target",), r"input_sequence '.*' has no '\|'"),
], ids=["two_valid_splits", "no_target", "input_sequence_without_bar"])
def test_load_published_layout_errors(tmp_path, split_names, columns, message):
    _, published = published_fixture(split_names, columns)
    if columns == ("target",):  # input_sequence with its context's '|' cut off
        published = published.map(lambda s: {"input_sequence": s["input_sequence"].replace("|", "")})
    published.save_to_disk(str(tmp_path / "repo"))
    with pytest.raises(kv.KVDataError, match=message):
        kv.load_kv_dataset(tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(kv.KVDataError, match="not a saved dataset.*download_kv_retrieval"):
        kv.load_kv_dataset(tmp_path / "empty")


def test_download_saves_the_published_dataset_checked(tmp_path, monkeypatch):
    import datasets

    ours, published = published_fixture()
    fetched = []
    monkeypatch.setattr(datasets, "load_dataset", lambda repo: fetched.append(repo) or published)
    path = kv.download_published("N16-K2V2-V62_noise_0.5_1M", tmp_path / "data")
    assert fetched == ["yurakuratov/N16-K2V2-V62_noise_0.5_1M"] and path == tmp_path / "data" / "N16-K2V2-V62_noise_0.5_1M"
    ds = kv.load_kv_dataset(path)
    assert ds["valid"]["context"] == ours["valid"]["context"]
    card = json.loads((path / "dataset_card.json").read_text())
    assert card["source"] == "https://huggingface.co/datasets/yurakuratov/N16-K2V2-V62_noise_0.5_1M"
    assert card["splits"] == {"train": 40, "valid": 10, "test": 10}

    _, broken = published_fixture(columns=("context", "query"))
    monkeypatch.setattr(datasets, "load_dataset", lambda repo: broken)
    with pytest.raises(kv.KVDataError, match=r"lacks columns \['target'\]"):
        kv.download_published("N8-K2V2-V62_1M", tmp_path / "data")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["N16-K2V2-V62_noise_0.5_1M"]


def test_download_script_without_the_hub_says_one_thing(tmp_path):
    (tmp_path / "data" / "N4-K2V2-V62_1M").mkdir(parents=True)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "download_kv_retrieval.sh"), "N4-K2V2-V62_1M",
                        "N16-K2V2-V62_noise_0.5_1M", "N32-K2V2-V62_1M"], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PY": sys.executable, "OUT": str(tmp_path / "data")})
    assert r.returncode == 2
    assert "N4-K2V2-V62_1M exists, skipped" in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: cannot reach the Hugging Face hub for yurakuratov/N16-K2V2-V62_noise_0.5_1M")
    assert "scripts/make_kv_datasets.sh" in r.stderr
    assert "--n_pairs 16 --key_len 2 --value_len 2 --vocab_size 62 --noise_ratio 0.5" in r.stderr
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["N4-K2V2-V62_1M"]


def test_generator_makes_every_published_name():
    assert len(kv.PUBLISHED_DATASETS) == 13
    for name in kv.PUBLISHED_DATASETS:
        args = kv.build_arg_parser().parse_args(kv.generator_args(name))
        cfg = kv.KVTaskConfig(n_pairs=args.n_pairs, key_len=args.key_len, value_len=args.value_len,
                              vocab_size=args.vocab_size, noise_ratio=args.noise_ratio)
        assert kv.dataset_folder_name(cfg, args.n_train) == name
    assert kv.generator_args("something_else") is None


def test_atomic_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    ds, card = small(n=100)
    monkeypatch.setattr(type(ds), "save_to_disk", lambda self, path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        kv.save_dataset_atomically(ds, card, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "kv_dataset_utils.py"), *args], cwd=cwd,
                          capture_output=True, text=True)


def test_cli_end_to_end(tmp_path):
    args = ["--n_pairs", "4", "--n_train", "2000", "--n_valid", "100", "--n_test", "100", "--out", "data/"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "data" / "N4-K2V2-V62_2K"
    ds = kv.load_kv_dataset(path)
    assert {k: len(v) for k, v in ds.items()} == {"train": 2000, "valid": 100, "test": 100}
    card = json.loads((path / "dataset_card.json").read_text())
    assert card["task"]["n_pairs"] == 4 and card["splits"]["train"]["n_samples"] == 2000
    assert card["size_on_disk_bytes"] > 0
    assert "generating" in r.stderr  # the progress bar

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "already exists: pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert run_cli(*args, "--overwrite", "--seed", "1", cwd=tmp_path).returncode == 0
    assert kv.load_kv_dataset(path)["train"]["context"] != ds["train"]["context"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["N4-K2V2-V62_2K"]


def test_cli_noise_and_segment_flags_reach_the_data(tmp_path):
    common = ["--n_pairs", "3", "--vocab_size", "20", "--n_train", "400", "--n_valid", "10", "--n_test", "10",
              "--out", str(tmp_path)]
    assert kv.main([*common, "--n_segments", "3", "--min_segment_len", "2", "--max_segment_len", "6"]) == 0
    contexts = kv.load_kv_dataset(tmp_path / "N3-K2V2-V20_S3(2-6)_400")["train"]["context"]
    assert all(c.count("|") == 3 and len(PAIR.findall(c)) == 3 for c in contexts)
    assert {len(PAIR.sub("", seg)) for c in contexts for seg in c.split("|")[:-1]} == {2, 3, 4, 5, 6}
    assert set("".join(PAIR.sub("", c) for c in contexts)) <= set(kv.kv_alphabet(20) + "|")

    assert kv.main([*common, "--noise_ratio", "0.6"]) == 0  # 3 pairs of 7 and '|': 22 characters, 33 of noise
    contexts = kv.load_kv_dataset(tmp_path / "N3-K2V2-V20_noise_0.6_400")["train"]["context"]
    assert {len(c) for c in contexts} == {55} and {len(PAIR.sub("", c)) for c in contexts} == {34}


def test_cli_errors_are_one_clear_line(tmp_path):
    r = run_cli("--n_pairs", "5000", "--n_train", "10", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: n_pairs=5000 but only 3844 distinct keys")
    assert "Traceback" not in r.stderr and not (tmp_path / "data").exists()


def test_dump_dataset_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / "dump_dataset.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "?!" in outputs and "!|" in outputs
