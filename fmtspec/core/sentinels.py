"""T5's sentinel tokens `<extra_id_N>`, found in either of the hub's tokenizer layouts.

T5 v1.1 and Flan-T5 tokenizers add them as tokens named `<extra_id_N>` (tokenizer_config `extra_ids: 100`).
mT5's `spiece.model` holds them itself, as its last 100 pieces named `▁<extra_id_N>` (`extra_ids: 0`; seqio's
SentencePieceVocabulary adds them so), which `convert_tokens_to_ids("<extra_id_0>")` maps to `<unk>`."""

from __future__ import annotations


def sentinel_ids(tokenizer, count: int = 2) -> list[int] | None:
    """Ids of sentinels 0..count-1, or None when the tokenizer lacks one."""
    vocab = tokenizer.get_vocab()
    ids = []
    for n in range(count):
        found = [vocab[t] for t in (f"<extra_id_{n}>", f"\u2581<extra_id_{n}>") if t in vocab]
        if not found:
            return None
        ids.append(found[0])
    return ids
