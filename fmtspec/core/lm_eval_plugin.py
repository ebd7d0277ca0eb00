"""Makes the stock `lm_eval` command see fmtspec's model and tasks, with no fork and no --include_path.

lm-eval 0.4.13 reads no plugin entry points. fmtspec.pth (installed at the root of site-packages)
calls `install()` at interpreter start. It only puts a small finder on `sys.meta_path`, which imports
nothing; when lm-eval itself is imported, the finder runs two hooks after lm-eval's own modules:

- after `lm_eval.models` (which fills the model registry with the built-in models): register
  `promot_hf` as a lazy placeholder, so nothing of fmtspec or torch is imported until it is used;
- after `lm_eval.tasks.manager`: every `TaskManager(include_defaults=True)` also indexes
  `harness_tasks/`, after the built-in tasks and before the user's `--include_path`. The wrapper takes
  `*args, **kwargs` and binds them to lm-eval's own signature, so every argument (and any keyword a later
  lm-eval adds) reaches lm-eval unchanged but `include_path`.

Set FMTSPEC_LM_EVAL_PLUGIN=0 to turn this off (then use `--include_path <site-packages>/harness_tasks`).
A hook that fails (lm-eval's internals moved) logs a warning and leaves lm-eval as it is.
The hook steps aside where lm-eval loads plugins itself (pyproject declares the same targets as
`lm_eval.models` / `lm_eval.tasks` entry points), judged by what lm-eval does, not by its version or text:

- an already registered `promot_hf` is left alone;
- at the first TaskManager construction, lm-eval's own `__init__` is run once with no task folder at all
  (`include_defaults=False`, no `include_path`: milliseconds, no YAML to walk). If that manager lists
  `fmtspec_*` tasks, lm-eval read the `lm_eval.tasks` entry point itself, and TaskManager gets its own
  `__init__` back for the rest of the process;
- a TaskManager whose `__init__` has no `include_path` or `include_defaults` parameter is not wrapped.
"""

import os
import sys

MODEL_NAME = "promot_hf"
MODEL_TARGET = "model_adapters.promot_hf:PromotHFLM"
OFF_SWITCH = "FMTSPEC_LM_EVAL_PLUGIN"
TASK_PREFIX = "fmtspec_"  # every task and group of harness_tasks/


def tasks_dir():
    """The folder of fmtspec's lm-eval task YAMLs, found without importing the package."""
    from importlib.util import find_spec

    spec = find_spec("harness_tasks")
    return list(spec.submodule_search_locations)[0]


def _register_model(module):
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _indexes_fmtspec_itself(manager_cls, original_init) -> bool:
    """Whether lm-eval's own TaskManager, given no task folder, lists fmtspec's tasks (it reads entry points)."""
    probe = manager_cls.__new__(manager_cls)
    try:
        original_init(probe, include_defaults=False)
        return any(str(name).startswith(TASK_PREFIX) for name in probe.all_tasks)
    except Exception as exc:  # a TaskManager this probe does not fit: index harness_tasks/ as for 0.4.13
        import logging

        logging.getLogger(__name__).debug("fmtspec: cannot tell whether lm-eval reads task plugins (%r)", exc)
        return False


def _add_task_path(module):
    import functools
    import inspect

    manager_cls = module.TaskManager
    original_init = manager_cls.__init__
    try:
        signature = inspect.signature(original_init)
    except (TypeError, ValueError):
        return
    if not {"include_path", "include_defaults"} <= signature.parameters.keys():
        return  # an lm-eval that picks its task folders some other way: step aside rather than guess
    lm_eval_reads_plugins = None  # found at the first construction, not at import

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        nonlocal lm_eval_reads_plugins
        if lm_eval_reads_plugins is None:
            lm_eval_reads_plugins = _indexes_fmtspec_itself(manager_cls, original_init)
        if lm_eval_reads_plugins:
            manager_cls.__init__ = original_init
            return original_init(self, *args, **kwargs)
        try:
            bound = signature.bind_partial(self, *args, **kwargs)
        except TypeError:  # a call lm-eval itself refuses: let it say why
            return original_init(self, *args, **kwargs)
        if bound.arguments.get("include_defaults", signature.parameters["include_defaults"].default):
            include_path = bound.arguments.get("include_path")
            user_paths = [] if include_path is None else (
                list(include_path) if isinstance(include_path, (list, tuple)) else [include_path])
            ours = tasks_dir()
            if all(os.path.realpath(str(p)) != os.path.realpath(ours) for p in user_paths):
                bound.arguments["include_path"] = [ours, *user_paths]
        return original_init(*bound.args, **bound.kwargs)

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
                try:
                    hook(module)
                except Exception as exc:  # lm-eval's internals changed: lm-eval must still import and run
                    import logging

                    logging.getLogger(__name__).warning("fmtspec: lm-eval runs without fmtspec's %s hook (%s: %s)",
                                                        fullname, type(exc).__name__, exc)

        spec.loader.exec_module = exec_module
        return spec

    def invalidate_caches(self):
        pass


def install():
    """Idempotent: a venv may process .pth files twice."""
    if not any(getattr(f, "fmtspec_hook", False) for f in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalFinder())
