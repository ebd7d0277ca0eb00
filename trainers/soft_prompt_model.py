"""A Hugging Face model with soft prompts prepended to its input embeddings (Lester et al., 2021).

One [P, d] prompt per task; each example of a batch gets its own task's prompt. Encoder-decoder models
get it on the encoder side only (as the paper, and `promot_hf`, do); decoder-only models before the
input, with the loss positions shifted by P. The loss is token cross-entropy with label smoothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptedModel(nn.Module):
    def __init__(self, model, prompts: list[torch.Tensor] | None, *, encoder_decoder: bool,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.encoder_decoder = encoder_decoder
        self.label_smoothing = label_smoothing
        self.prompts = nn.ParameterList([nn.Parameter(p.detach().clone().float()) for p in prompts or []])

    @property
    def has_prompts(self) -> bool:
        return len(self.prompts) > 0

    def register_zero3_prompts(self) -> None:
        """Under ZeRO-3 the prompts are partitioned like the model's weights (trainer.partition_rest). They sit
        in a ParameterList, whose forward never runs: tell ZeRO-3 that this module's forward uses them, so that
        they are gathered before it and released after it like a module's own parameters."""
        import deepspeed

        for p in self.prompts:
            deepspeed.zero.register_external_parameter(self, p)

    def embed(self, input_ids, attention_mask, task):
        """Input embeddings and mask with each example's prompt in front (or plain ones without prompts)."""
        embeds = self.model.get_input_embeddings()(input_ids)
        if not self.has_prompts:
            return embeds, attention_mask
        prompt = torch.stack(list(self.prompts))[task].to(embeds.dtype)  # [B, P, d]
        ones = attention_mask.new_ones(prompt.shape[:2])
        return torch.cat([prompt, embeds], 1), torch.cat([ones, attention_mask], 1)

    def forward(self, input_ids, attention_mask, labels, task):
        embeds, mask = self.embed(input_ids, attention_mask, task)
        if self.encoder_decoder:
            decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = self.model(inputs_embeds=embeds, attention_mask=mask,
                                decoder_input_ids=decoder_input_ids).logits
            targets = labels
        else:
            logits = self.model(inputs_embeds=embeds, attention_mask=mask).logits
            pad = labels.new_full((labels.shape[0], embeds.shape[1] - labels.shape[1]), -100)
            targets = torch.cat([pad, labels], 1)[:, 1:]  # next-token targets
            logits = logits[:, :-1]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100, label_smoothing=self.label_smoothing)
        return loss

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, task, max_new_tokens: int, num_beams: int = 1, **kwargs):
        """Greedy (or beam) generation with the prompts attached; returns only the new tokens.
        Causal inputs must be left-padded (the prompt then sits before the padding, masked positions between)."""
        embeds, mask = self.embed(input_ids, attention_mask, task)
        out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=num_beams, **kwargs)
        return out  # with inputs_embeds, HF returns only generated ids (enc-dec: starting with the decoder start)


def init_prompt(model, tokenizer, *, length: int, init: str, init_range: float = 0.5, init_text: str | None = None,
                vocab_top: int = 5000, seed: int = 0) -> torch.Tensor:
    """A [length, d] prompt: `uniform` in [-r, r], `vocab` (embeddings of random token ids among the first
    `vocab_top`), or `text` (embeddings of `init_text`'s tokens, repeated to the length), as in Lester et al.

    Token embeddings are what the embedding module outputs (as PEFT's SAMPLE_VOCAB/TEXT inits take them):
    BART with `scale_embedding` multiplies its table by `embed_scale` inside the module, and the prompt sits
    beside those scaled embeddings."""
    weight = embedding_weight(model)
    scale = float(getattr(model.get_input_embeddings(), "embed_scale", None) or 1.0)
    gen = torch.Generator().manual_seed(seed)
    if init == "uniform":
        return (torch.rand(length, weight.shape[1], generator=gen) * 2 - 1) * init_range
    if init == "vocab":
        ids = torch.randint(0, min(vocab_top, weight.shape[0]), (length,), generator=gen)
        return weight[ids] * scale
    ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
    ids = (ids * (length // max(len(ids), 1) + 1))[:length]
    return weight[torch.tensor(ids)] * scale


def embedding_weight(model) -> torch.Tensor:
    """The whole [vocab, d] input embedding matrix, in fp32. Under ZeRO-3 a partitioned parameter's data is an
    empty tensor (each process keeps a slice elsewhere): PEFT's known trouble of initialising prompts from
    zero-size embeddings. Gather it instead."""
    weight = model.get_input_embeddings().weight
    if hasattr(weight, "ds_id"):  # a ZeRO-3 parameter
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            return weight.detach().float().clone()
    return weight.detach().float()
