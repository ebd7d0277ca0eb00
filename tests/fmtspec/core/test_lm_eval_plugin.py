"""The plugin wiring: stock lm-eval sees promot_hf and the fmtspec tasks, and nothing else changes.

The checks of real lm-eval run in a fresh interpreter, since the hook acts when lm-eval is first imported;
the TaskManager wrapper is also checked on stand-ins for TaskManagers a later lm-eval might have."""

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fmtspec.core import lm_eval_plugin
from fmtspec.core.lm_eval_plugin import _add_task_path, tasks_dir

OFF = {"FMTSPEC_LM_EVAL_PLUGIN": "0"}


def _python(code, env=None, cwd=None, python=sys.executable, timeout=300):
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MODELS = ("import json, lm_eval.models; from lm_eval.api.registry import model_registry, get_model;"
          "get_model('hf'); print(json.dumps(sorted(model_registry.keys())))")


def test_promot_hf_is_added_to_the_builtin_models():
    with_plugin = _python(MODELS)
    without = _python(MODELS, env=OFF)
    assert set(with_plugin) - set(without) == {"promot_hf"}
    assert set(without) <= set(with_plugin) and "hf" in without


def test_get_model_on_an_empty_registry_still_finds_builtins_and_promot_hf():
    code = ("import json; from lm_eval.api.registry import get_model, model_registry;"
            "get_model('hf'); print(json.dumps(['hf' in model_registry, 'promot_hf' in model_registry,"
            " model_registry._objs['promot_hf'] if isinstance(model_registry._objs['promot_hf'], str) else 'class']))")
    assert _python(code) == [True, True, "model_adapters.promot_hf:PromotHFLM"]


def test_no_heavy_import_at_start_up_and_hook_is_idempotent():
    code = ("import json, sys, fmtspec.core.lm_eval_plugin as p; p.install(); p.install();"
            "print(json.dumps([sum(bool(getattr(f, 'fmtspec_hook', 0)) for f in sys.meta_path),"
            " [m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules]]))")
    assert _python(code) == [1, []]
    assert _python("import json, sys; print(json.dumps(any(getattr(f, 'fmtspec_hook', 0) for f in sys.meta_path)))",
                   env=OFF) is False


TASK_PATHS = ("import json; from lm_eval.tasks import TaskManager; from pathlib import Path\n"
              "def paths(**kw):\n"
              "    tm = TaskManager(include_defaults=False, **kw)\n"
              "    return sorted({str(Path(e.yaml_path).parent) for e in tm.task_index.values() if e.yaml_path})\n"
              "print(json.dumps([TaskManager.__init__.__wrapped__ is not None, paths(), paths(include_path=USER)]))")


def test_include_defaults_false_is_left_alone(tmp_path):
    user = tmp_path / "user_tasks"
    user.mkdir()
    (user / "mytask.yaml").write_text("task: my_local_task\ndataset_path: json\noutput_type: generate_until\n"
                                      "test_split: test\ndoc_to_text: x\ndoc_to_target: y\n")
    wrapped, plain, with_user = _python(TASK_PATHS.replace("USER", repr(str(user))))
    assert wrapped and plain == [] and with_user == [str(user)]


@pytest.mark.slow
def test_default_task_manager_sees_fmtspec_tasks_after_builtins_and_before_user_paths(tmp_path):
    user = tmp_path / "user_tasks"
    user.mkdir()
    # A user task that overrides an fmtspec task name must win: user paths come last.
    (user / "override.yaml").write_text("task: fmtspec_rte\ndataset_path: json\noutput_type: generate_until\n"
                                        "test_split: test\ndoc_to_text: x\ndoc_to_target: y\n")
    code = ("import json; from lm_eval.tasks import TaskManager\n"
            f"tm = TaskManager(include_path={str(user)!r})\n"
            "plain = TaskManager()\n"
            "print(json.dumps([str(tm.task_index['fmtspec_rte'].yaml_path), 'fmtspec_suite' in plain.all_groups,"
            " sorted(t for t in plain.all_tasks if not t.startswith('fmtspec_'))]))")
    override, has_suite, builtin_names = _python(code)
    assert Path(override).parent == user
    assert has_suite
    off_code = ("import json; from lm_eval.tasks import TaskManager;"
                "print(json.dumps(sorted(TaskManager().all_tasks)))")
    assert builtin_names == _python(off_code, env=OFF), "the plugin must not change lm-eval's own task set"


def test_tasks_dir_is_the_harness_tasks_package():
    assert Path(tasks_dir()) == Path(__file__).resolve().parents[3] / "harness_tasks"


@pytest.mark.slow
def test_wheel_installs_into_a_new_venv_and_lm_eval_sees_model_and_tasks(tmp_path):
    from fmtspec.wheel_venv import borrow_site_packages, build_wheel, install_wheel, make_venv, site_packages

    wheel = build_wheel(tmp_path / "dist")
    python = make_venv(tmp_path / "venv")
    install_wheel(python, wheel)
    site = site_packages(python)
    assert (site / "fmtspec.pth").is_file()
    assert list((site / "harness_tasks").rglob("*.yaml")), "task YAMLs missing from the wheel"
    assert list((site / "harness_tasks" / "fixtures").rglob("*.jsonl")), "fixtures missing from the wheel"
    borrow_site_packages(python)
    cwd = tmp_path  # not the repo: fmtspec must come from the wheel
    where = _python("import json, harness_tasks, model_adapters; print(json.dumps([harness_tasks.__file__,"
                    " model_adapters.__file__]))", python=python, cwd=cwd)
    assert all(Path(p).is_relative_to(site) for p in where)
    validate = subprocess.run([str(python), "-m", "lm_eval", "validate", "--tasks", "fmtspec_rte,fmtspec_suite"],
                              capture_output=True, text=True, cwd=cwd, timeout=300)
    assert validate.returncode == 0 and "All tasks found" in validate.stdout, validate.stdout + validate.stderr[-2000:]
    listing = subprocess.run([str(python), "-m", "lm_eval", "ls", "groups"], capture_output=True, text=True,
                             cwd=cwd, timeout=300)
    assert "fmtspec_suite" in listing.stdout and "fmtspec_teach_twice" in listing.stdout
    model = _python("import json; from lm_eval.api.registry import get_model;"
                    "cls = get_model('promot_hf'); print(json.dumps([cls.__module__, cls.__name__]))",
                    python=python, cwd=cwd)
    assert model == ["model_adapters.promot_hf", "PromotHFLM"]


def _manager(plugin_tasks=()):
    """A TaskManager with a keyword lm-eval 0.4.13 lacks; `plugin_tasks`: what it indexes from entry points."""

    class TaskManager:
        def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None, new_kw=None):
            self.got = {"verbosity": verbosity, "include_path": include_path, "include_defaults": include_defaults,
                        "metadata": metadata, "new_kw": new_kw}
            self.all_tasks = list(plugin_tasks)

    return TaskManager


def test_wrapper_passes_every_argument_through_and_adds_the_tasks_folder():
    manager = _manager()
    _add_task_path(SimpleNamespace(TaskManager=manager))
    ours = tasks_dir()
    assert manager(include_path="user", metadata={"m": 1}, new_kw="new").got == {
        "verbosity": None, "include_path": [ours, "user"], "include_defaults": True, "metadata": {"m": 1},
        "new_kw": "new"}
    assert manager("INFO", ["a", "b"], True, {"m": 2}, "new").got == {
        "verbosity": "INFO", "include_path": [ours, "a", "b"], "include_defaults": True, "metadata": {"m": 2},
        "new_kw": "new"}
    assert manager().got["include_path"] == [ours]
    assert manager(include_path=[ours, "user"]).got["include_path"] == [ours, "user"]  # not twice
    assert manager(None, "user", False, new_kw=3).got == {
        "verbosity": None, "include_path": "user", "include_defaults": False, "metadata": None, "new_kw": 3}
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):  # lm-eval's own error
        manager(bogus=1)


def test_a_task_manager_without_include_path_is_not_wrapped():
    class TaskManager:
        def __init__(self, verbosity=None, task_folders=None):
            pass

    init = TaskManager.__init__
    _add_task_path(SimpleNamespace(TaskManager=TaskManager))
    assert TaskManager.__init__ is init


def test_steps_aside_where_lm_eval_indexes_fmtspec_tasks_itself():
    manager = _manager(plugin_tasks=["fmtspec_rte", "fmtspec_suite"])
    init = manager.__init__
    _add_task_path(SimpleNamespace(TaskManager=manager))
    assert manager(include_path="user", new_kw="new").got == {
        "verbosity": None, "include_path": "user", "include_defaults": True, "metadata": None, "new_kw": "new"}
    assert manager.__init__ is init  # lm-eval's own, for the rest of the process


def test_a_failing_hook_leaves_the_module_importable(tmp_path, monkeypatch, caplog):
    name = "fmtspec_test_lm_eval_stand_in"
    (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(lm_eval_plugin.OFF_SWITCH, raising=False)

    def broken(module):
        raise AttributeError("module has no attribute 'TaskManager'")

    monkeypatch.setitem(lm_eval_plugin._AFTER_IMPORT, name, broken)
    monkeypatch.setattr(sys, "meta_path", [lm_eval_plugin._LmEvalFinder(), *sys.meta_path])
    try:
        with caplog.at_level(logging.WARNING, logger=lm_eval_plugin.__name__):
            assert importlib.import_module(name).VALUE == 1
    finally:
        sys.modules.pop(name, None)
    assert f"lm-eval runs without fmtspec's {name} hook (AttributeError: module has no attribute" in caplog.text


def test_importing_fmtspec_leaves_the_excepthook_until_lm_eval_runs_its_code(tmp_path):
    code = ("import json, sys\n"
            "before = sys.excepthook\n"
            "import model_adapters.promot_hf, harness_tasks.lm_eval_hooks\n"
            "from fmtspec.core.errors import FmtspecError\n"
            "imported = sys.excepthook is before\n"
            "def installed_by(call):\n"
            "    sys.excepthook = before\n"
            "    try:\n"
            "        call()\n"
            "    except FmtspecError:\n"
            "        pass\n"
            "    return getattr(sys.excepthook, 'fmtspec_hook', False)\n"
            "print(json.dumps([imported, installed_by(lambda: model_adapters.promot_hf.PromotHFLM(prompt='on')),"
            " installed_by(harness_tasks.lm_eval_hooks.bind('rte')[0])]))")
    # an empty data folder: the task's load fails at once, as a bad model argument does
    assert _python(code, env={"FMTSPEC_DATA_DIR": str(tmp_path)}) == [True, True, True]
