"""Tiny float64 models and KV batches shared by the model tests.

Hugging Face's eager attention (llama, gpt_neox) and ``LlamaRMSNorm`` compute in float32 even for a
float64 model, which leaves ~1e-7 noise: too much for finite differences at 1e-6. ``tiny_lm`` in
float64 therefore uses an attention and an RMSNorm that stay in the input dtype (``double_bwd_layers``' RMSNorm,
the default, already does).
"""
import types

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

import kv_dataset_utils as kv
from backbones import BackboneConfig, build_backbone
from double_bwd_layers import DoubleBwdLlamaRMSNorm

TOKENIZER = kv.create_tokenizer(62)


def dtype_preserving_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention in the input dtype. query ``[B, H, T, D]``, key/value ``[B, Hkv, S, D]``."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(2, 3) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[2]]
    weights = scores.softmax(dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("dtype_preserving", dtype_preserving_attention)
AttentionMaskInterface.register("dtype_preserving", ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def _rms_norm_in_input_dtype(self, x):
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def tiny_lm(base_model="llama", n_layer=1, n_head=2, n_embd=16, dtype=torch.float64, seed=0, double_bwd_layers=True):
    torch.manual_seed(seed)
    exact = dtype == torch.float64
    cfg = BackboneConfig(base_model=base_model, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         attn_implementation="dtype_preserving" if exact else "eager",
                         double_bwd_layers=double_bwd_layers)
    lm = build_backbone(cfg, TOKENIZER).to(dtype)
    if exact:
        for module in lm.modules():
            if type(module).__name__.endswith("RMSNorm") and not isinstance(module, DoubleBwdLlamaRMSNorm):
                module.forward = types.MethodType(_rms_norm_in_input_dtype, module)
    return lm


def kv_batch(n=4, n_pairs=2, seed=0, **task):
    ds, _ = kv.generate_kv_dataset(kv.KVTaskConfig(n_pairs=n_pairs, **task), n, 1, 1, seed)
    return kv.KVCollator(TOKENIZER)([ds["train"][i] for i in range(n)])


def directional_fd(loss_fn, params, directions, eps=1e-5):
    """Central finite difference of ``loss_fn()`` along ``directions`` (float64 parameters)."""
    with torch.no_grad():
        for p, v in zip(params, directions):
            p.add_(eps * v)
        plus = loss_fn().item()
        for p, v in zip(params, directions):
            p.sub_(2 * eps * v)
        minus = loss_fn().item()
        for p, v in zip(params, directions):
            p.add_(eps * v)
    return (plus - minus) / (2 * eps)


def exact_match_after_training(model, batch, steps, lr):
    """Train on one batch (AdamW) until the loss is tiny or ``steps`` run out; return its exact match."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    with torch.no_grad():
        logits = model(**batch).logits
    target = batch["labels"][:, 1:] != -100
    return ((logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) | ~target).all(dim=1).float().mean().item()


def assert_generate_matches_teacher_forced_argmax(model, batch, max_new_tokens=4):
    """Greedy generation from memory + query equals the argmax of READ run on query + generated tokens."""
    q_len = int((batch["labels"][0] == -100).sum())  # every KV query has the same length
    query = batch["query_input_ids"][:, :q_len]
    with torch.no_grad():
        memory = model.write(batch["context_input_ids"])
        new = model.generate(memory, query, max_new_tokens=max_new_tokens)
        logits = model.read(memory, torch.cat([query, new], 1)).logits
    torch.testing.assert_close(logits[:, q_len - 1:-1].argmax(-1), new)


def assert_ragged_batch_generates_as_one_at_a_time(model, batch, max_new_tokens=4):
    """Greedy generation for a batch of contexts and queries of different lengths (right padding) equals
    generating for each sample alone, unpadded. Queries end early and contexts are cut, so that samples
    share a query length (1 and 2), or a total length (0 and 1, for a full-context model), or nothing."""
    q_len = int((batch["labels"][0] == -100).sum())  # every KV query has the same length, and every context
    c_len = int((batch["context_input_ids"][0] != 0).sum())
    ctx_lengths, q_lengths = [c_len, c_len - 2, c_len, c_len - 3], [q_len - 2, q_len, q_len, q_len - 1]
    context, query = batch["context_input_ids"][:4].clone(), batch["query_input_ids"][:4, :q_len].clone()
    for b in range(4):
        context[b, ctx_lengths[b]:] = 0
        query[b, q_lengths[b]:] = 0
    with torch.no_grad():
        batched = model.generate(model.write(context), query, max_new_tokens=max_new_tokens)
        for b in range(4):
            alone = model.generate(model.write(context[b:b + 1, :ctx_lengths[b]]), query[b:b + 1, :q_lengths[b]],
                                   max_new_tokens=max_new_tokens)
            assert torch.equal(batched[b], alone[0]), (b, batched, alone)
        # a mix-up would show: the four answers differ, and samples 1 and 2 (one group) answer from their context
        swapped = model.generate(model.write(context[[0, 2, 1, 3]]), query, max_new_tokens=max_new_tokens)
    assert len({tuple(row) for row in batched.tolist()}) == 4, batched
    assert not torch.equal(swapped[1:3], batched[1:3])


BPE_CORPUS = ["Mary moved to the bathroom. John went to the hallway. Where is Mary? bathroom",
              "Question: What is the phone number of Alice Smith?\nAnswer: 555-0134",
              "The tower was built in 1889 by Gustave Eiffel in Paris, France.",
              "Daniel picked up the football. Sandra journeyed to the garden. kitchen office bedroom"] * 4


def bpe_tokenizer(bos: bool = False, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained here on a few sentences (no download). ``bos=False`` is
    GPT-2-like (one ``<|endoftext|>`` for BOS and EOS, no pad, nothing added); ``bos=True`` is llama-like
    (``<s>`` put in front of every text, ``</s>`` EOS, ``<pad>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"] if bos else ["<|endoftext|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(BPE_CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    return tok


def pretrained_folder(path, tokenizer, base_model="llama"):
    """A tiny random-init LM saved with ``tokenizer`` as a local Hugging Face folder (what --pretrained_path takes)."""
    torch.manual_seed(0)
    lm = build_backbone(BackboneConfig(base_model=base_model, n_layer=1, n_head=2, n_embd=16,
                                       max_position_embeddings=512), tokenizer)
    lm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
