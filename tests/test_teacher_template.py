import json

from rubric_rl.data.documents import load_documents, load_rubric_file
from rubric_rl.data.world import extract_facts
from rubric_rl.rubric import Rubric
from rubric_rl.synth.engine import SampleSynthesizer, SynthItem
from rubric_rl.synth.parse import parse_sample
from rubric_rl.teachers.base import TeacherRequest
from rubric_rl.teachers.template import TemplateTeacher


def _docs(quickstart_dir):
    return load_documents(quickstart_dir / "documents.jsonl")


def R(**kw):
    return Rubric.from_dict({k: [v] for k, v in kw.items()})


def test_facts_extracted_from_every_document(quickstart_dir):
    for d in _docs(quickstart_dir):
        assert {f[0] for f in extract_facts(d["text"])} == {
            "indication", "drug_class", "mechanism", "dosage", "contraindication", "side_effect"}


def test_sample_depends_on_rubric_content(quickstart_dir):
    docs = _docs(quickstart_dir)
    t = TemplateTeacher([d["text"] for d in docs])
    doc = docs[0]["text"]
    mc = t.write(doc, R(prompt_related="Write a multiple-choice question about the dose.",
                        response_related="Reason step by step and give the final answer letter."))
    q, a = (m["content"] for m in parse_sample(mc)[0])
    assert "Options:\n(A)" in q and "dose" in q
    assert a.startswith("Let's think step by step.") and a.rstrip().endswith(").") and "The answer is (" in a

    open_q = t.write(doc, R(prompt_related="Ask about the side effect.", response_related="Be concise."))
    q2, a2 = (m["content"] for m in parse_sample(open_q)[0])
    assert "Options" not in q2 and "adverse effect" in q2 and "step" not in a2
    assert a2 in doc  # the bare fact object, from the document

    tf = t.write(doc, R(prompt_related="Write a true or false statement about the mechanism."))
    assert parse_sample(tf)[0][0]["content"].startswith("True or false:")
    cloze = t.write(doc, R(prompt_related="Create a fill in the blank sentence about the drug class."))
    assert "____" in parse_sample(cloze)[0][0]["content"]


def test_deterministic_and_seeded(quickstart_dir):
    docs = _docs(quickstart_dir)
    t = TemplateTeacher([d["text"] for d in docs])
    r = R(prompt_related="Ask a question.")
    assert t.write(docs[1]["text"], r, seed=3) == t.write(docs[1]["text"], r, seed=3)
    outs = {t.write(docs[1]["text"], r, seed=s) for s in range(10)}
    assert len(outs) > 1  # no relation keyword: the fact varies with the seed


def test_generic_text_and_failures():
    t = TemplateTeacher()
    res = t.generate([
        TeacherRequest(messages=[], document="The Treaty of Westphalia ended the Thirty Years War in 1648.",
                       rubric=R(response_related="explain your reasoning")),
        TeacherRequest(messages=[], document="   ", rubric=None),
        TeacherRequest(messages=[], document="Too short.", rubric=None),
    ])
    assert res[0].ok and "____" in res[0].text
    assert res[1].error == "empty_document" and res[2].error == "no_usable_fact"


def test_synthesizer_counts_outcomes(quickstart_dir):
    docs = _docs(quickstart_dir)
    seeds = load_rubric_file(quickstart_dir / "seed_rubrics.json")
    synth = SampleSynthesizer(TemplateTeacher([d["text"] for d in docs]))
    items = [SynthItem(d["text"], seeds[i % len(seeds)], d["id"], seed=i) for i, d in enumerate(docs[:12])]
    items.append(SynthItem("", seeds[0], "empty"))
    outs = synth.synthesize(items)
    assert all(o.valid for o in outs[:12])
    assert outs[12].reason == "empty_document"
    assert synth.counts["accepted"] == 12 and synth.counts["empty_document"] == 1
    assert json.dumps(outs[0].messages)


def test_parse_sample_formats():
    assert parse_sample("Question: What?\nAnswer: That.")[0][1]["content"] == "That."
    assert parse_sample("**Question:** Why is it?\n**Answer:** Because.")[0][0]["content"] == "Why is it?"
    assert parse_sample('{"question": "Q here?", "answer": "A"}')[0][1]["content"] == "A"
    assert parse_sample("no structure")[1] == "no_question_answer"
    assert parse_sample("Question: only\nAnswer:   ")[1] == "empty_answer"
    assert parse_sample(None)[1] == "no_text"
