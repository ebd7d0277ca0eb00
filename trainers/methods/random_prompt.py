"""ProMoT's control (Table 3): the model fine-tuned with a fixed, uniformly random prompt attached (never
trained), which tells the prompt's learned content from its mere presence."""

from trainers.methods.base import Method, always, model_stage

METHOD = Method("random_prompt", model_stage, prompt=always, prompt_init="uniform")
