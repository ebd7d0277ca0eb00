"""fmtspec: fine-tuning without losing few-shot ability, measured with lm-evaluation-harness."""

__version__ = "0.1.0"
