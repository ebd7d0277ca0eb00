"""Standard fine-tuning: the model's weights, on the task(s) of the config. The format-specialized baseline of
ProMoT (its Section 3) and every run of "Can we teach a model twice?" (seed 001)."""

from trainers.methods.base import Method, model_stage

METHOD = Method("finetune", model_stage)
