"""Build the causal LM every memory model wraps: from a local config (no hub access) or a local checkpoint.

Architectures from a config: ``llama``, ``gpt2``, ``gpt_neox`` (pythia-style, alias ``pythia``) and
``mamba``. The reference experiment backbone is llama with 4 layers, 4 heads and 128 dims.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import attn_double_bwd  # noqa: F401  (registers the double-backward attention implementations)
from cli import option

ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "pythia", "mamba")


@dataclass
class BackboneConfig:
    """Which LM to build. ``pretrained_path`` (a local folder, optionally with ``gguf_file``)
    overrides the architecture fields."""

    base_model: str = option("llama", "LM architecture built from scratch", choices=ARCHITECTURES)
    n_layer: int = option(4, "layers")
    n_head: int = option(4, "attention heads")
    n_embd: int = option(128, "hidden size")
    max_position_embeddings: int = option(2048, "longest sequence the position embeddings cover")
    dropout: float = option(0.0, "every dropout of a from-scratch transformer: attention (llama); attention, residual "
                            "and embedding (gpt2, gpt_neox); mamba has none")
    attn_implementation: str = option("eager", "transformers attention: eager (double-differentiable, needed for "
                                      "second order), sdpa, or a kernel registered by attn_double_bwd")
    pretrained_path: str | None = option(None, "local folder of a pretrained LM (overrides the architecture flags)")
    gguf_file: str | None = option(None, "GGUF file name inside --pretrained_path")

    def __post_init__(self):
        if self.base_model not in ARCHITECTURES:
            raise ValueError(f"base_model={self.base_model!r} is not one of {ARCHITECTURES}.")
        if self.gguf_file and not self.pretrained_path:
            raise ValueError("gguf_file needs pretrained_path: the folder that holds the GGUF file.")
        if self.base_model == "mamba" and self.dropout and not self.pretrained_path:
            raise ValueError(f"dropout={self.dropout}, but mamba has no dropout layers: set dropout to 0 or pick a "
                             f"transformer (llama, gpt2, gpt_neox).")
        if self.base_model != "mamba" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")


def lm_config(cfg: BackboneConfig, vocab_size: int, pad_token_id: int = 0, bos_token_id: int = 1,
              eos_token_id: int = 2):
    """A transformers config for ``cfg``; ``vocab_size`` and special ids come from the tokenizer."""
    import transformers as tf

    ids = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
               eos_token_id=eos_token_id)
    d, L, H = cfg.n_embd, cfg.n_layer, cfg.n_head
    if cfg.base_model == "llama":
        return tf.LlamaConfig(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=L, num_attention_heads=H,
                              num_key_value_heads=H, max_position_embeddings=cfg.max_position_embeddings,
                              attention_dropout=cfg.dropout, tie_word_embeddings=False, **ids)
    if cfg.base_model == "gpt2":
        return tf.GPT2Config(n_embd=d, n_layer=L, n_head=H, n_positions=cfg.max_position_embeddings,
                             resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **ids)
    if cfg.base_model in ("gpt_neox", "pythia"):
        return tf.GPTNeoXConfig(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=L,
                                num_attention_heads=H, max_position_embeddings=cfg.max_position_embeddings,
                                attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout,
                                tie_word_embeddings=False, **ids)
    return tf.MambaConfig(hidden_size=d, num_hidden_layers=L, state_size=16, expand=2, **ids)


def build_backbone(cfg: BackboneConfig, tokenizer=None, vocab_size: int | None = None, dtype=None):
    """A Hugging Face causal LM. From scratch, the vocabulary and pad/bos/eos ids come from
    ``tokenizer`` (or ``vocab_size``); a pretrained one must already fit the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    if cfg.pretrained_path:
        path = Path(cfg.pretrained_path)
        if not path.is_dir() or (cfg.gguf_file and not (path / cfg.gguf_file).is_file()):
            raise FileNotFoundError(f"no pretrained model at {path / (cfg.gguf_file or '')}: pass a local "
                                    f"folder (and --gguf_file for a GGUF checkpoint).")
        kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        lm = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=cfg.attn_implementation,
                                                  dtype=dtype or torch.float32, **kwargs)
        if tokenizer is not None and len(tokenizer) > lm.get_input_embeddings().num_embeddings:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the pretrained model's vocabulary "
                             f"has {lm.get_input_embeddings().num_embeddings}: use the model's own tokenizer.")
        return lm
    if tokenizer is not None:
        config = lm_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                           tokenizer.eos_token_id)
    elif vocab_size is not None:
        config = lm_config(cfg, vocab_size)
    else:
        raise ValueError("build_backbone needs a tokenizer or a vocab_size.")
    kwargs = {} if cfg.base_model == "mamba" else {"attn_implementation": cfg.attn_implementation}
    lm = AutoModelForCausalLM.from_config(config, **kwargs)
    return lm.to(dtype) if dtype is not None else lm
