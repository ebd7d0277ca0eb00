"""The plain definition of greedy decoding, the reference every generation test compares with.

One full forward pass per new token, no KV cache, one example at a time, the soft prompt prepended to the
input embeddings (the encoder's for encoder-decoder models): nothing but the model's forward. Each step also
records the gap between its two highest logits. Where that gap is below MARGIN the step is a near tie: another
correct implementation (other CPU kernels, padding in a batch, a KV cache, another library version) may pick
the other token, and everything after it may differ. So a comparison requires equality up to the first near
tie of each row and stops there, and it requires enough rows to be decisive that it cannot pass vacuously.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Float32 rounding between two correct code paths moves the tiny models' logits by about 1e-6 (their logits
# are O(0.1-1)); a top-2 gap of 1e-4 is therefore decided the same way by any of them.
MARGIN = 1e-4


@dataclass
class Greedy:
    tokens: list[int]  # the new tokens, up to and including EOS when it came
    gaps: list[float]  # top-1 minus top-2 logit at each step

    def decisive_steps(self) -> int:
        """How many leading steps every correct implementation takes the same way."""
        return next((i for i, gap in enumerate(self.gaps) if gap < MARGIN), len(self.gaps))


@torch.no_grad()
def greedy(model, ids: list[int], max_new: int, prompt: torch.Tensor | None = None) -> Greedy:
    """Greedy decoding of `max_new` tokens at most (ending at EOS) by full forward passes."""
    embed = model.get_input_embeddings()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    context = embed(torch.tensor([ids]))
    if prompt is not None:
        context = torch.cat([prompt.to(context.dtype).unsqueeze(0), context], dim=1)
    tokens, gaps = [], []
    for _ in range(max_new):
        if model.config.is_encoder_decoder:
            decoder = torch.tensor([[model.config.decoder_start_token_id, *tokens]])
            logits = model(inputs_embeds=context, attention_mask=torch.ones(context.shape[:2], dtype=torch.long),
                           decoder_input_ids=decoder, use_cache=False).logits[0, -1]
        else:
            new = embed(torch.tensor([tokens], dtype=torch.long)) if tokens else context[:, :0]
            logits = model(inputs_embeds=torch.cat([context, new], dim=1), use_cache=False).logits[0, -1]
        top = torch.topk(logits.double(), 2)
        tokens.append(int(top.indices[0]))
        gaps.append(float(top.values[0] - top.values[1]))
        if tokens[-1] in eos:
            break
    return Greedy(tokens, gaps)


def cut(text: str, stops) -> str:
    """The text before the first stop string (lm-eval's `until`)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def expected_text(ref: Greedy, decode, stops) -> str:
    return cut(decode(ref.tokens), stops)


def assert_generations_match(ours: list[str], refs: list[Greedy], decode, stops, min_decisive: float = 0.5):
    """Each generated text equals its reference's, or, for a row with a near tie, agrees with it up to
    the tie; at least `min_decisive` of the rows must be decisive throughout (else the check is too weak)."""
    assert len(ours) == len(refs)
    decisive = 0
    for i, (text, ref) in enumerate(zip(ours, refs)):
        steps = ref.decisive_steps()
        if steps == len(ref.tokens):
            decisive += 1
            assert text == expected_text(ref, decode, stops), (i, text, ref)
            continue
        prefix = decode(ref.tokens[:steps])
        if cut(prefix, stops) != prefix:  # a stop string ended the text within the decisive steps
            assert text == cut(prefix, stops), (i, text, ref)
            continue
        # a stop string may begin inside the decisive prefix and end after the tie
        start = min((k for stop in stops if stop for k in range(len(prefix)) if stop.startswith(prefix[k:])),
                    default=len(prefix))
        assert text.startswith(prefix[:start]), (i, text, prefix, ref)
    assert decisive >= min_decisive * len(refs), f"only {decisive} of {len(refs)} reference rows are decisive"
