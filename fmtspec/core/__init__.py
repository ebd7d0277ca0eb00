"""The core every package imports, importing none of them: the error type, the atomic writer, the run-folder
format (reader and writer), the shared config schema, T5's sentinels and the lm-eval plugin hook. Import-light:
nothing here imports torch at module level."""
