"""PNG plots of a board: Norm. Avg. per checkpoint, the target-vs-unseen trade-off (ProMoT Figures 5-6),
and training-loss curves from run folders' metrics.jsonl. Uses matplotlib's object API (no pyplot state)."""

from __future__ import annotations

from pathlib import Path

from fmtspec.core.atomic_files import write_atomically
from fmtspec.core.errors import FmtspecError
from fmtspec.core.run_folder import read_metrics
from leaderboards.board import Board, seed_groups, seed_stem

DPI = 150


def write_plots(board: Board, out_dir: Path) -> list[Path]:
    """Write every plot the board has data for; return the files written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FmtspecError(f"cannot create the plots folder {out_dir}: {exc.strerror or exc}") from None
    written = []
    for name, draw in (("norm_avg.png", _norm_avg), ("tradeoff.png", _tradeoff), ("training_loss.png", _loss),
                       ("mini_tradeoff.png", _mini_tradeoff)):
        figure = draw(board)
        if figure is not None:
            written.append(_save(figure, out_dir / name))
    return written


def write_curves(tables: dict[str, dict], out_dir: Path) -> list[Path]:
    """The papers' Figures 1-2 from the checkpoint diagnostics (fmtspec.diagnose.specialization_table) of
    several runs: the True/False share on the other tasks and their mean score over training steps, one line
    per run (mean over its seeds, band from min to max). One file per world: format_specialization.png
    (the real suite), mini_format_specialization.png (the miniature world)."""
    from harness_tasks.catalog import MINI, parse_task_name

    mini_keys = {info.key for info in MINI}
    worlds: dict[str, dict[str, list[dict]]] = {}
    for label, table in tables.items():
        names = {name for row in table["steps"] for name in row["tasks"]}
        mini = any(parse_task_name(name)[0].key in mini_keys for name in names)
        worlds.setdefault("mini_format_specialization.png" if mini else "format_specialization.png", {})[label] = \
            table["steps"]
    written = []
    for name, runs in worlds.items():
        figure = _curves(runs, "the 8 miniature tasks" if name.startswith("mini") else "the unseen tasks")
        if figure is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            written.append(_save(figure, out_dir / name))
    return written


def _curves(runs: dict[str, list[dict]], tasks: str):
    panels = (("label_share_other_formats", f"True/False share on {tasks}", 1.0),
              ("unseen_mean", f"Mean score of {tasks} (0-100)", None))
    figure = _figure(11.0, 4.2)
    drawn = False
    for n, (key, title, top) in enumerate(panels, 1):
        axes = figure.add_subplot(1, 2, n)
        for i, (stem, labels) in enumerate(seed_groups(list(runs)).items()):
            by_step: dict[int, list[float]] = {}
            for label in labels:
                for row in runs[label]:
                    if isinstance(row.get(key), (int, float)):
                        by_step.setdefault(int(row["step"]), []).append(row[key])
            if not by_step:
                continue
            steps = sorted(by_step)
            means = [sum(by_step[s]) / len(by_step[s]) for s in steps]
            axes.plot(steps, means, marker=".", color=f"C{i}",
                      label=stem + (f" ({len(labels)} seeds)" if len(labels) > 1 else ""))
            if len(labels) > 1:
                axes.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                                  color=f"C{i}", alpha=0.15, linewidth=0)
            drawn = True
        axes.set_xlabel("training step (ProMoT: its trained stages, in order)")
        axes.set_title(title)
        if top is not None:
            axes.set_ylim(-0.02, top + 0.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure if drawn else None


def _mini_tradeoff(board: Board):
    """The miniature world's target score (x) against the mean of its 8 other tasks (y), mean ± sd over seeds."""
    columns = (board.mini or {}).get("columns") or {}
    points = [(stem, c["target"], c["mean"]) for stem, c in columns.items() if c["target"] and c["mean"]]
    if not points:
        return None
    figure = _figure(6.0, 4.6)
    axes = figure.add_subplot()
    for i, (stem, target, mean) in enumerate(points):
        axes.errorbar(target[0], mean[0], xerr=target[1] or 0, yerr=mean[1] or 0, fmt="os^Dv<>p"[i % 8],
                      color=f"C{i}", capsize=3, label=stem, zorder=3)
    _scatter_axes(axes, "target, exact match (0-shot, 0-100)", "mean exact match of the 8 other tasks (1-shot, 0-100)",
                  f"Miniature world: target vs other tasks (baseline {board.mini['baseline']})")
    return figure


def _scatter_axes(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.margins(0.15)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _norm_avg(board: Board):
    values = {column: v for column, v in board.norm_avg.items() if v is not None}
    if not values:
        return None
    labels, shots = board.main_labels, board.shots
    figure = _figure(max(6.0, 1.3 * len(labels) + 2), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / len(shots)
    colors = [f"C{i}" for i in range(len(shots))]
    for i, s in enumerate(shots):
        xs = [j + (i - (len(shots) - 1) / 2) * width for j in range(len(labels))]
        heights = [values.get((label, s), 0.0) for label in labels]
        bars = axes.bar(xs, heights, width * 0.95, color=colors[i], label=f"{s}-shot" if s else "Norm. Avg.")
        for bar, label in zip(bars, labels):
            value = values.get((label, s))
            text = f"{value:.2f}" if value is not None else "n/a"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                          fontsize=8, xytext=(0, 2), textcoords="offset points")
        base = values.get((board.baseline, s))
        if base is not None:
            axes.axhline(base, color=colors[i], linestyle="--", linewidth=1, alpha=0.7)
    axes.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    axes.set_ylabel("Norm. Avg. of 8 unseen tasks (0-100)")
    axes.set_title(f"Few-shot performance on unseen tasks (dashed: {board.baseline})")
    axes.set_ylim(0, max(values.values()) * 1.18 + 1)
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return figure


def _tradeoff(board: Board):
    """Target-task score (x) against Norm. Avg. on unseen tasks (y), one point per checkpoint."""
    panels = []
    for target, by_label in board.targets.items():
        points = [(label, s, by_label[label], board.norm_avg.get((label, s)))
                  for label in board.main_labels for s in board.shots
                  if by_label.get(label) is not None and board.norm_avg.get((label, s)) is not None]
        if points:
            panels.append((target, points))
    if not panels:
        return None
    figure = _figure(5.2 * len(panels), 4.4)
    for n, (target, points) in enumerate(panels, 1):
        axes = figure.add_subplot(1, len(panels), n)
        for i, s in enumerate(board.shots):
            mine = [p for p in points if p[1] == s]
            axes.scatter([p[2] for p in mine], [p[3] for p in mine], color=f"C{i}", marker="os^D"[i % 4],
                         label=f"{s}-shot" if s else "Norm. Avg.", zorder=3)
        for label in board.main_labels:  # one name per checkpoint, its shot counts joined by a faint line
            mine = [(x, y) for name, _, x, y in points if name == label]
            if mine:
                axes.plot(*zip(*mine), color="0.6", linewidth=0.8, zorder=2)
                axes.annotate(label, max(mine, key=lambda p: p[1]), fontsize=8, xytext=(5, 3),
                              textcoords="offset points")
        _scatter_axes(axes, f"{target} (fine-tuning target, 0-100)", "Norm. Avg. of 8 unseen tasks (0-100)",
                      f"Target vs unseen tasks: {target}")
    return figure


def _loss(board: Board):
    """Training loss per run (val_loss dashed) and, where logged, the other val_* metrics."""
    runs, seen = [], set()
    for checkpoint in board.checkpoints:  # a run evaluated at several checkpoints is drawn once, a seeded
        stem = seed_stem(checkpoint.label)  # run (<label>_s<seed>) by its first seed
        if checkpoint.run_dir is None or checkpoint.run_dir.resolve() in seen or stem in seen:
            continue
        seen |= {checkpoint.run_dir.resolve(), stem}
        rows = read_metrics(checkpoint.run_dir)
        if any(isinstance(row.get("loss"), (int, float)) for row in rows):
            label = checkpoint.label.removesuffix(f"/{checkpoint.run_checkpoint}") if checkpoint.run_checkpoint \
                else checkpoint.label
            runs.append((label, rows))
    if not runs:
        return None
    val_keys = sorted({k for _, rows in runs for row in rows for k in row
                       if k.startswith("val_") and k != "val_loss" and isinstance(row[k], (int, float))})
    if "val_score" in val_keys:  # the trainers' 0-100 primary metric (mean over tasks): the one to compare
        val_keys = ["val_score"]
    figure = _figure(6.5 * (2 if val_keys else 1), 4.2)
    axes = figure.add_subplot(1, 2 if val_keys else 1, 1)
    for i, (label, rows) in enumerate(runs):
        for key, style in (("loss", "-"), ("val_loss", "--")):
            steps = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
            if steps:
                axes.plot(*zip(*steps), style, color=f"C{i}", label=f"{label}" + (" (val)" if key != "loss" else ""))
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    has_val_loss = any("val_loss" in row for _, rows in runs for row in rows)
    axes.set_title("Training loss (dashed: validation)" if has_val_loss else "Training loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if val_keys:
        axes = figure.add_subplot(1, 2, 2)
        for i, (label, rows) in enumerate(runs):
            for j, key in enumerate(val_keys):
                steps = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
                if steps:
                    axes.plot(*zip(*steps), ["-", "--", ":", "-."][j % 4], color=f"C{i}", marker=".",
                              label=f"{label}: {key}")
        axes.set_xlabel("step")
        axes.set_title("Validation score (0-100)" if val_keys == ["val_score"] else "Validation metrics")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def _save(figure, path: Path) -> Path:
    """Render beside the target, then rename (fmtspec.core.atomic_files): no half-written PNG."""
    try:
        write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
    except OSError as exc:
        raise FmtspecError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
