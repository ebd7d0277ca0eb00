"""The format-specialization diagnostics of the ProMoT paper's section 3, which `fmtspec diagnose`
(fmtspec.diagnose_cli) and an experiment's diagnostics stage (fmtspec.experiment) write:

- specialization: per checkpoint, each unseen task's score and `fmt_label_share` in its lm-eval results
  (Figures 1-2): specialization.json + .png
- alignment: the cosine between the full gradient on the run's task and the "format gradient" (the same
  batches with their targets shuffled across the batch: the output format stays, the input-output relation
  is gone), per module (MLP, attention Q, K, V) of one layer, at chosen checkpoints (Figures 3, 7):
  alignment.json + .png

Steps: `0` is the model the run started from (no prompt), `N` its checkpoints/step-N (that checkpoint's
model, else the start model, with the checkpoint's soft prompt if it has one), `final` the run folder's
chosen model and prompt, `all` = 0, every checkpoint and final.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from fmtspec.core.atomic_files import write_atomically, write_text_atomically
from fmtspec.core.errors import FmtspecError

MODULES = ("mlp", "q", "k", "v")
# Parameter names (inside one layer) of each module, for T5/mT5, Llama-style and GPT-2 models.
MODULE_PATTERNS = {
    # T5 DenseReluDense, Llama/GPT-2 mlp, BART fc1/fc2; self-attention only (BART's encoder_attn is not)
    "mlp": (r"DenseReluDense\.\w+\.weight$", r"(^|\.)mlp\.\w+\.weight$", r"^fc[12]\.weight$"),
    "q": (r"SelfAttention\.q\.weight$", r"(^|\.)self_attn\.q_proj\.weight$", r"(^|\.)attn\.q_proj\.weight$"),
    "k": (r"SelfAttention\.k\.weight$", r"(^|\.)self_attn\.k_proj\.weight$", r"(^|\.)attn\.k_proj\.weight$"),
    "v": (r"SelfAttention\.v\.weight$", r"(^|\.)self_attn\.v_proj\.weight$", r"(^|\.)attn\.v_proj\.weight$"),
}
FUSED_QKV = r"attn\.c_attn\.weight$"  # GPT-2's Conv1D [d, 3d]: Q, K, V side by side in its columns
STACK = re.compile(r"^(?P<stack>(?:.*\.)?(?:block|layers|h))\.(?P<index>\d+)\.")


# ---------------------------------------------------------------------------------------------------
# Format specialization over training (Figures 1-2)


def specialization_table(points: list[tuple[int, Path]], run_dir: Path | None = None) -> dict:
    """[(step, lm-eval results file)] -> per step: each task's primary score (0-100) and fmt_label_share,
    their means over the unseen tasks, and the run's own validation metrics at that step."""
    from harness_tasks.catalog import MINI, SUITE, parse_task_name
    from fmtspec.core.run_folder import read_metrics
    from leaderboards.results import load_results_file, metric_value

    suite = {info.key for info in SUITE + MINI}  # "unseen": the tasks of other formats than the target
    val = {}
    if run_dir is not None:
        for row in read_metrics(run_dir):
            if any(k.startswith("val_") for k in row):
                val[int(row["step"])] = {k: v for k, v in row.items() if k.startswith("val_")}
    rows = []
    for step, path in sorted(points, key=lambda p: p[0]):
        data = load_results_file(path)
        tasks = {}
        for name, metrics in data["results"].items():
            try:
                info, shots = parse_task_name(name)
            except KeyError:  # groups and other tasks
                continue
            value, _, _ = metric_value(metrics, info.metric)
            share, _, _ = metric_value(metrics, "fmt_label_share")
            tasks[name] = {"metric": info.metric, "score": None if value is None else value * info.scale,
                           "fmt_label_share": share, "unseen": info.key in suite, "kind": info.kind}
        unseen = [t for t in tasks.values() if t["unseen"] and t["score"] is not None]
        # label share where True/False is the wrong format: unseen tasks that are not label tasks themselves
        other_format = [t["fmt_label_share"] for t in tasks.values()
                        if t["unseen"] and t["kind"] != "label" and t["fmt_label_share"] is not None]
        rows.append({"step": step, "results": str(path), "tasks": tasks,
                     "unseen_mean": _mean([t["score"] for t in unseen]),
                     "label_share_other_formats": _mean(other_format), "val": val.get(step, {})})
    return {"run": None if run_dir is None else str(run_dir), "steps": rows}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _write_with_plot(data: dict, out_dir: Path, name: str, plot, title: str) -> list[Path]:
    """out_dir/<name>.json and its plot out_dir/<name>.png, each written whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")
    return [path, plot(data, out_dir / f"{name}.png", title)]


def write_specialization(table: dict, out_dir: Path, title: str) -> list[Path]:
    return _write_with_plot(table, out_dir, "specialization", _plot_specialization, title)


def _plot_specialization(table: dict, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    from harness_tasks.catalog import scale_of

    percent = scale_of("fmt_label_share")  # the shares are fractions; the right plot shows them in %
    rows = table["steps"]
    steps = [r["step"] for r in rows]
    names = sorted({name for r in rows for name in r["tasks"]})
    fig = Figure(figsize=(11, 4), dpi=120, layout="constrained")
    left, right = fig.subplots(1, 2)
    for name in names:  # left: the fine-tuning targets; right: each unseen task's label share
        task = next(r["tasks"][name] for r in rows if name in r["tasks"])
        if not task["unseen"]:
            ys = [r["tasks"].get(name, {}).get("score") for r in rows]
            left.plot(steps, [math.nan if y is None else y for y in ys], marker="o", ls="--",
                      label=f"{name.removeprefix('fmtspec_')} (target)")
        elif task["kind"] != "label":
            shares = [r["tasks"].get(name, {}).get("fmt_label_share") for r in rows]
            right.plot(steps, [math.nan if s is None else percent * s for s in shares], marker="o", lw=1,
                       label=name.removeprefix("fmtspec_"))
    means = [r["unseen_mean"] for r in rows]
    left.plot(steps, [math.nan if m is None else m for m in means], color="black", lw=3, marker="o",
              label="unseen tasks, mean")
    shares = [r["label_share_other_formats"] for r in rows]
    right.plot(steps, [math.nan if s is None else percent * s for s in shares], color="black", lw=3,
               label="mean")
    known = [y for line in left.get_lines() for y in line.get_ydata() if not math.isnan(y)]
    left.set_ylim(-2, max([10.0, *known]) * 1.05)  # a flat zero line still reads as 0 on a 0-100 scale
    left.set(xlabel="training step", ylabel="score (0-100)", title=f"{title}: scores over training")
    right.set(xlabel="training step", ylabel="outputs that are True/False/Neither (%)", ylim=(-5, 105),
              title=f"{title}: label-word outputs on non-label tasks")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


# ---------------------------------------------------------------------------------------------------
# Gradient alignment (section 3.3, Figures 3 and 7)


def layer_modules(model, layer: str = "decoder:-1") -> dict[str, list[tuple[str, object, slice | None]]]:
    """{module: [(parameter name, parameter, column slice or None)]} of one layer.

    `layer` is `[encoder|decoder:]INDEX`; decoder-only models have one stack, called decoder."""
    stack_name, _, index_text = layer.rpartition(":")
    stack_name = stack_name or "decoder"
    try:
        index = int(index_text)
    except ValueError:
        raise FmtspecError(f"--layer {layer!r}: expected [encoder|decoder:]INDEX, e.g. decoder:-1") from None
    named = dict(model.named_parameters())
    stacks: dict[str, set[int]] = {}
    for name in named:
        m = STACK.match(name)
        if m:
            stacks.setdefault(m["stack"], set()).add(int(m["index"]))

    def short(stack: str) -> str:
        return "encoder" if "encoder" in stack else "decoder"

    chosen = [s for s in stacks if short(s) == stack_name]
    if len(chosen) != 1:
        raise FmtspecError(f"--layer {layer!r}: the model has no single {stack_name} stack "
                           f"(stacks: {', '.join(sorted(short(s) for s in stacks)) or 'none found'})")
    indices = sorted(stacks[chosen[0]])
    if not -len(indices) <= index < len(indices):
        raise FmtspecError(f"--layer {layer!r}: the {stack_name} has layers 0..{len(indices) - 1}")
    prefix = f"{chosen[0]}.{indices[index]}."
    inside = {n[len(prefix):]: (n, p) for n, p in named.items() if n.startswith(prefix)}
    modules: dict[str, list] = {m: [] for m in MODULES}
    for rest, (name, param) in inside.items():
        for module, patterns in MODULE_PATTERNS.items():
            if any(re.search(p, rest) for p in patterns):
                modules[module].append((name, param, None))
        if re.search(FUSED_QKV, rest):
            width = param.shape[1] // 3
            for j, module in enumerate(("q", "k", "v")):
                modules[module].append((name, param, slice(j * width, (j + 1) * width)))
    missing = [m for m in MODULES if not modules[m]]
    if missing:
        raise FmtspecError(f"layer {prefix.rstrip('.')} has no {', '.join(missing)} weights that fmtspec knows "
                           "(T5/mT5, BART, Llama-style and GPT-2 layers are supported)")
    return modules


def module_gradients(loss, modules: dict) -> dict:
    """{module: flat gradient of `loss` over the module's weights (column slices for fused Q/K/V)}."""
    import torch

    params = list({name: p for entries in modules.values() for name, p, _ in entries}.items())
    grads = dict(zip([n for n, _ in params], torch.autograd.grad(loss, [p for _, p in params]), strict=True))
    return {module: torch.cat([(grads[name][:, cols] if cols is not None else grads[name]).reshape(-1)
                               for name, _, cols in entries]) for module, entries in modules.items()}


def cosine(a, b) -> float | None:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return None
    return float((a.double() @ b.double()) / (a.double().norm() * b.double().norm()))


def _checkpoint_parts(run_dir: Path, step) -> tuple[str, Path | None, str]:
    """(model to load, soft-prompt folder or None, step name) of a step of the run."""
    from fmtspec.core.run_folder import checkpoint_manifest, model_path

    view = checkpoint_manifest(run_dir, step)
    prompt = view["prompts"].get(view["tasks"][0]["name"])
    return model_path(run_dir, view), Path(prompt) if prompt else None, str(step)


def resolve_steps(run_dir: Path, steps) -> list:
    from fmtspec.core import run_folder as rf

    if isinstance(steps, str):
        steps = [s.strip() for s in steps.split(",") if s.strip()]
    out = []
    for step in steps:
        if step == "all":
            out += [0, *rf.checkpoint_steps(run_dir), "final"]
        elif step == "final":
            out.append("final")
        else:
            try:
                out.append(int(step))
            except (TypeError, ValueError):
                raise FmtspecError(f"step {step!r}: expected 0, a checkpoint step, final or all") from None
    return list(dict.fromkeys(out))


def alignment_batches(n_examples: int, batches: int, batch_size: int, seed: int) -> list[dict]:
    """The examples of each batch (indices into the run's training data) and the permutation that
    shuffles their targets: [{"examples": [...], "permutation": [...]}]."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_examples, generator=gen).tolist()
    plan = []
    for b in range(batches):
        idx = [order[(b * batch_size + j) % len(order)] for j in range(batch_size)]
        plan.append({"examples": idx, "permutation": torch.randperm(batch_size, generator=gen).tolist()})
    return plan


def alignment_for_run(run_dir, steps=("0", "final"), layer: str = "decoder:-1", task: str | None = None,
                      batches: int = 4, batch_size: int = 8, seed: int = 0) -> dict:
    """Cosine(full gradient, format gradient) per module at each step; see the module docstring."""
    from tqdm.auto import tqdm

    from fmtspec.core.run_folder import read_manifest
    from model_adapters.soft_prompt import load_soft_prompt
    from trainers.data import Encoder, collate, render_examples, sample_seed
    from trainers.models import load_model
    from trainers.soft_prompt_model import PromptedModel

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    config = manifest.get("config")
    if not config:
        raise FmtspecError(f"{run_dir}/run.json has no 'config': cannot rebuild the run's training batches")
    run_tasks = [t["name"] for t in manifest["tasks"]]
    task = task or run_tasks[0]
    if task not in run_tasks:
        raise FmtspecError(f"task {task!r} is not a task of {run_dir} ({', '.join(run_tasks)})")
    if batches < 1 or batch_size < 2:
        raise FmtspecError("gradient alignment needs batches >= 1 and batch_size >= 2 (targets are shuffled "
                           "across the batch)")
    from transformers import AutoTokenizer

    from fmtspec.core.run_folder import tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(run_dir, manifest))  # as training cut articles
    # the run's training sample and demonstrations (from its split; a run recorded before data.seed existed
    # took the first data.limit rows and the task's lm-eval few-shot split)
    split, seed = config["data"]["split"], sample_seed(config)
    examples = render_examples(task, split, shots=config["shots"], seed=config["seed"], limit=config["data"]["limit"],
                               sample_seed=seed, fewshot_split=None if seed is None else split, tokenizer=tokenizer)
    plan = alignment_batches(len(examples), batches, batch_size, seed)
    result = {"run": str(run_dir), "task": task, "layer": layer, "batches": batches, "batch_size": batch_size,
              "seed": seed, "modules": list(MODULES), "plan": plan, "steps": []}
    parts = [_checkpoint_parts(run_dir, step) for step in resolve_steps(run_dir, steps)]  # check all first
    for model_path, prompt_dir, name in tqdm(parts, desc="gradient alignment", dynamic_ncols=True):
        model, tokenizer, encoder_decoder = load_model(model_path, dropout=None)
        model.eval()  # no dropout: both gradients see the same network
        prompt = None
        if prompt_dir is not None and (prompt_dir / "adapter_config.json").is_file():
            from model_adapters.soft_prompt import read_adapter_type

            if read_adapter_type(prompt_dir) != "LORA":
                prompt = load_soft_prompt(prompt_dir).embeddings.float()
        module = PromptedModel(model, [prompt] if prompt is not None else None, encoder_decoder=encoder_decoder,
                               label_smoothing=0.0)
        encoder = Encoder(tokenizer, encoder_decoder=encoder_decoder, sentinel=bool(manifest.get("sentinel")),
                          max_input_length=config["max_input_length"], max_target_length=config["max_target_length"])
        modules = layer_modules(model, layer)
        full = {m: 0 for m in MODULES}
        fmt = {m: 0 for m in MODULES}
        losses = {"loss": 0.0, "format_loss": 0.0}
        for batch in plan:
            exs = [examples[i] for i in batch["examples"]]
            targets = [exs[j].target for j in batch["permutation"]]
            for kind, pairs in (("loss", [(e.context, e.target) for e in exs]),
                                ("format_loss", [(e.context, t) for e, t in zip(exs, targets, strict=True)])):
                tensors = collate([encoder.feature(c, t, 0) for c, t in pairs], tokenizer.pad_token_id, encoder_decoder)
                loss = module(**tensors)
                loss = loss[0] if isinstance(loss, tuple) else loss  # (loss, tokens) in older trainers
                grads = module_gradients(loss / len(plan), modules)
                acc = full if kind == "loss" else fmt
                for m in MODULES:
                    acc[m] = acc[m] + grads[m]
                losses[kind] += loss.item() / len(plan)
        result["steps"].append({"step": name, "model": model_path,
                                "prompt": None if prompt is None else str(prompt_dir),
                                "cosine": {m: cosine(full[m], fmt[m]) for m in MODULES}, **losses})
        del model, module
    return result


def write_alignment(result: dict, out_dir: Path, title: str) -> list[Path]:
    return _write_with_plot(result, out_dir, "alignment", _plot_alignment, title)


def _plot_alignment(result: dict, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    rows = result["steps"]
    names = [r["step"] for r in rows]
    fig = Figure(figsize=(6, 4), dpi=120, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(MODULES)
    for j, module in enumerate(MODULES):
        values = [r["cosine"][module] for r in rows]
        ax.bar([i + (j - 1.5) * width for i in range(len(rows))], [math.nan if v is None else v for v in values],
               width, label={"mlp": "MLP", "q": "Query", "k": "Key", "v": "Value"}[module])
    ax.set_xticks(range(len(rows)), [f"step {n}" for n in names])
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylim=(-1.05, 1.05), ylabel="cos(g, g_format)",
           title=f"{title}: gradient alignment, {result['task'].removeprefix('fmtspec_')}, layer {result['layer']}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
