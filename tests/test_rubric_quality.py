"""The rubric parser's quality gate: word salad, stuttering, items that are no instruction, repeated items and
text after the rubric are no rubric (issue 19, item 2), while what real instruct models write around a rubric
still parses."""

import json

import pytest

from rubric_rl.rubric import (QUALITY_REASONS, TRAILING_MAX_CHARS, Rubric, RubricParseError, check_rubric,
                              parse_rubric, parse_rubric_list, stutter, try_parse_rubric)

GOOD = {
    "prompt_related": ["Write a multiple-choice question with four options."],
    "response_related": ["Reason step by step.", "End with the final answer letter."],
    "prompt_response_alignment": ["The correct option must match the document."],
    "technical": ["Plain text."],
}
# Seen in a quickstart run's rollouts.jsonl (issue 19): parsed, and paid above 2.6.
SALAD = ('{"prompt_related": ["Write a multiple-choice question with a step by step by step by step and end with '
         'with step by step with with a"], "response_related": ["Reason step by step."], '
         '"prompt_response_alignment": ["The answer must be stated in the document."], "technical": ["Use plain '
         'text."]} ", "technical": ["Use plain text with with step"]} step by step by the answer the answer with a '
         'step by step with with a question')


def reason_of(text, fmt="json"):
    rubric, reason = try_parse_rubric(text, fmt)
    assert rubric is None, rubric
    return reason


def with_item(item, section="prompt_related"):
    return json.dumps({**GOOD, section: [item]})


def test_the_word_salad_of_the_issue_is_no_rubric():
    with pytest.raises(RubricParseError) as info:
        parse_rubric(SALAD)
    assert info.value.reason == "stuttering"
    assert "prompt_related[0]" in str(info.value) and "'step by'" in str(info.value)
    # the list format reads a JSON rubric first: the gate's verdict is final there too
    assert reason_of(SALAD, "list") == "stuttering"


def test_trailing_garbage_after_a_clean_rubric_is_no_rubric():
    clean = json.dumps(GOOD)
    garbage = SALAD[SALAD.index('} ", "technical"') + 1:]
    with pytest.raises(RubricParseError) as info:
        parse_rubric(clean + garbage)
    assert info.value.reason == "trailing_text" and "characters after the rubric" in str(info.value)
    assert reason_of(clean + " the answer with with a", "json") == "trailing_text"  # short, but stutters
    # the bound itself: a remark of TRAILING_MAX_CHARS characters passes, one more does not
    assert parse_rubric(clean + "\n" + "a" * TRAILING_MAX_CHARS).to_dict() == GOOD
    assert reason_of(clean + "\n" + "a" * (TRAILING_MAX_CHARS + 1)) == "trailing_text"


@pytest.mark.parametrize("item,unit", [
    ("End with with the letter.", "with"),
    ("Reason step by step by step.", "step by"),
    ("Ask about the dose. Ask about the dose.", "ask about the dose ."),
    ("Give the the answer.", "the"),
])
def test_stuttered_items_are_no_rubric(item, unit):
    assert stutter(item) == unit
    with pytest.raises(RubricParseError) as info:
        parse_rubric(with_item(item))
    assert info.value.reason == "stuttering" and "prompt_related[0]" in str(info.value)


@pytest.mark.parametrize("text", ["Reason step by step.", "Keep answers very, very short.",
                                  "Format options as (A) to (D).", "Conclude with: the answer is (X).",
                                  "Options 1, 1 and 2 are not allowed...", "Explain one by one, day by day."])
def test_ordinary_repeats_are_no_stutter(text):
    assert stutter(text) is None


def test_a_phrase_looping_inside_an_item_is_no_rubric():
    item = "Explain step by step, check step by step, answer step by step."
    assert stutter(item) is None  # not back to back: the n-gram count catches it
    assert reason_of(with_item(item, "response_related")) == "repeated_phrase"
    assert parse_rubric(with_item("Explain step by step, then check the answer step by step."))  # twice is fine


@pytest.mark.parametrize("item", ["x", "...", "Clarity", "42 %", "the and of", "- -", "A B C"])
def test_an_item_that_is_no_instruction_is_no_rubric(item):
    with pytest.raises(RubricParseError) as info:
        parse_rubric(with_item(item, "technical"))
    assert info.value.reason == "no_instruction" and "technical[0]" in str(info.value)


def test_the_shortest_instructions_pass():
    for item in ("Be concise.", "Plain text.", "No tables", "Use plain text."):
        assert parse_rubric(with_item(item, "technical")).technical == [item]


def test_an_item_twice_is_no_rubric_in_json_and_list_format():
    rubric = {**GOOD, "technical": ["Reason step by step"]}  # = response_related[0] up to case and punctuation
    with pytest.raises(RubricParseError, match=r"technical\[0\] repeats response_related\[0\]") as info:
        parse_rubric(json.dumps(rubric))
    assert info.value.reason == "repeated_item"
    looped = "- Ask a question about the dose.\n- Give the answer in mg.\n- Ask a question about the dose.\n"
    assert reason_of(looped, "list") == "repeated_item"


def test_the_list_format_has_the_same_gate():
    good = "- Ask a multiple-choice question about the dose.\n- Give four options, one of them correct.\n"
    assert parse_rubric_list(good).num_items == 2
    assert parse_rubric_list(good + "\nHope this helps!").num_items == 2
    assert reason_of(good + "- Reason step by step by step and then answer.\n", "list") == "stuttering"
    assert reason_of(good + "\n" + "Then the question and the answer and more words. " * 5, "list") == "trailing_text"
    # a short bullet is still skipped (not an item of the list format), not a failure
    assert parse_rubric_list(good.replace("\n-", "\n- Options:\n-", 1)).num_items == 2


@pytest.mark.parametrize("wrap", [
    "<think>I should ask about doses {not json}. Maybe with with step by step by step.</think>\n{}",
    "Sure! Here is the rubric:\n```json\n{}\n```\nHope this helps.",
    "```json\n{}\n```\nLet me know if you would like me to adjust any of the criteria.",
    "<think>\nThe target task is multiple choice.\n</think>\n\n```\n{}\n```",
    "Here is a rubric for a multiple-choice question about the document, with the reasoning it needs:\n\n{}",
])
def test_what_instruct_models_write_around_a_rubric_still_parses(wrap):
    assert parse_rubric(wrap.replace("{}", json.dumps(GOOD, indent=2))).to_dict() == GOOD


def test_markdown_rubric_with_a_closing_line_parses_and_a_long_tail_does_not():
    text = ("<think>plan</think>\n## Prompt-related aspects\n- Ask a multiple-choice question.\n"
            "## Response-related aspects\n1. Explain step by step.\n2) Give the letter.\n\nThat is all.")
    assert parse_rubric(text).response_related == ["Explain step by step.", "Give the letter."]
    assert reason_of(text + " And then some more of the same text goes on and on." * 3) == "trailing_text"


def test_thinking_after_the_rubric_is_text_after_the_rubric():
    rubric = json.dumps(GOOD)
    tail = " ".join(f"word{i}" for i in range(30))
    assert reason_of(rubric + f"\n<think>{tail}</think>") == "trailing_text"
    assert reason_of(rubric + f"\n<think>{tail}") == "trailing_text"  # unclosed: before, everything was stripped
    assert parse_rubric(f"<think>{tail}</think>\n" + rubric).to_dict() == GOOD
    assert reason_of(f"<think>{tail} {rubric}") == "empty_completion"  # unfinished thinking is still no rubric


def test_check_rubric_returns_a_good_rubric_and_names_the_field():
    rubric = Rubric.from_dict(GOOD)
    assert check_rubric(rubric) is rubric
    with pytest.raises(RubricParseError, match=r"^no_instruction: prompt_response_alignment\[1\] "):
        check_rubric(Rubric.from_dict({**GOOD, "prompt_response_alignment": ["Match the document.", "??"]}))


def test_every_gate_reason_is_reachable():
    reached = {reason_of(SALAD), reason_of(json.dumps(GOOD) + " x" * 200),
               reason_of(with_item("Explain step by step, check step by step, answer step by step.")),
               reason_of(with_item("...")), reason_of(with_item(GOOD["technical"][0]))}
    assert reached == set(QUALITY_REASONS)
