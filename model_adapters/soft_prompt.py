"""Soft prompts in PEFT's prompt-tuning format, read and written without building a PeftModel.

A folder holds `adapter_config.json` (peft_type PROMPT_TUNING) and `adapter_model.safetensors` with one
tensor `prompt_embeddings` of shape [P * S, d], S = num_transformer_submodules (2 for encoder-decoder
models, 1 for decoder-only). For encoder-decoder models the first P rows are the encoder prompt, the
only one fmtspec uses (the paper prompts the encoder alone); the decoder rows are written as a copy so
that PEFT can load the folder too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fmtspec.core.errors import FmtspecError, read_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
WEIGHTS_KEY = "prompt_embeddings"


@dataclass
class SoftPrompt:
    embeddings: "torch.Tensor"  # [P, d]: the encoder (or decoder-only) prompt  # noqa: F821
    config: dict

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def width(self) -> int:
        return int(self.embeddings.shape[1])


def save_soft_prompt(folder: str | Path, embeddings, *, base_model: str, encoder_decoder: bool,
                     num_layers: int | None = None, num_attention_heads: int | None = None,
                     init: str = "RANDOM", init_text: str | None = None, tokenizer: str | None = None) -> Path:
    """Write [P, d] `embeddings` as a PEFT prompt-tuning adapter folder."""
    import torch
    from peft import PromptTuningConfig, TaskType
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    emb = embeddings.detach().to("cpu").contiguous()
    if emb.dim() != 2:
        raise FmtspecError(f"a soft prompt must be a [P, d] matrix, got shape {tuple(emb.shape)}")
    config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if encoder_decoder else TaskType.CAUSAL_LM,
        num_virtual_tokens=emb.shape[0], token_dim=emb.shape[1],
        num_transformer_submodules=2 if encoder_decoder else 1,
        num_layers=num_layers, num_attention_heads=num_attention_heads,
        prompt_tuning_init=init, prompt_tuning_init_text=init_text,
        tokenizer_name_or_path=tokenizer if init == "TEXT" else None,
        base_model_name_or_path=base_model, inference_mode=True,
    )
    config.save_pretrained(str(folder))
    rows = torch.cat([emb, emb]) if encoder_decoder else emb
    save_file({WEIGHTS_KEY: rows}, str(folder / WEIGHTS_FILE))
    return folder


def load_soft_prompt(folder: str | Path) -> SoftPrompt:
    """Read a PEFT prompt-tuning folder; one clear FmtspecError for anything that is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FmtspecError(f"soft prompt folder not found: {folder}")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FmtspecError(f"soft prompt folder {folder} has no {path.name} (PEFT prompt-tuning format expected)")
    config = read_json(config_path, "a PEFT adapter config")
    if config.get("peft_type") != "PROMPT_TUNING":
        raise FmtspecError(f"{config_path} has peft_type {config.get('peft_type')!r}, expected 'PROMPT_TUNING'")
    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as exc:
        raise FmtspecError(f"cannot read {weights_path}: {exc}") from None
    if WEIGHTS_KEY not in tensors:
        raise FmtspecError(f"{weights_path} holds no '{WEIGHTS_KEY}' tensor")
    rows = tensors[WEIGHTS_KEY]
    p = int(config.get("num_virtual_tokens") or 0)
    if rows.dim() != 2 or p <= 0 or rows.shape[0] % p:
        raise FmtspecError(f"{weights_path}: prompt of shape {tuple(rows.shape)} does not match "
                           f"num_virtual_tokens={p} in {CONFIG_FILE}")
    return SoftPrompt(embeddings=rows[:p].clone(), config=config)  # encoder rows come first


def check_width(prompt: SoftPrompt, model_width: int, where: str | Path) -> None:
    if prompt.width != model_width:
        raise FmtspecError(f"soft prompt {where} has width {prompt.width} but the model's embeddings have "
                           f"width {model_width}")


def read_adapter_type(folder: str | Path) -> str | None:
    """The `peft_type` in a PEFT folder's adapter_config.json; None when there is none to read
    (load_soft_prompt then says what is wrong)."""
    try:
        return json.loads((Path(folder) / CONFIG_FILE).read_text()).get("peft_type")
    except (OSError, ValueError, AttributeError):
        return None
