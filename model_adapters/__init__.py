"""lm-eval models of fmtspec. `promot_hf` (model_adapters.promot_hf) is registered by the plugin hook;
this package's top level imports nothing heavy."""
