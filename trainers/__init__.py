"""fmtspec's trainers: every fine-tuning method of the two studies from one YAML config into a run folder
(`fmtspec train CONFIG.yaml`). The top level imports nothing heavy."""
