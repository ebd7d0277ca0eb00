"""lm-eval hooks of the fmtspec_wmt16_en_de tasks: the shared code of harness_tasks/, bound to data key `wmt16_en_de`."""

from harness_tasks.lm_eval_hooks import bind

load, doc_to_text, doc_to_target, process_results = bind("wmt16_en_de")
