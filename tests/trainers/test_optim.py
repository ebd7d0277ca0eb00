"""`optimizer: adafactor_t5x` (trainers/optim.py): one and two steps computed by hand from T5X's formulas
(t5x/adafactor.py, apply_param_gradient), the prompt-tuning rule for prompts, the same steps on flat partitions
(as ZeRO hands them) as on whole weights, exact resume through safetensors, and DeepSpeed's wrappers."""

import math
import threading
from pathlib import Path

import pytest
import torch

from trainers.optim import Layout, Piece, T5XAdafactor, attach, build, factored_dims

F64 = torch.float64


def rms(x):
    return math.sqrt(float((x * x).mean()))


def t5x_by_hand(x, grads, *, lr, min_dim, scaled=True, wd=None, beta1=None, clip=1.0):
    """T5X's update written out on a whole tensor: decay 1 - (t+1)^-0.8, eps1 1e-30, eps2 1e-3, factored over
    the two largest dims (d0 the largest) when both are >= min_dim, update clipping, parameter scale."""
    x = x.clone()
    shape = tuple(x.shape)
    factored = len(shape) == 2 and sorted(shape)[-2] >= min_dim
    d1, d0 = (0, 1) if len(shape) == 2 and shape[0] <= shape[1] else (1, 0)
    v_row = v_col = v = m = 0.0
    for t, g in enumerate(grads):
        decay = 1.0 - (t + 1.0) ** -0.8
        g2 = g * g + 1e-30
        if factored:
            v_row = decay * v_row + (1 - decay) * g2.mean(dim=d0)
            v_col = decay * v_col + (1 - decay) * g2.mean(dim=d1)
            row_factor = (v_row / v_row.mean()) ** -0.5
            col_factor = v_col ** -0.5
            y = g * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1)
        else:
            v = decay * v + (1 - decay) * g2
            y = g * v ** -0.5
        if clip is not None:
            y = y / max(1.0, rms(y) / clip)
        scale = lr * max(rms(x), 1e-3) if scaled else lr
        update = scale * y
        if beta1 is not None:
            m = beta1 * m + (1 - beta1) * update
            update = m
        x = (1 - wd) * x - update if wd is not None else x - update
    return x, (v_row, v_col) if factored else v


def weights_and_grads(steps=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"wide": (4, 6), "tall": (6, 4), "small": (2, 5), "vector": (5,)}
    weights = {k: torch.randn(s, generator=gen, dtype=F64) * 0.05 for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=F64) * (1 + 3 * (k == "wide")) for k, s in shapes.items()}
             for _ in range(steps)]
    return weights, grads


def run(weights, grads, **kwargs):
    params = {k: torch.nn.Parameter(w.clone()) for k, w in weights.items()}
    opt = T5XAdafactor(list(params.values()), **kwargs)
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("steps", [1, 2])
def test_one_and_two_steps_match_t5x_by_hand(steps):
    weights, grads = weights_and_grads(steps)
    params, opt = run(weights, grads, lr=0.3, min_dim_size_to_factor=3)
    assert (factored_dims((4, 6), 3), factored_dims((6, 4), 3), factored_dims((2, 5), 3)) == ((0, 1), (1, 0), None)
    for k, p in params.items():
        expected, moments = t5x_by_hand(weights[k], [g[k] for g in grads], lr=0.3, min_dim=3)
        torch.testing.assert_close(p.data, expected, rtol=1e-6, atol=0)
        state = opt.state[p]
        assert state["step"] == steps
        if k in ("wide", "tall"):  # factored: a row and a column vector, T5X's orientation
            torch.testing.assert_close(state["v_row"], moments[0], rtol=1e-6, atol=0)
            torch.testing.assert_close(state["v_col"], moments[1], rtol=1e-6, atol=0)
            assert "v" not in state and state["v_row"].numel() == 4 and state["v_col"].numel() == 6
        else:
            torch.testing.assert_close(state["v"], moments.reshape(-1), rtol=1e-6, atol=0)
    if steps == 1:  # the first step's decay is 0: an unfactored update is sign(G), RMS 1, not clipped
        w, g = weights["vector"], grads[0]["vector"]
        torch.testing.assert_close(params["vector"].data, w - 0.3 * rms(w) * torch.sign(g), rtol=1e-6, atol=0)


def test_prompt_rule_is_unscaled_with_weight_decay_and_50x_a_scaled_step():
    """The prompt-tuning settings (t5_1_1_prompt.gin): no parameter scaling, weight_decay_rate 1e-5. On a weight of
    RMS 0.02 T5X's scaled step is 0.02 x the unscaled one."""
    weights, grads = weights_and_grads(2)
    prompt, _ = run(weights, grads, lr=0.2, multiply_by_parameter_scale=False, weight_decay_rate=1e-5,
                    min_dim_size_to_factor=3)
    for k, p in prompt.items():
        expected, _ = t5x_by_hand(weights[k], [g[k] for g in grads], lr=0.2, min_dim=3, scaled=False, wd=1e-5)
        torch.testing.assert_close(p.data, expected, rtol=1e-6, atol=0)
    w, g = weights["vector"], grads[0]["vector"]
    one, _ = run({"vector": w}, [{"vector": g}], lr=0.2, multiply_by_parameter_scale=False, weight_decay_rate=1e-5)
    torch.testing.assert_close(one["vector"].data, (1 - 1e-5) * w - 0.2 * torch.sign(g), rtol=1e-6, atol=0)
    w = torch.full((64,), 0.02, dtype=F64)
    scaled, _ = run({"w": w}, [{"w": g.repeat(13)[:64]}], lr=1e-3)
    unscaled, _ = run({"w": w}, [{"w": g.repeat(13)[:64]}], lr=1e-3, multiply_by_parameter_scale=False)
    ratio = (unscaled["w"].data - w).abs() / (scaled["w"].data - w).abs()
    torch.testing.assert_close(ratio, torch.full_like(ratio, 50.0), rtol=1e-9, atol=0)


class ThreadSum:
    """An all-reduce across threads standing in for processes: every rank's buffer becomes the rank-order sum."""

    def __init__(self, n):
        self.barrier, self.slots = threading.Barrier(n), [None] * n

    def reduce_for(self, rank):
        def reduce(buf):
            self.slots[rank] = buf.clone()
            self.barrier.wait()
            total = sum(self.slots[1:], self.slots[0].clone())
            self.barrier.wait()
            buf.copy_(total)
        return reduce


@pytest.mark.parametrize("extra", [{}, {"beta1": 0.9, "weight_decay_rate": 1e-3}])
def test_flat_partitions_cut_mid_row_step_like_whole_weights(extra):
    """ZeRO's view: the weights concatenated (with padding) and cut into equal slices, one per process, the cut
    inside a matrix row. Two ranks (threads) share their statistics and end where whole weights do."""
    weights, grads = weights_and_grads(2, seed=1)
    names = ["wide", "vector", "tall", "small"]
    whole, _ = run(weights, grads, lr=0.1, min_dim_size_to_factor=3, **extra)
    offsets, pos = {}, 0
    for k in names:
        offsets[k] = pos
        pos += weights[k].numel() + 1  # one element of padding after each
    size = (pos + 1) // 2
    flat_all = torch.zeros(2 * size, dtype=F64)
    for k in names:
        flat_all[offsets[k]:offsets[k] + weights[k].numel()] = weights[k].reshape(-1)
    summer, flats, opts = ThreadSum(2), [], []
    for rank in range(2):
        lo, hi = rank * size, (rank + 1) * size
        pieces = []
        for k in names:
            shape, off, n = tuple(weights[k].shape), offsets[k], weights[k].numel()
            a, b = max(off, lo), min(off + n, hi)
            pieces.append(Piece(shape, a - lo, a - off, b - a) if b > a else Piece(shape, 0, 0, 0))
        flat = torch.nn.Parameter(flat_all[lo:hi].clone())
        opt = T5XAdafactor([flat], lr=0.1, min_dim_size_to_factor=3, **extra)
        opt.set_layout(flat, Layout(pieces, reduce=summer.reduce_for(rank)))
        flats.append(flat)
        opts.append(opt)
    assert any(0 < p.start % p.shape[-1] for p in opts[1].layouts[id(flats[1])].pieces if p.length)  # mid-row cut
    for g in grads:
        grad_all = torch.zeros(2 * size, dtype=F64)
        for k in names:
            grad_all[offsets[k]:offsets[k] + weights[k].numel()] = g[k].reshape(-1)
        for rank in range(2):
            flats[rank].grad = grad_all[rank * size:(rank + 1) * size].clone()
        threads = [threading.Thread(target=opts[r].step) for r in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    out = torch.cat([f.data for f in flats])
    for k in names:
        got = out[offsets[k]:offsets[k] + weights[k].numel()].view_as(weights[k])
        torch.testing.assert_close(got, whole[k].data, rtol=1e-12, atol=0)
    assert opts[0].state[flats[0]]["v_row"].numel() == 4 + 4  # both matrices' vectors in every process


def test_state_resumes_exactly_through_safetensors(tmp_path):
    from fmtspec.core.run_folder import load_nested, save_nested

    weights, grads = weights_and_grads(3, seed=2)
    uninterrupted, _ = run(weights, grads, lr=0.1, min_dim_size_to_factor=3, beta1=0.5)
    first, opt = run(weights, grads[:2], lr=0.1, min_dim_size_to_factor=3, beta1=0.5)
    save_nested(tmp_path / "optimizer.safetensors", {"optimizer": opt.state_dict()})
    params = {k: torch.nn.Parameter(p.data.clone()) for k, p in first.items()}
    resumed = T5XAdafactor(list(params.values()), lr=0.1, min_dim_size_to_factor=3, beta1=0.5)
    resumed.load_state_dict(load_nested(tmp_path / "optimizer.safetensors")["optimizer"])
    for k, p in params.items():
        p.grad = grads[2][k].clone()
    resumed.step()
    for k in params:
        assert torch.equal(params[k].data, uninterrupted[k].data), k


def test_build_gives_prompts_and_lora_the_prompt_tuning_rule():
    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.ModuleDict({"dense": torch.nn.Linear(4, 4),
                                              "lora_A": torch.nn.Linear(4, 2, bias=False)})
            self.prompts = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(3, 4))])

    module = Module()
    opt = build(list(module.parameters()), {"weight_decay": 0.0}, 1e-3, module)
    model, stage1 = opt.param_groups
    assert len(model["params"]) == 2 and len(stage1["params"]) == 2
    assert (model["multiply_by_parameter_scale"], model["weight_decay_rate"]) == (True, None)
    assert (stage1["multiply_by_parameter_scale"], stage1["weight_decay_rate"]) == (False, 1e-5)
    for g in opt.param_groups:  # T5X's defaults everywhere else
        assert (g["decay_rate"], g["clipping_threshold"], g["min_dim_size_to_factor"], g["epsilon1"],
                g["epsilon2"], g["beta1"], g["lr"]) == (0.8, 1.0, 128, 1e-30, 1e-3, None, 1e-3)
    assert opt.held  # until attach: DeepSpeed's initialising step must not count
    module.model["dense"].weight.grad = torch.ones(4, 4)
    before = module.model["dense"].weight.detach().clone()
    opt.step()
    assert torch.equal(module.model["dense"].weight, before) and not opt.state


def test_deepspeed_zero_stages_step_like_zero0():
    """In one process, through deepspeed.initialize: ZeRO 1/2/3 flatten the weights (alignment padding between
    them) and the attached optimizer still steps them as whole, factored matrices; under ZeRO-3 also in
    sub-groups and with the fp32 partitions shared with the parameters'."""
    import deepspeed

    from trainers.trainer import init_distributed, share_fp32_partitions, single_process_env, zero3_sizes

    def train(stage):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        opt = T5XAdafactor(model.parameters(), lr=0.05, min_dim_size_to_factor=4, held=True)
        config = {"train_batch_size": 2, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
                  "gradient_clipping": 0.0}
        # ZeRO-3 as the trainer sets it up: sub-groups of a tenth of the model, fp32 partitions shared
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=zero3_sizes(config, model))
        if stage == 3:
            assert config["zero_optimization"]["sub_group_size"] == 53 // 10
            assert len(engine.optimizer.fp32_partitioned_groups_flat) > 1
            assert share_fp32_partitions(engine.optimizer) == 53 * 4
            assert all(a.data_ptr() == b.data_ptr() for a, b in zip(engine.optimizer.fp32_partitioned_groups_flat,
                                                                    engine.optimizer.fp16_partitioned_groups_flat))
        note = attach(engine.optimizer, opt)
        gen = torch.Generator().manual_seed(1)
        for _ in range(2):
            loss = engine(torch.randn(2, 6, generator=gen)).square().mean()
            engine.backward(loss)
            engine.step()
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return [p.detach().clone() for p in model.parameters()], note, opt

    with single_process_env():
        init_distributed()
        reference, note, opt = train(0)
        assert note is None and opt.state[next(iter(opt.param_groups[0]["params"]))]["v_row"].numel() == 5
        for stage in (1, 2, 3):
            got, note, opt = train(stage)
            assert f"ZeRO stage {stage}" in note
            state = next(iter(opt.state.values()))
            assert state["v_row"].numel() == 5 and state["v_col"].numel() == 6  # the 5x6 matrix is factored
            for a, b in zip(got, reference):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_promot_under_zero1_trains_each_stage_with_its_rule(tiny_models, tmp_path, monkeypatch):
    """The trainer's wiring: stage 1 (the prompt) gets the prompt-tuning rule, stage 2 (the model) T5X's, both
    through ZeRO's flat partitions, and run.json says which rule ran."""
    import json

    from trainers.config import load_config
    from trainers.train import train
    from fmtspec.core.run_folder import load_nested

    monkeypatch.setenv("FMTSPEC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "harness_tasks" / "fixtures"))
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny" / "promot.yaml",
                         [f"model={tiny_models['mt5']}", "optimizer=adafactor_t5x", "engine.deepspeed=zero1",
                          "eval.limit=2", "prompt_training.eval_every=4", "model_training.eval_every=4"])
    run = train(config, tmp_path / "run")
    notes = json.loads((run / "run.json").read_text())["notes"]
    assert any(n.startswith("adafactor_t5x under ZeRO stage 1") for n in notes)
    assert not any("not factored" in n for n in notes)
    rules = []
    for step in (4, 8):
        saved = load_nested(run / "checkpoints" / f"step-{step}" / "optimizer-rank0.safetensors")
        (group,) = saved["optimizer"]["base_optimizer_state"]["param_groups"]
        rules.append((group["multiply_by_parameter_scale"], group["weight_decay_rate"], group["lr"]))
    assert rules == [(False, 1e-5, 0.2), (True, None, 1e-3)]


def test_every_paper_config_validates_and_names_the_papers_optimizer():
    from trainers.config import load_config

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "promot").rglob("*.yaml"))
    assert len(files) >= 37
    for path in files:
        assert load_config(path)["optimizer"] == "adafactor_t5x", path
        (line,) = [ln for ln in path.read_text().splitlines() if ln.startswith("optimizer:")]
        assert "t5x/adafactor.py" in line and "t5_1_1_prompt.gin" in line, path
