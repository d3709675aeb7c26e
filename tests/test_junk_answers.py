"""Junk is never scored or selected: empty, whitespace, control-character and non-text ("NaN inf") answers."""

import json

import pytest

from rubric_rl.configs.influence import InfluenceConfig
from rubric_rl.influence.scorer import InfluenceResult
from rubric_rl.influence.selection import score_file
from rubric_rl.synth.text import junk_text_reason
from rubric_rl.synth.verifiers import Candidate, NonTrivialVerifier, default_verifiers

JUNK = {"": "empty_answer", "   \n\t": "whitespace_answer", "\x00\x01\x1b": "control_characters_answer",
        "\u200b\x07 \x0c": "control_characters_answer", "NaN inf": "non_text_answer", "null": "non_text_answer",
        "nan 0.5 -inf": "non_text_answer", "...?!": "non_text_answer"}
REAL = ["42", "B", "200 mg once daily.", "None of the listed drugs interact.", "Infinity is not a number."]


@pytest.mark.parametrize("text,reason", sorted(JUNK.items()))
def test_junk_text_reason(text, reason):
    assert junk_text_reason(text) == reason


@pytest.mark.parametrize("text", REAL)
def test_real_answers_are_text(text):
    assert junk_text_reason(text) is None


def chat(answer, question="What is the standard adult dose of Belmozaline per day?"):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("text,reason", sorted(JUNK.items()))
def test_verifiers_reject_junk_with_its_reason(text, reason):
    assert NonTrivialVerifier()(Candidate(chat(text))) == reason
    chain = default_verifiers(grounding=False, safety=False)
    assert next(r for v in chain if (r := v(Candidate(chat(text))))) is not None


class ShortIsBest:
    """A stand-in scorer that, like the real one on the issue's data, scores short answers highest."""

    progress = False

    def __init__(self):
        self.seen = []

    def score(self, samples):
        self.seen += samples
        return [InfluenceResult(1.0 / (1 + len(s[-1]["content"]))) for s in samples]


def test_score_flags_junk_and_select_top_never_picks_it(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [{"messages": chat(t), "id": f"junk{i}"} for i, t in enumerate(JUNK)]
    rows += [{"messages": chat(t), "id": f"real{i}"} for i, t in enumerate(REAL)]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = ShortIsBest()
    summary = score_file(InfluenceConfig(), tmp_path, samples, tmp_path / "scored.jsonl", select_top=3,
                         selected_path=tmp_path / "top.jsonl", progress=False, scorer=scorer)
    out = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # one line per input, in order
    for r, text in zip(out, JUNK):
        assert r["influence"] is None and r["reason"] == JUNK[text]
    assert all(isinstance(r["influence"], float) for r in out[len(JUNK):])
    assert len(scorer.seen) == len(REAL)  # junk never reaches the scorer
    top = [json.loads(x)["id"] for x in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert top == ["real1", "real0", "real2"]  # the shortest real answers: "B", "42", "200 mg once daily."
    assert summary["scored"] == len(REAL)
    assert sum(summary["unscored"].values()) == len(JUNK)


def test_score_marks_exact_duplicates_and_never_selects_them_twice(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [{"messages": chat("B"), "id": "a"}, {"messages": chat("200 mg once daily."), "id": "b"},
            {"messages": chat("B"), "id": "a-again"}]  # same messages as line 1, other metadata
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = ShortIsBest()
    summary = score_file(InfluenceConfig(), tmp_path, samples, tmp_path / "scored.jsonl", select_top=2,
                         selected_path=tmp_path / "top.jsonl", progress=False, scorer=scorer, chunk_size=2)
    out = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert out[2]["influence"] is None and out[2]["reason"] == "duplicate" and out[2]["duplicate_of"] == 1
    assert len(scorer.seen) == 2 and summary["unscored"] == {"duplicate": 1}
    assert [json.loads(x)["id"] for x in (tmp_path / "top.jsonl").read_text().splitlines()] == ["a", "b"]
