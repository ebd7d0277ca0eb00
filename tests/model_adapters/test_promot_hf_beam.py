"""Beam search with stop strings in promot_hf (`--gen_kwargs num_beams=4`, the paper's decoding).

Under beam search a row of `input_ids` holds a different hypothesis at each step and transformers checks the
stopping criteria on its 2 * num_beams candidates, so a stop check must judge each row by its own tokens. The
reference is transformers' own `generate(num_beams=4, stop_strings=..., tokenizer=...)` on the same inputs,
built here from the model folder and the PEFT prompt file, then cut at the first stop string as lm-eval cuts.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from greedy_reference import cut  # noqa: E402
# fixtures of test_promot_hf: `prompts` (two PEFT prompt-tuning folders per tiny model), `_one_thread` (autouse)
from test_promot_hf import _one_thread, prompts, qa_contexts  # noqa: E402,F401

MAX_NEW = 16
BEAMS = 4
CONTEXTS = 8  # two batches of 4


def contexts() -> list[str]:
    """The QA task's contexts and two more, of different lengths, so that a batch of 4 needs padding."""
    return qa_contexts() + ["Translate English to German: the river A:",
                            "The food was slow and the staff rude at the restaurant. One sentence summary:"]


class Reference:
    """transformers' beam search on the inputs promot_hf builds, made from the model folder alone."""

    def __init__(self, model_dir: Path, adapter: Path | None):
        import transformers
        from safetensors.torch import load_file

        self.tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        config = transformers.AutoConfig.from_pretrained(model_dir)
        self.seq2seq = config.is_encoder_decoder
        auto = transformers.AutoModelForSeq2SeqLM if self.seq2seq else transformers.AutoModelForCausalLM
        self.model = auto.from_pretrained(model_dir).eval()
        self.prompt = None
        if adapter is not None:
            n = json.loads((Path(adapter) / "adapter_config.json").read_text())["num_virtual_tokens"]
            self.prompt = load_file(str(Path(adapter) / "adapter_model.safetensors"))["prompt_embeddings"][:n]

    def order(self, texts: list[str]) -> list[int]:
        """The order lm-eval's Collator runs the requests in: longest first."""
        return sorted(range(len(texts)), key=lambda i: (-len(self.tok(texts[i]).input_ids), texts[i]))

    @torch.no_grad()
    def generate(self, texts: list[str], batch_size: int, stops: list[str] | None) -> list[str]:
        """Uncut texts in the order of `texts`, generated in promot_hf's batches and padding layout."""
        out = [None] * len(texts)
        order = self.order(texts)
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            for i, text in zip(batch, self._batch([texts[i] for i in batch], stops), strict=True):
                out[i] = text
        return out

    def _batch(self, texts, stops):
        tok, embed = self.tok, self.model.get_input_embeddings()
        rows = [tok(text).input_ids for text in texts]
        width = max(map(len, rows))
        ids, mask = [], []
        for row in rows:  # decoder-only: padded on the left; encoder: on the right
            pad = [tok.pad_token_id] * (width - len(row))
            ids.append(row + pad if self.seq2seq else pad + row)
            mask.append([1] * len(row) + [0] * len(pad) if self.seq2seq else [0] * len(pad) + [1] * len(row))
        ids, mask = torch.tensor(ids), torch.tensor(mask)
        if self.prompt is None:
            inputs, start = {"input_ids": ids}, 1 if self.seq2seq else width
        else:
            p = self.prompt.shape[0]
            vectors = self.prompt.unsqueeze(0).expand(len(rows), -1, -1)
            if self.seq2seq:  # [prompt, tokens, pad...]
                embeds, mask = torch.cat([vectors, embed(ids)], 1), torch.cat([torch.ones(len(rows), p).long(), mask], 1)
            else:  # [pad..., prompt, tokens]
                embeds = torch.stack([torch.cat([embed(r[:width - len(row)]), v, embed(r[width - len(row):])])
                                      for r, v, row in zip(ids, vectors, rows, strict=True)])
                mask = torch.stack([torch.cat([m[:width - len(row)], torch.ones(p + len(row)).long()])
                                    for m, row in zip(mask, rows, strict=True)])
            inputs, start = {"inputs_embeds": embeds}, 1 if self.seq2seq else 0
        extra = {"stop_strings": stops, "tokenizer": tok} if stops else {}
        out = self.model.generate(**inputs, attention_mask=mask, num_beams=BEAMS, do_sample=False,
                                  max_new_tokens=MAX_NEW, pad_token_id=tok.pad_token_id, **extra)
        return [self.decode(row[start:]) for row in out.tolist()]

    def decode(self, tokens: list[int]) -> str:
        if self.tok.eos_token_id in tokens:
            tokens = tokens[:tokens.index(self.tok.eos_token_id)]
        return self.tok.decode(tokens, skip_special_tokens=True)


def frequent_stops(texts: list[str]) -> list[list[str]]:
    """Stop-string sets that occur in the unconstrained beam outputs: the letter-only substrings of 1 to 3
    characters found in the most rows, and "\n". Neither can join a context's final ':' or the decoder start
    token into a stop string, where transformers' check, which reads the whole sequence, differs by design."""
    rows = collections.Counter()
    for text in texts:
        rows.update({text[i:i + n] for n in (1, 2, 3) for i in range(len(text) - n + 1) if text[i:i + n].isalpha()})
    ranked = sorted(rows, key=lambda sub: (-rows[sub], sub))
    best = {n: [sub for sub in ranked if len(sub) == n] for n in (1, 2, 3)}
    assert len(best[1]) >= 1 and len(best[2]) >= 3 and len(best[3]) >= 2, texts
    return [[best[3][0]], [best[2][0], best[2][1]], [best[3][1], best[1][0]], [best[2][2], "\n"]]


def promot(model_dir, adapter, batch_size):
    from model_adapters.promot_hf import PromotHFLM

    if adapter is None:
        return PromotHFLM(pretrained=str(model_dir), prompt="off", device="cpu", dtype="float32",
                          batch_size=batch_size)
    return PromotHFLM(pretrained=str(model_dir), soft_prompt=str(adapter), prompt="on", device="cpu",
                      dtype="float32", batch_size=batch_size)


def requests(texts, stops):
    from lm_eval.api.instance import Instance

    gen_kwargs = {"until": stops, "max_gen_toks": MAX_NEW, "do_sample": False, "num_beams": BEAMS}
    return [Instance("generate_until", {}, (text, gen_kwargs), i, ("promot_test_qa", i, 1))
            for i, text in enumerate(texts)]


@pytest.mark.parametrize("with_prompt", [False, True], ids=["bare", "prompt"])
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_beam_search_stop_strings_equal_transformers(kind, with_prompt, tiny_models, prompts):  # noqa: F811
    """promot_hf's texts equal transformers' `stop_strings` beam search, cut as lm-eval cuts, at batch 1 and 4
    (each against transformers at the same batches and padding). The old sticky per-slot check failed here."""
    model_dir = tiny_models[kind]
    adapter = prompts[kind][0] if with_prompt else None
    ref, texts = Reference(model_dir, adapter), contexts()
    stop_sets = frequent_stops(ref.generate(texts, 1, None))
    for batch_size in (1, 4):
        lm = promot(model_dir, adapter, batch_size)
        cut_rows = 0
        for stops in stop_sets:
            expected = ref.generate(texts, batch_size, stops)
            cut_rows += sum(cut(text, stops) != text for text in expected)
            ours = lm.generate_until(requests(texts, stops), disable_tqdm=True)
            assert ours == [cut(text, stops) for text in expected], (batch_size, stops)
        assert cut_rows >= CONTEXTS // 2, (batch_size, stop_sets)  # the stop strings do stop generations


# ---- the criterion itself ----


def _toy_decode(vocab):
    return lambda ids: "".join(vocab[i] for i in ids)


def test_stop_check_judges_each_row_by_its_own_tokens():
    """The old check kept a per-slot "done" flag: once slot 0 had held a stop string, every later hypothesis in
    that slot counted as stopped. Here each call reads the rows it is given, in whatever number."""
    from model_adapters.stop_strings import StopStrings

    vocab = {0: "<pad>", 1: "Q", 2: "a", 3: "b", 4: "c", 5: "xaby", 6: ":"}
    check = StopStrings(["ab", ""], _toy_decode(vocab), start=2)  # the first two tokens are the context

    def step(rows):
        return check(torch.tensor(rows), None).tolist()

    assert step([[1, 6, 2, 3], [1, 6, 4, 4]]) == [True, False]
    # the next step: slot 0 now holds another hypothesis, without "ab", and there are 2 * num_beams candidates
    assert step([[1, 6, 4, 4, 2], [1, 6, 2, 3, 4], [1, 6, 4, 2, 3], [1, 6, 4, 5, 4]]) == [False, True, True, True]
    assert step([[1, 6, 4, 5]]) == [True]  # a stop string inside the last token
    assert step([[1, 2, 3, 4]]) == [False]  # the context's "ab" is not generated text
    assert StopStrings([], _toy_decode(vocab), start=2)(torch.tensor([[1, 6, 2, 3]]), None).tolist() == [False]
    assert step([[1, 6]]) == [False]  # nothing generated yet


def test_stop_check_reads_only_the_tail():
    """Only the last max(len(stop)) + MARGIN tokens are decoded, enough for a stop string ending there; a tail
    that holds one is confirmed on the row's whole text (once: the row is then done)."""
    from model_adapters.stop_strings import MARGIN, StopStrings

    seen = []
    vocab = {0: "a", 1: "b", 2: "c"}

    def decode(ids):
        seen.append(len(ids))
        return _toy_decode(vocab)(ids)

    check = StopStrings(["abc", "b"], decode, start=0)
    assert check(torch.tensor([[0] * 30 + [0, 1, 2]]), None).tolist() == [True]
    assert check(torch.tensor([[0, 1, 2] + [0] * 30]), None).tolist() == [False]  # long ago: a finished row
    assert seen == [3 + MARGIN, 33, 3 + MARGIN]


@pytest.mark.parametrize("filtered", [False, True], ids=["every_row", "token_text"])
def test_stop_check_agrees_with_transformers_step_by_step(tiny_models, filtered):
    """Checked after every new token, as generate does, both checks stop a sequence at the same step, also
    where the stop string lies inside the last token rather than at the end of the text; with the TokenText
    filter (promot_hf's) as without."""
    import transformers
    from transformers.generation.stopping_criteria import StopStringCriteria

    from model_adapters.stop_strings import CONTEXT, StopStrings, TokenText

    tok = transformers.AutoTokenizer.from_pretrained(tiny_models["llama"])
    words = sorted(i for t, i in tok.get_vocab().items() if t.strip("▁").isalpha() or t in ("▁", ".", "\n"))
    gen = torch.Generator().manual_seed(0)
    stopped = inside = 0
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    token_text = TokenText(decode, tok.encode(CONTEXT, add_special_tokens=False)) if filtered else None
    for stop in [["an"], ["e", "th"], ["ion"], ["\n", "er"], ["or"]]:
        ours = StopStrings(stop, decode, start=0, token_text=token_text)
        theirs = StopStringCriteria(tok, stop)
        for _ in range(10):
            seq = [words[int(i)] for i in torch.randint(len(words), (12,), generator=gen)]
            for n in range(1, len(seq) + 1):
                ids = torch.tensor([seq[:n]])
                done = bool(ours(ids, None)[0])
                assert done == bool(theirs(ids, None)[0]), (stop, tok.convert_ids_to_tokens(seq[:n]))
                if done:
                    stopped += 1
                    inside += not any(tok.decode(seq[:n]).endswith(s) for s in stop)
                    break
    assert stopped >= 15 and inside >= 5, (stopped, inside)


# ---- the TokenText filter: rows decoded only where a stop string can have come ----


CORPUS = ("Grüße aus Köln, naïve café. Iași și București! 東京と大阪、そして京都。 Q: who? A: the river... "
          "“quotes” — and 'apostrophes' don't stop; it's 3.5 km (or 2,000 m).\n\nQ: what? A: 42\n")


def _byte_level_tokenizer():
    """GPT-2's layout: byte-level BPE (tokens that are pieces of a UTF-8 character), clean-up of spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS] * 4, trainers.BpeTrainer(
        vocab_size=380, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", clean_up_tokenization_spaces=True,
                                   clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)


def _byte_fallback_tokenizer():
    """Llama's layout: BPE on ▁-joined text with <0xNN> byte tokens for what it lacks, Strip of the first space."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizer
    trained.train_from_iterator([CORPUS.replace("東京", "")] * 4, trainers.BpeTrainer(  # some text only as bytes
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _decoders(tiny_models):
    """(name, token count, decode, context ids): promot_hf's own decoder on the tiny models (mT5 with its
    sentinels kept), and plain `decode` for the byte-level and byte-fallback tokenizers."""
    from model_adapters.promot_hf import PromotHFLM
    from model_adapters.stop_strings import CONTEXT

    for kind in ("t5", "mt5", "llama", "gpt2"):
        lm = PromotHFLM(pretrained=str(tiny_models[kind]), prompt="off", device="cpu", dtype="float32",
                        sentinel=str(kind == "mt5").lower())
        yield kind, len(lm.tokenizer), lm._decode_generation, lm.tokenizer.encode(CONTEXT, add_special_tokens=False)
    for name, tok in (("byte_level", _byte_level_tokenizer()), ("byte_fallback", _byte_fallback_tokenizer())):
        decode = lambda ids, tok=tok: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        yield name, len(tok), decode, tok.encode(CONTEXT, add_special_tokens=False)


def test_token_text_filter_never_hides_a_new_stop_string(tiny_models):
    """Random token sequences over the whole vocabulary (special tokens, sentinels, byte pieces included), each
    with a stop string taken from its own final text (1-3 characters: letters, spaces, punctuation, newlines,
    pieces of multi-byte characters), extended one token at a time as generate does: at the first step where
    decoding every row finds the stop string, the filtered check decodes that row and finds it too; before,
    neither stops. Most rows are not decoded at all."""
    from model_adapters.stop_strings import StopStrings, TokenText

    gen = torch.Generator().manual_seed(0)
    for name, n_tokens, decode, context in _decoders(tiny_models):
        token_text = TokenText(decode, context)
        found = decoded = steps = 0
        for _ in range(60):
            seq = torch.randint(n_tokens, (16,), generator=gen).tolist()
            text = decode(seq)
            if not text:
                continue
            at, length = int(torch.randint(len(text), (), generator=gen)), 1 + int(torch.randint(3, (), generator=gen))
            stops = [text[at:at + length]]
            every_row = StopStrings(stops, decode, start=0)
            filtered = StopStrings(stops, decode, start=0, token_text=token_text)
            for n in range(1, len(seq) + 1):
                ids = torch.tensor([seq[:n]])
                expected, got = bool(every_row(ids, None)[0]), bool(filtered(ids, None)[0])
                steps += 1
                decoded += filtered.may_end(seq[n - 1])
                assert got == expected, (name, stops, seq[:n], decode(seq[:n]))
                if expected:
                    found += 1
                    break
        assert found >= 40, (name, found)
        assert decoded < steps, (name, decoded, steps)


def test_token_text_sees_what_a_token_adds():
    """The texts a token adds: alone and after the context; None for a piece of a UTF-8 character; nothing
    for EOS (cut) or a special token (skipped). `can_end_in`: a stop string ending inside the added text."""
    from model_adapters.stop_strings import CONTEXT, TokenText, can_end_in

    tok = _byte_level_tokenizer()
    decode = lambda ids: tok.decode(ids[:ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids,  # noqa: E731
                                    skip_special_tokens=True)
    text = TokenText(decode, tok.encode(CONTEXT, add_special_tokens=False))
    (first_byte_of_o_umlaut,) = [i for t, i in tok.get_vocab().items() if t == "Ã"]  # "ö" is C3 B6
    assert text.texts(first_byte_of_o_umlaut) is None
    assert text.texts(tok.eos_token_id) == ("",)
    (space_q,) = [i for t, i in tok.get_vocab().items() if t == "ĠQ"]
    assert set(text.texts(space_q)) == {" Q"}
    assert can_end_in("Q:", "Q") is False and can_end_in("Q:", ":") and can_end_in("Q:", " Q:")
    assert can_end_in("\n\n", "\nder") and not can_end_in("\n\n", "der\n\u00e9")  # that "\n" follows "r"
    assert can_end_in("ab", "xaby") and can_end_in("ab", "bx")  # "a" before it
    assert not can_end_in("ab", "xa") and not can_end_in("ab", "")


@pytest.mark.parametrize("filtered", [False, True])
def test_a_tail_inside_a_run_of_byte_tokens_is_judged_on_the_whole_text(filtered):
    """ByteFallback (Llama) renders a run of byte tokens that is not valid UTF-8 as a whole as replacement
    characters: the last tokens alone can show a stop string the generated text lacks, or miss one it has. A row
    stops exactly when lm-eval's text of it (the whole generation, decoded) holds a stop string."""
    from model_adapters.stop_strings import CONTEXT, StopStrings, TokenText

    tok = _byte_fallback_tokenizer()
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    token_text = TokenText(decode, tok.encode(CONTEXT, add_special_tokens=False)) if filtered else None
    byte = lambda value: tok.convert_tokens_to_ids(f"<0x{value:02X}>")  # noqa: E731
    words = [w for w in tok.encode("the cat sat on a mat", add_special_tokens=False) if "h" not in decode([w])][:8]
    # <0xE3><0x68>: "h" in the last 9 tokens alone, two replacement characters in the whole text
    lone_h = [byte(0xE3), byte(0x68), *words]
    assert "h" in decode(lone_h[1:]) and "h" not in decode(lone_h)
    # a run of 3-byte characters then a newline: the last 9 tokens cut a character, the whole text is valid
    cjk = [*(byte(b) for b in "東京東京東京".encode()), byte(0x0A)]
    assert "\n" not in decode(cjk[-9:]) and decode(cjk).endswith("\n")
    for row, stop in ((lone_h, "h"), (cjk, "\n")):
        check = StopStrings([stop], decode, start=0, token_text=token_text)
        assert bool(check(torch.tensor([row]), None)[0]) == (stop in decode(row)), (stop, decode(row))

