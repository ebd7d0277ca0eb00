"""Makes the stock `lm_eval` command see fmtspec's model and tasks, with no fork and no --include_path.

lm-eval 0.4.13 reads no plugin entry points. fmtspec.pth (installed at the root of site-packages)
calls `install()` at interpreter start. It only puts a small finder on `sys.meta_path`, which imports
nothing; when lm-eval itself is imported, the finder runs two hooks after lm-eval's own modules:

- after `lm_eval.models` (which fills the model registry with the built-in models): register
  `promot_hf` as a lazy placeholder, so nothing of fmtspec or torch is imported until it is used;
- after `lm_eval.tasks.manager`: every `TaskManager(include_defaults=True)` also indexes
  `harness_tasks/`, after the built-in tasks and before the user's `--include_path`.

Set FMTSPEC_LM_EVAL_PLUGIN=0 to turn this off (then use `--include_path <site-packages>/harness_tasks`).
The hook steps aside where lm-eval loads plugins itself: an already registered `promot_hf` is left
alone, and a TaskManager whose module reads entry points gets no extra path.
"""

import os
import sys

MODEL_NAME = "promot_hf"
MODEL_TARGET = "model_adapters.promot_hf:PromotHFLM"
OFF_SWITCH = "FMTSPEC_LM_EVAL_PLUGIN"


def tasks_dir():
    """The folder of fmtspec's lm-eval task YAMLs, found without importing the package."""
    from importlib.util import find_spec

    spec = find_spec("harness_tasks")
    return list(spec.submodule_search_locations)[0]


def _register_model(module):
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _add_task_path(module):
    import functools
    import inspect

    manager_cls = module.TaskManager
    if "entry_points" in inspect.getsource(module):  # lm-eval loads task plugins itself
        return
    original_init = manager_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        if include_defaults:
            user_paths = [] if include_path is None else (
                list(include_path) if isinstance(include_path, (list, tuple)) else [include_path])
            ours = tasks_dir()
            if all(os.path.realpath(str(p)) != os.path.realpath(ours) for p in user_paths):
                include_path = [ours, *user_paths]
        original_init(self, verbosity, include_path, include_defaults, metadata)

    manager_cls.__init__ = __init__


_AFTER_IMPORT = {"lm_eval.models": _register_model, "lm_eval.tasks.manager": _add_task_path}


class _LmEvalFinder:
    """A meta-path finder that finds nothing itself: it decorates the real loader of two lm-eval modules."""

    fmtspec_hook = True

    def find_spec(self, fullname, path=None, target=None):
        hook = _AFTER_IMPORT.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "fmtspec_hook", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            if os.environ.get(OFF_SWITCH, "1") != "0":
                hook(module)

        spec.loader.exec_module = exec_module
        return spec

    def invalidate_caches(self):
        pass


def install():
    """Idempotent: a venv may process .pth files twice."""
    if not any(getattr(f, "fmtspec_hook", False) for f in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalFinder())
