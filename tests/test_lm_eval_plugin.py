"""The plugin wiring: stock lm-eval sees promot_hf and the fmtspec tasks, and nothing else changes.

Each check runs in a fresh interpreter, since the hook acts when lm-eval is first imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmtspec.lm_eval_plugin import tasks_dir

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
    code = ("import json, sys, fmtspec.lm_eval_plugin as p; p.install(); p.install();"
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
    assert Path(tasks_dir()) == Path(__file__).resolve().parents[1] / "harness_tasks"


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
