"""Tiny random-weight models for tests, the demo and benchmarks, built offline from configs.

Each is an ordinary Hugging Face model folder (config, safetensors weights, tokenizer.json) that
`from_pretrained` loads with no network. Weights are deterministic by seed. The tokenizer is a small
BPE with a Metaspace pre-tokenizer, trained here on a built-in corpus: every token decodes to valid
text (a byte-level tokenizer would drop invalid bytes), so greedy generations are readable strings.

- `t5`: T5ForConditionalGeneration, tokenizer without sentinels.
- `mt5`: MT5ForConditionalGeneration (gated GELU, untied head), tokenizer with `<extra_id_0..99>`.
- `llama`, `gpt2`: decoder-only.
- `bart`: BartForConditionalGeneration at the miniature world's size (d_model 128, 3+3 layers, 4 heads,
  FFN 512, learned positions, `scale_embedding`), tokenizer like T5's plus `<s>` (the decoder start).
  Not in `KINDS` (so not built by `build_all`); `harness_tasks.mini_world` builds it on its word vocabulary.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

from fmtspec.errors import FmtspecError

KINDS = ("t5", "mt5", "llama", "gpt2")
EXTRA_KINDS = ("bart",)  # built on request only
VOCAB_SIZE = 1024
N_SENTINELS = 100

# Words of the evaluation templates and fixtures, so that they tokenize into few pieces.
_CORPUS = """
Is it true or false or neither? answer: True False Neither question: The word is used in the same way
in the two sentences. Is it true or False? Q: A: A) B) C) D) Translate English to German: Romanian:
French: Article: One sentence summary: abstract to title: translate English to Chinese: multi-label
classification: the of and to in a is that for it as was with be by on not he I this are or his from at
which but have an they you were her she there been one all we their has would when if so no what can
who will more about up out them into some could time very after these two may first than then other
Who What Where When Why How many much city country river year people world film book song team game
der die das und ist nicht ein eine mit von zu den im für auf sich dem Sie es auch an wird
și în de la cu un o pe este care din nu mai sunt pentru ce se le des les et est pas une dans
restaurant food service slow rude staff order cashier dirty manager drive through wait
model language learning training task prompt format tuning neural network paper results
"""


def _alphabet():
    extra = "äöüÄÖÜßăâîșțĂÂÎȘȚéèêàçùôœÉÈ€£°"
    return sorted(set(string.ascii_letters + string.digits + string.punctuation + extra))


def build_tokenizer(kind: str):
    """A fast tokenizer for `kind`, trained deterministically on the built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    seq2seq = kind in ("t5", "mt5", "bart")
    sentinels = [f"<extra_id_{i}>" for i in range(N_SENTINELS)] if kind == "mt5" else []
    special = ["<pad>", "</s>", "<unk>"] if kind in ("t5", "mt5") else ["<pad>", "</s>", "<unk>", "<s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - len(sentinels), special_tokens=special,
                                  initial_alphabet=_alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    if sentinels:
        tok.add_special_tokens(sentinels)
    if seq2seq:  # like T5: the encoder input ends with </s>
        eos = tok.token_to_id("</s>")
        tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                special_tokens=[("</s>", eos)])
    kwargs = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if "<s>" in special:
        kwargs["bos_token"] = "<s>"
    if sentinels:
        kwargs["additional_special_tokens"] = sentinels
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048, **kwargs)


def build_model(kind: str, vocab_size: int, seed: int = 0):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "t5":
        config = tf.T5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                             num_decoder_layers=2, num_heads=4, tie_word_embeddings=False,
                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = tf.T5ForConditionalGeneration(config)
    elif kind == "mt5":
        config = tf.MT5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                              num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                              tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                              eos_token_id=1)
        model = tf.MT5ForConditionalGeneration(config)
    elif kind == "llama":
        config = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=4096, tie_word_embeddings=False,
                                pad_token_id=0, eos_token_id=1, bos_token_id=3)
        model = tf.LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=4096,
                               tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=3)
        model = tf.GPT2LMHeadModel(config)
    elif kind == "bart":
        model = tf.BartForConditionalGeneration(bart_config(vocab_size))
    else:
        raise FmtspecError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS + EXTRA_KINDS)}")
    return model


def bart_config(vocab_size: int, pad_id: int = 0, eos_id: int = 1, bos_id: int = 3):
    """The miniature world's BART (~1.5M parameters at a 120-word vocabulary). Ids: <pad> 0, </s> 1, <s> 3.

    The decoder starts from <s>, not BART's usual </s>: generation code that stops at the first EOS would
    otherwise stop at the start token. `scale_embedding`: token embeddings are multiplied by sqrt(d_model)
    inside `embed_tokens`, so anything fed as `inputs_embeds` must come from that module. No dropout: the
    world's data are plentiful and training is short. No forced BOS/EOS tokens."""
    import transformers as tf

    return tf.BartConfig(vocab_size=vocab_size, d_model=128, encoder_layers=3, decoder_layers=3,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
                         decoder_ffn_dim=512, max_position_embeddings=512, scale_embedding=True,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                         pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=bos_id,
                         decoder_start_token_id=bos_id, forced_bos_token_id=None, forced_eos_token_id=None)


def _silence_special_tokens(model, tokenizer):
    """Random tiny models tend to emit pad/EOS first; zero their output rows so that greedy text is non-empty."""
    import torch

    ids = [i for i in tokenizer.all_special_ids if i is not None]
    with torch.no_grad():
        model.get_output_embeddings().weight[ids] = 0.0


def build_tiny_model(kind: str, output_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny `kind` model and its tokenizer to `output_dir` and return the folder."""
    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(kind)
    model = build_model(kind, vocab_size=len(tokenizer), seed=seed)
    _silence_special_tokens(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def build_all(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build every kind under `root/<kind>`; skip folders that already hold a model."""
    root = Path(root)
    out = {}
    for kind in KINDS:
        folder = root / kind
        if not (folder / "config.json").exists():
            build_tiny_model(kind, folder, seed=seed)
        out[kind] = folder
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder to write <kind>/ model folders into")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS + EXTRA_KINDS)}")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS + EXTRA_KINDS]
    if unknown:
        raise FmtspecError(f"unknown model kind {unknown[0]!r}; choose from {', '.join(KINDS + EXTRA_KINDS)}")
    for kind in kinds:
        folder = build_tiny_model(kind, Path(args.output) / kind, seed=args.seed)
        print(f"{kind}: {folder}")
    return 0
