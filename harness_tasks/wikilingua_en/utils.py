"""lm-eval hooks of the fmtspec_wikilingua_en tasks: the shared code of harness_tasks/, bound to data key `wikilingua_en`."""

from harness_tasks.lm_eval_hooks import bind

load, doc_to_text, doc_to_target, process_results = bind("wikilingua_en")
