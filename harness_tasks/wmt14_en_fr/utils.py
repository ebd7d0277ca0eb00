"""lm-eval hooks of the fmtspec_wmt14_en_fr task: the shared code of harness_tasks/, bound to data key `wmt14_en_fr`."""

from harness_tasks.lm_eval_hooks import bind

load, doc_to_text, doc_to_target, process_results = bind("wmt14_en_fr")
