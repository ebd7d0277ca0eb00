"""Every training method in one registry: the stages it trains, in order, and the soft prompt it carries.

A method is a list of stages over one prompted model: each stage trains some of the model's weights, its soft
prompts or LoRA layers, with the steps, learning rate and validation of one config section. The methods of the
two studies differ only in that list (trainers/recipes.py `plan` reads it), and in the prompt each starts with
(`build_trainer`). The config schema takes its method names from here (trainers/config.py). Import-light (no
torch): configs are checked before anything heavy is imported.

Adding a method: one `Method` below, a tiny config in configs/tiny/, tests in tests/test_trainers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StagePlan:
    trains: tuple[str, ...]  # "model", "prompt", "lora"
    section: str  # the config section of its steps, lr and eval_every
    lr: Callable[[dict], float] | None = None  # its learning rate from the config, if not the section's


@dataclass(frozen=True)
class Method:
    name: str
    stages: Callable[[dict], tuple[StagePlan, ...]]
    # does the model carry a soft prompt per task, and with which initialisation (None: config `prompt.init`)
    prompt: Callable[[dict], bool] = lambda config: False
    prompt_init: str | None = None
    finetunes: bool = True  # starts from a pretrained model (not: `pretrain`, the miniature world's base)


def _model(config):
    return (StagePlan(("model",), "model_training"),)


def _promot(config):
    if config["stage1"] == "lora":  # the ablation: LoRA layers instead of a prompt learn the format
        first = StagePlan(("lora",), "prompt_training", lambda c: c["lora"]["lr"])
    else:
        first = StagePlan(("prompt",), "prompt_training")
    return first, StagePlan(("model",), "model_training")


def _always(config):
    return True


# In the order the papers compare them (and error messages list them).
REGISTRY = {m.name: m for m in (
    Method("finetune", _model),
    Method("prompt_tuning", lambda c: (StagePlan(("prompt",), "prompt_training"),), prompt=_always),
    Method("promot", _promot, prompt=lambda c: c["stage1"] != "lora"),
    Method("joint", lambda c: (StagePlan(("model", "prompt"), "model_training"),), prompt=_always),
    # ProMoT's control: a frozen random prompt, fine-tuning the model
    Method("random_prompt", _model, prompt=_always, prompt_init="uniform"),
    Method("pretrain", _model, finetunes=False),
)}
FINETUNE_METHODS = tuple(name for name, m in REGISTRY.items() if m.finetunes)
METHODS = tuple(REGISTRY)
