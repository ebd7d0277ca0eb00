"""lm-eval hooks of the fmtspec_rte task: the shared code of harness_tasks/, bound to data key `rte`."""

from harness_tasks.lm_eval_hooks import bind

load, doc_to_text, doc_to_target, process_results = bind("rte")
