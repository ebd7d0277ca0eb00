"""What a method is: the stages it trains, in order, over one prompted model, and the soft prompt it carries.
A stage trains some of the model's weights, its soft prompts or LoRA layers, with the steps, learning rate and
validation of one config section. Import-light (no torch): configs are checked before anything heavy loads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

@dataclass(frozen=True)
class StagePlan:
    trains: tuple[str, ...]  # of "model", "prompt", "lora" (what Trainer.set_trainable knows)
    section: str  # the config section of its steps, lr and eval_every
    lr: Callable[[dict], float] | None = None  # its learning rate from the config, if not the section's


@dataclass(frozen=True)
class Stage:
    """A planned stage with its numbers resolved: what trains, for how many steps, at which learning rate."""

    number: int  # 1 or 2
    trains: tuple[str, ...]  # as its StagePlan's
    steps: int
    lr: float
    eval_every: int


@dataclass(frozen=True)
class Method:
    name: str
    stages: Callable[[dict], tuple[StagePlan, ...]]
    # does the model carry a soft prompt per task, and with which initialisation (None: config `prompt.init`)
    prompt: Callable[[dict], bool] = lambda config: False
    prompt_init: str | None = None
    finetunes: bool = True  # starts from a pretrained model (not: `pretrain`, the miniature world's base)

    def uses_lora(self, config: dict) -> bool:
        return any("lora" in stage.trains for stage in self.stages(config))

    def saves(self, config: dict) -> tuple[str, ...]:
        """What its run folder holds beside run.json (fmtspec.core.run_folder): "model" when a stage trains the
        model's weights, "prompts" (one per task: soft prompts, or stage-1 LoRA layers) when it has them."""
        model = any("model" in stage.trains for stage in self.stages(config))
        return ("model",) * model + ("prompts",) * (self.prompt(config) or self.uses_lora(config))


def steps_for(section: dict, n_examples: int, batch_size: int) -> int:
    """A section's steps, or its epochs over `n_examples` (the whole mixture) in steps of `batch_size`."""
    if section["epochs"] is not None:
        return max(1, math.ceil(section["epochs"] * n_examples / batch_size))
    return section["steps"]


def model_stage(config: dict) -> tuple[StagePlan, ...]:
    """One stage that trains the model's weights (finetune, random_prompt, pretrain)."""
    return (StagePlan(("model",), "model_training"),)


def always(config: dict) -> bool:
    return True
