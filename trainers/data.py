"""Training examples: rendered by `harness_tasks.examples` (the same templates, label words and targets
that lm-eval scores), tokenized the way the evaluation feeds the model, and mixed across tasks.

Encoder-decoder: encoder = context [+ <extra_id_0>] + </s>, decoder target = target + </s>
(with the sentinel: <extra_id_0> target <extra_id_1> </s>, T5's span-corruption form, so that the
evaluation's post-processing finds the answer between the two sentinels).
Decoder-only: context + " " + target + eos, loss on the target tokens only (lm-eval's target delimiter).
"""

from __future__ import annotations

from dataclasses import dataclass

from fmtspec.core.errors import FmtspecError
from fmtspec.core.sentinels import sentinel_ids

TARGET_DELIMITER = " "


@dataclass
class Feature:
    input_ids: list[int]
    labels: list[int]  # decoder targets (enc-dec) or per-position labels with -100 on the context (causal)
    task: int  # index into the run's task list: selects the example's soft prompt


def sample_seed(config: dict) -> int | None:
    """The seed of a run's data.limit / eval.limit samples: `data.seed` (load_config resolves null to the run's
    seed). A recorded config without the key is of a run from before sampling: it took the first N (None)."""
    data = config["data"]
    if "seed" not in data:
        return None
    return config["seed"] if data["seed"] is None else data["seed"]


def render_examples(task: str, split: str, *, shots: int = 0, seed: int = 1234, limit: int | None = None,
                    sample_seed: int | None = None, fewshot_split: str | None = None, tokenizer=None):
    """`harness_tasks.examples.render` for the run's model (`tokenizer`), with data problems turned into one
    clear line. `limit` with `sample_seed`: a seeded random sample of the split (without: its first N);
    `fewshot_split`: where demonstrations come from (default: the task's lm-eval few-shot split)."""
    from harness_tasks import examples

    try:
        rendered = examples.render(task, split, shots=shots, seed=seed, limit=limit, sample_seed=sample_seed,
                                   fewshot_split=fewshot_split, tokenizer=tokenizer)
    except FmtspecError:
        raise
    except KeyError as exc:
        raise FmtspecError(f"task {task}, split {split}: a dataset record has no field {exc}") from None
    except (ValueError, TypeError) as exc:
        raise FmtspecError(f"task {task}, split {split}: cannot render the data: {exc}") from None
    if not rendered:
        raise FmtspecError(f"task {task}, split {split}: no examples")
    for ex in rendered:
        if not isinstance(ex.target, str) or not ex.target.strip():
            raise FmtspecError(f"task {task}, split {split}: an example has an empty target "
                               f"(a missing dataset field?): {str(ex.doc)[:80]}")
    return rendered


def uses_sentinel(config_value, tokenizer, encoder_decoder: bool) -> bool:
    has = sentinel_ids(tokenizer) is not None
    if config_value == "auto":
        return encoder_decoder and has
    if config_value is True:
        if not (encoder_decoder and has):
            raise FmtspecError("sentinel: true needs an encoder-decoder model whose tokenizer has <extra_id_0>")
        return True
    return False


class Encoder:
    """Turns (context, target) into token ids exactly as the run's model sees them."""

    def __init__(self, tokenizer, *, encoder_decoder: bool, sentinel: bool, max_input_length: int,
                 max_target_length: int):
        self.tok = tokenizer
        self.encoder_decoder = encoder_decoder
        self.sentinel = sentinel
        self.max_input = max_input_length
        self.max_target = max_target_length
        self.eos = tokenizer.eos_token_id
        if sentinel:
            self.s0, self.s1 = sentinel_ids(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def input_ids(self, context: str) -> list[int]:
        """The encoder input (enc-dec) or the prompt (causal) for `context`, cut from the left like lm-eval."""
        if self.encoder_decoder:
            ids = self._ids(context) + ([self.s0] if self.sentinel else [])
            # T5 cuts the input's start; the sentinel and </s> must stay at its end.
            return ids[-(self.max_input - 1):] + [self.eos]
        ids = self.tok(context)["input_ids"]  # with BOS where the tokenizer adds one
        return ids[-self.max_input:]

    def feature(self, context: str, target: str, task: int) -> Feature:
        if self.encoder_decoder:
            body = self._ids(target)
            if self.sentinel:
                body = [self.s0] + body[: self.max_target - 3] + [self.s1]
            labels = body[: self.max_target - 1] + [self.eos]
            return Feature(self.input_ids(context), labels, task)
        prompt = self.input_ids(context)
        answer = (self._ids(TARGET_DELIMITER + target) + [self.eos])[: self.max_target]
        return Feature(prompt + answer, [-100] * len(prompt) + answer, task)


def collate(features: list[Feature], pad_id: int, encoder_decoder: bool):
    """Right-padded batch tensors; labels padded with -100."""
    import torch

    width = max(len(f.input_ids) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    label_width = max(len(f.labels) for f in features)
    labels = torch.full((len(features), label_width), -100, dtype=torch.long)
    for i, f in enumerate(features):
        input_ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
        mask[i, : len(f.input_ids)] = 1
        labels[i, : len(f.labels)] = torch.tensor(f.labels)
    if not encoder_decoder:
        labels = labels[:, :width]
    task = torch.tensor([f.task for f in features], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "task": task}


class MixtureSampler:
    """Draws the task of each example by the mixture weights, then the task's next example from a
    per-epoch shuffle. Its whole position is `state_dict()` (for exact resume)."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        import torch

        self.sizes, self.seed = sizes, seed
        total = sum(weights)
        self.probs = torch.tensor([w / total for w in weights], dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = [0] * len(sizes)
        self.cursor = [0] * len(sizes)
        self.orders = [self._order(t) for t in range(len(sizes))]

    def _order(self, task: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1000003 + task * 7919 + self.epoch[task])
        return torch.randperm(self.sizes[task], generator=g).tolist()

    def next(self) -> tuple[int, int]:
        import torch

        task = 0 if len(self.sizes) == 1 else int(torch.multinomial(self.probs, 1, generator=self.gen))
        if self.cursor[task] == self.sizes[task]:
            self.epoch[task] += 1
            self.cursor[task] = 0
            self.orders[task] = self._order(task)
        index = self.orders[task][self.cursor[task]]
        self.cursor[task] += 1
        return task, index

    def state_dict(self) -> dict:
        return {"epoch": list(self.epoch), "cursor": list(self.cursor), "gen": self.gen.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        import torch

        self.epoch, self.cursor = list(state["epoch"]), list(state["cursor"])
        self.gen.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
        self.orders = [self._order(t) for t in range(len(self.sizes))]
