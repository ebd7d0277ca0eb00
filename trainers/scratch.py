"""Models built from scratch (`model: mini:bart`): the miniature world's BART (harness_tasks.mini_world) with
the config's `architecture` and dropout on top. The trainers build it (trainers.recipes); the pretrained
bases' cache key covers the architecture it builds (trainers.pretrain)."""

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
