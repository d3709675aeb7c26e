"""Generation strategies: prompts, the auto rule, each strategy end to end, budget accounting in the engine."""

import json

import pytest

from rubric_rl.data.documents import load_chat_samples, load_documents, load_rubric_file
from rubric_rl.synth.engine import SampleSynthesizer, SynthItem, teacher_messages
from rubric_rl.synth.strategies import (AUGMENT_ANSWER, NEW_QUESTION, REPHRASE, SIMILAR_QUESTION, choose_strategy,
                                        strategy_messages)
from rubric_rl.teachers.template import _seed_style
from rubric_rl.teachers.base import TeacherResult
from rubric_rl.teachers.template import TemplateTeacher


@pytest.fixture(scope="module")
def world(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")
    seeds = load_chat_samples(quickstart_dir / "warmup.jsonl")
    rubrics = load_rubric_file(quickstart_dir / "seed_rubrics.json")
    return docs, {d["id"]: d["text"] for d in docs}, seeds, rubrics


def test_auto_rule_follows_budget_to_seed_ratio():
    assert choose_strategy("auto", budget=100, num_seeds=50).strategy == AUGMENT_ANSWER  # ratio 2
    assert choose_strategy("auto", budget=800, num_seeds=50).strategy == AUGMENT_ANSWER  # ratio 16: boundary
    assert choose_strategy("auto", budget=801, num_seeds=50).strategy == NEW_QUESTION
    assert choose_strategy("auto", budget=10_000, num_seeds=50).strategy == NEW_QUESTION
    assert choose_strategy("auto", budget=10, num_seeds=0).strategy == NEW_QUESTION  # no seed set
    assert choose_strategy("auto", budget=100, num_seeds=50, ratio_threshold=1.0).strategy == NEW_QUESTION
    c = choose_strategy("auto", budget=100, num_seeds=50)
    assert c.ratio == 2.0 and "2.00" in c.why
    assert choose_strategy(REPHRASE, budget=1, num_seeds=1).strategy == REPHRASE  # explicit wins
    with pytest.raises(ValueError, match="seed set"):
        choose_strategy(AUGMENT_ANSWER, budget=1, num_seeds=0)
    with pytest.raises(ValueError, match="unknown strategy"):
        choose_strategy("distill", budget=1, num_seeds=1)


def test_prompts(world):
    docs, _, seeds, rubrics = world
    doc, seed = docs[0]["text"], seeds[0]["messages"]
    assert strategy_messages(NEW_QUESTION, doc, rubrics[0]) == teacher_messages(doc, rubrics[0])
    reph = strategy_messages(REPHRASE, doc, rubrics[0], seed)[-1]["content"]
    assert f"Seed question:\n{seed[0]['content']}" in reph and f"Seed answer:\n{seed[1]['content']}" in reph
    aug = strategy_messages(AUGMENT_ANSWER, "", None, seed)[-1]["content"]
    assert f"Question:\n{seed[0]['content']}" in aug and "(no document" in aug and "(no rubric" in aug
    assert seed[1]["content"] not in aug  # a NEW answer: the seed answer is not shown
    with pytest.raises(ValueError, match="seed sample"):
        strategy_messages(REPHRASE, doc, None, None)
    sim = strategy_messages(SIMILAR_QUESTION, doc, rubrics[0], seed)[-1]["content"]
    assert f"Example question:\n{seed[0]['content']}" in sim and f"Example answer:\n{seed[1]['content']}" in sim
    assert "same kind" in sim and f"Document:\n{doc}" in sim


@pytest.mark.parametrize("strategy", [NEW_QUESTION, REPHRASE, AUGMENT_ANSWER, SIMILAR_QUESTION])
def test_each_strategy_end_to_end(world, strategy):
    docs, by_id, seeds, rubrics = world
    synth = SampleSynthesizer(TemplateTeacher(list(by_id.values())))
    items = []
    for k, s in enumerate(seeds[:24]):
        seed_messages = s["messages"] if strategy != NEW_QUESTION else None
        items.append(SynthItem(by_id[s["doc_id"]], rubrics[(k + 5) % len(rubrics)], s["doc_id"], seed=k,
                               strategy=strategy, seed_messages=seed_messages))
    outs = synth.synthesize(items)
    assert all(o.valid for o in outs), [o.reason for o in outs if not o.valid]
    assert all(o.meta["strategy"] == strategy for o in outs)
    for o, s in zip(outs, seeds[:24]):
        q, a = o.messages[0]["content"], o.messages[1]["content"]
        if strategy == AUGMENT_ANSWER:
            assert q == s["messages"][0]["content"]  # question kept
        if strategy == REPHRASE:
            assert q != s["messages"][0]["content"] and a == s["messages"][1]["content"]
        if strategy == SIMILAR_QUESTION:  # another fact, asked and answered in the seed's format and style
            assert q.split("\n")[0] != s["messages"][0]["content"].split("\n")[0]
            assert _seed_style(q, a) == _seed_style(s["messages"][0]["content"], s["messages"][1]["content"])
    if strategy == AUGMENT_ANSWER:  # the rubric changes the answers
        assert sum(o.messages[1]["content"] != s["messages"][1]["content"] for o, s in zip(outs, seeds)) >= 12


def test_seeded_strategy_without_seed_or_document(world):
    _, by_id, seeds, _ = world
    synth = SampleSynthesizer(TemplateTeacher())
    outs = synth.synthesize([
        SynthItem("doc", None, strategy=REPHRASE),
        SynthItem("", None, strategy=REPHRASE, seed_messages=seeds[0]["messages"]),  # rephrase needs no document
        SynthItem("", None, strategy=AUGMENT_ANSWER, seed_messages=seeds[0]["messages"]),
        SynthItem("doc", None, strategy="distill"),
        SynthItem("", None, strategy=SIMILAR_QUESTION, seed_messages=seeds[0]["messages"]),  # needs its document
    ])
    assert [o.reason for o in outs] == ["missing_seed_sample", None, "teacher_empty_document", "unknown_strategy",
                                        "empty_document"]
    assert synth.queries_spent == 2


def test_engine_budget_counts_every_query(world):
    docs, _, _, rubrics = world

    class Counting(TemplateTeacher):
        calls = 0

        def generate(self, requests, **kw):
            Counting.calls += len(requests)
            return super().generate(requests)

    t = Counting([d["text"] for d in docs])
    synth = SampleSynthesizer(t, budget=10)
    items = [SynthItem(d["text"], rubrics[0], d["id"], seed=i) for i, d in enumerate(docs[:6])]
    first = synth.synthesize(items)
    second = synth.synthesize(items)
    assert all(o.valid for o in first)
    assert [o.reason for o in second] == [None] * 4 + ["teacher_budget_exhausted"] * 2
    assert synth.queries_spent == 10 == Counting.calls and synth.budget_left == 0
    assert synth.synthesize(items[:1])[0].reason == "teacher_budget_exhausted" and Counting.calls == 10


def test_failed_queries_count_too(world):
    """A query the teacher answered badly (bad_response, a 4xx) costs budget; one its infrastructure failed on
    (5xx, timeout, connection) does not: it says nothing about the item, which the caller may try again."""
    class Failing:
        name = "failing"

        def __init__(self, error):
            self.error = error

        def generate(self, requests):
            return [TeacherResult(text=None, error=self.error) for _ in requests]

    synth = SampleSynthesizer(Failing("bad_response"), budget=3)
    outs = synth.synthesize([SynthItem("some document text here", None) for _ in range(5)])
    assert [o.reason for o in outs] == ["teacher_bad_response"] * 3 + ["teacher_budget_exhausted"] * 2
    assert synth.queries_spent == 3 and not any(o.infrastructure for o in outs)
    infra = SampleSynthesizer(Failing("http_503"), budget=3)
    outs = infra.synthesize([SynthItem("some document text here", None) for _ in range(5)])
    assert [o.reason for o in outs] == ["teacher_http_503"] * 3 + ["teacher_budget_exhausted"] * 2
    assert infra.queries_spent == 0 and infra.infrastructure_failures == 3 and infra.budget_left == 3
    assert [o.infrastructure for o in outs] == [True] * 3 + [False] * 2
    assert json.dumps(synth.counts)


def test_parse_accepts_the_answer_label_small_models_write():
    from rubric_rl.synth.parse import parse_sample

    msgs, reason = parse_sample("Question: Which condition is Belmozaline used to treat?\nThe answer: migraine.")
    assert reason is None and msgs[1]["content"] == "migraine."


def test_parse_ends_the_answer_at_the_next_labelled_block():
    from rubric_rl.synth.parse import parse_sample

    text = ("Question:\nWhat is Rituvir?\n\nAnswer:\nRituvir is a triptan.\n\nThe answer is:\nRituvir is a triptan.\n\n"
            "Question:\n<the question>\nAnswer:\nno")
    msgs, reason = parse_sample(text)
    assert reason is None and msgs == [{"role": "user", "content": "What is Rituvir?"},
                                       {"role": "assistant", "content": "Rituvir is a triptan."}]
    # a multi-line answer with its own reasoning is kept whole
    mc = "Question: Which class?\nAnswer: Let's think step by step.\nX is a triptan.\nThe answer is (B)."
    assert parse_sample(mc)[0][1]["content"] == "Let's think step by step.\nX is a triptan.\nThe answer is (B)."


def test_cap_document_cuts_at_a_sentence_end_and_says_so():
    from rubric_rl.synth.engine import cap_document

    doc = "First sentence here. " * 50  # 1050 characters
    assert cap_document(doc, 0) is doc and cap_document(doc, 2000) is doc
    cut = cap_document(doc, 500)
    kept, mark = cut.rsplit("\n", 1)
    assert kept.endswith("here.") and 400 <= len(kept) <= 500
    assert mark == f"[... document cut: {len(kept)} of {len(doc)} characters]"
    # no sentence end and no space in the last fifth: a hard cut at the limit
    assert cap_document("x" * 300, 100).startswith("x" * 100 + "\n[")


def test_teacher_sees_and_verifiers_check_the_cut_document():
    from rubric_rl.synth.engine import SampleSynthesizer, SynthItem
    from rubric_rl.teachers.base import TeacherResult

    seen = []

    class Echo:
        name = "echo"

        def generate(self, requests):
            seen.extend(requests)
            return [TeacherResult(text="Question:\nWhat does the first part say?\nAnswer:\nFirst sentence here.")
                    for _ in requests]

    doc = "First sentence here. " * 50 + "Secret tail fact."
    synth = SampleSynthesizer(Echo(), [], max_document_chars=300)
    synth.synthesize([SynthItem(document=doc, rubric=None, doc_id="d", seed=0)])
    prompt = seen[0].messages[-1]["content"]
    assert "Secret tail" not in prompt and "[... document cut:" in prompt and "Secret tail" not in seen[0].document
    assert synth.documents_cut == 1


def test_parse_ends_a_looping_answer_before_its_first_repeated_sentence():
    from rubric_rl.synth.parse import parse_sample

    looped = ("Question:\nWhat is the most common side effect of Belmozaline?\nAnswer:\nThe most common side effect of "
              "Belmozaline is dry cough. The most common side effect of Belmozaline is dry cough. The most common side")
    msgs, reason = parse_sample(looped)
    assert reason is None and msgs[1]["content"] == "The most common side effect of Belmozaline is dry cough."
    # distinct sentences, numbers with decimal points and short repeated fragments are kept
    kept = "It is 2.5 mg. Take it with food. Yes. Yes."
    assert parse_sample(f"Question: What is the dose of X?\nAnswer: {kept}")[0][1]["content"] == kept
