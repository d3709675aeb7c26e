"""The rubric: schema, tolerant parsing of policy output, rendering into the teacher prompt.

A rubric has the four parts of OptimSyn: what the *prompt* (question) should be like, what the
*response* should be like, how prompt and response must *align*, and *technical* / trainability
aspects. Policy output is parsed tolerantly: ``<think>`` blocks, code fences, stray text around a
JSON object, alternative key spellings, or a markdown layout with one heading per part. Anything
that is not a usable rubric becomes a :class:`RubricParseError` with a reason code; the reward turns
it into an invalid rollout, never a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

SECTIONS = ("prompt_related", "response_related", "prompt_response_alignment", "technical")
SECTION_TITLES = {
    "prompt_related": "Prompt-related aspects",
    "response_related": "Response-related aspects",
    "prompt_response_alignment": "Prompt-response alignment",
    "technical": "Technical and trainability aspects",
}
# Normalised key -> section. Keys are lower-cased with non-letters collapsed to "_".
_ALIASES = {
    "prompt_related": "prompt_related", "prompt": "prompt_related", "question": "prompt_related",
    "prompt_aspects": "prompt_related", "question_related": "prompt_related",
    "prompt_related_aspects": "prompt_related",
    "response_related": "response_related", "response": "response_related", "answer": "response_related",
    "response_aspects": "response_related", "answer_related": "response_related",
    "response_related_aspects": "response_related",
    "prompt_response_alignment": "prompt_response_alignment", "alignment": "prompt_response_alignment",
    "prompt_response": "prompt_response_alignment", "question_answer_alignment": "prompt_response_alignment",
    "technical": "technical", "technical_aspects": "technical", "trainability": "technical",
    "technical_trainability": "technical", "technical_and_trainability_aspects": "technical",
    "technical_trainability_aspects": "technical",
}
MAX_ITEM_CHARS = 400
MAX_ITEMS_PER_SECTION = 12


class RubricParseError(ValueError):
    """A policy completion that is not a usable rubric. ``reason`` is a short code for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Rubric:
    prompt_related: list[str] = field(default_factory=list)
    response_related: list[str] = field(default_factory=list)
    prompt_response_alignment: list[str] = field(default_factory=list)
    technical: list[str] = field(default_factory=list)

    def sections(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in SECTIONS}

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.sections().items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def to_list(self) -> str:
        """The rubric in the ``list`` format: one "- " line per criterion."""
        return "\n".join(f"- {item}" for items in self.sections().values() for item in items)

    @classmethod
    def from_dict(cls, data: dict) -> "Rubric":
        return _rubric_from_mapping(data)

    @property
    def num_items(self) -> int:
        return sum(len(v) for v in self.sections().values())

    def text(self) -> str:
        """All criteria as one lower-cased string (what keyword-based components read)."""
        return " \n".join(item for items in self.sections().values() for item in items).lower()

    def render(self) -> str:
        """The rubric as the teacher sees it: one titled, bulleted list per non-empty part."""
        blocks = []
        for name, items in self.sections().items():
            if items:
                blocks.append(SECTION_TITLES[name] + ":\n" + "\n".join(f"- {item}" for item in items))
        return "\n\n".join(blocks)


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z]+", "_", key.lower()).strip("_")


def _as_items(value, section: str) -> list[str]:
    if isinstance(value, str):
        value = [line.strip(" -*\t") for line in value.splitlines()]
    if not isinstance(value, list):
        raise RubricParseError("bad_section_type", f"{section} must be a list of strings, got {type(value).__name__}")
    items = []
    for item in value:
        if isinstance(item, dict):  # {"criterion": "..."} or {"name": .., "description": ..}
            item = " ".join(str(v) for v in item.values() if isinstance(v, str | int | float))
        if not isinstance(item, str):
            raise RubricParseError("bad_item_type", f"{section} items must be strings, got {type(item).__name__}")
        item = re.sub(r"^([-*+\u2022]|\d+[.)])\s+", "", " ".join(item.split()))
        if item:
            items.append(item[:MAX_ITEM_CHARS])
    return items[:MAX_ITEMS_PER_SECTION]


def _rubric_from_mapping(data) -> Rubric:
    if not isinstance(data, dict):
        raise RubricParseError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    if len(data) == 1 and isinstance(next(iter(data.values())), dict):  # {"rubric": {...}}
        data = next(iter(data.values()))
    out: dict[str, list[str]] = {name: [] for name in SECTIONS}
    for key, value in data.items():
        section = _ALIASES.get(_norm_key(str(key)))
        if section is not None:
            out[section].extend(_as_items(value, section))
    rubric = Rubric(**out)
    if rubric.num_items == 0:
        raise RubricParseError("empty_rubric", "no criteria in any of the four parts")
    return rubric


THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|yaml|markdown|md)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*|\*\*)?\s*([A-Za-z][A-Za-z /&_-]{2,60}?)\s*(?:\*\*)?\s*:?\s*(?:\*\*)?\s*$")


def _json_objects(text: str):
    """Yield every decodable top-level JSON object in ``text``, in order."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        yield obj
        i = text.find("{", end)


def _parse_markdown(text: str) -> Rubric | None:
    out: dict[str, list[str]] = {name: [] for name in SECTIONS}
    current = None
    seen = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        m = _HEADING.match(stripped)
        if m and not stripped.startswith(("-", "*  ", "+")):
            key = _norm_key(m.group(1))
            key = re.sub(r"_?(aspects|criteria)$", "", key) or key
            section = _ALIASES.get(key) or _ALIASES.get(key + "_related")
            if section is not None:
                current, seen = section, True
                continue
        if current is not None and stripped[:1] in "-*+•" or (current is not None and re.match(r"\d+[.)]\s", stripped)):
            item = re.sub(r"^([-*+•]|\d+[.)])\s*", "", stripped)
            if item:
                out[current].append(item[:MAX_ITEM_CHARS])
    if not seen:
        return None
    rubric = Rubric(**{k: v[:MAX_ITEMS_PER_SECTION] for k, v in out.items()})
    if rubric.num_items == 0:
        raise RubricParseError("empty_rubric", "headings found but no bulleted criteria")
    return rubric


def parse_rubric(completion: str) -> Rubric:
    """Parse a policy completion into a :class:`Rubric`, or raise :class:`RubricParseError`."""
    if not isinstance(completion, str):
        raise RubricParseError("not_text", f"completion is {type(completion).__name__}")
    text = THINK_BLOCK.sub("", completion).strip()
    if not text:
        raise RubricParseError("empty_completion")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    last_error: RubricParseError | None = None
    for candidate in candidates:
        for obj in _json_objects(candidate):
            try:
                return _rubric_from_mapping(obj)
            except RubricParseError as err:
                last_error = err
    for candidate in candidates:
        try:
            rubric = _parse_markdown(candidate)
        except RubricParseError as err:
            last_error = err
            continue
        if rubric is not None:
            return rubric
    if last_error is not None:
        raise last_error
    if "{" in text:
        raise RubricParseError("invalid_json", text[:80])
    raise RubricParseError("no_rubric_found", text[:80])


_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+(?P<item>\S.*)$")
_QUESTION_WORDS = re.compile(r"\b(question|ask|prompt|quiz|options?|choices?)\b", re.IGNORECASE)
_ANSWER_WORDS = re.compile(r"\b(answer|response|reason|explain|explanation|step|steps|letter)\b", re.IGNORECASE)
LIST_MIN_ITEMS = 2
LIST_MIN_WORDS = 3


def parse_rubric_list(completion: str) -> Rubric:
    """The ``list`` rubric format, for small instruct policies that cannot write JSON reliably: a bulleted or
    numbered list of criteria. Each item goes to the part it talks about (question words: prompt-related;
    answer words: response-related; both: alignment; neither: technical). A JSON or headed rubric is parsed
    as by :func:`parse_rubric` first. At least ``LIST_MIN_ITEMS`` items of ``LIST_MIN_WORDS``+ words."""
    try:
        return parse_rubric(completion)
    except RubricParseError:
        pass
    if not isinstance(completion, str):
        raise RubricParseError("not_text", f"completion is {type(completion).__name__}")
    text = THINK_BLOCK.sub("", completion).strip()
    if not text:
        raise RubricParseError("empty_completion")
    out: dict[str, list[str]] = {name: [] for name in SECTIONS}
    seen: set[str] = set()
    for line in text.splitlines():
        m = _LIST_ITEM.match(line)
        if not m:
            continue
        item = " ".join(m.group("item").replace("**", "").split())[:MAX_ITEM_CHARS]
        if len(item.split()) < LIST_MIN_WORDS or item.lower() in seen:
            continue
        seen.add(item.lower())
        q, a = bool(_QUESTION_WORDS.search(item)), bool(_ANSWER_WORDS.search(item))
        section = ("prompt_response_alignment" if q and a else "prompt_related" if q
                   else "response_related" if a else "technical")
        out[section].append(item)
    rubric = Rubric(**{k: v[:MAX_ITEMS_PER_SECTION] for k, v in out.items()})
    if rubric.num_items < LIST_MIN_ITEMS:
        raise RubricParseError("too_few_items" if rubric.num_items else "no_rubric_found", text[:80])
    return rubric


def try_parse_rubric(completion: str, fmt: str = "json") -> tuple[Rubric | None, str | None]:
    """``(rubric, None)`` or ``(None, reason)``; ``fmt`` is the format the policy was asked for."""
    try:
        return (parse_rubric_list(completion) if fmt == "list" else parse_rubric(completion)), None
    except RubricParseError as err:
        return None, err.reason


RUBRIC_FORMAT_INSTRUCTIONS = (
    'Answer with a JSON object with four keys, each a list of short criteria: "prompt_related" (what the '
    'question should be like), "response_related" (what the answer should be like), '
    '"prompt_response_alignment" (how they must fit together and to the document), and "technical" '
    "(format and trainability)."
)

RUBRIC_LIST_INSTRUCTIONS = (
    "Reply with 3 to 5 short instructions for the teacher, one per line, each starting with \"- \". Say what "
    "the question should ask and what the answer should contain."
)
RUBRIC_LIST_EXAMPLE = (
    "Example reply:\n- Ask a multiple-choice question about one fact in the document.\n"
    "- Give four options with exactly one correct option.\n"
    "- The answer reasons step by step and ends with the letter of the correct option."
)
