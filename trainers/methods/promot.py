"""ProMoT (seed 002, Section 4): stage 1 trains a soft prompt with the model frozen and keeps its best
checkpoint; stage 2 fine-tunes the model with that prompt frozen and attached, so that the prompt, not the
model, absorbs the task's format. `stage1: lora` is the ablation where LoRA layers play the prompt's part."""

from trainers.methods.base import Method, StagePlan


def stages(config: dict) -> tuple[StagePlan, ...]:
    if config["stage1"] == "lora":
        first = StagePlan(("lora",), "prompt_training", lambda c: c["lora"]["lr"])
    else:
        first = StagePlan(("prompt",), "prompt_training")
    return first, StagePlan(("model",), "model_training")


METHOD = Method("promot", stages, prompt=lambda config: config["stage1"] != "lora")
