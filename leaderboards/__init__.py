"""Markdown leaderboards (and plots) from lm-eval results of fmtspec checkpoints: `fmtspec leaderboard`."""
