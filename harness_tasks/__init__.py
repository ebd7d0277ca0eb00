"""fmtspec's lm-eval tasks: YAML task files in this folder, their utils, fixtures and the task catalog.

Importing this package is light (no torch, no lm_eval): the lm-eval plugin only needs its path.
"""
