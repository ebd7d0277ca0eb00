"""The model a run starts from: a hub id or a model folder (`load_model`, with the config's dropout), or one
built from scratch (`model: mini:bart`: the miniature world's BART from harness_tasks.mini_world, with the
config's `architecture` and dropout on top; the pretrained bases' cache key covers what it builds,
trainers.pretrain)."""

from __future__ import annotations

from fmtspec.core.errors import FmtspecError

# config key -> BartConfig attribute(s) it sets
ARCHITECTURE_KEYS = {
    "d_model": ("d_model",),
    "encoder_layers": ("encoder_layers",),
    "decoder_layers": ("decoder_layers",),
    "attention_heads": ("encoder_attention_heads", "decoder_attention_heads"),
    "ffn_dim": ("encoder_ffn_dim", "decoder_ffn_dim"),
    "max_positions": ("max_position_embeddings",),
}


def scratch_config(config: dict):
    """The BartConfig of a `mini:bart` model: the world's size, with the config's `architecture` on top."""
    from harness_tasks.mini_world import model_config

    mconf = model_config()
    for key, value in config["architecture"].items():
        if value is not None:
            for attr in ARCHITECTURE_KEYS[key]:
                setattr(mconf, attr, value)
    if mconf.d_model % mconf.encoder_attention_heads:
        raise FmtspecError(f"architecture: d_model {mconf.d_model} is not a multiple of attention_heads "
                           f"{mconf.encoder_attention_heads}")
    longest = max(config["max_input_length"], config["max_target_length"])
    if longest > mconf.max_position_embeddings:
        raise FmtspecError(f"max_input_length/max_target_length {longest} exceed the model's "
                           f"{mconf.max_position_embeddings} learned positions (architecture.max_positions)")
    return mconf


def build_scratch(config: dict):
    """(model, tokenizer, encoder_decoder) for `model: mini:<kind>`: random weights drawn from the config's
    seed, the config's dropout on every dropout knob."""
    from harness_tasks.mini_world import random_model

    mconf = scratch_config(config)
    if config["dropout"] is not None:
        mconf.dropout = mconf.attention_dropout = mconf.activation_dropout = config["dropout"]
    model, tokenizer = random_model(mconf, config["seed"])
    return model, tokenizer, True


def load_model(path: str, dropout: float | None, *, trust_remote_code: bool = False):
    """Model and tokenizer, with the config's dropout on every dropout knob the architecture has. A folder's
    own code (`auto_map`) runs only with `trust_remote_code` (config key of that name): otherwise transformers
    neither asks on the terminal nor runs it, and a model that needs it is one error line."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    trust = bool(trust_remote_code)  # never None: None makes transformers ask "[y/N]" on a terminal
    try:
        mconf = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        raise FmtspecError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None
    if dropout is not None:
        for knob in ("dropout_rate", "dropout", "attention_dropout", "hidden_dropout", "resid_pdrop",
                     "embd_pdrop", "attn_pdrop"):
            if isinstance(getattr(mconf, knob, None), float):
                setattr(mconf, knob, dropout)
    encoder_decoder = bool(getattr(mconf, "is_encoder_decoder", False))
    cls = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    from safetensors import SafetensorError

    try:
        model = cls.from_pretrained(path, config=mconf, dtype="float32", trust_remote_code=trust)
    except (OSError, SafetensorError) as exc:  # missing or truncated weights
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FmtspecError(f"cannot load the weights of model {path}: {reason}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, encoder_decoder
