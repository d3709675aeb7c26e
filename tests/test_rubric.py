import json

import pytest

from rubric_rl.rubric import Rubric, RubricParseError, parse_rubric, try_parse_rubric

GOOD = {
    "prompt_related": ["Write a multiple-choice question with four options."],
    "response_related": ["Reason step by step.", "End with the final answer letter."],
    "prompt_response_alignment": ["The correct option must match the document."],
    "technical": ["Plain text."],
}


def test_plain_json_roundtrip():
    r = parse_rubric(json.dumps(GOOD))
    assert r.to_dict() == GOOD
    assert Rubric.from_dict(r.to_dict()) == r
    assert "Response-related aspects:\n- Reason step by step." in r.render()


@pytest.mark.parametrize(
    "wrap",
    [
        "<think>I should ask about doses {not json}</think>\n{}",
        "Sure! Here is the rubric:\n```json\n{}\n```\nHope this helps.",
        "Some preamble with a brace { that is not json.\n{}\ntrailing {{ junk",
        "```\n{}\n```",
    ],
)
def test_tolerant_wrappers(wrap):
    r = parse_rubric(wrap.replace("{}", json.dumps(GOOD)))
    assert r.to_dict() == GOOD


def test_key_aliases_and_string_sections():
    text = json.dumps({"Prompt": "Ask about the dose", "Answer": ["- Be concise"], "Alignment": [],
                       "Technical aspects": ["no tables"], "extra": ["ignored"]})
    r = parse_rubric(text)
    assert r.prompt_related == ["Ask about the dose"]
    assert r.response_related == ["Be concise"]
    assert r.technical == ["no tables"]


def test_nested_rubric_key():
    r = parse_rubric(json.dumps({"rubric": GOOD}))
    assert r.response_related == GOOD["response_related"]


def test_markdown_layout():
    text = """## Prompt-related aspects
- Ask a multiple-choice question.
## Response-related aspects
1. Explain step by step.
2) Give the letter.
**Technical**
* plain text
"""
    r = parse_rubric(text)
    assert r.prompt_related == ["Ask a multiple-choice question."]
    assert r.response_related == ["Explain step by step.", "Give the letter."]
    assert r.technical == ["plain text"]


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty_completion"),
        ("<think>only thoughts</think>", "empty_completion"),
        ("just some words with no structure", "no_rubric_found"),
        ('{"prompt_related": ["x"', "invalid_json"),
        ('{"prompt_related": [], "technical": []}', "empty_rubric"),
        ('{"prompt_related": 5}', "bad_section_type"),
        ('{"prompt_related": [["nested"]]}', "bad_item_type"),
        ('[1, 2, 3]', "no_rubric_found"),
        ('{"unrelated": ["a"]}', "empty_rubric"),
    ],
)
def test_broken_inputs_have_reasons(text, reason):
    with pytest.raises(RubricParseError) as info:
        parse_rubric(text)
    assert info.value.reason == reason
    assert try_parse_rubric(text) == (None, reason)


def test_adversarial_inputs_are_bounded():
    huge = json.dumps({"prompt_related": [f"Ask question {i} about " + "x" * 100_000 for i in range(100)]})
    r = parse_rubric(huge)
    assert len(r.prompt_related) <= 12 and all(len(i) <= 400 for i in r.prompt_related)
    # deeply nested / many braces must not blow up
    r2, reason = try_parse_rubric("{" * 5000)
    assert r2 is None and reason == "invalid_json"
    assert try_parse_rubric(None) == (None, "not_text")
