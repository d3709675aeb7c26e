"""Teacher output -> a chat-format SFT sample.

Teachers are asked for ``Question:`` ... ``Answer:`` ... (markdown headings and bold markers are
tolerated) or a JSON object with ``question``/``answer`` keys. Anything else is rejected with a
reason code.
"""

from __future__ import annotations

import json
import re

from ..rubric import THINK_BLOCK

_QA = re.compile(
    r"(?:^|\n)\s*(?:#+\s*|\*\*)?(?:question|prompt|q)\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(?P<q>.*?)"
    r"\n\s*(?:#+\s*|\*\*)?(?:the\s+)?(?:answer|response|a)\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(?P<a>.*)$",
    re.DOTALL | re.IGNORECASE,
)


def _from_json(text: str):
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            keys = {k.lower(): v for k, v in obj.items()}
            q = keys.get("question") or keys.get("prompt") or keys.get("instruction")
            a = keys.get("answer") or keys.get("response") or keys.get("output")
            if isinstance(q, str) and isinstance(a, str):
                return q, a
        start = text.find("{", start + 1)
    return None


def _clean(text: str | None) -> tuple[str, str | None]:
    """Teacher output without thinking blocks and code fences, or a reason it is empty."""
    if text is None:
        return "", "no_text"
    text = THINK_BLOCK.sub("", text).strip()
    text = re.sub(r"^```\w*\n|```$", "", text).strip()
    return text, (None if text else "empty_output")


# A labelled block after the answer: a small teacher that does not stop writes another "Question:", restates
# "The answer is: ...", or echoes the prompt's "Rubric:" / section titles. The answer ends there (a stop
# sequence applied after the fact).
_NEXT_BLOCK = re.compile(
    r"\n\s*(?:#+\s*|\*\*)?(?:question|prompt|answer|the answer(?: is)?|response|rubric|document|"
    r"(?:prompt|response)-related aspects|prompt-response alignment|technical and trainability aspects)"
    r"\s*(?:\*\*)?\s*[:：]", re.IGNORECASE)


def _first_block(answer: str) -> str:
    m = _NEXT_BLOCK.search(answer)
    return _before_loop(answer[:m.start()] if m else answer)


_SENTENCE_END = re.compile(r"[^.!?\n]*[.!?\n]+|[^.!?\n]+$")


def _before_loop(answer: str) -> str:
    """``answer`` up to the first sentence (of at least 3 words) that repeats an earlier one: a small teacher that
    loops writes its answer sentence again and again until the token limit. Like the labelled-block cut, a stop
    applied after the fact; a question that loops is still rejected (``repeated_statement``)."""
    seen: set[str] = set()
    for m in _SENTENCE_END.finditer(answer):
        norm = " ".join(re.findall(r"\w+", m.group().lower()))
        if len(norm.split()) >= 3:
            if norm in seen:
                return answer[:m.start()].rstrip()
            seen.add(norm)
    return answer


def parse_sample(text: str | None) -> tuple[list[dict] | None, str | None]:
    """``(messages, None)`` or ``(None, reason)``. The answer ends at the next labelled block (``Question:``,
    ``The answer is:``, ``Rubric:``...) or before its first repeated sentence, which small teachers write when
    they do not stop."""
    text, reason = _clean(text)
    if reason:
        return None, reason
    qa = _from_json(text) if text.lstrip().startswith(("{", "[")) else None
    if qa is None:
        m = _QA.search(text)
        qa = (m.group("q"), m.group("a")) if m else _from_json(text)
    if qa is None:
        return None, "no_question_answer"
    q, a = qa[0].strip(), _first_block(qa[1]).strip()
    if not q:
        return None, "empty_question"
    if not a:
        return None, "empty_answer"
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}], None


_ANSWER_LABEL = re.compile(r"(?:^|\n)\s*(?:#+\s*|\*\*)?(?:the\s+)?(?:answer|response)\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
                           re.IGNORECASE)


def parse_answer(text: str | None) -> tuple[str | None, str | None]:
    """An answer alone (the ``augment_answer`` strategy): ``(answer, None)`` or ``(None, reason)``.

    Accepts ``Answer:`` followed by the answer, a full ``Question:``/``Answer:`` pair (the answer part is
    kept), a JSON object with an ``answer`` key, or bare text.
    """
    text, reason = _clean(text)
    if reason:
        return None, reason
    if text.startswith("{"):
        qa = _from_json(text)
        if qa is not None:
            text = qa[1]
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("answer"), str):
                text = obj["answer"]
    m = _ANSWER_LABEL.search(text)
    if m:
        text = text[m.end():]
    text = text.strip()
    if not text:
        return None, "empty_answer"
    return text, None
