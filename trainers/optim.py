"""T5X's Adafactor in PyTorch (`optimizer: adafactor_t5x`), with the prompt-tuning code base's settings for the
parameters ProMoT's stage 1 trains, and factored second moments that survive DeepSpeed's flat ZeRO partitions.

Written from the formulas of the sources below (read, not copied):

- T5X, `t5x/adafactor.py` (google-research/t5x @ cc342d419ec3e3e9c4bf1df33c82330cafdc1e16): the defaults of
  `Adafactor.__init__` (L199-219): factored, multiply_by_parameter_scale=True, beta1=None, decay_rate=0.8,
  step_offset=0, clipping_threshold=1.0, weight_decay_rate=None, min_dim_size_to_factor=128, epsilon1=1e-30,
  epsilon2=1e-3; the decay schedule `_decay_rate_pow` (L311-315); the factoring rule `_factored_dims`
  (L397-417), which rank-2 parameters fall back to whatever the logical rules say (`_parse_rule`, L384-393);
  the update `apply_param_gradient` (L464-578). mT5's fine-tuning gin keeps those defaults
  (`t5x/examples/t5/mt5/base.gin` L25-29: decay_rate 0.8, step_offset 0) at a constant learning rate
  (`t5x/configs/runs/finetune.gin` L152-154).
- prompt tuning, `prompt_tuning/configs/models/t5_1_1_prompt.gin` L50-56 (google-research/prompt-tuning @
  72285eea06100f954bcbb16a447ec6cddfc6716c; `mt5_prompt.gin` includes it): the prompt's Adafactor has
  multiply_by_parameter_scale=False and weight_decay_rate=1e-5 (decay_rate 0.8, step_offset 0 as T5X);
  `prompt_tuning/train/optim.py` L23-33 marks the prompt axes unfactored (a [100, d] prompt is also below
  T5X's factoring size).

The rule, per parameter X (its value before the step), gradient G and the tensor's step count t = 0, 1, ...
(one fresh optimizer per stage):

    beta = 1 - (t + 1) ** -decay_rate                               (0 at the first step: v = G^2 + eps1)
    G2 = G * G + epsilon1
    X 2-D, both dims >= min_dim_size_to_factor (T5X's heuristic: d0 the larger dim, d1 the other):
        v_row = beta v_row + (1 - beta) mean_d0(G2)                 (indexed by d1)
        v_col = beta v_col + (1 - beta) mean_d1(G2)                 (indexed by d0)
        Y = G * (v_row / mean(v_row)) ** -1/2 * v_col ** -1/2
    otherwise (vectors, scalars, small matrices; rank > 2 too, where T5X wants explicit rules):
        v = beta v + (1 - beta) G2;   Y = G * v ** -1/2
    Y = Y / max(1, RMS(Y) / clipping_threshold)                     (update clipping; None: none)
    U = lr * max(RMS(X), epsilon2) * Y   if multiply_by_parameter_scale   else   lr * Y
    U = m = beta1 m + (1 - beta1) U                                 (only with beta1; T5X's default: none)
    X = (1 - weight_decay_rate) X - U                               (weight_decay_rate None: X - U)

Groups (`build`): the model's weights get T5X's defaults, with `weight_decay` as T5X's weight_decay_rate (a
fraction of the weight per step, NOT multiplied by the learning rate; 0: none, T5X's default); soft prompts and
LoRA adapters (what ProMoT's stage 1 trains) get the prompt-tuning settings: no parameter scaling, weight decay
1e-5. The LoRA choice is ours (neither code base trains LoRA): its B matrix starts at zero, where parameter
scaling would make every step lr * epsilon2.

ZeRO: DeepSpeed hands a client optimizer one flat fp32 tensor per group (ZeRO 1/2: this process's slice of the
concatenated group; ZeRO 3: this process's slice of every parameter, concatenated). `attach` reads from the
DeepSpeed wrapper where each parameter's elements sit in that tensor (a `Layout`), and each step all-reduces,
over the data-parallel group, the few numbers that need the whole parameter: the row and column sums of G2 of
every factored matrix, and the sums of X^2 and Y^2 of every parameter. Every process then holds the same
v_row/v_col (rows + cols numbers per matrix), its own slice of the unfactored v, and applies exactly the rule
above: the same optimizer as without ZeRO, up to float summation order (bench/optimizer_state.py measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from fmtspec.core.errors import FmtspecError

# The prompt-tuning code base's prompt settings (t5_1_1_prompt.gin L50-56).
PROMPT_RULE = {"multiply_by_parameter_scale": False, "weight_decay_rate": 1e-5}


@dataclass
class Piece:
    """One parameter's elements held in a (flat) tensor: `length` elements from row-major index `start` of the
    whole parameter, at `offset` of the tensor (length 0: this process holds none of it)."""
    shape: tuple
    offset: int
    start: int
    length: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Layout:
    """Where the parameters of one tensor handed to the optimizer live. `group`: the process group whose
    processes hold the rest of them (None: nobody else); `reduce`: a sum across them instead (tests)."""
    pieces: list[Piece]
    group: object = None
    reduce: Callable | None = None
    tensor: torch.Tensor | None = field(default=None, repr=False)  # keeps the id() this layout is filed under valid


def factored_dims(shape, min_dim: int, factored: bool = True):
    """T5X's heuristic (`_factored_dims`): (d1, d0) for a 2-D shape whose smaller dim is >= min_dim, d0 the
    larger dim (the first on a tie, as np.argsort of two equal sizes); None: not factored."""
    if not factored or len(shape) != 2 or min(shape) < min_dim:
        return None
    return (0, 1) if shape[0] <= shape[1] else (1, 0)


def _blocks(start: int, length: int, cols: int):
    """Rectangles (offset in the piece, first row, rows, first col, cols) covering elements [start, start+length)
    of a row-major matrix with `cols` columns: a partial first row, whole rows, a partial last row."""
    out, pos, end = [], start, start + length
    if pos % cols and pos < end:
        n = min(cols - pos % cols, end - pos)
        out.append((0, pos // cols, 1, pos % cols, n))
        pos += n
    full = (end - pos) // cols
    if full:
        out.append((pos - start, pos // cols, full, 0, cols))
        pos += full * cols
    if pos < end:
        out.append((pos - start, pos // cols, 1, 0, end - pos))
    return out


class T5XAdafactor(torch.optim.Optimizer):
    """T5X's Adafactor (see the module docstring for the rule and its sources). Each tensor's state: `step`,
    `v_row`/`v_col` (the factored matrices' vectors, concatenated), `v` (the unfactored elements this process
    holds, concatenated) and `m` with beta1: plain tensors that torch's and DeepSpeed's state_dict carry.

    `held=True`: step() does nothing until `attach` (DeepSpeed's bf16 wrapper takes an initialising step with
    zero gradients, which must not count as T5X's first step nor decay the weights)."""

    def __init__(self, params, lr: float, *, factored: bool = True, multiply_by_parameter_scale: bool = True,
                 beta1: float | None = None, decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
                 weight_decay_rate: float | None = None, min_dim_size_to_factor: int = 128,
                 epsilon1: float = 1e-30, epsilon2: float = 1e-3, held: bool = False):
        defaults = {"lr": lr, "factored": factored, "multiply_by_parameter_scale": multiply_by_parameter_scale,
                    "beta1": beta1, "decay_rate": decay_rate, "clipping_threshold": clipping_threshold,
                    "weight_decay_rate": weight_decay_rate, "min_dim_size_to_factor": min_dim_size_to_factor,
                    "epsilon1": epsilon1, "epsilon2": epsilon2}
        super().__init__(params, defaults)
        self.layouts: dict[int, Layout] = {}  # id(tensor) -> Layout, for the flat tensors of a DeepSpeed wrapper
        self.held = held

    # -- where the elements are ------------------------------------------------------------------------
    def set_layout(self, tensor: torch.Tensor, layout: Layout) -> None:
        layout.tensor = tensor
        self.layouts[id(tensor)] = layout

    def layout(self, p: torch.Tensor) -> Layout:
        found = self.layouts.get(id(p))
        if found is not None and found.tensor is p:
            return found
        return Layout([Piece(tuple(p.shape), 0, 0, p.numel())])  # a whole parameter

    @staticmethod
    def _reduce(layout: Layout, buf: torch.Tensor) -> None:
        if layout.reduce is not None:
            layout.reduce(buf)
        elif layout.group is not None:
            import torch.distributed as dist

            if dist.get_world_size(group=layout.group) > 1:
                dist.all_reduce(buf, group=layout.group)

    # -- the step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.held:
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("T5XAdafactor does not support sparse gradients")
                self._step_tensor(p, group)
        return loss

    def _plan(self, layout: Layout, group: dict):
        """Per piece: its factored dims (or None), where its v_row/v_col sit in their concatenations, where its
        G2 row/col sums and X^2, Y^2 sums sit in the reduction buffer, where its v sits in the compact v."""
        plan, vr, vc, red, v = [], 0, 0, 0, 0
        for piece in layout.pieces:
            dims = factored_dims(piece.shape, group["min_dim_size_to_factor"], group["factored"])
            entry = {"dims": dims}
            if dims is not None:
                d1, d0 = dims
                entry.update(vr=vr, vc=vc, red=red)
                vr += piece.shape[d1]
                vc += piece.shape[d0]
                red += piece.shape[0] + piece.shape[1]
            else:
                entry["v"] = v
                v += piece.length
            plan.append(entry)
        return plan, vr, vc, red, v

    def _step_tensor(self, p: torch.Tensor, group: dict) -> None:
        layout = self.layout(p)
        plan, n_vr, n_vc, n_red, n_v = self._plan(layout, group)
        dtype = torch.promote_types(p.dtype, torch.float32)
        state = self.state[p]
        if not state:
            state["step"] = 0
            if n_vr:
                state["v_row"] = torch.zeros(n_vr, dtype=dtype, device=p.device)
                state["v_col"] = torch.zeros(n_vc, dtype=dtype, device=p.device)
            if n_v:
                state["v"] = torch.zeros(n_v, dtype=dtype, device=p.device)
            if group["beta1"] is not None:
                state["m"] = torch.zeros(p.numel(), dtype=dtype, device=p.device)
        t = state["step"]
        beta = 1.0 - (t + 1.0) ** (-group["decay_rate"])
        eps1, eps2, lr = group["epsilon1"], group["epsilon2"], group["lr"]
        scaled, clip = group["multiply_by_parameter_scale"], group["clipping_threshold"]
        flat_x, flat_g = p.data.view(-1), p.grad.reshape(-1)
        pieces = layout.pieces
        n = len(pieces)

        # 1. what needs the whole parameter: G2 row/col sums of factored matrices, sum of X^2 for the scale
        stats = torch.zeros(n_red + n, dtype=dtype, device=p.device)
        for k, (piece, entry) in enumerate(zip(pieces, plan)):
            if not piece.length:
                continue
            x = flat_x[piece.offset:piece.offset + piece.length].to(dtype)
            if scaled:
                stats[n_red + k] = (x * x).sum()
            if entry["dims"] is not None:
                g = flat_g[piece.offset:piece.offset + piece.length].to(dtype)
                rows, cols = piece.shape
                sum0 = stats[entry["red"]:entry["red"] + rows]  # per row: sum over the columns
                sum1 = stats[entry["red"] + rows:entry["red"] + rows + cols]  # per column: sum over the rows
                for off, i, r, j, c in _blocks(piece.start, piece.length, cols):
                    block = g[off:off + r * c].view(r, c)
                    block = block * block + eps1
                    sum0[i:i + r] += block.sum(1)
                    sum1[j:j + c] += block.sum(0)
        if n_red or scaled:
            self._reduce(layout, stats)

        # 2. the new second moments and the unclipped update Y of the elements held here
        factors = {}
        for k, (piece, entry) in enumerate(zip(pieces, plan)):
            if entry["dims"] is None:
                continue
            d1, d0 = entry["dims"]
            rows, cols = piece.shape
            sum0 = stats[entry["red"]:entry["red"] + rows]
            sum1 = stats[entry["red"] + rows:entry["red"] + rows + cols]
            mean_over = (sum0 / cols, sum1 / rows)  # mean over dim 1 (indexed by row), over dim 0 (by column)
            v_row = state["v_row"][entry["vr"]:entry["vr"] + piece.shape[d1]]
            v_col = state["v_col"][entry["vc"]:entry["vc"] + piece.shape[d0]]
            v_row.mul_(beta).add_((1.0 - beta) * mean_over[d1])  # mean over d0: a vector along d1
            v_col.mul_(beta).add_((1.0 - beta) * mean_over[d0])
            row_factor = (v_row / v_row.mean()) ** -0.5
            col_factor = v_col ** -0.5
            by_dim = [None, None]
            by_dim[d1], by_dim[d0] = row_factor, col_factor
            factors[k] = by_dim  # [factor along dim 0, factor along dim 1]
        ys = {}
        y_sq = torch.zeros(n, dtype=dtype, device=p.device)
        for k, (piece, entry) in enumerate(zip(pieces, plan)):
            if not piece.length:
                continue
            g = flat_g[piece.offset:piece.offset + piece.length].to(dtype)
            if entry["dims"] is not None:
                f0, f1 = factors[k]
                y = torch.empty_like(g)
                for off, i, r, j, c in _blocks(piece.start, piece.length, piece.shape[1]):
                    y[off:off + r * c].view(r, c).copy_(g[off:off + r * c].view(r, c)
                                                        * f0[i:i + r, None] * f1[None, j:j + c])
            else:
                v = state["v"][entry["v"]:entry["v"] + piece.length]
                v.mul_(beta).add_((1.0 - beta) * (g * g + eps1))
                y = g * v ** -0.5
            ys[k] = y
            if clip is not None:
                y_sq[k] = (y * y).sum()
        if clip is not None:
            self._reduce(layout, y_sq)

        # 3. clip, scale, (momentum), decay, apply (per-piece factors as tensors: no host sync per weight)
        wd, beta1 = group["weight_decay_rate"], group["beta1"]
        numel = torch.tensor([piece.numel for piece in pieces], dtype=dtype, device=p.device)
        if clip is not None:
            clip_denom = torch.clamp((y_sq / numel).sqrt() / clip, min=1.0)
        if scaled:
            scale = lr * torch.clamp((stats[n_red:] / numel).sqrt(), min=eps2)
        for k, piece in enumerate(pieces):
            if not piece.length:
                continue
            y = ys[k]
            if clip is not None:
                y = y / clip_denom[k]
            update = (scale[k] if scaled else lr) * y
            if beta1 is not None:
                m = state["m"][piece.offset:piece.offset + piece.length]
                m.mul_(beta1).add_((1.0 - beta1) * update)
                update = m
            x_view = flat_x[piece.offset:piece.offset + piece.length]
            x = x_view.to(dtype)
            new = (1.0 - wd) * x - update if wd is not None else x - update
            x_view.copy_(new)
        state["step"] = t + 1


# -- the trainer's optimizer ----------------------------------------------------------------------------------
def is_adapter(name: str) -> bool:
    """What ProMoT's stage 1 trains (soft prompts, LoRA adapters), by the PromptedModel parameter name."""
    return name.startswith("prompts.") or "lora_" in name


def build(params, config: dict, lr: float, module=None) -> T5XAdafactor:
    """`optimizer: adafactor_t5x` over `params`: model weights with T5X's defaults (weight_decay: T5X's
    weight_decay_rate, 0 = none), soft prompts and LoRA adapters with the prompt-tuning settings. Held until
    `attach` (after deepspeed.initialize)."""
    adapters = {id(p) for name, p in module.named_parameters() if is_adapter(name)} if module is not None else set()
    model = [p for p in params if id(p) not in adapters]
    stage1 = [p for p in params if id(p) in adapters]
    groups = []
    if model:
        groups.append({"params": model, "weight_decay_rate": config["weight_decay"] or None})
    if stage1:
        groups.append({"params": stage1, **PROMPT_RULE})
    return T5XAdafactor(groups, lr=lr, held=True)


def attach(engine_optimizer, optimizer: T5XAdafactor) -> str | None:
    """After deepspeed.initialize: file where each parameter sits in the tensors DeepSpeed's wrapper hands the
    optimizer, and start stepping. Returns the run.json note saying which rule runs (None: whole tensors)."""
    w = engine_optimizer
    kind = type(w).__name__
    note = None
    if w is optimizer or kind == "FP16_UnfusedOptimizer":
        pass  # ZeRO 0 in fp32 (the optimizer itself) or bf16 at ZeRO 0 (an fp32 copy of each whole parameter)
    elif kind == "DeepSpeedZeroOptimizer":  # ZeRO 1, 2
        note = _attach_zero12(w, optimizer)
    elif kind == "DeepSpeedZeroOptimizer_Stage3":
        note = _attach_zero3(w, optimizer)
    else:
        raise FmtspecError(f"adafactor_t5x: DeepSpeed's {kind} hands the optimizer tensors this code cannot map "
                           "back to weights (factored second moments need them); use precision fp32, "
                           "optimizer: adafactor or adamw")
    optimizer.held = False
    return note


def _attach_zero12(w, optimizer: T5XAdafactor) -> str:
    """ZeRO 1/2: each group is flattened (parameters at `round_robin_bit16_offsets`, alignment padding between
    and at the end) and cut into equal contiguous partitions, this process's at rank x partition_size."""
    import torch.distributed as dist

    for i, flat in enumerate(w.single_partition_of_fp32_groups):
        params = w.round_robin_bit16_groups[i]
        metas = getattr(w, "round_robin_bit16_meta", None)
        shapes = [tuple(m.shape) for m in metas[i]] if metas else [tuple(q.shape) for q in params]
        offsets = getattr(w, "round_robin_bit16_offsets", None)
        offsets = offsets[i] if offsets else [sum(math.prod(s) for s in shapes[:k]) for k in range(len(shapes))]
        pg = w.real_dp_process_group[i]
        lo = dist.get_rank(group=pg) * w.partition_size[i]
        hi = lo + w.partition_size[i]
        pieces = []
        for shape, off in zip(shapes, offsets):
            a, b = max(off, lo), min(off + math.prod(shape), hi)
            pieces.append(Piece(shape, a - lo, a - off, b - a) if b > a else Piece(shape, 0, 0, 0))
        _check(flat, pieces, [q.data.view(-1) for q in params], "ZeRO-1/2")
        optimizer.set_layout(flat, Layout(pieces, group=pg))
    return _note(2 if w.partition_gradients else 1)


def _attach_zero3(w, optimizer: T5XAdafactor) -> str:
    """ZeRO 3: every parameter is cut into ceil(numel / world) element partitions, this process's from
    rank x that; a sub-group's flat fp32 tensor concatenates its parameters' partitions (padding included)."""
    import torch.distributed as dist

    for s, flat in enumerate(w.fp32_partitioned_groups_flat):
        params, parts = w.fp16_groups[s], w.fp16_partitioned_groups[s]
        groups = getattr(w, "sub_group_process_groups", None)
        pg = groups[s] if groups else params[0].ds_process_group
        rank, world = dist.get_rank(group=pg), dist.get_world_size(group=pg)
        pieces, off = [], 0
        for q, part in zip(params, parts):
            size, numel = part.ds_numel, q.ds_numel
            if size != -(-numel // world):
                raise FmtspecError(f"adafactor_t5x: a ZeRO-3 partition of {size} elements of a {numel}-element "
                                   f"parameter over {world} processes is not the layout this code knows; use "
                                   "optimizer: adafactor or adamw")
            start = rank * size
            pieces.append(Piece(tuple(q.ds_shape), off, start, max(0, min(numel - start, size))))
            off += size
        if off != flat.numel():
            raise FmtspecError("adafactor_t5x: ZeRO-3's flat partition is not the concatenation of its "
                               "parameters' partitions; use optimizer: adafactor or adamw")
        _check(flat, pieces, [part.data.view(-1) for part in parts], "ZeRO-3", local=True)
        optimizer.set_layout(flat, Layout(pieces, group=pg))
    return _note(3)


def _note(stage: int) -> str:
    """The same for any process count (run.json is: N processes train what one does)."""
    return (f"adafactor_t5x under ZeRO stage {stage}: T5X's rule on whole weights, factored second moments "
            "included; the per-row/column gradient statistics and the weight and update RMS are all-reduced "
            "across the flat partitions")


def _check(flat: torch.Tensor, pieces: list[Piece], sources: list[torch.Tensor], what: str,
           local: bool = False) -> None:
    """The layout read from DeepSpeed's wrapper puts each parameter's values where the flat tensor has them."""
    for piece, src in zip(pieces, sources):
        if not piece.length:
            continue
        got = flat[piece.offset:piece.offset + piece.length]
        want = src[:piece.length] if local else src[piece.start:piece.start + piece.length]
        if got.shape != want.shape or not torch.equal(got, want.to(got.dtype)):
            raise FmtspecError(f"adafactor_t5x: this DeepSpeed's {what} flat partition does not hold the weights "
                               "where this code expects them; use optimizer: adafactor or adamw")
