"""Tiny random-weight models for tests, the demo and benchmarks, built offline from configs.

Each is an ordinary Hugging Face model folder (config, safetensors weights, tokenizer.json) that
`from_pretrained` loads with no network. Weights are deterministic by seed. The tokenizer is a small
BPE with a Metaspace pre-tokenizer, trained here on a built-in corpus: every token decodes to valid
text (a byte-level tokenizer would drop invalid bytes), so greedy generations are readable strings.
(`mt5_spiece`: a SentencePiece spiece.model instead, below.)

- `t5`: T5ForConditionalGeneration, tokenizer without sentinels.
- `mt5`: MT5ForConditionalGeneration (gated GELU, untied head), tokenizer with `<extra_id_0..99>`.
- `llama`, `gpt2`: decoder-only.
- `bart`: BartForConditionalGeneration of the miniature world's config (`harness_tasks.mini_world.bart_config`:
  d_model 128, 3+3 layers, 4 heads, FFN 512, learned positions, `scale_embedding`), tokenizer like T5's plus
  `<s>` (the decoder start). Not in `KINDS` (so not built by `build_all`); the world builds it on its word
  vocabulary.
- `mt5_spiece`: the `mt5` model with a tokenizer folder laid out as the hub's google/mt5-* have it, so that
  tests load it the way transformers loads the paper's models (needs `sentencepiece` and `protobuf`):
  `spiece.model` (a unigram SentencePiece model, trained here on the corpus below and the bundled fixtures'
  text, with T5's ids <pad> 0, </s> 1, <unk> 2 and, as mT5's `mc4.250000.100extra` model, the sentinels
  `▁<extra_id_99>`...`▁<extra_id_0>` appended as user-defined pieces, so `<extra_id_0>` is the last id),
  `tokenizer_config.json` (T5Tokenizer, `extra_ids: 0`) and `special_tokens_map.json`; no tokenizer.json.
  As on the hub, the sentinels are ordinary pieces: the text `<extra_id_0>` encodes to its id, but the
  vocabulary's key is `▁<extra_id_0>`. The model's vocabulary is padded to a multiple of 128 (as mT5's
  250112 rows for 250100 tokens). Not in `KINDS`: built on request.
"""

from __future__ import annotations

import argparse
import json
import re
import string
from pathlib import Path

from fmtspec.core.errors import FmtspecError
from harness_tasks.mini_world import bart_config

KINDS = ("t5", "mt5", "llama", "gpt2")
EXTRA_KINDS = ("bart", "mt5_spiece")  # built on request only
VOCAB_SIZE = 1024
N_SENTINELS = 100
SPIECE_PIECES = 900  # of mt5_spiece's spiece.model before its sentinels: 1000 tokens, padded to 1024 rows
FIXTURES = Path(__file__).resolve().parents[1] / "harness_tasks" / "fixtures"
_SENTINEL = re.compile(r"^▁?<extra_id_\d+>$")

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
    # t5: 512, as the hub's t5-small and Flan-T5 tokenizers say (lm-eval's hf takes it as the context length)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512 if kind == "t5" else 2048, **kwargs)


def _spiece_text() -> list[str]:
    """The lines `mt5_spiece`'s SentencePiece model is trained on: the corpus, then every string value of the
    bundled fixtures (harness_tasks/fixtures/<task>/*.jsonl, in sorted path order; ~75 KB)."""
    texts = [_CORPUS]

    def strings(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for v in value:
                strings(v)
        elif isinstance(value, dict):
            for v in value.values():
                strings(v)

    for path in sorted(FIXTURES.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                strings(json.loads(line))
    return [line for text in texts for line in text.splitlines() if line.strip()]


def write_spiece_tokenizer(folder: str | Path) -> Path:
    """Write the hub mT5 layout of `mt5_spiece`'s tokenizer into `folder` (see the module docstring)."""
    import io

    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except Exception as e:  # ImportError, or protobuf's VersionError: older than sentencepiece's gencode
        raise FmtspecError(f"the mt5_spiece tokenizer needs sentencepiece and protobuf: {e}") from e

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    # T5's SentencePiece set-up: unigram, NFKC, no BOS, no byte fallback. One thread and the whole input
    # (no sampling, no shuffling): the same bytes on every run. The fixtures' text allows ~1,000 pieces;
    # a soft limit, so that smaller fixtures give a smaller vocabulary rather than an error.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_spiece_text()), model_writer=buffer, model_type="unigram",
        vocab_size=SPIECE_PIECES, hard_vocab_limit=False, character_coverage=1.0,
        required_chars="".join(_alphabet()),
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="nmt_nfkc", byte_fallback=False, shuffle_input_sentence=False,
        num_threads=1, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto.FromString(buffer.getvalue())
    for i in reversed(range(N_SENTINELS)):  # as seqio's SentencePieceVocabulary(extra_ids=100) appends them
        proto.pieces.add(piece=f"▁<extra_id_{i}>", score=0.0,
                         type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    (folder / "spiece.model").write_bytes(proto.SerializeToString())
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {**special, "extra_ids": 0, "additional_special_tokens": None, "tokenizer_file": None,
              "tokenizer_class": "T5Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


def build_model(kind: str, vocab_size: int, seed: int = 0):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "t5":
        config = tf.T5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                             num_decoder_layers=2, num_heads=4, tie_word_embeddings=False,
                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = tf.T5ForConditionalGeneration(config)
    elif kind in ("mt5", "mt5_spiece"):
        config = tf.MT5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                              num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                              tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                              eos_token_id=1)
        if kind == "mt5_spiece":
            config.tokenizer_class = "T5Tokenizer"  # as the hub's google/mt5-* config.json
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


def _silence_special_tokens(model, tokenizer):
    """Random tiny models tend to emit pad/EOS first; zero their output rows so that greedy text is non-empty.
    Also zeroed: sentinels that are ordinary pieces (`▁<extra_id_N>` of mt5_spiece; special tokens elsewhere)
    and the padding rows past the tokenizer's last id, which decode to nothing."""
    import torch

    ids = {i for i in tokenizer.all_special_ids if i is not None}
    ids |= {i for token, i in tokenizer.get_vocab().items() if _SENTINEL.match(token)}
    weight = model.get_output_embeddings().weight
    ids |= set(range(len(tokenizer), weight.shape[0]))
    with torch.no_grad():
        weight[sorted(ids)] = 0.0


def build_tiny_model(kind: str, output_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny `kind` model and its tokenizer to `output_dir` and return the folder."""
    output_dir = Path(output_dir)
    if kind == "mt5_spiece":  # the tokenizer files first: the model's size comes from the tokenizer they load
        from transformers import AutoTokenizer

        write_spiece_tokenizer(output_dir)
        tokenizer = AutoTokenizer.from_pretrained(output_dir)
        vocab_size = -(-len(tokenizer) // 128) * 128
    else:
        tokenizer = build_tokenizer(kind)
        vocab_size = len(tokenizer)
    model = build_model(kind, vocab_size=vocab_size, seed=seed)
    _silence_special_tokens(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    if kind != "mt5_spiece":  # a transformers 5 tokenizer would save a tokenizer.json, which the hub's lack
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
