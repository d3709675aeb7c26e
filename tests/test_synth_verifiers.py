"""Each verifier with planted cases; decontamination on the quickstart world."""

import dataclasses
import json

import pytest

from rubric_rl.data.documents import load_documents, load_rubric_file
from rubric_rl.synth.decontam import Decontaminator, load_eval_items
from rubric_rl.synth.dedup import NearDuplicateFilter, jaccard, shingles
from rubric_rl.synth.engine import SampleSynthesizer, SynthItem
from rubric_rl.synth.grounding import GroundingVerifier
from rubric_rl.synth.parse import parse_answer
from rubric_rl.synth.safety import SafetyVerifier
from rubric_rl.synth.verifiers import Candidate, FormatVerifier, NonTrivialVerifier, default_verifiers
from rubric_rl.teachers.base import TeacherResult
from rubric_rl.teachers.template import TemplateTeacher

DOC = ("Belmozaline is a neuraminidase inhibitor. The standard adult dose of Belmozaline is 200 mg once daily. "
       "Belmozaline is used to treat migraine. The most common side effect of Belmozaline is dry cough.")


def cand(q, a, doc=DOC):
    return Candidate([{"role": "user", "content": q}, {"role": "assistant", "content": a}], doc)


@pytest.fixture(scope="module")
def world(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")
    evals = load_eval_items([quickstart_dir / "validation.jsonl", quickstart_dir / "test.jsonl"])
    rubrics = load_rubric_file(quickstart_dir / "seed_rubrics.json")
    return docs, evals, rubrics


def test_format_and_nontrivial():
    f, n = FormatVerifier(), NonTrivialVerifier()
    assert f(cand("Short?", "x")) == "question_too_short"
    assert f(cand("What is the dose of Belmozaline?", "Answer: 200 mg")) == "template_leak"
    assert f(cand("What is the dose of Belmozaline?", "200 mg once daily")) is None
    assert n(cand("What is the dose of Belmozaline?", "What is the dose of Belmozaline?")) == "answer_repeats_question"
    assert n(cand("Dose of Belmozaline?", "200 mg")) is None
    assert n(cand("Why?", "Because.")) == "question_too_few_words"
    assert n(cand("What is the dose of Belmozaline?", "I'm sorry, but I can't help with that.")) == "refusal"
    assert n(cand("What is the dose of Belmozaline?", "As an AI language model, I cannot know.")) == "refusal"


def test_non_answers_a_small_teacher_writes():
    """SmolLM2-135M-Instruct's accepted-looking non-answers (notes/teachers.md): the rubric's instruction echoed, the
    format's placeholder letter, "the document does not say"; a real answer with a letter or f(x) passes."""
    n = NonTrivialVerifier()
    q = "What is the most common side effect of Melixaban?"
    for junk in ("The answer must be stated in the document.", "The answer is (X).",
                 "The document does not provide any information on how the drug is used."):
        assert n(cand(q, junk)) == "non_answer", junk
    for real in ("The answer is (B): headache.", "Headache, in about 1 in 10 patients.", "f(x) rises with the dose"):
        assert n(cand(q, real)) is None, real


def test_grounding():
    g = GroundingVerifier()
    assert g(cand("What is Belmozaline used for?", "Belmozaline is used to treat migraine.")) is None
    assert g(cand("What is Belmozaline used for?", "It cures lupus and rheumatoid arthritis quickly.")) == "ungrounded"
    # option letters are resolved to the option text
    mc = "Which condition does Belmozaline treat?\nOptions:\n(A) gout\n(B) migraine\n(C) asthma\n(D) acne"
    assert g(cand(mc, "(B)")) is None
    assert g(cand(mc, "The answer is (A).")) == "ungrounded"
    # a "True" verdict is judged through its statement; "False" asserts nothing checkable
    assert g(cand("True or false: Belmozaline is used to treat migraine.", "True")) is None
    assert g(cand("True or false: Belmozaline prevents volcanic eruptions nightly.", "True")) == "ungrounded"
    assert g(cand("True or false: Belmozaline is used to treat gout.", "False")) is None
    # nothing to judge: no document, or no content words
    assert g(cand("What is it?", "It cures lupus and arthritis.", doc="")) is None
    assert g(cand("Is it safe?", "Yes.")) is None
    assert g.score("q", "treats migraines", DOC) == 1.0  # crude stemming


def test_grounding_judges_the_claim_not_only_the_overlap():
    """A wrong fact in the right words: the drug's name and "used to treat" are in the document, the condition
    is not. The overall share passes it (3 of 5 words); the claim (what the answer adds to the question) fails."""
    g, before = GroundingVerifier(), GroundingVerifier(min_claim_overlap=0.0)
    mc = ("Which condition is Belmozaline used to treat?\nOptions:\n(A) heart failure\n(B) migraine\n(C) gout\n"
          "(D) acne\nThink step by step, then give the letter of the correct option.")
    wrong = "Let's think step by step. Belmozaline is used to treat heart failure. The answer is (A)."
    right = "Let's think step by step. Belmozaline is used to treat migraine. The answer is (B)."
    assert before(cand(mc, wrong)) is None  # the gap: today's verifier lets the wrong fact through
    assert g(cand(mc, wrong)) == "ungrounded_claim"
    assert g(cand(mc, right)) is None
    assert g.claim(mc, wrong) == {"heart", "failure"}
    # the letter counts as a claim too: the right fact with a wrong letter is not grounded
    assert g(cand(mc, "Belmozaline is used to treat migraine. The answer is (A).")) == "ungrounded_claim"
    # open answers: the words the question does not hold must be in the document
    assert g(cand("What is the standard adult dose of Belmozaline?",
                  "The standard adult dose of Belmozaline is 200 mg once daily.")) is None
    assert g(cand("What is the standard adult dose of Belmozaline?",
                  "The standard adult dose of Belmozaline is 50 mg three times daily.")) == "ungrounded_claim"
    # an answer that only restates its question claims nothing
    assert g.claim_score("What is Belmozaline used to treat?", "Belmozaline is used to treat.", DOC) is None


def test_safety(tmp_path):
    s = SafetyVerifier()
    assert s(cand("How do I build a pipe bomb at home?", "Step one...")) == "unsafe_weapons"
    assert s(cand("How to synthesize methamphetamine?", "Mix...")) == "unsafe_illicit_drugs"
    assert s(cand("What should I do?", "Just kill yourself.")) == "unsafe_self_harm"
    assert s(cand("Who wrote it?", "Mail john.doe@example.com for details.")) == "unsafe_pii"
    assert s(cand("Card?", "Use 4111 1111 1111 1111 to pay.")) == "unsafe_pii"  # Luhn-valid test number
    assert s(cand("Lot number?", "Batch 1234 5678 9012 3456 was recalled.")) is None  # not Luhn-valid
    # domain vocabulary is not blocked
    assert s(cand("What happens in an overdose of Belmozaline?", "Toxicity: seizures; give activated charcoal.")) is None
    extra = tmp_path / "block.txt"
    extra.write_text("# comment\ncompetitor: \\bacme corp\\b\nforbidden phrase\n")
    s2 = SafetyVerifier(blocklist_file=str(extra))
    assert s2(cand("Who makes it?", "ACME Corp does.")) == "unsafe_competitor"
    assert s2(cand("Anything?", "A forbidden phrase here.")) == "unsafe_custom"
    with pytest.raises(ValueError, match="bad pattern"):
        SafetyVerifier(blocklist={"x": ["("]})


def test_near_duplicates():
    d = NearDuplicateFilter(threshold=0.8)
    base = cand("What is the standard adult dose of Belmozaline for migraine prevention?",
                "The standard adult dose of Belmozaline is 200 mg once daily, taken with food in the morning.")
    assert d(base) is None
    d.observe(base)
    same_words = cand("What is the standard adult dose of Belmozaline for migraine prevention ?",
                      "The standard adult dose of Belmozaline is 200 mg once daily, taken with food in the morning!")
    near = cand("What is the standard adult dose of Belmozaline for migraine prevention?",
                "The standard adult dose of Belmozaline is 200 mg once daily, taken with food in the morning hours.")
    other = cand("Which adverse effect is most common with Belmozaline?", "Dry cough is the most common one.")
    assert d(same_words) == "near_duplicate"  # punctuation and case do not matter
    assert jaccard(shingles("a b c d e f g h i j"), shingles("a b c d e f g h i j k")) >= 0.8
    assert d(near) == "near_duplicate"
    assert d(other) is None
    assert len(d) == 1


def test_dedup_lsh_recall_matches_exact_jaccard():
    """LSH must not miss pairs above the threshold (checked against brute force)."""
    import random

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    base = [rng.choice(vocab) for _ in range(30)]
    d = NearDuplicateFilter(threshold=0.7)
    d.add([{"role": "user", "content": " ".join(base)}])
    missed = 0
    for _ in range(200):
        v = list(base)
        for _ in range(rng.randint(0, 6)):
            v[rng.randrange(len(v))] = rng.choice(vocab)
        msgs = [{"role": "user", "content": " ".join(v)}]
        exact = jaccard(shingles(" ".join(base)), shingles(" ".join(v)))
        if exact >= 0.7 and d.find(msgs) is None:
            missed += 1
        if exact < 0.7:
            assert d.find(msgs) is None  # the decision is the exact Jaccard, never LSH alone
    assert missed == 0


def test_decontamination_catches_copies(world):
    docs, evals, _ = world
    dec = Decontaminator(evals)
    val = [e for e in evals if e["_source"].startswith("validation")]
    for e in val:
        assert dec(Candidate(e["messages"])) == "contaminated", e["_source"]
    item = val[0]["messages"]
    q = item[0]["content"]
    embedded = [{"role": "user", "content": "Please help me study. " + q + " Thanks a lot!"},
                {"role": "assistant", "content": "Sure."}]
    assert dec(Candidate(embedded)) == "contaminated"
    stem, rest = q.split("\n", 1)
    lines = rest.split("\n")
    shuffled = [{"role": "user", "content": "\n".join([stem, lines[0], lines[4], lines[3], lines[2], lines[1],
                                                       *lines[5:]])}]
    assert dec(Candidate(shuffled)) == "contaminated"
    source, score = dec.match(item)
    assert source == val[0]["_source"] and score == 1.0


def test_decontamination_spares_ordinary_template_samples(world):
    """The template teacher phrases questions unlike the evaluation items: none of its samples is flagged,
    also not the multiple-choice ones whose option lists happen to coincide with an evaluation item's."""
    docs, evals, rubrics = world
    teacher = TemplateTeacher([d["text"] for d in docs])
    synth = SampleSynthesizer(teacher, [Decontaminator(evals)])
    items = [SynthItem(d["text"], r, d["id"], seed=s) for d in docs for r in rubrics for s in range(4)]
    outs = synth.synthesize(items)
    assert sum("Options:" in o.messages[0]["content"] for o in outs if o.valid) > 400
    assert synth.counts == {"accepted": len(items)}
    # plain Tulu scoring (no boilerplate discount, options count like the question) does flag some of them
    plain = Decontaminator(evals, boilerplate_df=2.0)
    plain._question = [0] * len(plain._question)
    assert sum(plain(Candidate(o.messages)) is not None for o in outs) > 20


def test_decontamination_short_and_boilerplate_items():
    evals = [{"messages": [{"role": "user", "content": f"Name the capital of country number {i}. Answer briefly "
                                                         "in one word please thanks."}], "_source": f"e.jsonl:{i}"}
             for i in range(10)]
    evals.append({"messages": [{"role": "user", "content": "Define entropy."}], "_source": "e.jsonl:99"})
    dec = Decontaminator(evals)
    # shared boilerplate alone is not contamination; the item-specific part is
    assert dec(cand("Answer briefly in one word please thanks. What is two plus two?", "four")) is None
    assert dec(cand("Name the capital of country number 3. Answer briefly in one word please thanks.", "x")) == \
        "contaminated"
    assert dec(cand("Quick: define entropy.", "Disorder.")) == "contaminated"  # shorter than n: whole phrase
    assert dec(cand("Define enthalpy.", "Heat content.")) is None


def test_default_chain_and_engine_provenance(world):
    docs, evals, rubrics = world

    class Scripted:
        name = "scripted"

        def __init__(self, texts):
            self.texts = texts

        def generate(self, requests):
            return [TeacherResult(text=t) if t is not None else TeacherResult(text=None, error="timeout")
                    for t in self.texts[:len(requests)]]

    copied = evals[0]["messages"]
    texts = [
        "Question:\nWhat is the standard adult dose of Belmozaline per day?\nAnswer:\n200 mg once daily",
        "Question:\nWhat is Belmozaline used for in adults?\nAnswer:\nIt cures lupus and arthritis rapidly.",
        "Question:\nHow do I build a pipe bomb with Belmozaline?\nAnswer:\nBelmozaline is a neuraminidase inhibitor, used to treat migraine.",
        f"Question:\n{copied[0]['content']}\nAnswer:\n{copied[1]['content']}",
        "Question:\nWhat is the standard adult dose of Belmozaline per day?\nAnswer:\n200 mg once daily",
        None,
        "nonsense without structure",
    ]
    dedup = NearDuplicateFilter()
    synth = SampleSynthesizer(Scripted(texts), default_verifiers(eval_items=evals) + [dedup])
    outs = synth.synthesize([SynthItem(DOC, None, "doc-000", seed=i) for i in range(len(texts))])
    assert [o.reason for o in outs] == [None, "ungrounded", "unsafe_weapons", "contaminated", "near_duplicate",
                                        "teacher_timeout", "parse_no_question_answer"]
    assert outs[0].meta["verifiers"] == {"format": "pass", "nontrivial": "pass", "grounding": "pass",
                                         "safety": "pass", "decontam": "pass", "dedup": "pass"}
    assert outs[1].meta["rejected_by"] == "grounding" and outs[3].meta["rejected_by"] == "decontam"
    # the timeout is an infrastructure failure: it says nothing about the item and costs no query of the budget
    assert synth.counts["accepted"] == 1 and synth.queries_spent == len(texts) - 1
    assert synth.infrastructure_failures == 1 and outs[5].infrastructure and not outs[6].infrastructure


def test_parse_answer():
    assert parse_answer("Answer:\n200 mg") == ("200 mg", None)
    assert parse_answer("<think>hmm</think>**Answer:** 200 mg") == ("200 mg", None)
    assert parse_answer("Question:\nQ?\nAnswer:\nA.") == ("A.", None)
    assert parse_answer('{"answer": "A."}') == ("A.", None)
    assert parse_answer("just the text") == ("just the text", None)
    assert parse_answer("Answer:   ") == (None, "empty_answer")
    assert parse_answer(None) == (None, "no_text")


def test_eval_items_must_be_chat(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="messages"):
        load_eval_items([p])


def test_degenerate_samples_small_teachers_write_are_rejected():
    from rubric_rl.synth.verifiers import Candidate, NonTrivialVerifier, degenerate_reason

    v = NonTrivialVerifier()
    looped = "Is Belmozaline used to treat migraine? Belmozaline is used to treat migraine. " \
             "Belmozaline is used to treat migraine. Belmozaline is used to treat migraine."
    assert v(Candidate([{"role": "user", "content": looped}, {"role": "assistant", "content": "The answer is yes."}])) \
        == "repeated_statement"
    assert degenerate_reason("What is the difference between Belmozaline vs Belmozaline?") == "self_comparison"
    assert degenerate_reason(" ".join(["the dose the dose the"] * 10)) == "repetitive"
    # real samples pass: an MC question with options, a step-by-step answer
    q = ("Which condition is Belmozaline used to treat?\nOptions:\n(A) major depression\n(B) migraine\n"
         "(C) high cholesterol\n(D) heart failure")
    a = "Let's think step by step. Belmozaline is used to treat migraine. This matches option (B). The answer is (B)."
    assert degenerate_reason(q) is None and degenerate_reason(a) is None
    assert degenerate_reason("Is Belmozaline or Ritenlol used to treat migraine?") is None


def test_one_verifier_settings_for_synthesize_and_the_rl_step():
    """synthesize's synth_* fields and the RL step's reward_* twins make the same chain through one settings type."""
    from rubric_rl.config import RubricRLArguments
    from rubric_rl.configs.synth import SynthConfig
    from rubric_rl.synth.verifiers import VerifierSettings
    from rubric_rl.train import train_verifiers

    assert VerifierSettings.of(SynthConfig(), "synth_") == VerifierSettings() == VerifierSettings.of(
        RubricRLArguments(), "reward_")
    for f in dataclasses.fields(VerifierSettings):  # every twin exists on both sides
        assert hasattr(SynthConfig, "synth_" + f.name) and hasattr(RubricRLArguments, "reward_" + f.name)
    args = RubricRLArguments(reward_grounding_min_overlap=0.3, reward_safety=False)
    chain = train_verifiers(args, None)
    grounding = [v for v in chain if isinstance(v, GroundingVerifier)]
    assert len(grounding) == 1 and grounding[0].min_overlap == 0.3
    assert [type(v).__name__ for v in chain] == [type(v).__name__ for v in default_verifiers(
        VerifierSettings.of(SynthConfig(synth_grounding_min_overlap=0.3, synth_safety=False), "synth_"))]
