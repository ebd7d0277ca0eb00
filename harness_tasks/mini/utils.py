"""lm-eval hooks of the fmtspec_mini_* tasks: the shared code of harness_tasks/ bound to each miniature
task's data key (its templates and data live in harness_tasks/mini_world.py)."""

from harness_tasks.lm_eval_hooks import bind

load_copy, doc_to_text_copy, doc_to_target_copy, process_results_copy = bind("mini_copy")
load_reverse, doc_to_text_reverse, doc_to_target_reverse, process_results_reverse = bind("mini_reverse")
load_sort, doc_to_text_sort, doc_to_target_sort, process_results_sort = bind("mini_sort")
load_translate, doc_to_text_translate, doc_to_target_translate, process_results_translate = bind("mini_translate")
load_qa, doc_to_text_qa, doc_to_target_qa, process_results_qa = bind("mini_qa")
load_summarize, doc_to_text_summarize, doc_to_target_summarize, process_results_summarize = bind("mini_summarize")
load_review, doc_to_text_review, doc_to_target_review, process_results_review = bind("mini_review")
load_is_sorted, doc_to_text_is_sorted, doc_to_target_is_sorted, process_results_is_sorted = bind("mini_is_sorted")
load_target, doc_to_text_target, doc_to_target_target, process_results_target = bind("mini_target")
