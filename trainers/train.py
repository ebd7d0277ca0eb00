"""`train()`: one run, top to bottom (torchtune's recipes): check the output folder, lock it, build the prompted
model and its data (`build_trainer`), train each stage of the method's plan (trainers/methods/) with the
Trainer (trainers/trainer.py), and write the run folder (`finish`: fmtspec.core.run_folder). The methods:

    finetune       model                                      (standard fine-tuning)
    prompt_tuning  prompt                                     (model frozen)
    promot         1: prompt (or LoRA), best kept; 2: model with that prompt frozen and attached
    joint          model + prompt together                    (ablation, Table 3)
    random_prompt  model, with a fixed uniform random prompt  (ablation, Table 3)
    pretrain       model, from scratch (`model: mini:bart`) or on, on a task mixture (trainers/pretrain.py)
"""

from __future__ import annotations

import json
from pathlib import Path

from fmtspec.core import run_folder as rf
from fmtspec.core.atomic_files import recover, remove_folder, swap_in
from fmtspec.core.errors import FmtspecError
from trainers.config import config_hash, is_scratch
from trainers.methods import REGISTRY, plan
from trainers.models import build_scratch, load_model
from trainers.trainer import (Trainer, barrier, init_distributed, is_main, on_main, partition_rest, partitioned_loading,
                              single_process_env, state_digest, stop_on_signals)


def resolve_start(config: dict) -> tuple[str, str | None, list[str]]:
    """(model to load, parent RUN_DIR, chain of ancestors) for `init_from` (teach twice)."""
    from fmtspec.core.run_folder import model_path, read_manifest

    parent = config["init_from"]
    if not parent:
        return config["model"], None, []
    parent = str(Path(parent).resolve())
    manifest = read_manifest(parent)
    return model_path(parent, manifest), parent, [*manifest.get("chain", []), parent]


def training_examples(task: str, config: dict, t: int, tokenizer=None) -> list:
    """The task's training examples for the model of `tokenizer`: with `data.limit`, a random sample of the
    training split by `data.seed`; with `shots`, a `shots_share` of them (a fixed draw per example, by seed and
    task) carry demonstrations drawn from the training split itself (never from the validation split the
    checkpoints are chosen on, whatever the task's lm-eval few-shot split), the others are 0-shot."""
    import torch

    from trainers.data import render_examples, sample_seed

    split, seed, limit = config["data"]["split"], config["seed"], config["data"]["limit"]
    sample = {"limit": limit, "sample_seed": sample_seed(config), "tokenizer": tokenizer}
    share = config["shots_share"] if config["shots"] else 0.0
    shot = render_examples(task, split, shots=config["shots"], seed=seed, fewshot_split=split,
                           **sample) if share > 0 else None
    if share == 1.0:
        return shot
    plain = render_examples(task, split, seed=seed, **sample)
    if shot is None:
        return plain
    draws = torch.rand(len(plain), generator=torch.Generator().manual_seed(seed * 1000003 + t)).tolist()
    return [s if u < share else p for s, p, u in zip(shot, plain, draws)]


def build_trainer(config: dict, run_dir: Path, start_model: str):
    import torch

    from trainers.data import Encoder, MixtureSampler, render_examples, sample_seed, uses_sentinel
    from trainers.soft_prompt_model import PromptedModel, init_prompt

    torch.manual_seed(config["seed"])
    with partitioned_loading(config) as zero3:  # ZeRO-3: every process loads only its slice of the weights
        if is_scratch(start_model):
            model, tokenizer, encoder_decoder = build_scratch(config)
        else:
            model, tokenizer, encoder_decoder = load_model(start_model, config["dropout"],
                                                           trust_remote_code=config["trust_remote_code"])
    start_digest = state_digest(model)  # ZeRO-3: gathered one tensor at a time
    tasks = config["tasks"]
    sentinel = uses_sentinel(config["sentinel"], tokenizer, encoder_decoder)
    encoder = Encoder(tokenizer, encoder_decoder=encoder_decoder, sentinel=sentinel,
                      max_input_length=config["max_input_length"], max_target_length=config["max_target_length"])

    train_sets, val_sets = [], []
    for t, task in enumerate(tasks):
        train_sets.append(training_examples(task["name"], config, t, tokenizer))
        # 0-shot: no demonstration, from any split, in what the checkpoints are chosen on
        val_sets.append(render_examples(task["name"], config["eval"]["split"], limit=config["eval"]["limit"],
                                        sample_seed=sample_seed(config), tokenizer=tokenizer))

    def lazy(t):
        cache = {}

        def feature(i):
            if i not in cache:
                ex = train_sets[t][i]
                cache[i] = encoder.feature(ex.context, ex.target, t)
            return cache[i]

        return feature

    method = REGISTRY[config["method"]]
    lora = method.uses_lora(config)
    if lora:
        from peft import LoraConfig, inject_adapter_in_model

        lc = config["lora"]
        model = inject_adapter_in_model(LoraConfig(r=lc["rank"], lora_alpha=lc["alpha"] or 2 * lc["rank"],
                                                   lora_dropout=lc["dropout"], target_modules=lc["target_modules"],
                                                   task_type="SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM"),
                                        model)
    prompts = None
    if method.prompt(config):
        pc = config["prompt"]
        init = method.prompt_init or pc["init"]
        prompts = [init_prompt(model, tokenizer, length=pc["length"], init=init, init_range=pc["init_range"],
                               init_text=pc["init_text"], vocab_top=pc["vocab_top"], seed=config["seed"] + t)
                   for t in range(len(tasks))]
    module = PromptedModel(model, prompts, encoder_decoder=encoder_decoder,
                           label_smoothing=config["label_smoothing"])
    if zero3 is not None:  # the prompts or LoRA layers (or a scratch model) partitioned like the loaded weights
        partition_rest(module, zero3)
        module.register_zero3_prompts()
    sampler = MixtureSampler([len(s) for s in train_sets], [t["weight"] for t in tasks], config["seed"])
    trainer = Trainer(config=config, run_dir=run_dir, module=module, tokenizer=tokenizer, tasks=tasks,
                      features=[lazy(t) for t in range(len(tasks))], encoder=encoder, val_examples=val_sets,
                      sampler=sampler, lora=lora, base_model=start_model, start_digest=start_digest)
    return trainer, sum(len(s) for s in train_sets)


def train(config: dict, output: str | Path, *, resume: bool = False) -> Path:
    """Train `config` into the run folder `output` and return it. SIGTERM or SIGINT stops it with
    `trainer.Stopped` (the CLI's one line), a failed write into the folder is one FmtspecError line."""
    run_dir = Path(output)
    rf.check_output(run_dir, resume)
    if config["threads"]:
        import torch

        torch.set_num_threads(config["threads"])  # float sums, hence the weights, depend on the thread count
    start_model, parent, chain = resolve_start(config)
    if config["stage1_from"]:
        check_stage1_source(config, start_model)  # before the run folder is touched
    lock = rf.RunLock(run_dir)
    with single_process_env(), stop_on_signals():
        init_distributed()
        try:
            # rank 0 alone writes the folder (the other ranks write only inside its checkpoints' temporary
            # folders, between barriers), so it alone takes the lock; every process gets its verdict
            step = on_main(lambda: open_run(lock, run_dir, config, resume))
            resume_from = None
            if step is not None:
                resume_from = json.loads((rf.checkpoint_dir(run_dir, step) / rf.TRAINER_STATE).read_text())
            _train(config, run_dir, start_model, parent, chain, resume_from)
            barrier()
        except Exception as exc:
            message = rf.write_error(exc, run_dir)
            if message is None:
                raise
            raise FmtspecError(message) from None
        finally:
            lock.release()
    return run_dir


def open_run(lock: rf.RunLock, run_dir: Path, config: dict, resume: bool) -> int | None:
    """Lock the run folder, repair what a killed writer left, check that this run may write it, and record its
    config; the checkpoint step to resume from, or None to start. A folder that never reached a checkpoint
    (a failed start: config.json, metrics, the lock) is started again, with or without --resume and whatever
    its config was: nothing in it was trained."""
    import sys

    from trainers.config import NOT_IN_CACHE_KEY

    lock.acquire()
    recover(run_dir)
    rf.remove_partial_checkpoints(run_dir)
    saved_config = run_dir / rf.CONFIG_FILE
    step = None
    if rf.never_started(run_dir):
        if resume:
            print(f"fmtspec train: nothing to resume in {run_dir} (it never reached a checkpoint): starting the run",
                  file=sys.stderr)
        rf.clear_start(run_dir)
    elif not resume:
        raise FmtspecError(f"output folder {run_dir} is not empty; pass --resume to continue its run "
                           "or choose another --output")
    elif not saved_config.is_file():
        raise FmtspecError(f"--resume: {run_dir} holds no fmtspec training (no {rf.CONFIG_FILE}); choose another "
                           "--output")
    else:
        # keys that cannot change the weights (how a model loads, when a stopped run saves) may change
        saved, now = (json.loads(json.dumps({k: v for k, v in c.items() if k not in NOT_IN_CACHE_KEY}))
                      for c in (json.loads(saved_config.read_text()), config))
        changed = rf.differences(saved, now)
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise FmtspecError(f"--resume: the config differs from the one {run_dir} was started with: "
                               f"{', '.join(changed[:3])}{more}")
        steps = rf.checkpoint_steps(run_dir)
        if steps:
            step = steps[-1]
            rf.truncate_metrics(run_dir, step)  # steps after it are trained again
    rf.write_json_atomic(saved_config, config)
    return step


def _train(config, run_dir, start_model, parent, chain, resume_from) -> None:
    import torch

    from trainers.trainer import rank

    trainer, n_examples = build_trainer(config, run_dir, start_model)
    torch.manual_seed(config["seed"] + 104729 * rank())  # each process its own dropout draws
    stages = plan(config, n_examples)
    results = []
    if config["stage1_from"]:  # ProMoT's stage 1 is that prompt-tuning run's chosen prompt
        results.append(reuse_stage1(trainer, config))
        stages = stages[1:]
    for stage in stages:
        state = None
        if resume_from is not None:
            done = resume_from["stages_done"]
            if stage.number <= len(done):  # finished before the interruption: reload what it chose
                results.append(done[stage.number - 1])
                continue
            if resume_from["stage"] == stage.number:
                trainer.load_trained(rf.checkpoint_dir(run_dir, resume_from["step"]),
                                     ("model", "prompt"))
                state = resume_from
        trainer.stages_done = results
        result = trainer.train_stage(stage, state)
        results.append({"stage": stage.number, "trains": list(stage.trains), "steps": stage.steps,
                        "lr": stage.lr, "chosen": result.chosen})
        trainer.stages_done = results
    finish(trainer, config, run_dir, stages, results, start_model, parent, chain)
    trainer.close()  # its TensorBoard and W&B writers (config `logging`)


def check_stage1_source(config: dict, start_model: str) -> None:
    """`stage1_from` must be a finished prompt_tuning run of the same model, tasks and prompt length."""
    from fmtspec.core.run_folder import read_manifest

    source = Path(config["stage1_from"]).resolve()
    manifest = read_manifest(source)
    names = [t["name"] for t in config["tasks"]]
    tuned = [t["name"] for t in manifest.get("tasks") or []]
    length = (manifest.get("config") or {}).get("prompt", {}).get("length")
    problems = []
    if manifest.get("method") != "prompt_tuning":
        problems.append(f"it is a method: {manifest.get('method')} run, not prompt_tuning")
    if tuned != names:
        problems.append(f"it tuned {tuned}, this run trains {names}")
    if length != config["prompt"]["length"]:
        problems.append(f"its prompt has {length} vectors, this run's {config['prompt']['length']}")
    if str(manifest.get("base_model")) != str(start_model):
        problems.append(f"it tuned {manifest.get('base_model')}, this run starts from {start_model}")
    if problems:
        raise FmtspecError(f"stage1_from {source}: {'; '.join(problems)}")


def reuse_stage1(trainer: Trainer, config: dict) -> dict:
    """Load the chosen prompt of the prompt_tuning run `stage1_from` as ProMoT's stage 1; its record in run.json."""
    from fmtspec.core.run_folder import read_manifest

    source = Path(config["stage1_from"]).resolve()
    manifest = read_manifest(source)
    trainer.load_trained(source, ("prompt",))
    return {"stage": 1, "trains": ["prompt"], "steps": 0, "lr": manifest["stages"][0].get("lr"),
            "chosen": manifest["checkpoint"], "from": str(source)}


def finish(trainer: Trainer, config: dict, run_dir: Path, stages, results, start_model, parent, chain) -> None:
    """Write the chosen model/prompts beside the run's, swap each in (`swap_in`), then run.json last (it marks
    the run complete). A resumed finished run rewrites them: killed at any point, it holds the old run or the new
    one, and resume being exact, their weights are the same, so either run.json describes them."""
    import shutil

    saves = REGISTRY[config["method"]].saves(config)  # "model", "prompts"
    n = len(config["tasks"])
    staging = run_dir / f"{rf.TMP}outputs"  # one name in every process: rank 0 alone writes it (the lock)
    if is_main():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    try:
        trainer.save_outputs(staging, model="model" in saves)  # collective under ZeRO-3; rank 0 writes
        has_prompt = "prompts" in saves
        prompts = ({t["name"]: rf.prompt_folder(t["name"], n, trainer.lora) for t in config["tasks"]}
                   if has_prompt else {})
        final_digest = trainer.model_digest()
        if not is_main():
            return
        manifest = rf.manifest(
            method=config["method"],
            base_model=start_model,
            model="model" if "model" in saves else None,
            prompts=prompts,
            prompt_type="lora" if trainer.lora else ("soft_prompt" if has_prompt else None),
            sentinel=trainer.encoder.sentinel,
            encoder_decoder=trainer.module.encoder_decoder,
            tasks=config["tasks"],
            shots=config["shots"],
            stage=stages[-1].number,
            steps=trainer.step,
            stages=results,
            seed=config["seed"],
            config=config,
            config_hash=config_hash(config),
            parent=parent,
            chain=chain,
            checkpoint=results[-1]["chosen"],
            start_model_sha256=trainer.start_digest,
            model_sha256=final_digest,
            deepspeed=config["engine"]["deepspeed"],
            notes=trainer.notes,
        )
        written = [name for name in rf.OUTPUTS if (staging / name).exists()]
        for name in written:
            swap_in(staging / name, run_dir / name)
        rf.write_manifest(run_dir, manifest)
        for name in set(rf.OUTPUTS) - set(written):  # an older copy of a piece this run does not have
            remove_folder(run_dir / name)
    finally:
        if is_main():
            shutil.rmtree(staging, ignore_errors=True)
