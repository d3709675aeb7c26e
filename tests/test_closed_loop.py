"""`rubric-rl closed-loop` on tiny models: selection picks the highest-loss seeds, the student's own-answer loss is
the loss of what it generated, budgets are spent exactly, a killed run resumes without repeating a round, a run
folder with other settings is refused, and `evaluate` takes a loop's dataset as a source."""

import json
import math

import pytest
import torch

from rubric_rl.configs.closed_loop import ClosedLoopConfig
from rubric_rl.configs.evaluate import EvalConfig
from rubric_rl.configs.influence import InfluenceConfig
from rubric_rl.configs.teacher import TeacherConfig
from rubric_rl.errors import UserError
from rubric_rl.loop import closed_loop
from rubric_rl.loop import run as loop_run
from rubric_rl.loop.selection import own_answers, seed_scores, select
from rubric_rl.teachers.base import TeacherResult
from rubric_rl.teachers.template import TemplateTeacher

TARGET = "tiny:hidden=32,layers=2,heads=4,seed=1"


def _configs(q, **loop):
    kw = dict(loop_seed_data=str(q / "warmup.jsonl"), loop_num_seeds=24, loop_rules=["loss_own", "static"],
              loop_budget=12, loop_rounds=3, loop_rubric_source=str(q / "seed_rubrics.json"),
              loop_answer_max_new_tokens=8, loop_progress=False)
    kw.update(loop)
    ev = EvalConfig(eval_documents=str(q / "documents.jsonl"), eval_test_data=str(q / "test.jsonl"),
                    eval_target_model_name_or_path=TARGET, eval_epochs=2, eval_learning_rate=3e-3, eval_batch_size=8,
                    eval_seeds=[0], eval_influence=False, eval_progress=False, eval_torch_num_threads=1)
    infl = InfluenceConfig(target_model_name_or_path=TARGET, influence_validation_data=str(q / "validation.jsonl"))
    return ClosedLoopConfig(**kw), ev, TeacherConfig(teacher_backend="template"), infl


class CountingTeacher(TemplateTeacher):
    """The template teacher; every ``reject_every``-th request (by teacher seed) gets an unparseable reply."""

    def __init__(self, documents, reject_every: int = 0):
        super().__init__(documents)
        self.queries, self.reject_every = 0, reject_every

    def generate(self, requests, **kw):
        self.queries += len(requests)
        out = super().generate(requests, **kw)
        if self.reject_every:
            out = [TeacherResult(text="no format here") if r.seed % self.reject_every == 0 else o
                   for r, o in zip(requests, out)]
        return out


def _teacher(q, **kw):
    docs = [json.loads(line)["text"] for line in (q / "documents.jsonl").read_text().splitlines()]
    return CountingTeacher(docs, **kw)


def _seeds(q, n):
    return [json.loads(line) for line in (q / "warmup.jsonl").read_text().splitlines()][:n]


def test_select_orders_by_score_and_puts_non_finite_last():
    assert select([0.1, 3.0, math.nan, 2.0, 3.0], 3) == [1, 4, 3]
    assert select([math.nan, 1.0], 2) == [1, 0]


def test_loss_rules_pick_the_seeds_the_student_has_not_learned(quickstart_dir, tiny_tokenizer):
    """Hand-made case: a student trained hard on seeds 0-5 has its highest reference loss on seeds 6-11, and
    both loss rules pick those."""
    from rubric_rl.evaluate.finetuning import finetune, load_target

    seeds = _seeds(quickstart_dir, 12)
    cfg = EvalConfig(eval_target_model_name_or_path=TARGET, eval_epochs=150, eval_learning_rate=1e-2,
                     eval_batch_size=6, eval_warmup_ratio=0.0)
    model = load_target(cfg, TARGET, tiny_tokenizer, torch.device("cpu"), seed=0)
    finetune(model, tiny_tokenizer, seeds[:6], cfg, seed=0)
    ref, _ = seed_scores("loss_reference", model, tiny_tokenizer, seeds, seed=0, round_index=0, max_new_tokens=8,
                         max_length=256)
    assert sorted(select(ref, 6)) == list(range(6, 12)), ref
    assert max(ref[:6]) < min(ref[6:])
    own, extra = seed_scores("loss_own", model, tiny_tokenizer, seeds, seed=0, round_index=0, max_new_tokens=16,
                             max_length=256)
    assert len(extra["answers"]) == 12
    # the learned seeds are answered with (the start of) their reference answers, confidently
    assert all(seeds[i]["messages"][-1]["content"].startswith(extra["answers"][i][:12]) for i in range(6))
    assert sorted(select(own, 6)) == list(range(6, 12)), own


def test_own_answer_loss_is_the_nll_of_the_generated_tokens(quickstart_dir, tiny_tokenizer):
    from rubric_rl.models import load_causal_lm

    model = load_causal_lm(TARGET, tiny_tokenizer, dtype="float32")
    seeds = _seeds(quickstart_dir, 3)
    side = tiny_tokenizer.padding_side
    tiny_tokenizer.padding_side = "right"  # as the loop's tokenizer (training pads on the right)
    try:
        answers, losses = own_answers(model, tiny_tokenizer, seeds, max_new_tokens=6, batch_size=3)
        assert tiny_tokenizer.padding_side == "right"  # restored
    finally:
        tiny_tokenizer.padding_side = side
    for s, loss in zip(seeds, losses):
        prompt = tiny_tokenizer.apply_chat_template(s["messages"][:-1], tokenize=False, add_generation_prompt=True)
        ids = tiny_tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
        new = gen[0, ids.shape[1]:]
        logp = torch.log_softmax(model(gen).logits[0, ids.shape[1] - 1:-1].float(), -1)
        expected = -logp.gather(1, new.unsqueeze(1)).mean().item()
        assert loss == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("unit", ["samples", "queries"])
def test_budget_is_spent_exactly(tmp_path, quickstart_dir, unit):
    loop, ev, tc, ic = _configs(quickstart_dir, loop_budget=14, loop_rounds=3, loop_budget_unit=unit,
                                loop_rules=["random", "static"])
    teacher = _teacher(quickstart_dir, reject_every=3)  # a third of the teacher's replies are rejected
    report = closed_loop(loop, ev, tc, ic, tmp_path / "run", teacher=teacher)
    for rule, rounds in (("random", 3), ("static", 1)):
        metrics = [json.loads((tmp_path / "run" / rule / "seed0" / f"round{t}" / "metrics.json").read_text())
                   for t in range(rounds)]
        assert [m["share"] for m in metrics] == loop.round_budgets(rule)
        assert sum(m["share"] for m in metrics) == 14
        spent = [m["accepted" if unit == "samples" else "queries"] for m in metrics]
        assert spent == [m["share"] for m in metrics]  # every round spends exactly its share
        assert all(m["rejected"].get("parse_failed", 0) > 0 or m["accepted"] < m["queries"] for m in metrics)
        data = (tmp_path / "run" / rule / "seed0" / "dataset.jsonl").read_text().splitlines()
        assert len(data) == sum(m["accepted"] for m in metrics)
        assert report["rules"][rule]["accepted"]["mean"] == len(data)
    assert teacher.queries == sum(report["rules"][r]["queries"]["mean"] for r in ("random", "static"))


def test_a_killed_run_resumes_without_repeating_a_round(tmp_path, quickstart_dir, monkeypatch):
    loop, ev, tc, ic = _configs(quickstart_dir)
    ref = closed_loop(loop, ev, tc, ic, tmp_path / "ref", teacher=_teacher(quickstart_dir))

    calls = []
    real = loop_run._World.train_student

    def dying(self, samples, seed):
        calls.append(len(samples))
        if len(calls) == 3:  # killed while training round 2 of loss_own
            raise KeyboardInterrupt
        return real(self, samples, seed)

    monkeypatch.setattr(loop_run._World, "train_student", dying)
    with pytest.raises(KeyboardInterrupt):
        closed_loop(loop, ev, tc, ic, tmp_path / "run", teacher=_teacher(quickstart_dir))
    seed_dir = tmp_path / "run" / "loss_own" / "seed0"
    assert (seed_dir / "round1" / "metrics.json").exists() and not (seed_dir / "round2" / "metrics.json").exists()
    finished = {t: (seed_dir / f"round{t}" / "metrics.json").stat().st_mtime_ns for t in (0, 1)}

    calls.clear()
    teacher = _teacher(quickstart_dir)
    report = closed_loop(loop, ev, tc, ic, tmp_path / "run", teacher=teacher)
    assert calls == [12, 12]  # loss_own round 2 (all 12 samples so far), then static: rounds 0-1 not redone
    assert teacher.queries == 4 + 12  # round 2's share, then static's budget: no query repeated
    assert {t: (seed_dir / f"round{t}" / "metrics.json").stat().st_mtime_ns for t in (0, 1)} == finished
    for rule in ("loss_own", "static"):
        assert report["rules"][rule]["final"]["loss"]["values"] == ref["rules"][rule]["final"]["loss"]["values"]
        assert ((tmp_path / "run" / rule / "seed0" / "dataset.jsonl").read_bytes()
                == (tmp_path / "ref" / rule / "seed0" / "dataset.jsonl").read_bytes())
    sel = [json.loads((seed_dir / f"round{t}" / "selection.json").read_text()) for t in range(3)]
    assert sel[1]["picked"] == json.loads((tmp_path / "ref" / "loss_own" / "seed0" / "round1" /
                                           "selection.json").read_text())["picked"]
    assert all(len(s["picked"]) == 4 and s["scores"] for s in sel)


class KeywordGenerator:
    """A stand-in rubric generator: one rubric per document, asking about side effects; counts its calls."""

    def __init__(self):
        self.calls = []

    def generate(self, texts, seed=0, batch_size=16):
        from rubric_rl.rubric import Rubric

        self.calls.append((len(texts), seed))
        return [Rubric(prompt_related=["Ask about the side effect of the drug."]) for _ in texts]


def test_a_rubric_generator_writes_each_rounds_rubrics(tmp_path, quickstart_dir):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    loop, ev, tc, ic = _configs(quickstart_dir, loop_rules=["random"], loop_budget=6, loop_rounds=2,
                                loop_rubric_source=str(export), loop_strategy="new_question")
    gen = KeywordGenerator()
    closed_loop(loop, ev, tc, ic, tmp_path / "run", teacher=_teacher(quickstart_dir), generator=gen)
    assert gen.calls == [(48, 0), (48, 1)]  # every document, once per round (epoch = round), seed s * 10_007 + t
    data = [json.loads(x) for x in (tmp_path / "run" / "random" / "seed0" / "dataset.jsonl").read_text().splitlines()]
    assert len(data) == 6 and all(d["rubric"]["prompt_related"] == ["Ask about the side effect of the drug."]
                                  for d in data)
    assert all("adverse effect" in d["messages"][0]["content"] for d in data)  # the rubric was followed
    assert len((tmp_path / "run" / "random" / "seed0" / "rubrics.jsonl").read_text().splitlines()) == 2


def test_run_folder_with_other_settings_is_refused(tmp_path, quickstart_dir):
    loop, ev, tc, ic = _configs(quickstart_dir, loop_rules=["static"], loop_budget=6, loop_rounds=2)
    closed_loop(loop, ev, tc, ic, tmp_path / "run", teacher=_teacher(quickstart_dir))
    changed, *_ = _configs(quickstart_dir, loop_rules=["static"], loop_budget=8, loop_rounds=2)
    with pytest.raises(UserError, match=r"loop_budget \(6 -> 8\)"):
        closed_loop(changed, ev, tc, ic, tmp_path / "run", teacher=_teacher(quickstart_dir))
    # adding a rule is not a change: the finished static loop is kept, random runs
    more, *_ = _configs(quickstart_dir, loop_rules=["static", "random"], loop_budget=6, loop_rounds=2)
    teacher = _teacher(quickstart_dir)
    report = closed_loop(more, ev, tc, ic, tmp_path / "run", teacher=teacher)
    assert set(report["rules"]) == {"static", "random"} and teacher.queries == 6
    over, *_ = _configs(quickstart_dir, loop_rules=["static"], loop_budget=8, loop_rounds=2, loop_overwrite=True)
    assert closed_loop(over, ev, tc, ic, tmp_path / "run", teacher=_teacher(quickstart_dir))["budget"] == 8
    assert not (tmp_path / "run" / "random").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a closed-loop run folder"):
        closed_loop(loop, ev, tc, ic, tmp_path / "other", teacher=_teacher(quickstart_dir))


def test_evaluate_takes_a_loop_dataset_and_reproduces_its_student(tmp_path, quickstart_dir):
    from rubric_rl.evaluate import evaluate
    from rubric_rl.synth.pipeline import RubricSource

    loop, ev, tc, ic = _configs(quickstart_dir, loop_rules=["influence"], loop_budget=8, loop_rounds=2)
    report = closed_loop(loop, ev, tc, ic, tmp_path / "run", teacher=_teacher(quickstart_dir))
    rule_dir = tmp_path / "run" / "influence"
    ev.eval_num_samples = 8
    er = evaluate(ev, tc, ic, {"loop": str(rule_dir)}, tmp_path / "eval", teacher=_teacher(quickstart_dir))
    run = er["runs"][0]
    assert run["synthesis"]["closed_loop"]["rule"] == "influence" and run["dataset"]["samples"] == 8
    # the same dataset, fine-tuned as the loop does: the same held-out loss
    assert run["heldout"]["loss"] == pytest.approx(report["rules"]["influence"]["final"]["loss"]["mean"], rel=1e-6)
    with pytest.raises(UserError, match="no finished closed loop for seed 5"):
        ev.eval_seeds = [5]
        evaluate(ev, tc, ic, {"loop": str(rule_dir)}, tmp_path / "eval2", teacher=_teacher(quickstart_dir))
    with pytest.raises(UserError, match="holds samples, not rubrics"):
        RubricSource.resolve(str(rule_dir))


def test_cli_writes_one_report_entry_per_rule(tmp_path, quickstart_dir, monkeypatch, capsys):
    from rubric_rl.cli import main

    monkeypatch.chdir(quickstart_dir.parents[1])
    out = tmp_path / "cl"
    main(["closed-loop", "--config", "configs/closed_loop_quickstart.yaml", "--output", str(out),
          "--loop_budget", "8", "--loop_rounds", "2", "--loop_num_seeds", "16", "--eval_seeds", "0",
          "--eval_epochs", "1", "--loop_progress", "false"])
    report = json.loads((out / "report.json").read_text())
    assert list(report["rules"]) == ["loss_own", "loss_reference", "random", "influence", "badge", "static"]
    assert (out / "budget_curve.png").stat().st_size > 0 and "| static | 1 |" in (out / "report.md").read_text()
    assert "loss_own vs static" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["closed-loop", "--config", "configs/closed_loop_quickstart.yaml", "--output", str(out),
              "--loop_rules", "loss_own", "llm_judge"])
    assert exc.value.code == 2
    assert "loop_rules" in capsys.readouterr().err


def test_badge_kernel_is_the_inner_product_of_the_gradient_embeddings(quickstart_dir, tiny_tokenizer):
    """The kernel equals <g_i, g_j> of the explicit last-layer embeddings g = 1/n sum_t (p_t - e_y) h_t^T, and
    k-means++ over it picks one of each group of identical seeds before any second copy."""
    import random

    from rubric_rl.loop.selection import badge_kernel, kmeans_pp_order
    from rubric_rl.models import load_causal_lm

    model = load_causal_lm(TARGET, tiny_tokenizer, dtype="float32").double()
    seeds = _seeds(quickstart_dir, 3)
    side = tiny_tokenizer.padding_side
    tiny_tokenizer.padding_side = "right"
    try:
        _, _, prompts, ids = own_answers(model, tiny_tokenizer, seeds, max_new_tokens=5, return_ids=True)
    finally:
        tiny_tokenizer.padding_side = side
    kernel = badge_kernel(model, tiny_tokenizer, prompts, ids, batch_size=2)
    embeddings = []
    for p, a in zip(prompts, ids):
        seq = torch.tensor([p + a])
        out = model(seq, output_hidden_states=True)
        h = out.hidden_states[-1][0, len(p) - 1:len(p) - 1 + len(a)]
        probs = torch.softmax(out.logits[0, len(p) - 1:len(p) - 1 + len(a)], -1)
        probs[torch.arange(len(a)), torch.tensor(a)] -= 1
        embeddings.append((probs.T @ h / len(a)).flatten())
    g = torch.stack(embeddings)
    assert torch.allclose(kernel, g @ g.T, rtol=1e-8, atol=1e-12)

    groups = [0, 0, 0, 1, 1, 2]  # three copies of seed A, two of B, one C
    dup = kernel[groups][:, groups]
    order = kmeans_pp_order(dup, random.Random(0))
    assert sorted(order) == list(range(6))
    assert sorted(groups[i] for i in order[:3]) == [0, 1, 2]  # every distinct seed before any copy
    assert order[0] == max(range(6), key=lambda i: float(dup[i, i]))  # the largest norm first


def test_influence_rule_is_the_gradient_dot_product_with_the_validation_mean(quickstart_dir, tiny_tokenizer):
    """The rule is the reward's scorer at the student's current weights with plain gradients over its nn.Linear
    weights (autograd, one sample at a time here): dot <g(seed), mean_v g(v)>; less (LESS's form) the mean of the
    validation gradients' unit rows, over |g(seed)|. One subtask (the field is absent) and the token objective, so
    the mean is over every item. The embedding (tied to the output layer) is not among the weights."""
    from rubric_rl.data.chat import IGNORE_INDEX, tokenize_chat
    from rubric_rl.models import load_causal_lm

    model = load_causal_lm(TARGET, tiny_tokenizer, dtype="float32").double()
    seeds = _seeds(quickstart_dir, 4)
    val = [json.loads(x) for x in (quickstart_dir / "validation.jsonl").read_text().splitlines()][:3]
    linear = [p for n, p in model.named_parameters()
              if isinstance(dict(model.named_modules())[n.rpartition(".")[0]], torch.nn.Linear)]

    def grad(row):
        chat = tokenize_chat(tiny_tokenizer, row["messages"], 256)
        ids, labels = torch.tensor([chat.input_ids]), torch.tensor([chat.labels])
        logits = model(ids).logits[0, :-1]
        keep = labels[0, 1:] != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits[keep], labels[0, 1:][keep])
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, linear)])

    g_val = torch.stack([grad(v) for v in val])
    g_seed = torch.stack([grad(s) for s in seeds])
    expected = {"dot": g_seed @ g_val.mean(0),
                "less": g_seed @ (g_val / g_val.norm(dim=1, keepdim=True)).mean(0) / g_seed.norm(dim=1)}
    for estimator, want in expected.items():
        cfg = InfluenceConfig(target_model_name_or_path=TARGET, influence_estimator=estimator, influence_proj_dim=0,
                              influence_batch_size=3, influence_dtype="float64", influence_objective="tokens",
                              influence_subtask_field="no_such_field")
        got, _ = seed_scores("influence", model, tiny_tokenizer, seeds, seed=0, round_index=0, max_new_tokens=4,
                             max_length=256, validation=val, influence_cfg=cfg)
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), want, rtol=1e-9), (estimator, got, want)
    assert all(p.requires_grad for p in model.parameters())  # restored
