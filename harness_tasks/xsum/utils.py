"""lm-eval hooks of the fmtspec_xsum tasks: the shared code of harness_tasks/, bound to data key `xsum`."""

from harness_tasks.lm_eval_hooks import bind

load, doc_to_text, doc_to_target, process_results = bind("xsum")
