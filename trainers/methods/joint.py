"""ProMoT's ablation (Table 3): the model and a soft prompt trained together in one stage."""

from trainers.methods.base import Method, StagePlan, always

METHOD = Method("joint", lambda config: (StagePlan(("model", "prompt"), "model_training"),), prompt=always)
