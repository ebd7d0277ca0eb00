"""The miniature world's base model (docs/miniature.md): the model's weights trained from scratch
(`model: mini:bart`), or on, on a task mixture; cached and shipped by trainers/pretrain.py."""

from trainers.methods.base import Method, model_stage

METHOD = Method("pretrain", model_stage, finetunes=False)
