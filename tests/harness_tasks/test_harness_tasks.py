"""fmtspec tasks without lm-eval's runner: templates, label mappings, post-processing, metrics against
sacrebleu / rouge-score / sklearn, data sources (hub ids checked without network), the examples API."""

import csv
import json
from pathlib import Path

import pytest

from fmtspec.core.errors import FmtspecError
from harness_tasks import catalog
from harness_tasks.data import DATA, hash_split, load_split, read_jsonl
from harness_tasks.examples import Example, load_docs, primary_metric, render, score
from harness_tasks.formats import FORMATS, MCD_CATEGORIES, cut_articles
from harness_tasks.metrics import (corpus_bleu, corpus_bleu_zh, first_word, macro_f1, normalize_answer,
                                   postprocess)

FIXTURES = Path(__file__).resolve().parents[2] / "harness_tasks" / "fixtures"
ALL_KEYS = [t.key for t in catalog.SUITE + catalog.TARGETS + catalog.TEACH_TWICE]


# Table 4 of the ProMoT paper and the teach-twice prefixes, written out again here (independently of
# formats.py) as the expected query text and answer of a record.
def _expected(key, d):
    nli3 = "{} question: {} Is it true or false or neither? answer:"
    if key == "rte":
        return f"{d['premise']} question: {d['hypothesis']} Is it true or false? answer:", ["True", "False"][d["label"]]
    if key == "cb":
        return nli3.format(d["premise"], d["hypothesis"]), ["True", "False", "Neither"][d["label"]]
    if key == "snli":
        return nli3.format(d["premise"], d["hypothesis"]), ["True", "Neither", "False"][d["label"]]
    if key == "wic":
        return (f"{d['sentence1']} {d['sentence2']} question: The word {d['word']} is used in the same way in the "
                f"two sentences. Is it true or False? answer:", ["False", "True"][d["label"]])
    if key == "openbookqa":
        c = d["choices"]["text"]
        return f"Q: {d['question_stem']} A) {c[0]} B) {c[1]} C) {c[2]} D) {c[3]} A:", d["answerKey"]
    if key == "triviaqa":
        return f"Q: {d['question']} A:", d["answer"]["value"]
    if key == "webqs":
        return f"Q: {d['question']} A:", d["answers"][0]
    if key.startswith("wmt"):
        lang = key[-2:]
        name = {"de": "German", "ro": "Romanian", "fr": "French"}[lang]
        return f"Translate English to {name}: {d['translation']['en']}", d["translation"][lang]
    if key == "xsum":
        return f"Article: {d['document']} One sentence summary:", d["summary"]
    if key == "wikilingua_en":
        return f"Article: {d['source']} One sentence summary:", d["target"]
    if key == "a2t":
        return "abstract to title: " + " ".join(d["abstract"].split()), " ".join(d["title"].split())
    if key == "alt_en_zh":
        return f"translate English to Chinese: {d['translation']['en']}", d["translation"]["zh"]
    if key == "mcd_reviews":
        labels = [c for c in MCD_CATEGORIES if c in d["policies_violated"].split("\n")]
        return f"multi-label classification: {d['review']}", ", ".join(labels) or "none"
    raise AssertionError(key)


def task_names(key):
    info = catalog.BY_KEY[key]
    return [f"fmtspec_{key}_{n}shot" for n in catalog.SHOTS] if info in catalog.SUITE else [f"fmtspec_{key}"]


# ---- templates -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ALL_KEYS)
def test_render_matches_the_paper_template(offline_data, key):
    spec = DATA[key]
    for shots in (0, 1, 4):
        examples = render(task_names(key)[0], spec.eval_split, shots=shots, limit=3)
        pool = load_docs(f"fmtspec_{key}", spec.fewshot_split)
        demos_expected = {" ".join(_expected(key, d)) for d in pool}
        for ex in examples:
            query, target = _expected(key, ex.doc)
            parts = ex.context.split("\n\n")
            assert parts[-1] == query and ex.target == target
            assert len(parts) == shots + 1
            assert all(p in demos_expected for p in parts[:-1])  # "{text} {answer}", from the few-shot split


def test_fixtures_exist_for_every_key_and_split(offline_data):
    assert set(DATA) == set(catalog.BY_KEY)
    for key, spec in DATA.items():
        for split in spec.splits:
            assert len(load_docs(f"fmtspec_{key}", split)) >= 6, (key, split)


def test_cb_and_snli_label_ids_differ(offline_data):
    cb = {d["label"]: FORMATS["cb"].doc_to_target(d) for d in load_docs("fmtspec_cb_1shot", "validation")}
    snli = {d["label"]: FORMATS["snli"].doc_to_target(d) for d in load_docs("fmtspec_snli", "test")}
    assert cb == {0: "True", 1: "False", 2: "Neither"}
    assert snli == {0: "True", 1: "Neither", 2: "False"}
    raw = [json.loads(line) for line in (offline_data / "snli" / "test.jsonl").read_text().splitlines()]
    assert any(r["label"] == -1 for r in raw)  # the fixture has a -1 row ...
    assert len(load_docs("fmtspec_snli", "test")) == len(raw) - 1  # ... which the task drops


def test_wic_and_rte_labels(offline_data):
    wic = {d["label"]: FORMATS["wic"].doc_to_target(d) for d in load_docs("fmtspec_wic_1shot", "train")}
    rte = {d["label"]: FORMATS["rte"].doc_to_target(d) for d in load_docs("fmtspec_rte", "train")}
    assert wic == {1: "True", 0: "False"} and rte == {0: "True", 1: "False"}


def test_summaries_are_cut_to_1024_words_without_a_tokenizer():
    words = [f"w{i}" for i in range(1500)]
    docs = cut_articles("xsum", [{"document": "\n".join(words), "summary": "s"}, {"document": "a  b\nc", "summary": "s"}])
    assert FORMATS["xsum"].doc_to_text(docs[0]) == "Article: " + "\n".join(words[:1024]) + " One sentence summary:"
    assert FORMATS["xsum"].doc_to_text(docs[1]) == "Article: a  b\nc One sentence summary:"
    assert cut_articles("rte", docs) is docs  # no article: nothing to cut


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_articles_are_cut_to_1024_tokens_of_the_model(tiny_models, offline_data, kind):
    """The paper's rule (1,024 tokens of the model's tokenizer), checked against the plain definition: the
    cut article is a prefix of the original whose tokens are the original's first 1,024 (the last one may
    split in two when it ends inside a word)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[kind])
    raw = list(load_split("xsum", "test"))
    cut = load_docs("fmtspec_xsum_1shot", "test", tokenizer=tok)
    ids = [tok(d["document"], add_special_tokens=False).input_ids for d in raw]
    assert max(len(i) for i in ids) > 1024 > len(ids[0])  # the fixture has a long article and short ones
    for before, after, full in zip(raw, cut, ids, strict=True):
        assert before["document"].startswith(after["document"]) and after["summary"] == before["summary"]
        got = tok(after["document"], add_special_tokens=False).input_ids
        if len(full) <= 1024:
            assert got == full
        else:
            assert got[:1023] == full[:1023] and 1024 <= len(got) <= 1025
        if len(full) > 1024:  # by tokens, not by the 1,024 words of the fallback
            assert len(after["document"].split()) < 1024 < len(before["document"].split())


def test_render_training_split_never_shows_a_doc_as_its_own_demo(offline_data):
    examples = render("fmtspec_rte", "train", shots=4, seed=7)
    for ex in examples:
        own = " ".join(_expected("rte", ex.doc))
        assert own not in ex.context.split("\n\n")[:-1]
    again = render("fmtspec_rte", "train", shots=4, seed=7)
    assert [e.context for e in again] == [e.context for e in examples]  # deterministic by seed
    other = render("fmtspec_rte", "train", shots=4, seed=8)
    assert [e.context for e in other] != [e.context for e in examples]


# ---- post-processing -----------------------------------------------------------------------------------

def test_postprocess_sentinels():
    assert postprocess("junk <extra_id_0> Paris <extra_id_1> more junk", "Q:") == "Paris"
    assert postprocess("<extra_id_0> True<extra_id_1>") == "True"
    assert postprocess("Paris <extra_id_1> tail", "Q:") == "Paris"  # no start sentinel: keep the start
    assert postprocess("no sentinels at all", "Q:") == "no sentinels at all"


def test_postprocess_cuts_at_the_second_prefix():
    assert postprocess("Paris Q: What is the capital of Peru? A: Lima", "Q:") == "Paris"
    assert postprocess("Q: echo A: Paris Q: next", "Q:") == "Q: echo A: Paris"
    assert postprocess("Das ist gut. Translate English to German: next", "Translate") == "Das ist gut."
    assert postprocess("A summary. Article: another one", "Article:") == "A summary."
    assert postprocess("<extra_id_0> Paris Q: next <extra_id_1>", "Q:") == "Paris"
    assert postprocess("Paris\n\nQ: next", "Q:") == "Paris"  # lm-eval's stop sequence


def test_first_word_decides_classification():
    assert first_word("True. Because it says so") == "True"
    assert first_word("  B) a wooden spoon") == "B"
    assert first_word("") == ""
    docs = [{"premise": "p", "hypothesis": "h", "label": lab, "idx": 0} for lab in (0, 1, 2, 0)]
    out = score("fmtspec_cb_1shot", ["true, clearly", "False.", "Neither one", "maybe True"], docs)
    assert out["acc"] == 0.75 and out["fmt_label_share"] == 0.75 and out["score"] == 75.0
    obqa = {"question_stem": "q", "choices": {"text": list("wxyz"), "label": list("ABCD")}, "answerKey": "A"}
    assert score("fmtspec_openbookqa", ["A) w"], [obqa])["acc"] == 1.0
    assert score("fmtspec_openbookqa", ["a w"], [obqa])["acc"] == 0.0  # lower-case `a` is an article


# ---- metrics against reference implementations ----------------------------------------------------------

PREDS = ["The cat sat on the mat.", "A dog ran in the park today", "", "Prices rose sharply last month."]
REFS = ["The cat is on the mat.", "The dog runs in the park.", "Nothing here.", "Prices rose sharply last month."]


def test_bleu_equals_sacrebleu(offline_data):
    import sacrebleu

    assert corpus_bleu(list(zip(PREDS, REFS))) == sacrebleu.corpus_bleu(PREDS, [REFS]).score
    docs = [{"translation": {"en": "x", "de": r}} for r in REFS]
    out = score("fmtspec_wmt16_en_de_4shot", [f"<extra_id_0> {p} <extra_id_1>" for p in PREDS], docs)
    assert out["bleu"] == out["score"] == out["norm_avg"] == sacrebleu.corpus_bleu(PREDS, [REFS]).score
    zh_pred, zh_ref = ["我们错过了末班火车。", "孩子们在花园玩。"], ["我们错过了回家的末班火车。", "孩子们在花园里玩。"]
    expected = sacrebleu.corpus_bleu(zh_pred, [zh_ref], tokenize="zh").score
    assert corpus_bleu_zh(list(zip(zh_pred, zh_ref))) == expected
    assert expected != sacrebleu.corpus_bleu(zh_pred, [zh_ref]).score  # the tokenizer matters
    alt = [{"translation": {"en": "x", "zh": r}} for r in zh_ref]
    assert score("fmtspec_alt_en_zh", zh_pred, alt)["bleu"] == expected


def test_rouge_equals_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ref = [scorer.score(r, p) for p, r in zip(PREDS, REFS)]
    docs = [{"document": "d", "summary": r, "id": "1"} for r in REFS]
    out = score("fmtspec_xsum_1shot", PREDS, docs)
    assert out["rouge2"] == pytest.approx(sum(s["rouge2"].fmeasure for s in ref) / len(ref), abs=1e-12)
    assert out["score"] == pytest.approx(100 * out["rouge2"]) and out["rouge2"] > 0
    arxiv = [{"abstract": "a", "title": r} for r in REFS]
    a2t = score("fmtspec_a2t", PREDS, arxiv)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert a2t[name] == pytest.approx(sum(s[name].fmeasure for s in ref) / len(ref), abs=1e-12)
    import sacrebleu

    assert a2t["bleu"] == sacrebleu.corpus_bleu(PREDS, [REFS]).score


def test_exact_match_is_squad_normalised_over_aliases():
    assert normalize_answer("The  Tagus River!") == "tagus river"
    doc = {"question": "q", "answer": {"aliases": ["Tagus River", "Rio Tejo"], "value": "Tagus"}}
    outs = ["the Tagus.", "rio tejo", "Tagus river Q: next question", "Douro"]
    assert score("fmtspec_triviaqa_1shot", outs, [doc] * 4)["exact_match"] == 0.75
    web = {"question": "q", "answers": ["Mary Shelley", "Mary Wollstonecraft Shelley"]}
    assert score("fmtspec_webqs_4shot", ["mary shelley", "Shelley"], [web] * 2)["exact_match"] == 0.5


def test_multilabel_acc_and_f1_equal_sklearn():
    import numpy as np

    pytest.importorskip("sklearn", minversion="1.3")  # zero_division=nan: undefined F1s leave the mean
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    golds = ["RudeService\nOrderProblem", "na", "BadFood", "SlowService\nBadFood", "Cost"]
    outs = ["OrderProblem, RudeService", "none", "BadFood, Filthy", "slowservice", "<extra_id_0> Cost <extra_id_1>"]
    docs = [{"review": "r", "policies_violated": g} for g in golds]
    out = score("fmtspec_mcd_reviews", outs, docs)
    assert out["acc"] == 3 / 5
    gold_sets = [[c for c in MCD_CATEGORIES if c in g.split("\n")] for g in golds]
    pred_sets = [["OrderProblem", "RudeService"], [], ["BadFood", "Filthy"], ["SlowService"], ["Cost"]]
    mlb = MultiLabelBinarizer(classes=list(MCD_CATEGORIES))
    expected = f1_score(mlb.fit_transform(gold_sets), mlb.transform(pred_sets), average="macro",
                        zero_division=np.nan)
    assert out["f1"] == pytest.approx(expected) and 0 < out["f1"] < 1
    assert macro_f1([((), ()), ((), ())]) == 1.0  # nothing to find, nothing found


def test_every_task_reports_its_metrics(offline_data):
    for name in catalog.ALL_TASKS:
        info, _ = catalog.parse_task_name(name)
        docs = load_docs(name, DATA[info.key].eval_split)[:3]
        out = score(name, ["True"] * len(docs), docs)
        assert {info.metric, "score", "norm_avg", "fmt_label_share"} <= set(out)
        assert out["fmt_label_share"] == 1.0 and primary_metric(name) == info.metric
        assert out["score"] == pytest.approx(out[info.metric] * info.scale)


# ---- data sources ----------------------------------------------------------------------------------------

HUB = {  # key: (path, config, revision, scored split, few-shot split), as the issue pins them
    "cb": ("aps/super_glue", "cb", None, "validation", "train"),
    "wic": ("aps/super_glue", "wic", None, "validation", "train"),
    "rte": ("aps/super_glue", "rte", None, "validation", "train"),
    "snli": ("stanfordnlp/snli", "plain_text", None, "test", "validation"),
    "openbookqa": ("allenai/openbookqa", "main", None, "test", "validation"),
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext", None, "validation", "train"),
    "webqs": ("stanfordnlp/web_questions", None, None, "test", "train"),
    "wmt14_en_fr": ("wmt/wmt14", "fr-en", None, "test", "validation"),
    "wmt16_en_de": ("wmt/wmt16", "de-en", None, "test", "validation"),
    "wmt16_en_ro": ("wmt/wmt16", "ro-en", None, "test", "validation"),
    "xsum": ("EdinburghNLP/xsum", None, "refs/convert/parquet", "test", "validation"),
    "wikilingua_en": ("GEM/wiki_lingua", "en", "refs/convert/parquet", "test", "validation"),
    "alt_en_zh": ("mutiyama/alt", "alt-parallel", None, "test", "validation"),
}


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` answered from the fixtures, recording what would have been downloaded."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        key = next((k for k, v in HUB.items() if v[:3] == (path, name, revision)), None)
        if path == "librarian-bots/arxiv-metadata-snapshot":
            rows = [r for s in ("train", "validation", "test") for r in read_jsonl(FIXTURES / "a2t" / f"{s}.jsonl")]
            rows += [dict(rows[0], id=f"9999.{i}", categories="math.CO") for i in range(5)]
            return datasets.Dataset.from_list(rows)
        assert key is not None, (path, name, revision)
        return datasets.Dataset.from_list(read_jsonl(FIXTURES / key / f"{split}.jsonl"))

    monkeypatch.delenv("FMTSPEC_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("key", sorted(HUB))
def test_hub_ids_configs_and_splits(fake_hub, key):
    from harness_tasks.lm_eval_hooks import bind

    path, name, revision, eval_split, fewshot_split = HUB[key]
    dataset = bind(key)[0]()  # what the lm-eval task loads
    assert set(dataset) == {eval_split, fewshot_split}
    assert sorted(fake_hub) == sorted({(path, name, s, revision) for s in (eval_split, fewshot_split)})
    assert (DATA[key].eval_split, DATA[key].fewshot_split) == (eval_split, fewshot_split)


def test_arxiv_is_cs_ai_split_by_id_hash(fake_hub):
    splits = {s: load_docs("fmtspec_a2t", s) for s in ("train", "validation", "test")}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(ids) == len(set(ids)) == 24  # every cs.AI fixture record once; the math.CO rows are gone
    for split, rows in splits.items():
        assert all(hash_split(r["id"], 20) == split and "cs.AI" in r["categories"].split() for r in rows)
    assert {c[:3] for c in fake_hub} == {("librarian-bots/arxiv-metadata-snapshot", None, "train")}


def test_mcd_reviews_from_the_crowdflower_csv(monkeypatch, tmp_path):
    rows = [r for s in ("train", "validation", "test") for r in read_jsonl(FIXTURES / "mcd_reviews" / f"{s}.jsonl")]
    rows[0]["review"] = "The cashier’s attitude was rude — café closed."  # cp1252 characters
    path = tmp_path / "McDonalds-Yelp-Sentiment-DFE.csv"
    with open(path, "w", encoding="cp1252", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.delenv("FMTSPEC_DATA_DIR", raising=False)
    monkeypatch.delenv("FMTSPEC_MCD_CSV", raising=False)
    with pytest.raises(FmtspecError, match="FMTSPEC_MCD_CSV"):
        load_docs("fmtspec_mcd_reviews", "test")
    monkeypatch.setenv("FMTSPEC_MCD_CSV", str(path))
    loaded = {s: load_docs("fmtspec_mcd_reviews", s) for s in ("train", "validation", "test")}
    judged = [r for r in rows if r["policies_violated"]]
    assert sum(map(len, loaded.values())) == len(judged) < len(rows)  # unjudged rows dropped
    for split, docs in loaded.items():
        assert all(hash_split(d["_unit_id"], 8) == split for d in docs)
    assert rows[0]["review"] in [d["review"] for docs in loaded.values() for d in docs]


def test_clear_errors(offline_data, tmp_path, monkeypatch):
    with pytest.raises(FmtspecError, match="unknown fmtspec task"):
        render("fmtspec_nope")
    with pytest.raises(FmtspecError, match="no split"):
        load_docs("fmtspec_webqs_1shot", "validation")
    with pytest.raises(FmtspecError, match="no gold label"):
        render("fmtspec_cb_1shot", "test")  # the hub's CB test labels are -1
    with pytest.raises(FmtspecError, match="2 predictions for 1 docs"):
        score("fmtspec_rte", ["True", "False"], [{"label": 0}])
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"_unit_id,review,policies_violated\n1,\x81,na\n")  # 0x81: no cp1252 character
    monkeypatch.delenv("FMTSPEC_DATA_DIR")
    monkeypatch.setenv("FMTSPEC_MCD_CSV", str(bad_csv))
    with pytest.raises(FmtspecError, match="not the cp1252 CrowdFlower CSV"):
        load_docs("fmtspec_mcd_reviews", "train")
    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(tmp_path))
    with pytest.raises(FmtspecError, match="missing data file"):
        load_docs("fmtspec_rte", "train")
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text('{"premise": "p"\n')
    with pytest.raises(FmtspecError, match="not a JSON record"):
        load_docs("fmtspec_rte", "train")


def test_examples_api_shape(offline_data):
    ex = render("fmtspec_wmt14_en_fr", "validation", limit=2)
    assert len(ex) == 2 and all(isinstance(e, Example) for e in ex)
    assert ex[0].context == "Translate English to French: " + ex[0].doc["translation"]["en"]
    assert ex[0].target == ex[0].doc["translation"]["fr"]
