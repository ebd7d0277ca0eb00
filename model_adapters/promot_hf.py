"""`promot_hf`: lm-eval's `hf` model with a ProMoT soft prompt switched on and off per task.

ProMoT (seed 002, section 4 "Evaluation") uses the trained soft prompt only for tasks of the fine-tuned
task's format and removes it for all others. Each lm-eval request carries its task name, so every
`loglikelihood` / `generate_until` call is split into one group per prompt (or none) and run as `hf` runs
it, with the prompt's P embeddings prepended to the input embeddings of the base model:

- encoder-decoder: to the encoder input only (as the paper does), mask extended with P ones;
- decoder-only: to the input, the P extra logits dropped again; truncation leaves room for them.

The prompt is applied here on the plain transformers model rather than through PEFT, whose prompt-tuning
wrapper may prepend vectors to the decoder too and whose `disable_adapter()` its seq2seq `generate`
ignores. Generation is also done here, because stock `hf` gets seq2seq wrong (it passes
`context + max_gen_toks` as the decoder's `max_length` and its stop check looks back from the encoder
length) and pads a prompted decoder-only batch on the wrong side of the prompt: `promot_hf` generates
at most `max_gen_toks` new tokens, stops at the stop strings, and gives the same text at any batch size.

Data parallel (`torchrun --nproc_per_node N -m lm_eval --model promot_hf ...`, or `accelerate launch`): every
process scores its share of the documents and rank 0 writes the results file that one process would write,
its own records (`task_prompts`, `truncated_requests`) gathered from every rank. `hf` alone would split the
work only with more than one GPU on the machine and number the processes by their index on their machine
(see `_data_parallel`). `parallelize=True` (one model over several GPUs) computes the prompt and the inputs
on the device of the input embeddings.
"""

from __future__ import annotations

import collections
import difflib
import fnmatch
import inspect
import logging
import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from safetensors import SafetensorError
from tqdm import tqdm

from fmtspec.core import run_folder
from fmtspec.core.errors import FmtspecError, install_excepthook, raised_in
from fmtspec.core.sentinels import sentinel_ids
from model_adapters.soft_prompt import CONFIG_FILE, check_width, load_soft_prompt, read_adapter_type
from model_adapters.stop_strings import CONTEXT, StopStrings, TokenText

log = logging.getLogger(__name__)

PROMPT_MODES = ("on", "off", "auto")
SENTINEL = "<extra_id_0>"
# The default context length of relative-position models (T5, mT5, Flan-T5): their position buckets put no
# limit on the encoder, and the longest fmtspec context, a 4-shot summarization request (five articles cut
# to 1,024 tokens each, four summaries, the templates), fits. `hf` would take 512 (t5's `n_positions`,
# Flan-T5's tokenizer) or 2,048 and cut the demonstrations off.
RELATIVE_POSITION_CONTEXT = 8192
# The label of a request not to count in the records: a copy lm-eval pads a rank's requests with (data parallel)
UNCOUNTED = "<promot_hf: not counted>"


class PromotHFLM(HFLM):
    """`lm_eval --model promot_hf --model_args pretrained=...,soft_prompt=...,prompt=auto,prompt_tasks=...`.

    pretrained    a Hugging Face model (folder or hub id) or a run folder written by `fmtspec train`
    soft_prompt   a PEFT prompt-tuning folder, or a LoRA adapter folder (overrides the run folder's prompts)
    prompt        on | off | auto (default): auto prompts only the requests of the prompt's own tasks
    prompt_tasks  `|`-separated task names or glob patterns served by `soft_prompt` (default: the manifest's)
    sentinel      true | false: append <extra_id_0> to generation contexts and keep sentinels in the output
    max_length    as `hf`'s; default the model's own, or RELATIVE_POSITION_CONTEXT for T5-family models
    Every other argument goes to `hf` unchanged. Requests cut to fit max_length are counted per task and
    written into the results file (`config.promot_hf.truncated_requests`). Errors in the arguments are
    FmtspecErrors that the `lm_eval` command prints as one line `promot_hf: ...`.
    """

    @raised_in("promot_hf")
    def __init__(self, pretrained=None, soft_prompt=None, prompt="auto", prompt_tasks=None, sentinel=None, **kwargs):
        # `lm_eval` lets exceptions from model creation escape (lm-eval's create_from_arg_string only parses
        # --model_args and calls this): ours print as one line (exit status 1)
        install_excepthook()
        _check_pretrained(pretrained, pretrained)
        self._prompt_mode = _parse_mode(prompt)
        sentinel = None if sentinel in (None, "") else _parse_bool(sentinel, "sentinel")
        self._active = None  # [P, d] prompt of the group of requests being run, or None
        self._task_prompts: dict[str, str | None] = {}  # every task seen -> the prompt folder it ran with
        self._truncated: dict[str, int] = {}  # every task seen -> how many of its requests were cut to fit
        self._request_tasks = None  # task of each request `hf`'s loglikelihood passes on, in order
        self._explicit_tasks = prompt_tasks not in (None, "")  # prompt_tasks= given (not the run folder's)
        self._checked_tasks = False  # whether prompt_tasks= was checked against the run's tasks
        self._run_dir, manifest = _open_run_folder(pretrained, kwargs.get("subfolder"))
        if manifest is not None:
            given, pretrained = pretrained, run_folder.model_path(self._run_dir, manifest)
            _check_pretrained(pretrained, given)
            if "tokenizer" not in kwargs:
                kwargs["tokenizer"] = run_folder.tokenizer_path(self._run_dir, manifest)
        self._routes, untasked = _prompt_routes(self._run_dir, manifest, soft_prompt, prompt_tasks, self._prompt_mode)
        if prompt_tasks not in (None, "") and manifest is not None:
            _warn_if_untrained(self._routes, manifest)
        folders = list(dict.fromkeys(folder for _, folder in self._routes))
        loras = [folder for folder in folders if read_adapter_type(folder) == "LORA"]
        # read every prompt before loading the model, so that a bad folder fails fast
        soft_prompts = {folder: load_soft_prompt(folder) for folder in folders if folder not in loras}
        self._records = None  # rank 0 of a data-parallel run: (task_prompts, truncated) of every rank
        self._padding = []  # lm-eval's padding copies among the requests of the last call (see `barrier`)
        self._token_text = None  # what each token adds to a generation's text (the stop check's filter)
        _cpu_processes(kwargs)
        try:
            super().__init__(pretrained=pretrained, **kwargs)
        except (TypeError, SafetensorError, OSError) as exc:
            known = _model_load_error(exc, pretrained, kwargs)
            if known is None:
                raise
            raise known from None
        self._data_parallel()

        embeddings = self.model.get_input_embeddings().weight
        self._prompts = {}  # prompt folder -> [P, d] on the input embeddings' device, in their dtype
        for folder, soft in soft_prompts.items():
            check_width(soft, embeddings.shape[1], folder)
            self._prompts[folder] = soft.embeddings.to(device=self._embedding_device, dtype=embeddings.dtype)
        self._loras, self._lora_tuner = self._load_loras(loras)
        if untasked is not None:
            raise FmtspecError(f"prompt=auto needs the tasks of soft prompt {untasked}: give "
                               "prompt_tasks=<task|glob|...> (or prompt=on to prompt every task)")
        self._sentinel = self._resolve_sentinel(sentinel, manifest)

    def _data_parallel(self) -> None:
        """Split the requests between all processes of a launch, numbered by their global index.

        lm-eval's `hf` (0.4) makes each process score 1/N of the documents only when it counts more than one
        GPU on its machine, and then takes `accelerator.local_process_index` as the rank: on CPUs or one GPU a
        machine every process scores everything, and across machines the processes of each take the same
        shares (two rank 0s) while other shares are scored by no one. The accelerator lm-eval made (present
        whenever the launch has several processes) gives the global index and the number of processes."""
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1:
            return
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        if self._rank == 0:
            log.info("promot_hf: data parallel over %d processes (%s)", self._world_size, accelerator.device)

    @property
    def model(self):
        # `hf` returns `accelerator.unwrap_model(self._model)` whenever a launch has several processes, but never
        # hands the model to `accelerator.prepare`: there is nothing to unwrap, and each call looks for DeepSpeed
        # wrappers (importing DeepSpeed where installed: seconds at each process's start)
        return self._model

    # ---- which prompt serves which task ----

    def _prompt_for(self, task: str | None) -> str | None:
        if self._prompt_mode == "off" or not self._routes:
            return None
        if self._prompt_mode == "on":
            return self._routes[0][1]
        for pattern, folder in self._routes:  # an exact name wins over a glob
            if pattern == task:
                return folder
        for pattern, folder in self._routes:
            if task is not None and fnmatch.fnmatchcase(task, pattern):
                return folder
        return None

    @raised_in("promot_hf")
    def _per_prompt(self, requests, run):
        """Run `run` on the requests of each prompt (or none) in turn; results in the requests' order."""
        if not self._checked_tasks:
            self._checked_tasks = True
            self._check_prompt_tasks(requests)
        groups: dict[str | None, list[int]] = {}
        labels = []  # per request: its task, or UNCOUNTED
        seen = collections.Counter()
        self._padding = []
        for i, request in enumerate(requests):
            folder = self._prompt_for(request.task_name)
            # lm-eval evens out the ranks' requests with copies of a rank's last one: an Instance present more
            # often than its `repeats` (one process never passes one so) is such a copy, not a request
            seen[id(request)] += 1
            padding = seen[id(request)] > max(1, int(getattr(request, "repeats", 1) or 1))
            labels.append(UNCOUNTED if padding else request.task_name)
            if padding:
                self._padding.append(request)
            else:
                self._task_prompts[request.task_name] = folder
                self._truncated.setdefault(request.task_name, 0)
            groups.setdefault(folder, []).append(i)
        # Data parallel, every rank runs the same groups in the same order, so that the collectives inside `hf`
        # (rolling loglikelihood, batch_size=auto) pair up: lm-eval gives every rank documents of every task
        # (it refuses a rank with none) in the same task order, and its padding copies add no group.
        results = [None] * len(requests)
        for folder, indices in groups.items():
            self._activate(folder)
            try:
                out = run([requests[i] for i in indices], [labels[i] for i in indices])
                for i, result in zip(indices, out, strict=True):
                    results[i] = result
            finally:
                self._activate(None)
        self._gather_records()
        return results

    def barrier(self) -> None:
        """lm-eval calls this on every rank after each request type, once it has appended each answer to its
        Instance's `resps`, its padding copies' too: a rank's last Instance would log (and filters that read
        every answer would score) one answer per copy more than one process gives it. They are dropped here."""
        copies = collections.Counter(map(id, self._padding))
        for instance in {id(r): r for r in self._padding}.values():
            resps, n = getattr(instance, "resps", None), copies[id(instance)]
            if isinstance(resps, list) and len(resps) >= n:
                del resps[len(resps) - n:]
        self._padding = []
        super().barrier()

    def _gather_records(self) -> None:
        """Data parallel: rank 0 gets every rank's task_prompts and truncation counts (for get_model_info,
        which lm-eval calls on rank 0 alone), through lm-eval's own `gather_object`; one process: nothing."""
        if self.world_size <= 1:
            return
        gathered = self.gather_object((self._task_prompts, self._truncated), dst=0)
        if self.rank != 0:
            return
        task_prompts, truncated = {}, {}
        for prompts, counts in gathered:
            task_prompts.update(prompts)
            for task, n in counts.items():
                truncated[task] = truncated.get(task, 0) + n
        self._records = task_prompts, truncated

    def _check_prompt_tasks(self, requests) -> None:
        """prompt=auto with prompt_tasks= that match none of the run's tasks would score every task without the
        prompt: an error at the first batch, when the tasks are known. (prompt_tasks from a run folder that
        match none: a warning at the end, `get_model_info`.)"""
        if self._prompt_mode != "auto" or not self._explicit_tasks or not self._routes:
            return
        tasks = _tasks_of_run(requests)  # data parallel: every rank has every task, and decides alike
        if tasks and not any(self._prompt_for(task) for task in tasks):
            raise FmtspecError(f"prompt_tasks={'|'.join(p for p, _ in self._routes)} matches none of the tasks of "
                               f"this run ({', '.join(sorted(tasks))}): name them (`|`-separated names or globs), "
                               "or use prompt=on|off")

    def _activate(self, folder: str | None) -> None:
        """Make `folder`'s prompt (or LoRA adapter) the one the next forward passes use; None: the bare model."""
        self._active = self._prompts.get(folder)
        if self._lora_tuner is not None:
            if folder in self._loras:
                self._lora_tuner.enable_adapter_layers()
                self._lora_tuner.set_adapter(self._loras[folder])
            else:
                self._lora_tuner.disable_adapter_layers()

    def _load_loras(self, folders: list[str]):
        """LoRA adapters (the trainers' `stage1: lora`) injected into the model, all off until a task needs one.

        The model object stays the transformers model: PEFT swaps its layers in place, and the tuner
        switches them per group of requests, so forward and generate need nothing special."""
        if not folders:
            return {}, None
        from peft import PeftModel

        names = {folder: f"promot_lora_{i}" for i, folder in enumerate(folders)}
        peft_model = None
        for folder, name in names.items():
            try:
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(self._model, folder, adapter_name=name)
                else:
                    peft_model.load_adapter(folder, adapter_name=name)
            except Exception as exc:  # PEFT's own messages can span lines
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise FmtspecError(f"cannot load LoRA adapter {folder}: {first}") from None
        peft_model.eval()
        peft_model.base_model.disable_adapter_layers()
        return names, peft_model.base_model

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        def run(group, labels):
            self._request_tasks = labels
            try:
                return super(PromotHFLM, self).loglikelihood(group, disable_tqdm)
            finally:
                self._request_tasks = None

        return self._per_prompt(requests, run)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        # `hf`'s loglikelihood encodes its requests in order and passes them all here: count the ones it cuts
        tasks = self._request_tasks
        if tasks is not None and len(tasks) == len(requests):
            for task, (_, context, continuation) in zip(tasks, requests, strict=True):
                if self.backend == "causal":
                    cut = len(context) + len(continuation) > self.max_length + 1
                else:
                    cut = max(len(context), len(continuation)) > self.max_length
                self._count_truncated(task, cut)
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def _count_truncated(self, task: str | None, cut: bool) -> None:
        if cut and task != UNCOUNTED:
            if not self._truncated.get(task):
                log.warning("promot_hf: %s: requests longer than max_length=%d tokens are cut from the left "
                            "(counted in the results file); give max_length=<tokens> to keep them whole",
                            task, self.max_length + self._prompt_len)
            self._truncated[task] = self._truncated.get(task, 0) + 1

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._per_prompt(
            requests, lambda group, _: super(PromotHFLM, self).loglikelihood_rolling(group, disable_tqdm))

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._per_prompt(requests, lambda group, labels: self._generate_group(group, labels, disable_tqdm))

    # ---- the prompt in the forward pass ----

    @property
    def _prompt_len(self) -> int:
        return 0 if self._active is None else int(self._active.shape[0])

    @property
    def max_length(self) -> int:
        # room for the prompt: every truncation in `hf` (loglikelihood, rolling, generation) reads this
        relative = getattr(self.model.config, "relative_attention_num_buckets", None) is not None
        length = RELATIVE_POSITION_CONTEXT if relative and not self._max_length else super().max_length
        return length - self._prompt_len

    @property
    def _embedding_device(self) -> torch.device:
        """Where the input embeddings are computed, and so where the prompt and the inputs go: the embedding
        module's weight device, or the execution device of an offloading device_map's hook. `self.device` can
        be another: under `parallelize=True` it stays the `device=` asked for, while device_map places the
        layers."""
        module = self.model.get_input_embeddings()
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        return module.weight.device if device is None else torch.device(device)

    def _with_prompt(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, P + L] input embeddings, the prompt first, on the embeddings' device."""
        embeds = self.model.get_input_embeddings()(ids.to(self._embedding_device))
        prompt = self._active.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
        return torch.cat([prompt, embeds], dim=1)

    def _model_call(self, inps, attn_mask=None, labels=None):
        if self._active is None:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with torch.no_grad(), self._autocast():
            embeds = self._with_prompt(inps)
            if self.backend == "seq2seq":
                mask = F.pad(attn_mask.to(embeds.device), (self._prompt_len, 0), value=1)
                labels = None if labels is None else labels.to(embeds.device)
                return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).logits
            return self.model(inputs_embeds=embeds).logits[:, self._prompt_len:]

    def _autocast(self):
        return torch.autocast(device_type=self._embedding_device.type, dtype=self.mixed_precision_dtype,
                              enabled=self.mixed_precision_dtype is not None)

    # ---- generation ----

    def _generate_group(self, requests, labels, disable_tqdm: bool):
        """`labels`: per request, the task to count a truncation under (or UNCOUNTED)."""
        results = []
        reorder = Collator([(*r.args, label) for r, label in zip(requests, labels, strict=True)],
                           sort_fn=lambda req: (-len(self.tok_encode(req[0])), req[0]),
                           group_by="gen_kwargs", group_fn=lambda req: req[1])
        batch_size = self._detect_batch_size() if str(self.batch_size).startswith("auto") else self.batch_size
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running generate_until requests")
        for chunk in reorder.get_batched(n=batch_size):
            contexts, all_gen_kwargs, tasks = zip(*chunk, strict=True)
            kwargs = normalize_gen_kwargs(all_gen_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = kwargs.pop("max_gen_toks")
            if kwargs.pop("max_length", None) is not None:
                log.warning("promot_hf ignores `max_length` in generation kwargs: use `max_gen_toks`")
            rows = self._encode_contexts(contexts, max_new, tasks)
            for context, tokens in zip(contexts, self._generate_rows(rows, max_new, until, kwargs), strict=True):
                text = postprocess_generated_text(self._decode_generation(tokens), until, self._think_end_str)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), text)
                pbar.update(1)
        pbar.close()
        return reorder.get_original(results)

    @property
    def _think_end_str(self):
        return self.think_end_token if isinstance(self.think_end_token, str) else None

    def _encode_contexts(self, contexts, max_new: int, tasks=None) -> list[list[int]]:
        """Token ids of each context as `hf` encodes them, plus the sentinel, left-truncated to fit (and
        counted, per task of `tasks`)."""
        ids, mask = self.tok_batch_encode(list(contexts))
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        if self._sentinel:
            sentinel = sentinel_ids(self.tokenizer, 1)[0]
            eos = self.tokenizer.eos_token_id
            rows = [row[:-1] + [sentinel, eos] if row and row[-1] == eos else row + [sentinel] for row in rows]
        # the encoder takes max_length tokens; a decoder-only model also needs room for the new tokens
        limit = self.max_length - (max_new if self.backend == "causal" else 0)
        if limit <= 0:
            raise FmtspecError(f"max_gen_toks={max_new} leaves no room for the context within max_length="
                               f"{self.max_length + self._prompt_len} (soft prompt: {self._prompt_len} positions)")
        for task, row in zip(tasks or [None] * len(rows), rows, strict=True):
            self._count_truncated(task, len(row) > limit)
        return [row[-limit:] for row in rows]

    @torch.no_grad()
    def _generate_rows(self, rows: list[list[int]], max_new: int, until: list[str], kwargs: dict) -> list[list[int]]:
        """Greedy, sampled or beam-search generation of at most `max_new` tokens per row; returns the new tokens.

        Decoder-only rows are padded on the left of [prompt, tokens] and encoder rows on the right, with
        the mask, so that positions do not depend on the batch."""
        pad = self.tokenizer.pad_token_id
        width = max(len(row) for row in rows)
        left = self.backend == "causal"
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
        ids, mask = ids.to(self._embedding_device), mask.to(self._embedding_device)

        kwargs = dict(kwargs)
        if not kwargs.get("do_sample"):
            kwargs.pop("temperature", None)
        inputs, start = {"input_ids": ids}, width if left else 1  # seq2seq output starts with the decoder start
        if self._active is not None:
            embeds, masks = [], []
            for i, (row_embeds, row) in enumerate(zip(self._with_prompt(ids), rows, strict=True)):
                if left:  # [pad..., prompt, tokens]
                    n_pad = width - len(row)
                    p = self._prompt_len
                    embeds.append(torch.cat([row_embeds[p:p + n_pad], row_embeds[:p], row_embeds[p + n_pad:]]))
                    masks.append(torch.cat([mask[i, :n_pad], mask.new_ones(p + len(row))]))
                else:  # [prompt, tokens, pad...]
                    embeds.append(row_embeds)
                    masks.append(F.pad(mask[i], (self._prompt_len, 0), value=1))
            inputs, mask = {"inputs_embeds": torch.stack(embeds)}, torch.stack(masks)
            start = 0 if left else 1  # decoder-only generate given embeddings returns the new tokens only
        if self._token_text is None:
            self._token_text = TokenText(self._decode_generation,
                                         self.tokenizer.encode(CONTEXT, add_special_tokens=False))
        # `start`: where the new tokens begin; the token_text filter decodes only rows that may have stopped
        stop = StopStrings(until, self._decode_generation, start, self._token_text)
        with self._autocast():
            out = self.model.generate(**inputs, attention_mask=mask, max_new_tokens=max_new, stopping_criteria=[stop],
                                      pad_token_id=pad, use_cache=True, **kwargs)
        return [row[start:] for row in out.tolist()]

    def _decode_generation(self, tokens: list[int]) -> str:
        """Text of generated tokens up to the first EOS; with sentinels on, `<extra_id_N>` stays in the text."""
        eos = self.tokenizer.eos_token_id
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        if isinstance(self.think_end_token, int) and self.think_end_token in tokens:
            tokens = tokens[len(tokens) - tokens[::-1].index(self.think_end_token):]
        if not self._sentinel:
            return self.tok_decode(tokens)
        drop = {self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, eos}
        return self.tokenizer.decode([t for t in tokens if t not in drop], skip_special_tokens=False)

    # ---- settings and records ----

    def _resolve_sentinel(self, sentinel: bool | None, manifest) -> bool:
        """As asked; else as the run's training inputs were; else on for seq2seq tokenizers with sentinels."""
        has_sentinel = sentinel_ids(self.tokenizer, 1) is not None
        if sentinel is None:
            if manifest is not None and manifest.get("sentinel") is not None:
                sentinel = bool(manifest["sentinel"])
            else:
                sentinel = self.backend == "seq2seq" and has_sentinel
        if sentinel and not has_sentinel:
            raise FmtspecError(f"sentinel=true needs a tokenizer with {SENTINEL}; "
                               f"{self.tokenizer.name_or_path} has none")
        return sentinel

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        task_prompts, truncated = self._records or (self._task_prompts, self._truncated)
        if self._prompt_mode == "auto" and self._routes and task_prompts and not any(task_prompts.values()):
            log.warning("promot_hf: prompt_tasks %s matched no task of this run (%s); no request used the prompt",
                        "|".join(p for p, _ in self._routes), ", ".join(sorted(task_prompts)))
        info["promot_hf"] = {
            "prompt": self._prompt_mode,
            "sentinel": self._sentinel,
            "run_folder": None if self._run_dir is None else str(self._run_dir),
            "prompt_tasks": {pattern: folder for pattern, folder in self._routes},
            "task_prompts": dict(sorted(task_prompts.items())),
            "truncated_requests": dict(sorted(truncated.items())),
        }
        return info

    def set_cache_hook(self, cache_hook) -> None:
        # lm-eval's --use_cache keys an answer by the request's text alone: under prompt=auto the same text
        # is answered with or without a prompt depending on the task, and a cached answer would cross over
        if getattr(cache_hook, "dbdict", None) is not None and self._prompt_mode == "auto" and self._routes:
            raise FmtspecError("--use_cache keys answers by request text, not by the soft prompt that served "
                               "them, and prompt=auto switches the prompt per task: leave out --use_cache, or "
                               "score with prompt=on and prompt=off in separate runs, each with its own cache")
        super().set_cache_hook(cache_hook)


# ---- arguments ----


def _cpu_processes(kwargs: dict) -> None:
    """Several processes launched (torchrun, or `accelerate launch` with its torchrun-based launcher) on CPUs:
    have accelerate join them in a process group (gloo), which it does only when ACCELERATE_USE_CPU says so.
    lm-eval never says so, and `accelerate launch --cpu` starts one process, so without this every process
    would score every request. Set when the launch has several processes and they run on CPUs (device=cpu,
    or no accelerator on the machine); an ACCELERATE_USE_CPU already set is left as it is."""
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1 or kwargs.get("tp_plan") is not None:
        return
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = torch.cuda.is_available() or (accelerator is not None and accelerator.is_available())
    if str(kwargs.get("device") or "").startswith("cpu") or not has_accelerator:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def _check_pretrained(pretrained, given) -> None:
    """`pretrained` (what `given` names: itself, or the run folder whose model it is) must be an existing
    folder or a hub model id; a path that looks local (absolute, ./ ../ ~, or below an existing folder) and
    does not exist is a missing folder, not a hub id to try."""
    if pretrained is None:
        raise FmtspecError("give pretrained=<model folder, hub id or fmtspec run folder>")
    if not isinstance(pretrained, str):  # a model object, from Python
        return
    text = pretrained.strip()
    path = Path(text).expanduser()
    of = "" if pretrained == given else f" (the run folder's model {pretrained})"
    if path.is_dir():
        return
    if path.exists():
        raise FmtspecError(f"pretrained={given}{of}: not a folder (give a model folder, hub id or run folder)")
    local = (path.is_absolute() or text.startswith(("./", "../", "~")) or text in (".", "..")
             or (len(path.parts) > 1 and path.parent.is_dir()))
    if local:
        raise FmtspecError(f"pretrained={given}{of}: no such folder")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise FmtspecError(f"pretrained={given}{of}: no such folder, and not a hub model id "
                           "(<name> or <namespace>/<name>)") from None


def _arguments() -> list[str]:
    """The model arguments promot_hf and `hf` name (others go to the model's `from_pretrained`)."""
    names = []
    for init in (PromotHFLM.__init__, HFLM.__init__):
        parameters = inspect.signature(inspect.unwrap(init)).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    return list(dict.fromkeys(names))


def _model_load_error(exc: Exception, pretrained, kwargs: dict) -> FmtspecError | None:
    """One line for a model load error whose cause is known: a model argument that nothing takes (`hf` hands
    unknown ones to `from_pretrained`, and the model's __init__ refuses them), a safetensors file that cannot
    be read, a hub id that cannot be loaded. None for any other error (re-raised as it is)."""
    if isinstance(exc, TypeError):
        match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if match is None or match.group(1) not in kwargs:
            return None
        name = match.group(1)
        close = difflib.get_close_matches(name, _arguments(), n=1)
        hint = (f"did you mean {close[0]}=?" if close else
                "promot_hf takes pretrained, soft_prompt, prompt, prompt_tasks, sentinel and every hf argument")
        return FmtspecError(f"unknown model argument {name}= (neither promot_hf's, hf's nor the model's); {hint}")
    found = _unreadable_safetensors(_weight_folders(pretrained, kwargs))
    if found is None:
        if isinstance(exc, OSError) and isinstance(pretrained, str) and not Path(pretrained).is_dir():
            # a hub id the hub does not know, or cannot be reached for (transformers says which)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return FmtspecError(f"cannot load pretrained={pretrained} from the hub: {reason}")
        return None
    file, reason = found
    return FmtspecError(f"cannot read model weights {file}: {reason} (a truncated or corrupt safetensors file: "
                        "download or save it again)")


def _weight_folders(pretrained, kwargs: dict) -> list[Path]:
    """Where `hf` read safetensors from: the model folder (or its hub cache snapshot) and a `peft=` adapter."""
    if not isinstance(pretrained, str):
        return []
    subfolder = kwargs.get("subfolder") or ""
    folders = []
    if Path(pretrained).is_dir():
        folders.append(Path(pretrained) / subfolder)
    else:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(pretrained, f"{subfolder}/config.json" if subfolder else "config.json",
                                        revision=kwargs.get("revision") or None)
        if isinstance(config, str):
            folders.append(Path(config).parent)
    if isinstance(kwargs.get("peft"), str) and Path(kwargs["peft"]).is_dir():
        folders.append(Path(kwargs["peft"]))
    return folders


def _unreadable_safetensors(folders: list[Path]) -> tuple[Path, str] | None:
    """(file, reason) of the first safetensors file in `folders` whose header cannot be read, or None."""
    from safetensors import safe_open

    for folder in folders:
        for file in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                return file, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def _tasks_of_run(requests) -> set[str] | None:
    """The tasks of every request of the run, or None where they cannot be known. lm-eval's evaluator hands
    the model one request type at a time (a multiple-choice task's loglikelihoods, then the generations, ...),
    so the first call may not show every task: the evaluator's `requests` (request type -> instances) are read
    from its frame (lm-eval 0.4's `evaluate`; the tests hold it to the installed version). Called from
    elsewhere, None: the check waits for the end (`get_model_info` warns)."""
    try:
        from lm_eval import evaluator

        code = inspect.unwrap(evaluator.evaluate).__code__
    except (ImportError, AttributeError):
        return None
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    pending = frame.f_locals.get("requests") if frame is not None else None
    if not isinstance(pending, dict):
        return None
    tasks = {request.task_name for request in requests}
    tasks |= {getattr(r, "task_name", None) for rs in pending.values() if isinstance(rs, list) for r in rs}
    return tasks - {None}


def _parse_mode(prompt) -> str:
    mode = str(prompt).strip().lower()
    if mode not in PROMPT_MODES:
        raise FmtspecError(f"prompt={prompt!r} is not one of {'|'.join(PROMPT_MODES)}")
    return mode


def _parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise FmtspecError(f"{name}={value!r} is not true or false")


def _open_run_folder(pretrained, subfolder) -> tuple[Path | None, dict | None]:
    """(run folder, manifest) when `pretrained` is a fmtspec run folder, else (None, None).

    A local folder with neither config.json nor run.json is neither a model nor a run: say so."""
    if not isinstance(pretrained, str) or subfolder:
        return None, None
    path = Path(pretrained)
    if run_folder.is_run_folder(path):
        return path, run_folder.read_manifest(path)
    if path.is_dir() and not (path / "config.json").is_file():
        run_folder.read_manifest(path)  # raises: "... is not a fmtspec run folder: it has no run.json"
    return None, None


def _prompt_routes(run_dir, manifest, soft_prompt, prompt_tasks, mode) -> tuple[list[tuple[str, str]], str | None]:
    """([(task name or glob, prompt folder)] in the order they are tried, the folder of a prompt whose
    tasks are unknown under prompt=auto or None). The caller checks that folder before saying so."""
    patterns = None if prompt_tasks in (None, "") else [p.strip() for p in str(prompt_tasks).split("|") if p.strip()]
    from_run = {} if manifest is None else {k: str(v) for k, v in run_folder.prompt_paths(run_dir, manifest).items()}
    untasked = None
    if soft_prompt not in (None, ""):
        folder = str(soft_prompt)
        tasks = patterns if patterns is not None else (list(from_run) or run_folder.tasks_of_prompt(folder))
        if mode == "auto" and not tasks:
            untasked = folder
        routes = [(task, folder) for task in tasks] or [("*", folder)]
    elif from_run:
        if patterns is not None:
            folders = set(from_run.values())
            if len(folders) != 1:
                raise FmtspecError(f"prompt_tasks= applies to a single prompt, but run folder {run_dir} has "
                                   f"{len(folders)} (one per task); leave prompt_tasks out")
            from_run = {task: folders.pop() for task in patterns}
        routes = list(from_run.items())
    else:
        if patterns is not None:
            raise FmtspecError("prompt_tasks= given but there is no prompt: add soft_prompt=<folder> "
                               "or use a run folder with prompts")
        routes = []
    if mode == "on" and not routes:
        raise FmtspecError("prompt=on but there is no soft prompt: give soft_prompt=<folder> or a run folder with one")
    if mode == "on" and len({folder for _, folder in routes}) > 1:
        raise FmtspecError(f"prompt=on needs a single prompt, but run folder {run_dir} has one per task: "
                           "use prompt=auto")
    for _, folder in routes:
        adapter_type = read_adapter_type(folder)
        if adapter_type not in (None, "PROMPT_TUNING", "LORA"):
            raise FmtspecError(f"{folder}/{CONFIG_FILE} is a {adapter_type} adapter; promot_hf switches "
                               "prompt-tuning prompts and LoRA adapters only")
    return routes, untasked


def _warn_if_untrained(routes, manifest) -> None:
    trained = [t.get("name") if isinstance(t, dict) else str(t) for t in manifest.get("tasks") or []]
    if trained and not any(fnmatch.fnmatchcase(str(task), pattern) for pattern, _ in routes for task in trained):
        log.warning("promot_hf: prompt_tasks %s names no task the run was trained on (%s)",
                    "|".join(pattern for pattern, _ in routes), ", ".join(map(str, trained)))

