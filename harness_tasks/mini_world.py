"""The miniature world: a ~110-word language with 8 pretraining tasks of different output formats and a
True/False target task absent from pretraining, so that format specialization shows on a CPU in minutes.

    python -m harness_tasks.mini_world --output DIR --seed 0          # DIR/mini_<task>/{train,validation,test}.jsonl
    python -m harness_tasks.mini_world --model DIR                    # a random BART + the world's tokenizer

Every task is an fmtspec task `fmtspec_mini_<task>` (harness_tasks/mini/). Its records carry the fields
its template needs and `answers` (a one-element list, as in WebQuestions), so the same files serve the
lm-eval tasks and the trainers (`FMTSPEC_DATA_DIR=DIR`). Without FMTSPEC_DATA_DIR the tasks read the
default world (seed 0), generated once into a cache folder (`default_world()`).

The rules (vocabulary, cipher, which words are animals) are fixed; the seed only draws the records.
Records are drawn one after another per task, duplicates skipped; the first ones are the test split, then
validation, then train: the splits are disjoint, and test/validation do not depend on the train size.
Everything is space-separated words (punctuation too), so the word-level tokenizer is lossless; the
few-shot delimiter "\n\n" between a demonstration and the query is a token of its own.

The world's BART (`bart_config`; `random_model` draws its weights) is what the trainers' `model: mini:bart`
builds (trainers.models), and the config of fmtspec.tiny_models' `bart` kind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

from fmtspec.core.atomic_files import atomic_folder, write_text_atomically
from fmtspec.core.errors import FmtspecError
from harness_tasks.records import DATA_DIR_ENV, read_jsonl

VERSION = 1  # bump when a rule or template changes: cached worlds are keyed by it
SPLITS = ("test", "validation", "train")  # drawing order
DEFAULT_SIZES = {"train": 8000, "validation": 200, "test": 200}
DEFAULT_SEED = 0
EVAL_SPLIT, FEWSHOT_SPLIT = "test", "train"  # what lm-eval scores / where its demonstrations come from
CACHE_ENV = "FMTSPEC_CACHE"
MANIFEST = "mini_world.json"

# ---- the vocabulary -------------------------------------------------------------------------------------

NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen").split()
ANIMALS = "cat dog cow pig hen fox owl bee ant rat bat elk yak emu ram eel".split()
THINGS = "red blue green pink gray gold sky sea sun moon star rain snow wind tree rock".split()
WORDS = ANIMALS + THINGS  # the content words of copy, reverse, translate, summarize and the target
PEOPLE = "ann bob cid dan eve fay gus hal".split()
OBJECTS = "cup key hat pen box map bag toy".split()
POSITIVE = "great nice tasty fresh warm clean".split()
NEGATIVE = "awful rude cold slow dirty stale".split()
TEMPLATE_WORDS = ("copy reverse sort translate article summary review question answer what does have has is "
                  "it good Is true or false True False yes no maybe the list sorted an animal : . ?").split()
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<s>")  # ids 0-3, as bart_config (below) expects
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's fewshot_delimiter and stop string: a token, or the model cannot see it

# A fixed word-for-word cipher: a derangement of WORDS (no word translates to itself).
_cycle = random.Random("mini-world-cipher").sample(WORDS, len(WORDS))
CIPHER = {word: _cycle[(i + 1) % len(_cycle)] for i, word in enumerate(_cycle)}  # each word -> the next one

NLI = "{premise} question : {hypothesis} Is it true or false ? answer :"  # the RTE template, in words


def vocabulary() -> list[str]:
    """Every token of the world: special tokens first, the few-shot delimiter, then each word once, in a
    fixed order."""
    words = [FEWSHOT_DELIMITER] + TEMPLATE_WORDS + NUMBERS + WORDS + PEOPLE + OBJECTS + POSITIVE + NEGATIVE
    if len(set(words)) != len(words):
        raise AssertionError("a word is listed twice in the miniature vocabulary")
    return list(SPECIAL_TOKENS) + words


# ---- the tasks: one generator of records and one template each -------------------------------------------

def _words(rng: random.Random, low: int, high: int, pool=WORDS) -> list[str]:
    return [rng.choice(pool) for _ in range(rng.randint(low, high))]


def _numbers(rng: random.Random) -> list[str]:
    return rng.sample(NUMBERS, rng.randint(3, 6))


def _by_number(words):
    return sorted(words, key=NUMBERS.index)


def _copy(rng):
    words = _words(rng, 3, 6)
    return {"input": " ".join(words), "answers": [" ".join(words)]}


def _reverse(rng):
    words = _words(rng, 3, 6)
    return {"input": " ".join(words), "answers": [" ".join(reversed(words))]}


def _sort(rng):
    numbers = _numbers(rng)
    return {"input": " ".join(numbers), "answers": [" ".join(_by_number(numbers))]}


def _translate(rng):
    words = _words(rng, 3, 6)
    return {"input": " ".join(words), "answers": [" ".join(CIPHER[w] for w in words)]}


def _qa(rng):
    n = rng.randint(2, 4)
    people, objects = rng.sample(PEOPLE, n), rng.sample(OBJECTS, n)
    asked = rng.randrange(n)
    facts = " ".join(f"{p} has {o} ." for p, o in zip(people, objects))
    return {"facts": facts, "person": people[asked], "answers": [objects[asked]]}


def _summarize(rng):
    sentences = [_words(rng, 2, 4) for _ in range(rng.randint(2, 4))]
    return {"article": " ".join(" ".join(s) + " ." for s in sentences),
            "answers": [" ".join(s[0] for s in sentences)]}


def _review(rng):
    """yes: more positive than negative words; no: more negative; maybe: as many of each."""
    label = rng.choice(("yes", "no", "maybe"))
    if label == "maybe":
        pos = neg = rng.randint(1, 2)
    else:
        low, high = rng.randint(0, 1), rng.randint(2, 3)
        pos, neg = (high, low) if label == "yes" else (low, high)
    words = [rng.choice(POSITIVE) for _ in range(pos)] + [rng.choice(NEGATIVE) for _ in range(neg)]
    words += [rng.choice(OBJECTS) for _ in range(rng.randint(0, 2))]
    rng.shuffle(words)
    return {"review": " ".join(words), "answers": [label]}


def _is_sorted(rng):
    """True/False in the pretraining mixture: is the list of number words in ascending order?"""
    numbers = _numbers(rng)
    label = rng.random() < 0.5
    if label:
        numbers = _by_number(numbers)
    elif numbers == _by_number(numbers):
        numbers[0], numbers[1] = numbers[1], numbers[0]
    return {"premise": " ".join(numbers), "hypothesis": "the list is sorted .", "answers": [str(label)]}


def _target(rng):
    """The fine-tuning target, absent from pretraining: True iff the hypothesis word is an animal (a fixed
    half of the content words); the premise is a distractor."""
    label = rng.random() < 0.5
    word = rng.choice(ANIMALS if label else THINGS)
    return {"premise": " ".join(_words(rng, 3, 5)), "hypothesis": f"the {word} is an animal .",
            "answers": [str(label)]}


def doc_to_target(doc: dict) -> str:
    return doc["answers"][0]


def _nli(doc: dict) -> str:
    return NLI.format(premise=doc["premise"], hypothesis=doc["hypothesis"])


def _command(verb: str) -> Callable[[dict], str]:
    return lambda doc: f"{verb} : {doc['input']} answer :"


class Template(NamedTuple):
    """The text before the answer; `prefix`: the word that opens every example of the task, where the
    post-processing cuts a generation that starts a next example (as `harness_tasks.formats.Format`)."""

    doc_to_text: Callable[[dict], str]
    prefix: str | None = None


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "copy": _copy, "reverse": _reverse, "sort": _sort, "translate": _translate, "qa": _qa,
    "summarize": _summarize, "review": _review, "is_sorted": _is_sorted, "target": _target,
}
TEMPLATES: dict[str, Template] = {
    "copy": Template(_command("copy"), prefix="copy"),
    "reverse": Template(_command("reverse"), prefix="reverse"),
    "sort": Template(_command("sort"), prefix="sort"),
    "translate": Template(_command("translate"), prefix="translate"),
    "qa": Template(lambda d: f"{d['facts']} question : what does {d['person']} have ? answer :"),
    "summarize": Template(lambda d: f"article : {d['article']} summary :", prefix="article"),
    "review": Template(lambda d: f"review : {d['review']} is it good ? answer :", prefix="review"),
    "is_sorted": Template(_nli),
    "target": Template(_nli),
}
PRETRAIN_TASKS = ("copy", "reverse", "sort", "translate", "qa", "summarize", "review", "is_sorted")
TARGET_TASK = "target"
TASKS = PRETRAIN_TASKS + (TARGET_TASK,)


def data_key(task: str) -> str:
    """`copy` -> `mini_copy`: the folder under the data dir and the lm-eval task name without `fmtspec_`."""
    return f"mini_{task}"


def task_name(task: str) -> str:
    return f"fmtspec_{data_key(task)}"


# ---- generation -----------------------------------------------------------------------------------------

def _check_sizes(sizes: dict[str, int]) -> dict[str, int]:
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise FmtspecError(f"unknown split {sorted(unknown)[0]!r}; the miniature world has {', '.join(SPLITS)}")
    sizes = {**DEFAULT_SIZES, **sizes}
    if any(not isinstance(n, int) or n < 1 for n in sizes.values()):
        raise FmtspecError(f"split sizes must be positive integers, got {sizes}")
    return sizes


def generate_task(task: str, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """{split: records} of one task: deterministic by (task, seed), no record in two splits."""
    if task not in GENERATORS:
        raise FmtspecError(f"unknown miniature task {task!r}; known: {', '.join(TASKS)}")
    sizes = _check_sizes(sizes or {})
    rng = random.Random(f"mini-world/{VERSION}/{task}/{seed}")  # str seeds are stable across processes
    seen, splits = set(), {}
    budget = 50 * sum(sizes.values())
    for split in SPLITS:
        records = []
        while len(records) < sizes[split]:
            budget -= 1
            if budget < 0:
                raise FmtspecError(f"miniature task {task!r} has too few distinct records for {sizes}")
            record = GENERATORS[task](rng)
            key = TEMPLATES[task].doc_to_text(record)  # the input decides the answer
            if key not in seen:
                seen.add(key)
                records.append(record)
        splits[split] = records
    return splits


def generate(seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None,
             tasks: tuple[str, ...] = TASKS) -> dict[str, dict[str, list[dict]]]:
    """{task: {split: records}} for every task of the world."""
    return {task: generate_task(task, seed, sizes) for task in tasks}


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def write_world(output: str | os.PathLike, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> Path:
    """Write `output/mini_<task>/<split>.jsonl` for every task and `output/mini_world.json`; returns output."""
    output = Path(output)
    sizes = _check_sizes(sizes or {})
    for task, splits in generate(seed, sizes).items():
        for split, records in splits.items():
            _write_jsonl(output / data_key(task) / f"{split}.jsonl", records)
    manifest = {"version": VERSION, "seed": seed, "sizes": sizes, "tasks": list(TASKS)}
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return output


def cache_dir() -> Path:
    """$FMTSPEC_CACHE, else $XDG_CACHE_HOME/fmtspec, else ~/.cache/fmtspec."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fmtspec"


def default_world(seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> Path:
    """The folder of the world (seed, sizes), generated on first use into the cache; safe to call from
    concurrent processes (atomic_folder: each writes a private folder, the first complete one wins)."""
    sizes = _check_sizes(sizes or {})
    tag = hashlib.sha256(json.dumps([VERSION, seed, sizes], sort_keys=True).encode()).hexdigest()[:10]
    folder = cache_dir() / "mini_world" / f"v{VERSION}-seed{seed}-{tag}"
    if (folder / MANIFEST).is_file():
        return folder
    try:
        with atomic_folder(folder, replace=False) as tmp:
            write_world(tmp, seed, sizes)
    except OSError as exc:
        raise FmtspecError(f"cannot write the miniature world into {folder} ({exc.strerror or exc}); set "
                           f"${CACHE_ENV} to a writable folder, or $FMTSPEC_DATA_DIR to a generated "
                           "world") from None
    return folder


# ---- reading the data, scoring generations (the lm-eval tasks' hooks) ------------------------------------

def data_dir() -> Path:
    """$FMTSPEC_DATA_DIR when set (as for every fmtspec task), else the default world in the cache."""
    return Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else default_world()


def load_split(task: str, split: str) -> list[dict]:
    """The records of one split: `<data dir>/mini_<task>/<split>.jsonl`."""
    if task not in GENERATORS:
        raise FmtspecError(f"unknown miniature task {task!r}; known: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise FmtspecError(f"the miniature world has no split {split!r}; splits: {', '.join(SPLITS)}")
    rows = read_jsonl(data_dir() / data_key(task) / f"{split}.jsonl")
    if not rows:
        raise FmtspecError(f"{data_dir() / data_key(task) / split}.jsonl is empty")
    return rows


# ---- the tokenizer and the model ------------------------------------------------------------------------

def build_tokenizer(model_max_length: int = 512):
    """The world's word-level tokenizer as an ordinary fast HF tokenizer: one token per word, split on
    whitespace; the encoder input ends with </s> (as fmtspec's trainers and T5 do). "\n\n" is an added
    token, matched before the whitespace split, so a 1-shot context keeps its delimiter as one id; the
    decoder joins words with spaces and the delimiter with none, so decode(encode(x)) == x."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_tokens([AddedToken(FEWSHOT_DELIMITER, normalized=False, special=False)])  # its id from `vocab`
    tok.decoder = decoders.Sequence([  # "a b \n\n c" -> "a b\n\nc"
        decoders.WordPiece(prefix="##", cleanup=False),  # a space before every token but the first
        decoders.Fuse(),
        decoders.Replace(f" {FEWSHOT_DELIMITER}", FEWSHOT_DELIMITER),
        decoders.Replace(f"{FEWSHOT_DELIMITER} ", FEWSHOT_DELIMITER),
    ])
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                            special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>", bos_token="<s>")


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


def model_config():
    """`bart_config` on the world's vocabulary and its special tokens' ids."""
    vocab = vocabulary()
    pad, eos, _, bos = (vocab.index(t) for t in SPECIAL_TOKENS)
    return bart_config(len(vocab), pad_id=pad, eos_id=eos, bos_id=bos)


def random_model(mconf, seed: int):
    """(model, tokenizer): a BART of `mconf` (`model_config()`, resized or not) with random weights drawn
    from `seed`, and the world's tokenizer; its generation config pads, stops and starts as `mconf` does."""
    import torch
    from transformers import BartForConditionalGeneration

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(mconf)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = mconf.decoder_start_token_id
    return model, tokenizer


def build_model(output: str | os.PathLike, seed: int = 0) -> Path:
    """A randomly initialized miniature BART (`model_config()`) with the world's tokenizer, saved as an
    ordinary HF model folder: the starting point of pretraining."""
    model, tokenizer = random_model(model_config(), seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


# ---- command line ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness_tasks.mini_world", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="write the data: OUTPUT/mini_<task>/<split>.jsonl")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=DEFAULT_SIZES[split], metavar="N",
                            help=f"records per task in {split} (default {DEFAULT_SIZES[split]})")
    parser.add_argument("--validation-as-test", action="store_true",
                        help="write the validation split as the test split too: the lm-eval tasks then score "
                             "validation, for choosing settings without looking at test (docs/miniature.md)")
    parser.add_argument("--tokenizer", help="write the word-level tokenizer to this folder")
    parser.add_argument("--model", help="write a random-weight miniature BART and its tokenizer to this folder")
    args = parser.parse_args(argv)
    if not (args.output or args.tokenizer or args.model):
        parser.error("give --output, --tokenizer and/or --model")
    try:
        if args.output:
            sizes = {split: getattr(args, split) for split in SPLITS}
            folder = write_world(args.output, args.seed, sizes)
            if args.validation_as_test:
                for task in TASKS:
                    shutil.copyfile(folder / data_key(task) / "validation.jsonl", folder / data_key(task) / "test.jsonl")
            print(f"miniature world (seed {args.seed}{', test = validation' if args.validation_as_test else ''}): "
                  f"{folder}")
        if args.tokenizer:
            build_tokenizer().save_pretrained(args.tokenizer)
            print(f"tokenizer: {args.tokenizer}")
        if args.model:
            print(f"random miniature BART: {build_model(args.model, args.seed)}")
    except FmtspecError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
