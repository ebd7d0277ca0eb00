"""A stateless stop-string check for `generate`, on the text the generation will finally be decoded to."""

from __future__ import annotations

import torch
import transformers

MARGIN = 8  # tokens decoded before the span a stop string can occupy (see `StopStrings`)


class StopStrings(transformers.StoppingCriteria):
    """Row i of `input_ids` is done when the text of its generated tokens, `decode(row[start:])`, contains a
    stop string; `decode` is the final text's decoder, so a row stops only where lm-eval will cut it.

    Stateless: under beam search row i holds a different hypothesis at every step, and transformers checks
    the 2 * num_beams candidates of each input, so neither the rows nor their number stay the same between
    calls. `start` is where the generated tokens begin: the input width (decoder-only given `input_ids`), 0
    (given `inputs_embeds`) or 1 (after an encoder-decoder's decoder start token). Only the last
    max(len(stop)) + MARGIN tokens are decoded: a stop string of L characters lies within L tokens, and the
    margin keeps it off the first decoded token, whose text can differ at a word boundary.

    Against transformers' `StopStringCriteria` (`generate(stop_strings=..., tokenizer=...)`, the tests'
    reference): a stop string ending in the last token stops a row in both, also inside that token. There
    one must overlap the last token, here one anywhere in the tail counts; checked every step, only an
    already finished hypothesis can hold an earlier one, and generate has set it aside (beam search stores
    it among the finished), so the returned sequences agree. There the prompt and special tokens are matched
    too, here only the generated text as decoded: a stop string across the prompt's end stops only there,
    and lm-eval would not cut the text at it either.
    """

    def __init__(self, stops: list[str], decode, start: int):
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.decode = decode
        self.start = int(start)
        self.tail = max((len(s) for s in self.stops), default=0) + MARGIN

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [False] * input_ids.shape[0]
        if self.stops and input_ids.shape[1] > self.start:
            tail_start = max(self.start, input_ids.shape[1] - self.tail)
            for i, row in enumerate(input_ids[:, tail_start:].tolist()):
                text = self.decode(row)
                done[i] = any(s in text for s in self.stops)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
