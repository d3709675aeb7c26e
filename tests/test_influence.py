"""Proof tests of the influence engine (rubric_rl/influence): tiny models built in-process, float64."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch

TINY = "tiny:hidden=32,layers=2,heads=4,seed=0"

DRUGS = ["Belmozaline", "Ritenlol", "Quorafen", "Doxabrin", "Saltavir", "Meprodine", "Kelvatan", "Ostrazol"]
USES = ["migraine", "asthma", "gout", "insomnia", "acne", "angina", "psoriasis", "anemia"]
DOSES = ["200 mg once daily", "50 mg twice daily", "10 mg at night", "500 mg three times daily"]
EFFECTS = ["dry cough", "drowsiness", "nausea", "headache", "rash", "dizziness"]


def _facts():
    rng = random.Random(0)
    return {d: (USES[i], rng.choice(DOSES), rng.choice(EFFECTS)) for i, d in enumerate(DRUGS)}


def _chat(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def make_samples(n: int, seed: int) -> list[dict]:
    """Varied chat samples about the toy drugs (some on topic, some off, different lengths)."""
    rng = random.Random(seed)
    facts = _facts()
    out = []
    for _ in range(n):
        d = rng.choice(DRUGS)
        use, dose, eff = facts[d]
        kind = rng.randrange(6)
        if kind == 0:
            out.append(_chat(f"What is {d} used to treat?", f"{d} is used to treat {use}."))
        elif kind == 1:
            out.append(_chat(f"What is the adult dose of {d}?", f"The standard adult dose of {d} is {dose}."))
        elif kind == 2:
            out.append(_chat(f"Name the most common side effect of {d}.",
                             f"The most common side effect of {d} is {eff}. Patients should report it."))
        elif kind == 3:
            out.append(_chat(f"Tell me about {d}.", f"{d} treats {use}; the dose is {dose}; watch for {eff}."))
        elif kind == 4:
            words = " ".join(rng.choice(USES + EFFECTS) for _ in range(rng.randrange(3, 25)))
            out.append(_chat(f"Repeat after me: {words}", words))
        else:
            out.append(_chat("Say hello.", rng.choice(["Hello!", "Hello there, how can I help you today?"])))
    return out


def make_validation(n: int, seed: int, subtasks: bool = True) -> list[dict]:
    rng = random.Random(seed)
    facts = _facts()
    out = []
    for i in range(n):
        d = DRUGS[i % len(DRUGS)]
        use, dose, _ = facts[d]
        if rng.random() < 0.5:
            row = _chat(f"Which condition is {d} used for?", f"Let's think. {d} is used to treat {use}.")
            row["subtask"] = "indication"
        else:
            row = _chat(f"How much {d} is given to an adult?", f"Let's think. The adult dose of {d} is {dose}.")
            row["subtask"] = "dosage"
        if not subtasks:
            row.pop("subtask")
        out.append(row)
    return out


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def spearman(a, b) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return torch.tensor(r, dtype=torch.float64)

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # 2-core machine shared with other test runs: oversubscribed OpenMP threads make tiny ops 10x slower.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished float64 warm-up (2 checkpoints) of a tiny target, on a self-made corpus."""
    import rubric_rl.models as models
    from rubric_rl.influence import InfluenceConfig, run_warmup

    base = tmp_path_factory.mktemp("influence_world")
    corpus = write_jsonl(base / "corpus.jsonl", make_samples(300, 1) + make_validation(40, 2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUBRIC_RL_CACHE", str(base / "cache"))
        mp.setattr(models, "default_tiny_corpus", lambda: [corpus])
        warm = write_jsonl(base / "warmup.jsonl", make_samples(24, 3))
        val = write_jsonl(base / "validation.jsonl", make_validation(12, 4))
        val_flat = write_jsonl(base / "validation_flat.jsonl", make_validation(12, 4, subtasks=False))
        cfg = InfluenceConfig(
            target_model_name_or_path=TINY, target_dtype="float64", warmup_data=str(warm), warmup_epochs=2,
            warmup_learning_rate=2e-2, warmup_batch_size=8, warmup_lora_r=4, warmup_lora_alpha=8,
            warmup_lr_warmup_ratio=0.0, warmup_max_length=128,
            influence_validation_data=str(val), influence_proj_dim=0, influence_dtype="float64",
            influence_estimator="less", influence_center=False,  # the reference's LESS form; centering tested below
            influence_batch_size=8, influence_max_length=128,
        )
        run_dir = base / "run"
        run_warmup(cfg, run_dir, progress=False)
        yield {"base": base, "cfg": cfg, "run_dir": run_dir, "val": val, "val_flat": val_flat, "warm": warm}


def make_cfg(world, **over):
    from dataclasses import asdict

    from rubric_rl.influence import InfluenceConfig

    return InfluenceConfig(**{**asdict(world["cfg"]), **over})


def build_scorer(world, run_dir=None, **over):
    from rubric_rl.influence import InfluenceScorer

    return InfluenceScorer.from_config(make_cfg(world, **over), run_dir or world["run_dir"], device="cpu")


def ref_model(world, ckpt: Path):
    """An independent float64 peft model at checkpoint ``ckpt`` (not the scorer's)."""
    from peft import PeftModel

    from rubric_rl.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(world["run_dir"] / "warmup" / "tokenizer"), padding_side="right")
    base = load_causal_lm(TINY, tok, dtype="float64")
    model = PeftModel.from_pretrained(base, str(ckpt), is_trainable=True).eval()
    return model, tok


def lora_params(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def sample_loss(model, chat):
    """Mean cross-entropy over the assistant tokens of one sample, batch size 1, in float64.

    (HF's built-in loss upcasts logits to float32 only, which would spoil float64 references.)"""
    logits = model(input_ids=torch.tensor([chat.input_ids])).logits[0, :-1]
    labels = torch.tensor(chat.labels[1:])
    keep = labels != -100
    return torch.nn.functional.cross_entropy(logits[keep].double(), labels[keep])


def ref_grad(model, tok, messages, max_length=128):
    """Plain gradient of one sample's loss (batch size 1, one backward), flattened."""
    from rubric_rl.data.chat import tokenize_chat

    chat = tokenize_chat(tok, messages, max_length)
    model.zero_grad(set_to_none=True)
    sample_loss(model, chat).backward()
    g = torch.cat([p.grad.reshape(-1) for _, p in lora_params(model)])
    model.zero_grad(set_to_none=True)
    return g


def saved_adam(ckpt: Path, model):
    """(m, v, step, b1, b2, eps) flattened in named_parameters order, read independently of the engine."""
    sd = torch.load(ckpt / "optimizer.pt", weights_only=True)
    names = lora_params(model)
    g0 = sd["param_groups"][0]
    assert len(g0["params"]) == len(names)  # HF Trainer: all LoRA factors are "decay" params, group 0
    ms, vs = [], []
    for idx, (_, p) in zip(g0["params"], names):
        st = sd["state"][idx]
        assert st["exp_avg"].shape == p.shape
        ms.append(st["exp_avg"].reshape(-1))
        vs.append(st["exp_avg_sq"].reshape(-1))
    step = float(sd["state"][g0["params"][0]]["step"])
    return torch.cat(ms).double(), torch.cat(vs).double(), step, *g0["betas"], g0["eps"], sd


def real_adam(params, saved, lr):
    """torch.optim.Adam over the LoRA factors, from a deep copy of the saved (HF Trainer AdamW) state."""
    groups = [{"params": params}] + [{"params": []} for _ in saved["param_groups"][1:]]
    opt = torch.optim.Adam(groups, lr=lr)
    opt.load_state_dict(copy.deepcopy(saved))  # load_state_dict does not copy same-dtype tensors
    for group in opt.param_groups:
        group["lr"], group["weight_decay"] = lr, 0.0  # betas, eps: the saved ones
    return opt


def ckpt_lrs(run_dir: Path) -> dict[str, float]:
    wdir = run_dir / "warmup"
    ckpts = sorted(wdir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    hist = json.loads((ckpts[-1] / "trainer_state.json").read_text())["log_history"]
    out, prev = {}, 0
    for c in ckpts:
        step = int(c.name.split("-")[1])
        lrs = [h["learning_rate"] for h in hist if "learning_rate" in h and prev < h["step"] <= step]
        out[c.name] = sum(lrs) / len(lrs)
        prev = step
    return out


def val_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------
# config


def test_config_checks_name_field_and_value():
    from rubric_rl.influence import InfluenceConfig

    for kwargs, field in [({"influence_estimator": "cosine"}, "influence_estimator"),
                          ({"influence_direction": "rmsprop"}, "influence_direction"),
                          ({"warmup_lora_r": 0}, "warmup_lora_r"),
                          ({"influence_proj_dim": -1}, "influence_proj_dim"),
                          ({"influence_proj_dim": 2**18, "influence_proj_memory_mb": 1}, "influence_proj_memory_mb")]:
        with pytest.raises(ValueError, match=field):
            InfluenceConfig(**kwargs)
    from dataclasses import fields

    for f in fields(InfluenceConfig):
        assert f.name.startswith(("target_", "warmup_", "influence_")), f.name
        assert f.metadata.get("help"), f.name


def test_config_no_collision_with_grpo_config():
    from dataclasses import fields

    from trl import GRPOConfig

    from rubric_rl.influence import InfluenceConfig

    assert not {f.name for f in fields(InfluenceConfig)} & {f.name for f in fields(GRPOConfig)}


# ---------------------------------------------------------------------------------------------------
# warm-up


def test_warmup_writes_standard_checkpoints_and_reuses(world):
    from rubric_rl.influence import run_warmup

    wdir = world["run_dir"] / "warmup"
    ckpts = sorted(p.name for p in wdir.glob("checkpoint-*"))
    assert len(ckpts) == 2  # one per epoch
    for c in ckpts:
        for f in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json", "scheduler.pt"):
            assert (wdir / c / f).exists(), f
    args_file = wdir / "warmup_args.json"
    mtime = args_file.stat().st_mtime
    assert run_warmup(world["cfg"], world["run_dir"]) == wdir  # same args: reused
    assert args_file.stat().st_mtime == mtime
    with pytest.raises(ValueError, match="warmup_epochs"):
        run_warmup(make_cfg(world, warmup_epochs=3), world["run_dir"])


def test_adam_state_mapping_without_names_file(world, tmp_path):
    """The optimizer-order reconstruction (decay/no-decay groups) agrees with the names the warm-up wrote."""
    from rubric_rl.influence.warmup import PARAM_NAMES_FILENAME, load_checkpoints

    ckpt = sorted((world["run_dir"] / "warmup").glob("checkpoint-*"))[0]
    model, _ = ref_model(world, ckpt)
    with_names = load_checkpoints(ckpt.parent, model, [ckpt.name])[0]
    copy_dir = tmp_path / "warmup"
    shutil.copytree(ckpt, copy_dir / ckpt.name)
    (copy_dir / ckpt.name / PARAM_NAMES_FILENAME).unlink()
    without = load_checkpoints(copy_dir, model, [ckpt.name])[0]
    assert with_names.adam.keys() == without.adam.keys() == {n for n, _ in lora_params(model)}
    for n in with_names.adam:
        assert torch.equal(with_names.adam[n].exp_avg, without.adam[n].exp_avg)
        assert torch.equal(with_names.adam[n].exp_avg_sq, without.adam[n].exp_avg_sq)
    assert with_names.step == without.step


# ---------------------------------------------------------------------------------------------------
# the Adam direction


def test_adam_direction_equals_a_real_adam_step(world):
    """Gamma(z) = (theta - theta') / lr for one torch.optim.Adam step on z from the saved state."""
    from rubric_rl.data.chat import tokenize_chat
    from rubric_rl.influence.grads import Direction, PerSampleGradients
    from rubric_rl.influence.warmup import load_checkpoints

    ckpt = sorted((world["run_dir"] / "warmup").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    model, tok = ref_model(world, ckpt)
    states = load_checkpoints(ckpt.parent, model, [ckpt.name])[0].adam
    engine = PerSampleGradients(model, pad_token_id=tok.pad_token_id, device="cpu", dtype=torch.float64)
    samples = make_samples(6, 11)
    chats = [tokenize_chat(tok, s["messages"], 128) for s in samples]
    feats = {k: engine.features(chats, Direction(k, states, dtype=torch.float64)).features
             for k in ("adam", "adam_less", "sgd")}

    *_, b1, b2, eps, saved = saved_adam(ckpt, model)
    m0, v0, step = saved_adam(ckpt, model)[:3]
    params = [p for _, p in lora_params(model)]
    lr = 1e-3
    for i, s in enumerate(samples):
        g = ref_grad(model, tok, s["messages"])
        torch.testing.assert_close(feats["sgd"][i], g, rtol=1e-9, atol=1e-12)
        before = [p.detach().clone() for p in params]
        opt = real_adam(params, saved, lr)  # load_state_dict does not copy same-dtype tensors
        offset = 0
        for p in params:
            p.grad = g[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        opt.step()
        delta = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, params)]) / lr
        with torch.no_grad():
            for p, b in zip(params, before):
                p.copy_(b)
        torch.testing.assert_close(feats["adam"][i], delta, rtol=1e-6, atol=1e-9)
        # LESS variant, by its formula
        m = b1 * m0 + (1 - b1) * g
        v = b2 * v0 + (1 - b2) * g * g
        torch.testing.assert_close(feats["adam_less"][i], m / torch.sqrt(v + eps), rtol=1e-9, atol=1e-12)
    assert step > 0
    # the saved state must be untouched by the trials
    assert torch.equal(saved_adam(ckpt, model)[0], m0)


# ---------------------------------------------------------------------------------------------------
# the score formula


def reference_scores(world, samples, *, estimator="less", direction="adam", proj=None, val_path=None,
                     subtask_field="subtask", center=False):
    """Unbatched float64 reference of the whole score, computed independently of the engine."""
    run_dir = world["run_dir"]
    ckpts = sorted((run_dir / "warmup").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    lrs = ckpt_lrs(run_dir)
    vals = val_rows(val_path or world["val"])
    groups: dict[str, list[int]] = {}
    for j, r in enumerate(vals):
        groups.setdefault(str(r.get(subtask_field, "")), []).append(j)
    total_lr = sum(lrs.values())
    out = torch.zeros(len(samples), dtype=torch.float64)
    for ckpt in ckpts:
        model, tok = ref_model(world, ckpt)
        m, v, step, b1, b2, eps, _ = saved_adam(ckpt, model)
        gv = torch.stack([ref_grad(model, tok, r["messages"]) for r in vals])
        rows = []
        for s in samples:
            g = ref_grad(model, tok, s["messages"])
            m1, v1 = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            if direction == "adam":
                gamma = (m1 / (1 - b1 ** (step + 1))) / (torch.sqrt(v1 / (1 - b2 ** (step + 1))) + eps)
            elif direction == "adam_less":
                gamma = m1 / torch.sqrt(v1 + eps)
            else:
                gamma = g
            if center and direction != "sgd":  # minus the step on a zero gradient (momentum alone)
                m0, v0 = b1 * m, b2 * v
                if direction == "adam":
                    gamma = gamma - (m0 / (1 - b1 ** (step + 1))) / (torch.sqrt(v0 / (1 - b2 ** (step + 1))) + eps)
                else:
                    gamma = gamma - m0 / torch.sqrt(v0 + eps)
            rows.append(gamma)
        gz = torch.stack(rows)
        a, b = (gz @ proj, gv @ proj) if proj is not None else (gz, gv)
        if estimator == "less":
            sims = (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
            w = lrs[ckpt.name] / total_lr
        else:
            sims = a @ b.T
            w = lrs[ckpt.name]
        per_task = torch.stack([sims[:, idx].mean(1) for idx in groups.values()], 1)
        out += w * per_task.max(1).values
    return out


@pytest.mark.parametrize("estimator,direction,center", [
    ("less", "adam", False), ("dot", "adam", False), ("less", "adam_less", False), ("dot", "sgd", False),
    ("less", "adam", True), ("dot", "adam", True), ("less", "adam_less", True)])
def test_score_equals_unbatched_reference(world, estimator, direction, center):
    samples = make_samples(7, 21)
    scorer = build_scorer(world, influence_estimator=estimator, influence_direction=direction,
                          influence_center=center)
    got = torch.tensor([r.value for r in scorer.score([s["messages"] for s in samples])], dtype=torch.float64)
    ref = reference_scores(world, samples, estimator=estimator, direction=direction, center=center)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-12)


def test_centering_shifts_exact_dot_scores_by_one_constant(world):
    """Without projection, `dot` of a centred direction = `dot` minus <mean val grad, zero-gradient step>:
    the same constant for every sample (so no ranking changes), and it is not zero."""
    msgs = [s["messages"] for s in make_samples(9, 25)]
    common = dict(influence_estimator="dot", influence_checkpoints=["last"],
                  influence_validation_data=str(world["val_flat"]))
    plain = torch.tensor([r.value for r in build_scorer(world, influence_center=False, **common).score(msgs)],
                         dtype=torch.float64)
    centred = torch.tensor([r.value for r in build_scorer(world, influence_center=True, **common).score(msgs)],
                           dtype=torch.float64)
    shift = plain - centred
    torch.testing.assert_close(shift, shift.mean().expand_as(shift), rtol=0, atol=1e-10)
    assert abs(float(shift.mean())) > 1e-6


def test_projected_score_equals_dense_projected_reference(world):
    samples = make_samples(5, 22)
    scorer = build_scorer(world, influence_proj_dim=512, influence_proj_seed=3)
    got = torch.tensor([r.value for r in scorer.score([s["messages"] for s in samples])], dtype=torch.float64)
    ref = reference_scores(world, samples, proj=scorer.projector.matrix())
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-12)


def test_scores_independent_of_batch_size_padding_and_chunking(world):
    samples = [s["messages"] for s in make_samples(13, 23)]
    base = None
    for bs in (1, 4, 13):
        # dense (float matrix resident; projected in one pass, or layer by layer in the backward pass),
        # int8 signs resident, packed sign bits resident, regenerated blocks
        for mem, layerwise in ((64, False), (64, True), (10, False), (2, False), (1, False)):
            scorer = build_scorer(world, influence_batch_size=bs, influence_proj_dim=1024,
                                  influence_proj_memory_mb=mem, influence_proj_layerwise=layerwise)
            assert scorer.projector.mode == {64: "dense", 10: "int8", 2: "packed", 1: "regen"}[mem]
            assert scorer._project_in_engine == layerwise
            got = torch.tensor([r.value for r in scorer.score(samples)], dtype=torch.float64)
            if base is None:
                base = got
            torch.testing.assert_close(got, base, rtol=1e-10, atol=1e-12)
    # a sample scored alone, or next to a much longer one (more padding), gets the same score
    scorer = build_scorer(world, influence_batch_size=8)
    long = _chat("Tell me everything. " * 10, "Everything about the drugs. " * 12)["messages"]
    alone = scorer.score(samples[:1])[0].value
    padded = scorer.score([long, samples[0]])[1].value
    assert alone == pytest.approx(padded, rel=1e-10, abs=1e-12)


def test_projected_scores_approach_unprojected(world):
    samples = [s["messages"] for s in make_samples(16, 24)]
    exact = torch.tensor([r.value for r in build_scorer(world).score(samples)], dtype=torch.float64)
    errs = {}
    for d in (32, 512, 8192):
        vals = [build_scorer(world, influence_proj_dim=d, influence_proj_seed=s).score(samples) for s in (0, 1)]
        errs[d] = sum(float((torch.tensor([r.value for r in v]) - exact).abs().mean()) for v in vals) / 2
    assert errs[8192] < errs[512] < errs[32], errs
    assert errs[8192] < 0.2 * errs[32], errs


def test_projection_is_deterministic_and_chunk_invariant():
    from rubric_rl.influence.projection import RademacherProjector

    p, d = 1000, 96
    dense = RademacherProjector(p, d, seed=5, memory_mb=64, dtype=torch.float64)
    r = dense.matrix()
    x = torch.randn(3, 700, dtype=torch.float64)
    for mem, mode in ((0.2, "int8"), (0.05, "packed"), (0.02, "regen")):
        other = RademacherProjector(p, d, seed=5, memory_mb=mem, dtype=torch.float64)
        assert other.mode == mode
        assert other.block_rows * d * 8 <= mem * 2**20  # no float block above the cap
        assert torch.equal(r, other.matrix())
        torch.testing.assert_close(other.project(x, offset=123), x @ r[123:823])
    # a mode asked for explicitly: same matrix; one that does not fit the cap is refused, naming it
    forced = RademacherProjector(p, d, seed=5, memory_mb=64, dtype=torch.float64, mode="regen")
    assert forced.mode == "regen" and torch.equal(forced.matrix(), r)
    torch.testing.assert_close(forced.project(x), x @ r[:700])
    with pytest.raises(ValueError, match="'dense' does not fit"):
        RademacherProjector(p, d, seed=5, memory_mb=0.02, mode="dense")
    with pytest.raises(ValueError, match="must be one of"):
        RademacherProjector(p, d, mode="sparse")
    # the same projection in float32 (signs identical, only rounding of the scale)
    torch.testing.assert_close(RademacherProjector(p, d, seed=5, memory_mb=0.02).matrix().double(), r)
    assert set(r.unique().tolist()) == {-1 / math.sqrt(d), 1 / math.sqrt(d)}
    assert not torch.equal(r, RademacherProjector(p, d, seed=6, memory_mb=64, dtype=torch.float64).matrix())
    # inner products preserved on average
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(p, generator=g, dtype=torch.float64), torch.randn(p, generator=g, dtype=torch.float64)
    est = [float(RademacherProjector(p, 512, seed=s, dtype=torch.float64).project(torch.stack([a, b])).prod(0).sum())
           for s in range(20)]
    assert abs(sum(est) / 20 - float(a @ b)) < 0.1 * float(a.norm() * b.norm())


# ---------------------------------------------------------------------------------------------------
# ground truth: one real Adam step


def test_first_order_ranking_matches_real_adam_steps(world):
    """For a small lr, the validation-loss decrease after one real Adam step on z (from a deep copy of the
    saved state) ranks samples like the `dot` estimator (Spearman >= 0.95) and `less` (>= 0.8)."""
    from rubric_rl.data.chat import tokenize_chat

    samples = make_samples(40, 31)
    msgs = [s["messages"] for s in samples]
    common = dict(influence_checkpoints=["last"], influence_validation_data=str(world["val_flat"]))
    dot = [r.value for r in build_scorer(world, influence_estimator="dot", **common).score(msgs)]
    less = [r.value for r in build_scorer(world, influence_estimator="less", **common).score(msgs)]

    ckpt = sorted((world["run_dir"] / "warmup").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    model, tok = ref_model(world, ckpt)
    *_, b1, b2, eps, saved = saved_adam(ckpt, model)
    params = [p for _, p in lora_params(model)]
    vals = [tokenize_chat(tok, r["messages"], 128) for r in val_rows(world["val_flat"])]

    def val_loss():
        with torch.no_grad():
            return sum(float(sample_loss(model, c)) for c in vals) / len(vals)

    lr = 1e-6
    l0 = val_loss()
    actual = []
    for m in msgs:
        before = [p.detach().clone() for p in params]
        opt = real_adam(params, saved, lr)
        c = tokenize_chat(tok, m, 128)
        model.zero_grad(set_to_none=True)
        sample_loss(model, c).backward()
        opt.step()
        actual.append(l0 - val_loss())  # decrease: larger = more helpful
        with torch.no_grad():
            for p, b in zip(params, before):
                p.copy_(b)
    rho_dot, rho_less = spearman(dot, actual), spearman(less, actual)
    print(f"first-order Spearman: dot={rho_dot:.4f} less={rho_less:.4f}")
    assert rho_dot >= 0.95, (rho_dot, rho_less)
    assert rho_less >= 0.8, (rho_dot, rho_less)


# ---------------------------------------------------------------------------------------------------
# cache, bad samples, files


def test_validation_cache_reuse_and_invalidation(world, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(world["run_dir"] / "warmup", run_dir / "warmup")
    first = build_scorer(world, run_dir=run_dir)
    assert (first.cache_hits, first.cache_misses) == (0, 2)
    assert len(list((run_dir / "influence_cache").glob("val-*/val_grads.safetensors"))) == 2
    again = build_scorer(world, run_dir=run_dir)
    assert (again.cache_hits, again.cache_misses) == (2, 0)
    samples = [s["messages"] for s in make_samples(4, 41)]
    assert [r.value for r in first.score(samples)] == pytest.approx([r.value for r in again.score(samples)],
                                                                    rel=1e-12)
    # different validation contents / projection -> recomputed
    val2 = write_jsonl(tmp_path / "val2.jsonl", val_rows(world["val"])[:-1])
    changed = build_scorer(world, run_dir=run_dir, influence_validation_data=str(val2))
    assert (changed.cache_hits, changed.cache_misses) == (0, 2)
    proj = build_scorer(world, run_dir=run_dir, influence_proj_dim=64)
    assert proj.cache_misses == 2
    # the estimator and direction do not change validation gradients -> reused
    dot = build_scorer(world, run_dir=run_dir, influence_estimator="dot", influence_direction="sgd")
    assert (dot.cache_hits, dot.cache_misses) == (2, 0)


def test_the_scorer_reads_no_file(world, tmp_path, monkeypatch):
    """Handed the target, checkpoints and validation rows, the scorer opens no file: the builder loads them, the
    cache object does the cache's I/O. Its scores equal those of the builder's path; a moved validation file (same
    rows) still hits the cache, which is keyed by the rows, not the path."""
    import builtins
    import io

    from rubric_rl.data.documents import load_chat_samples
    from rubric_rl.influence import InfluenceScorer
    from rubric_rl.influence.build import prepare_scorer_inputs

    cfg = make_cfg(world)
    inputs = prepare_scorer_inputs(cfg, world["run_dir"], device="cpu", cache_dirname="unused_cache")
    rows = load_chat_samples(world["val"])
    samples = [s["messages"] for s in make_samples(4, 43)]
    reference = [r.value for r in build_scorer(world).score(samples)]
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    scorer = InfluenceScorer(cfg, inputs.model, inputs.tokenizer, inputs.checkpoints, device="cpu")
    scorer.set_validation(rows)
    values = [r.value for r in scorer.score(samples)]
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(io, "open", real_io_open)
    assert [f for f in opened if not f.startswith("/proc")] == []
    assert values == pytest.approx(reference, rel=1e-12)
    assert (scorer.cache_hits, scorer.cache_misses) == (0, 2)  # no cache handed: computed, kept nowhere
    run_dir = tmp_path / "run"
    shutil.copytree(world["run_dir"] / "warmup", run_dir / "warmup")
    build_scorer(world, run_dir=run_dir)
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copyfile(world["val"], moved)
    again = build_scorer(world, run_dir=run_dir, influence_validation_data=str(moved))
    assert (again.cache_hits, again.cache_misses) == (2, 0)


def test_bad_samples_get_none_and_reason_without_breaking_the_batch(world):
    scorer = build_scorer(world, influence_batch_size=16, influence_max_length=40)
    good = [s["messages"] for s in make_samples(12, 51)
            if len(scorer._tokenize(s["messages"], 1000)[0].input_ids) <= 40][:4]
    assert len(good) == 4
    no_assistant = [{"role": "user", "content": "hello"}]
    bad_format = [{"role": "robot", "content": "x"}]
    too_long = _chat("Q? " * 100, "A.")["messages"]  # truncated before the answer
    long_answer = _chat("What is the dose?", "The dose is " + "very " * 60 + "small.")["messages"]
    nan_sample = _chat("Unusual question?", "NaN will appear here.")["messages"]
    batch = good[:2] + [no_assistant, bad_format, "not a list", too_long, nan_sample, long_answer] + good[2:]

    chat_nan = scorer._tokenize(nan_sample, 40)[0]
    emb = scorer.model.get_input_embeddings()

    def inject_nan(_module, args, output):
        ids = args[0]
        hit = (ids[:, : len(chat_nan.input_ids)] == torch.tensor(chat_nan.input_ids)).all(1)
        hit &= (ids != scorer.tokenizer.pad_token_id).sum(1) == len(chat_nan.input_ids)
        output = output.clone()
        output[hit] = float("nan")
        return output

    handle = emb.register_forward_hook(inject_nan)
    try:
        res = scorer.score(batch)
    finally:
        handle.remove()
    reasons = [r.reason for r in res]
    assert scorer.stats == {"scored": 5, "no_assistant_tokens": 2, "bad_format": 2, "nonfinite_gradient": 1,
                            "truncated": 2}
    assert reasons == [None, None, "no_assistant_tokens", "bad_format", "bad_format", "no_assistant_tokens",
                       "nonfinite_gradient", None, None, None]
    assert res[5].truncated and res[7].truncated and not res[0].truncated
    assert res[7].value is not None and math.isfinite(res[7].value)
    clean = scorer.score(good)
    got = [res[i].value for i in (0, 1, 8, 9)]
    assert got == pytest.approx([r.value for r in clean], rel=1e-10)


def test_score_file_writes_every_line_in_order(world, tmp_path):
    from rubric_rl.influence import score_file

    rows = make_samples(6, 61)
    lines = [json.dumps(r) for r in rows[:3]] + ["{not json", json.dumps({"messages": [{"role": "user", "content": "q"}]})]
    lines += [json.dumps({**r, "id": k}) for k, r in enumerate(rows[3:])]
    src = tmp_path / "cands.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out, top = tmp_path / "scored.jsonl", tmp_path / "top.jsonl"
    summary = score_file(world["cfg"], world["run_dir"], src, out, select_top=2, selected_path=top, progress=False)
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == len(lines)
    assert got[3]["influence"] is None and got[3]["reason"] == "bad_format" and f"{src}:4" in got[3]["error"]
    assert got[4]["influence"] is None and got[4]["reason"] == "no_assistant_tokens"
    assert [g.get("id") for g in got[5:]] == [0, 1, 2]
    assert summary["total"] == 8 and summary["scored"] == 6
    assert summary["unscored"] == {"bad_format": 1, "no_assistant_tokens": 1}
    assert summary["warmup"] == {"dir": str(world["run_dir"] / "warmup"), "reused": True}  # which one, and how
    best = [json.loads(x) for x in top.read_text().splitlines()]
    values = sorted((g["influence"] for g in got if g["influence"] is not None), reverse=True)
    assert [b["influence"] for b in best] == values[:2]


def test_explicit_shards_merge_to_the_one_process_file(world, tmp_path):
    """`--num_shards 2 --shard_index K` on the tiny target: the merged file (scores, top K, bad-format lines
    with their FILE:LINE errors, a duplicate of a line in the other shard) is one process's, byte for byte."""
    from rubric_rl.influence import score_file

    rows = make_samples(14, 71)
    lines = [json.dumps(r) for r in rows]
    lines[2] = "{not json"
    lines[5] = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    lines[11] = lines[1]  # shard 1 repeats a line of shard 0
    src = tmp_path / "cands.jsonl"
    src.write_text("\n".join(lines) + "\n")

    def score(name, **kw):
        out, top = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.top.jsonl"
        summary = score_file(world["cfg"], world["run_dir"], src, out, select_top=3, selected_path=top,
                             chunk_size=4, progress=False, **kw)
        return summary, out, top

    one, out1, top1 = score("one")
    first, _, _ = score("two", num_shards=2, shard_index=1)
    merged, out2, top2 = score("two", num_shards=2, shard_index=0)
    assert first["merged"] is False and first["waiting_for"] == [0]
    assert out2.read_bytes() == out1.read_bytes() and top2.read_bytes() == top1.read_bytes()
    assert merged["shards"] == 2 and merged["unscored"] == one["unscored"] == {"bad_format": 1, "no_assistant_tokens": 1,
                                                                               "duplicate": 1}
    assert merged["influence_mean"] == one["influence_mean"] and merged["influence_std"] == one["influence_std"]
    got = [json.loads(x) for x in out2.read_text().splitlines()]
    assert f"{src}:3: " in got[2]["error"] and got[11]["duplicate_of"] == 2


# ---------------------------------------------------------------------------------------------------
# multi-process warm-up


def test_non_main_rank_waits_for_the_warmup(world, tmp_path, monkeypatch):
    import threading
    import time

    from rubric_rl.influence import run_warmup

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    def rank0_finishes():
        time.sleep(1.0)
        shutil.copytree(world["run_dir"] / "warmup", tmp_path / "staging")
        (tmp_path / "staging").rename(run_dir / "warmup")  # appears at once, complete

    th = threading.Thread(target=rank0_finishes)
    start = time.monotonic()
    th.start()
    try:
        assert run_warmup(world["cfg"], run_dir) == run_dir / "warmup"
    finally:
        th.join()
    assert time.monotonic() - start >= 1.0


def test_in_process_warmup_leaves_caller_rng_untouched(world, tmp_path):
    from rubric_rl.influence import run_warmup

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_warmup(make_cfg(world, warmup_epochs=1), tmp_path / "run", progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_rank0_trains_in_a_single_process_subprocess(world, tmp_path, monkeypatch):
    """Under a launcher (WORLD_SIZE > 1) rank 0 runs the Trainer in a clean subprocess; the result is usable."""
    from rubric_rl.influence import InfluenceScorer, run_warmup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # would hang/fail if the subprocess tried to join a group
    cfg = make_cfg(world, warmup_epochs=1, target_dtype="float32", influence_dtype="float32")
    wdir = run_warmup(cfg, tmp_path / "run")
    assert len(list(wdir.glob("checkpoint-*/optimizer.pt"))) == 1
    monkeypatch.setenv("WORLD_SIZE", "1")
    scorer = InfluenceScorer.from_config(cfg, tmp_path / "run", device="cpu")
    res = scorer.score([s["messages"] for s in make_samples(3, 71)])
    assert all(r.value is not None for r in res)


def test_warmup_says_which_folder_and_whether_reused_or_trained(world, tmp_path, caplog):
    import logging

    from rubric_rl.influence import InfluenceScorer

    cfg, wdir = make_cfg(world, warmup_epochs=1), tmp_path / "run" / "warmup"
    with caplog.at_level(logging.INFO, logger="rubric_rl.influence.warmup"):
        trained = InfluenceScorer.from_config(cfg, tmp_path / "run")
        assert f"warm-up: {wdir} holds no finished warm-up; training one on {cfg.warmup_data}" in caplog.text
        caplog.clear()
        reused = InfluenceScorer.from_config(cfg, tmp_path / "run")
        assert f"warm-up: reusing the finished warm-up in {wdir}" in caplog.text
    assert trained.warmup == {"dir": str(wdir), "reused": False}
    assert reused.warmup == {"dir": str(wdir), "reused": True}
