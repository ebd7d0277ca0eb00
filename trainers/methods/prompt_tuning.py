"""Prompt tuning (Lester et al., 2021): a soft prompt per task, the model frozen. ProMoT's stage 1 on its own."""

from trainers.methods.base import Method, StagePlan, always

METHOD = Method("prompt_tuning", lambda config: (StagePlan(("prompt",), "prompt_training"),), prompt=always)
