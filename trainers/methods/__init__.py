"""Every training method, one small module each, registered here (PEFT's tuners: a module per method and one
registry). A method declares its stages and the prompt it carries (trainers/methods/base.py); `plan` turns them
into the `Stage`s that trainers/train.py runs, and the config schema takes its method names from REGISTRY.

Adding a method: a module here with its `METHOD`, added to REGISTRY below, a tiny config in configs/tiny/ and
tests in tests/trainers/test_trainers.py.
"""

from __future__ import annotations

from trainers.methods import finetune, joint, pretrain, promot, prompt_tuning, random_prompt
from trainers.methods.base import Method, Stage, StagePlan, steps_for

# In the order the papers compare them (and error messages list them).
REGISTRY: dict[str, Method] = {module.METHOD.name: module.METHOD for module in (
    finetune, prompt_tuning, promot, joint, random_prompt, pretrain)}
FINETUNE_METHODS = tuple(name for name, m in REGISTRY.items() if m.finetunes)
METHODS = tuple(REGISTRY)


def plan(config: dict, n_examples: int) -> list[Stage]:
    """The stages of `config["method"]`, with steps resolved (epochs count the whole mixture)."""
    stages = []
    for number, spec in enumerate(REGISTRY[config["method"]].stages(config), 1):
        section = config[spec.section]
        stages.append(Stage(number, spec.trains, steps_for(section, n_examples, config["batch_size"]),
                            spec.lr(config) if spec.lr else section["lr"], section["eval_every"]))
    return stages


__all__ = ["FINETUNE_METHODS", "METHODS", "REGISTRY", "Method", "Stage", "StagePlan", "plan"]
