"""The miniature world's generator, tokenizer and model: deterministic by seed, disjoint splits, every
answer right by the task's rule (re-derived here independently), a lossless word-level tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError
from harness_tasks import mini_world as mw

SMALL = {"train": 300, "validation": 40, "test": 40}


@pytest.fixture(scope="module")
def world():
    return mw.generate(seed=0, sizes=SMALL)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_by_seed(tmp_path):
    a = _tree(mw.write_world(tmp_path / "a", seed=3, sizes=SMALL))
    b = _tree(mw.write_world(tmp_path / "b", seed=3, sizes=SMALL))
    c = _tree(mw.write_world(tmp_path / "c", seed=4, sizes=SMALL))
    assert a == b
    expected = {f"mini_{t}/{s}.jsonl" for t in mw.TASKS for s in mw.SPLITS} | {mw.MANIFEST}
    assert set(a) == set(c) == expected
    assert all(a[name] != c[name] for name in expected - {mw.MANIFEST})
    manifest = json.loads(a[mw.MANIFEST])
    assert manifest["seed"] == 3 and manifest["sizes"] == SMALL and manifest["version"] == mw.VERSION


def test_splits_are_disjoint_and_sized(world):
    for task, splits in world.items():
        assert {s: len(r) for s, r in splits.items()} == SMALL, task
        inputs = {s: {mw.TEMPLATES[task].doc_to_text(r) for r in rows} for s, rows in splits.items()}
        assert all(len(inputs[s]) == SMALL[s] for s in inputs), f"{task}: a record repeats within a split"
        assert not inputs["train"] & inputs["validation"], task
        assert not inputs["train"] & inputs["test"], task
        assert not inputs["validation"] & inputs["test"], task


def test_test_and_validation_do_not_depend_on_the_train_size():
    small = mw.generate_task("qa", seed=1, sizes={"train": 10, "validation": 5, "test": 5})
    large = mw.generate_task("qa", seed=1, sizes={"train": 500, "validation": 5, "test": 5})
    assert small["test"] == large["test"] and small["validation"] == large["validation"]
    assert large["train"][:10] == small["train"]


def _rule(task: str, doc: dict) -> str:
    """Each task's answer, computed from the record's input alone."""
    words = doc.get("input", "").split()
    if task == "copy":
        return " ".join(words)
    if task == "reverse":
        return " ".join(words[::-1])
    if task == "sort":
        return " ".join(sorted(words, key=mw.NUMBERS.index))
    if task == "translate":
        return " ".join(mw.CIPHER[w] for w in words)
    if task == "qa":
        facts = dict(tuple(f.split(" has ")) for f in doc["facts"].rstrip(" .").split(" . "))
        return facts[doc["person"]]
    if task == "summarize":
        return " ".join(s.split()[0] for s in doc["article"].rstrip(" .").split(" . "))
    if task == "review":
        review = doc["review"].split()
        pos = sum(w in mw.POSITIVE for w in review)
        neg = sum(w in mw.NEGATIVE for w in review)
        return "yes" if pos > neg else "no" if neg > pos else "maybe"
    if task == "is_sorted":
        numbers = [mw.NUMBERS.index(w) for w in doc["premise"].split()]
        return str(numbers == sorted(numbers))
    if task == "target":
        return str(doc["hypothesis"].split()[1] in mw.ANIMALS)
    raise AssertionError(task)


def test_every_answer_follows_its_task_rule(world):
    for task, splits in world.items():
        for doc in splits["train"] + splits["test"]:
            assert doc["answers"] == [_rule(task, doc)], (task, doc)


def test_label_tasks_are_balanced(world):
    for task, labels in [("is_sorted", {"True", "False"}), ("target", {"True", "False"}),
                         ("review", {"yes", "no", "maybe"})]:
        answers = [d["answers"][0] for d in world[task]["train"]]
        assert set(answers) == labels
        assert min(answers.count(a) for a in labels) > 0.6 * len(answers) / len(labels), task


def test_cipher_is_a_derangement_of_the_content_words():
    assert sorted(mw.CIPHER) == sorted(mw.WORDS) == sorted(mw.CIPHER.values())
    assert all(source != target for source, target in mw.CIPHER.items())


def test_tokenizer_is_lossless_on_every_record(world, tmp_path):
    from transformers import AutoTokenizer

    mw.build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # an ordinary HF tokenizer folder
    assert 100 <= len(tok) <= 130 and len(tok) == len(mw.vocabulary())
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id] == [0, 1, 2, 3]
    for task, splits in world.items():
        for doc in splits["test"]:
            for text in (mw.TEMPLATES[task].doc_to_text(doc), doc["answers"][0]):
                ids = tok(text).input_ids
                assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids, text
                assert tok.decode(ids, skip_special_tokens=True) == text


def test_fewshot_delimiter_is_its_own_token(tmp_path, monkeypatch):
    """The 1-shot contexts lm-eval builds ("demo target\n\nquery") keep the delimiter as one token, and
    decode back unchanged (lm-eval's stop string "\n\n" and the post-processing rely on it)."""
    from transformers import AutoTokenizer

    from harness_tasks.examples import render

    mw.write_world(tmp_path / "world", seed=0, sizes={"train": 30, "validation": 5, "test": 10})
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(tmp_path / "world"))
    mw.build_tokenizer().save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    delimiter = tok.convert_tokens_to_ids(mw.FEWSHOT_DELIMITER)
    assert delimiter not in (tok.unk_token_id, None) and tok.convert_ids_to_tokens(delimiter) == "\n\n"
    with_delimiter = tok("copy : cat answer : cat\n\ncopy : dog answer :").input_ids
    without = tok("copy : cat answer : cat copy : dog answer :").input_ids
    assert with_delimiter == without[:6] + [delimiter] + without[6:]
    for task in mw.TASKS:
        for example in render(mw.task_name(task), "test", shots=1):
            ids = tok(example.context, add_special_tokens=False).input_ids
            assert ids.count(delimiter) == 1 == example.context.count("\n\n") and tok.unk_token_id not in ids
            assert tok.decode(ids) == example.context
            # a generation that goes on into a next example decodes with lm-eval's stop string in it
            answer = tok(example.target + "\n\n", add_special_tokens=False).input_ids
            assert answer[-1] == delimiter and tok.decode(answer) == example.target + "\n\n"


def test_random_model_has_the_issue_size_and_generates_words(tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = mw.build_model(tmp_path / "mini", seed=0)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSeq2SeqLM.from_pretrained(folder)
    config = model.config
    assert config.model_type == "bart" and config.vocab_size == len(tok)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.encoder_ffn_dim) == (128, 3, 3, 4, 512)
    assert config.decoder_start_token_id == tok.bos_token_id and config.pad_token_id == tok.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    assert 1.2e6 < n_params < 1.8e6
    enc = tok("copy : cat dog answer :", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= 5 and out[0, 0] == config.decoder_start_token_id
    assert torch.equal(out, AutoModelForSeq2SeqLM.from_pretrained(mw.build_model(tmp_path / "again", seed=0))
                       .generate(**enc, max_new_tokens=4, do_sample=False))


def test_command_line(tmp_path, capsys):
    assert mw.main(["--output", str(tmp_path / "w"), "--seed", "2", "--train", "20", "--validation", "5",
                    "--test", "5", "--tokenizer", str(tmp_path / "tok")]) == 0
    rows = (tmp_path / "w" / "mini_sort" / "validation.jsonl").read_text().splitlines()
    assert len(rows) == 5 and json.loads(rows[0])["answers"]
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert mw.main(["--output", str(tmp_path / "bad"), "--train", "0"]) == 1
    assert "positive integers" in capsys.readouterr().out
    assert not (tmp_path / "bad").exists()


def test_unknown_task_or_split_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FmtspecError, match="unknown miniature task 'nope'"):
        mw.generate_task("nope")
    with pytest.raises(FmtspecError, match="no split 'dev'"):
        mw.load_split("copy", "dev")
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(tmp_path))
    with pytest.raises(FmtspecError, match="missing data file .*mini_copy/test.jsonl"):
        mw.load_split("copy", "test")


def test_without_data_dir_the_default_world_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.delenv("FMTSPEC_DATA_DIR", raising=False)
    monkeypatch.setenv("FMTSPEC_CACHE", str(tmp_path))
    monkeypatch.setattr(mw, "DEFAULT_SIZES", SMALL)  # keep the test fast; same code path
    folder = mw.data_dir()
    assert folder.parent == tmp_path / "mini_world" and json.loads((folder / mw.MANIFEST).read_text())["seed"] == 0
    stamp = (folder / "mini_copy" / "train.jsonl").stat().st_mtime_ns
    assert mw.load_split("copy", "test") == mw.generate_task("copy", 0, SMALL)["test"]
    assert mw.data_dir() == folder and (folder / "mini_copy" / "train.jsonl").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "mini_world").iterdir() if p.name.startswith(".tmp-")]


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("FMTSPEC_DATA_DIR", raising=False)
    monkeypatch.setenv("FMTSPEC_CACHE", str(blocker))
    with pytest.raises(FmtspecError, match="cannot write the miniature world into .*FMTSPEC_CACHE"):
        mw.default_world(sizes=SMALL)
