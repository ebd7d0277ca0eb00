"""A stateless stop-string check for `generate`, on the text the generation will finally be decoded to."""

from __future__ import annotations

import torch
import transformers

MARGIN = 8  # tokens decoded before the span a stop string can occupy (see `StopStrings`)
CONTEXT = "abcdef"  # a text to render tokens after (`TokenText`), as transformers' StopStringCriteria does
_UNSEEN = object()


class TokenText:
    """The texts each token adds at the end of a decoded text, worked out on first sight of the token and
    kept: its text alone (at the start of a text) and after a fixed context (elsewhere: `decode(context +
    [t])` past the longest common start with `decode(context)`). None (any text) where one holds a
    replacement character: a piece of a UTF-8 character, which the next bytes complete into any character.
    Empty where the token adds nothing (EOS, which `decode` cuts at; a special token it skips). `decode` is
    the final text's decoder.

    Appending a token to a row changes its text at the end only: the token's text is added, possibly joined
    to what is there (a space dropped before punctuation, byte pieces completed to a character). So a stop
    string that the row's text did not hold and now holds ends inside the text the token added: that text,
    up to where the stop string ends, is a suffix of the stop string or ends with it (`can_end_in`). Byte
    tokens of a decoder that renders a broken byte sequence as replacement characters (ByteFallback) add one
    after an unfinished character: `StopStrings` decodes every row for a stop string holding one."""

    def __init__(self, decode, context: list[int]):
        self.decode = decode
        self.context = list(context)
        self.base = decode(self.context)
        self._texts: dict[int, tuple[str, ...] | None] = {}
        self.may_end: dict[tuple[str, ...], dict[int, bool]] = {}  # StopStrings' answers, per set of stop strings

    def texts(self, token: int) -> tuple[str, ...] | None:
        found = self._texts.get(token, _UNSEEN)
        if found is _UNSEEN:
            after = self.decode([*self.context, token])
            common = next((i for i, (a, b) in enumerate(zip(after, self.base)) if a != b),
                          min(len(after), len(self.base)))
            texts = tuple(dict.fromkeys((self.decode([token]), after[common:])))
            found = self._texts[token] = None if any("\ufffd" in text for text in texts) else texts
        return found


def can_end_in(stop: str, text: str) -> bool:
    """Whether `stop` can end inside `text` added to the end of a text: some start of `text` ends with `stop`
    or is a suffix of it (the rest of `stop` then lies before `text`)."""
    return any(stop.endswith(text[max(0, end - len(stop)):end]) for end in range(1, len(text) + 1))


class StopStrings(transformers.StoppingCriteria):
    """Row i of `input_ids` is done when the text of its generated tokens, `decode(row[start:])`, contains a
    stop string; `decode` is the final text's decoder, so a row stops only where lm-eval will cut it.

    Stateless: under beam search row i holds a different hypothesis at every step, and transformers checks
    the 2 * num_beams candidates of each input, so neither the rows nor their number stay the same between
    calls. `start` is where the generated tokens begin: the input width (decoder-only given `input_ids`), 0
    (given `inputs_embeds`) or 1 (after an encoder-decoder's decoder start token). Only the last
    max(len(stop)) + MARGIN tokens are decoded: a stop string of L characters lies within L tokens, and the
    margin keeps it off the first decoded token, whose text can differ at a word boundary. A tail whose text
    holds a stop string, or a replacement character, is checked again on the row's whole generated text: a
    tail can begin inside a run of byte tokens, and a ByteFallback decoder (Llama's) renders a run that is not
    valid UTF-8 as a whole as replacement characters, so the tail alone can show a stop string the text lacks
    (`<0xE3><0x68>`: "h" alone, "\ufffd\ufffd" whole) or miss one the text has (a CJK run cut mid-character).

    With `token_text` (a `TokenText` of the same `decode`), only the rows whose last token's text a stop
    string can end in are decoded (on the host, at every step): a stop string that appeared with the last
    token ends in that token's text (see `TokenText`). The others are not done. Where that answer
    differs from decoding them, a row holding a stop string that did not come with its last token, the row
    extends a hypothesis already found done: greedy and sampling keep a finished row finished, and beam
    search has scored a done candidate out (-1e9) and stored it among the finished, so only a hypothesis that
    can no longer win is judged otherwise. transformers' `StopStringCriteria` does not flag such a row either.

    Against transformers' `StopStringCriteria` (`generate(stop_strings=..., tokenizer=...)`, the tests'
    reference): a stop string ending in the last token stops a row in both, also inside that token. There
    one must overlap the last token, here one anywhere in the tail counts; checked every step, only an
    already finished hypothesis can hold an earlier one, and generate has set it aside (beam search stores
    it among the finished), so the returned sequences agree. There the prompt and special tokens are matched
    too, here only the generated text as decoded: a stop string across the prompt's end stops only there,
    and lm-eval would not cut the text at it either.
    """

    def __init__(self, stops: list[str], decode, start: int, token_text: TokenText | None = None):
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.decode = decode
        self.start = int(start)
        self.tail = max((len(s) for s in self.stops), default=0) + MARGIN
        # a stop string with a replacement character can come from a byte token after an unfinished character,
        # which some decoders (ByteFallback) render as one, unlike alone or after the context: every row, then
        self.token_text = None if any("\ufffd" in stop for stop in self.stops) else token_text
        self._may_end = {} if self.token_text is None else self.token_text.may_end.setdefault(self.stops, {})

    def may_end(self, token: int) -> bool:
        """Whether a row whose last token is `token` can have come to hold a stop string with it (without a
        `token_text`: always, every row is decoded)."""
        if self.token_text is None:
            return True
        found = self._may_end.get(token)
        if found is None:
            texts = self.token_text.texts(token)
            found = texts is None or any(can_end_in(stop, text) for text in texts for stop in self.stops)
            self._may_end[token] = found
        return found

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [False] * input_ids.shape[0]
        if self.stops and input_ids.shape[1] > self.start:
            rows = list(range(input_ids.shape[0]))
            if self.token_text is not None:  # one column to the host instead of every row's tail
                rows = [i for i, token in enumerate(input_ids[:, -1].tolist()) if self.may_end(token)]
            if rows:
                tail_start = max(self.start, input_ids.shape[1] - self.tail)
                tails = input_ids[:, tail_start:] if len(rows) == len(done) else input_ids[rows, tail_start:]
                for i, row in zip(rows, tails.tolist(), strict=True):
                    text = self.decode(row)
                    found = any(s in text for s in self.stops)
                    if found or "\ufffd" in text:  # the row's whole text decides (see the class's docstring)
                        text = self.decode(input_ids[i, self.start:].tolist())
                        found = any(s in text for s in self.stops)
                    done[i] = found
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
