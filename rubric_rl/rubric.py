"""The rubric: schema, parsing of policy output, a quality gate, rendering into the teacher prompt.

A rubric has the four parts of OptimSyn: what the *prompt* (question) should be like, what the
*response* should be like, how prompt and response must *align*, and *technical* / trainability
aspects. Policy output is parsed tolerantly where real instruct models differ in form: ``<think>``
blocks, code fences, a preamble before a JSON object, alternative key spellings, or a markdown layout
with one heading per part. It is parsed strictly where a degenerate policy differs in substance: a
rubric counts only if it passes :func:`check_rubric` (no stuttered or looping items, every item an
instruction, no item twice) and the completion does not go on after it (at most ``TRAILING_MAX_CHARS``
characters, not stuttering). Anything that is not a usable rubric becomes a :class:`RubricParseError`
with a reason code (``QUALITY_REASONS`` for the gate); the reward turns it into an invalid rollout,
never a crash.
"""

from __future__ import annotations

import json
import re
from collections import Counter
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

    def as_completion(self, fmt: str = "json") -> str:
        """The rubric as a policy reply in ``fmt`` (``json``: :meth:`to_json`, ``list``: :meth:`to_list`): the SFT
        warm start's target."""
        return self.to_list() if fmt == "list" else self.to_json()

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
_FENCE_MARK = re.compile(r"```[\w-]*")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*|\*\*)?\s*([A-Za-z][A-Za-z /&_-]{2,60}?)\s*(?:\*\*)?\s*:?\s*(?:\*\*)?\s*$")

# ---- The quality gate. A completion that passes the parser's structure checks is a rubric only if it also
# passes these; a failure is a RubricParseError with one of QUALITY_REASONS, final: no other reading of the
# completion (another JSON object, the markdown or list layout) is tried. The thresholds were chosen on the
# shipped rubrics (data/quickstart/seed_rubrics.json, data/calibration/*.json: every item has 3+ words, no
# repeats) and on synthetic word salad (tests/test_rubric_quality.py), never on evaluation results.
# After the rubric: one short closing sentence ("Hope this helps!", "Let me know if you want changes."), not an
# explanation paragraph or a runaway continuation (the policy is asked for the rubric only). Before it, any text
# is tolerated (a preamble, reasoning without <think> tags): a degenerate continuation comes after.
TRAILING_MAX_CHARS = 100
MIN_ITEM_WORDS = 2  # words of 2+ letters in an item: "Be concise", "Plain text" pass, "Clarity", "x", "..." do not
PHRASE_N = 3  # a PHRASE_N-word phrase may occur at most PHRASE_MAX_COUNT times in one item
PHRASE_MAX_COUNT = 2
QUALITY_REASONS = ("trailing_text", "stuttering", "repeated_phrase", "no_instruction", "repeated_item")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD_TOKEN = re.compile(r"[^\W_]+")
_REAL_WORD = re.compile(r"[^\W\d_]{2,}")
# Words that alone make no instruction ("the and of", "with a"); the content words are everything else.
_FUNCTION_WORDS = frozenset("""
a an the and or but nor of to in on at by for with from into onto as is are was were be been being it its this
that these those then than so if not no yes up out off over under about via per each every any some all very
""".split())


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def stutter(text: str) -> str | None:
    """The first phrase (leftmost, then shortest) that ``text`` says twice back to back, or None: "with with",
    "by step by step", "Ask X. Ask X.". Tokens are lower-cased words and single punctuation marks, so "very,
    very" is no stutter, and a phrase without a word that starts with a letter ("...", "1 1") does not count.
    "step by step" is no stutter."""
    tokens = _TOKEN.findall(text.lower())
    n = len(tokens)
    letters = [0]  # letters[k]: how many of the first k tokens are words with a letter first
    for t in tokens:
        letters.append(letters[-1] + t[0].isalpha())
    best: tuple[int, int] | None = None  # (start, size)
    for size in range(1, n // 2 + 1):
        run = 0  # tokens[j] == tokens[j + size] for the last `run` positions j: a repeat once run >= size
        for j in range(n - size):
            if tokens[j] != tokens[j + size]:
                run = 0
                continue
            run += 1
            start = j - size + 1
            if run >= size and letters[start + size] > letters[start]:
                if best is None or start < best[0]:
                    best = (start, size)
                break
    return None if best is None else " ".join(tokens[best[0]:best[0] + best[1]])


def _repeated_phrase(text: str) -> tuple[str, int] | None:
    words = _WORD_TOKEN.findall(text.lower())
    counts = Counter(tuple(words[i:i + PHRASE_N]) for i in range(len(words) - PHRASE_N + 1))
    if counts:
        phrase, count = counts.most_common(1)[0]
        if count > PHRASE_MAX_COUNT:
            return " ".join(phrase), count
    return None


def item_problem(item: str) -> tuple[str, str] | None:
    """``(reason, detail)`` for a rubric item that is no instruction for the teacher, or None:
    ``stuttering`` (:func:`stutter`), ``repeated_phrase`` (a ``PHRASE_N``-word phrase more than
    ``PHRASE_MAX_COUNT`` times), ``no_instruction`` (fewer than ``MIN_ITEM_WORDS`` words of two or more letters,
    or only function words such as "the", "with", "and": punctuation, a number, a one-word label)."""
    unit = stutter(item)
    if unit is not None:
        return "stuttering", f"says {unit!r} twice in a row: {_quote(item)}"
    repeated = _repeated_phrase(item)
    if repeated is not None:
        return "repeated_phrase", f"says {repeated[0]!r} {repeated[1]} times: {_quote(item)}"
    words = _REAL_WORD.findall(item.lower())
    if len(words) < MIN_ITEM_WORDS or all(w in _FUNCTION_WORDS for w in words):
        return "no_instruction", (f"is no instruction (needs {MIN_ITEM_WORDS}+ words of 2+ letters, not only "
                                  f"function words): {_quote(item)}")
    return None


def check_rubric(rubric: Rubric) -> Rubric:
    """The rubric itself, or :class:`RubricParseError` naming the first item that fails :func:`item_problem`,
    or ``repeated_item`` for an item that occurs twice (case, spacing and punctuation ignored). The detail names
    the item as ``part[index]``."""
    seen: dict[str, str] = {}
    for section, items in rubric.sections().items():
        for j, item in enumerate(items):
            where = f"{section}[{j}]"
            problem = item_problem(item)
            if problem is not None:
                raise RubricParseError(problem[0], f"{where} {problem[1]}")
            key = " ".join(_WORD_TOKEN.findall(item.lower()))
            if key in seen:
                raise RubricParseError("repeated_item", f"{where} repeats {seen[key]}: {_quote(item)}")
            seen[key] = where
    return rubric


def trailing_problem(rest: str) -> str | None:
    """Why the text after a rubric is more than a closing remark, or None. Code fence marks and whitespace do
    not count; ``<think>`` blocks after the rubric do. At most ``TRAILING_MAX_CHARS`` characters that do not
    stutter."""
    rest = " ".join(_FENCE_MARK.sub(" ", rest).split())
    if len(rest) > TRAILING_MAX_CHARS:
        return f"{len(rest)} characters after the rubric (at most {TRAILING_MAX_CHARS}): {_quote(rest, 60)}"
    unit = stutter(rest)
    if unit is not None:
        return f"the text after the rubric says {unit!r} twice in a row: {_quote(rest, 60)}"
    return None


def _checked(rubric: Rubric, rest: str) -> Rubric:
    """The gate: :func:`check_rubric`, then :func:`trailing_problem` on ``rest``, the completion after the rubric."""
    check_rubric(rubric)
    problem = trailing_problem(rest)
    if problem is not None:
        raise RubricParseError("trailing_text", problem)
    return rubric


def _blank_think(text: str) -> str:
    """``text`` with every ``<think>`` block (an unclosed one: to the end) blanked to spaces, newlines kept: the
    offsets of what is left are the offsets in ``text``."""
    return THINK_BLOCK.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _json_objects(text: str):
    """Yield ``(object, start, end)`` for every decodable top-level JSON object in ``text``, in order."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        yield obj, i, end
        i = text.find("{", end)


def _lines(text: str):
    """``(line, end offset)`` for each line of ``text``."""
    offset = 0
    for line in text.splitlines(keepends=True):
        offset += len(line)
        yield line, offset


def _parse_markdown(text: str) -> tuple[Rubric, int] | None:
    """The markdown layout (one heading per part, bulleted criteria): the rubric and the offset in ``text`` where
    its last criterion ends, or None when there is no part heading."""
    out: dict[str, list[str]] = {name: [] for name in SECTIONS}
    current = None
    seen = False
    end = 0
    for line, line_end in _lines(text):
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
                end = line_end
    if not seen:
        return None
    rubric = Rubric(**{k: v[:MAX_ITEMS_PER_SECTION] for k, v in out.items()})
    if rubric.num_items == 0:
        raise RubricParseError("empty_rubric", "headings found but no bulleted criteria")
    return rubric, end


def parse_rubric(completion: str) -> Rubric:
    """Parse a policy completion into a :class:`Rubric` that passes the quality gate, or raise
    :class:`RubricParseError`.

    Tolerated around the rubric: ``<think>`` blocks before it, code fences, any preamble, and after it a closing
    remark of at most ``TRAILING_MAX_CHARS`` characters (:func:`trailing_problem`). The first JSON object (in a
    code fence first) that maps onto the four parts is the rubric; else the markdown layout. That rubric must
    pass :func:`check_rubric`, or its reason is final."""
    if not isinstance(completion, str):
        raise RubricParseError("not_text", f"completion is {type(completion).__name__}")
    blank = _blank_think(completion)
    text = blank.strip()
    if not text:
        raise RubricParseError("empty_completion")
    candidates = [(m.group(1), m.start(1)) for m in _FENCE.finditer(blank)] + [(blank, 0)]
    last_error: RubricParseError | None = None
    for candidate, offset in candidates:
        for obj, _, end in _json_objects(candidate):
            try:
                rubric = _rubric_from_mapping(obj)
            except RubricParseError as err:
                last_error = err
                continue
            return _checked(rubric, completion[offset + end:])
    for candidate, offset in candidates:
        try:
            found = _parse_markdown(candidate)
        except RubricParseError as err:
            last_error = err
            continue
        if found is not None:
            return _checked(found[0], completion[offset + found[1]:])
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
    as by :func:`parse_rubric` first (a quality-gate failure there is final). Bullets of fewer than
    ``LIST_MIN_WORDS`` words are skipped; at least ``LIST_MIN_ITEMS`` items must be left, and the rubric must pass
    the same gate: :func:`check_rubric` (an item listed twice is ``repeated_item``), and at most
    ``TRAILING_MAX_CHARS`` characters after the last item."""
    try:
        return parse_rubric(completion)
    except RubricParseError as err:
        if err.reason in QUALITY_REASONS:
            raise
    if not isinstance(completion, str):
        raise RubricParseError("not_text", f"completion is {type(completion).__name__}")
    blank = _blank_think(completion)
    text = blank.strip()
    if not text:
        raise RubricParseError("empty_completion")
    out: dict[str, list[str]] = {name: [] for name in SECTIONS}
    end = 0
    for line, line_end in _lines(blank):
        m = _LIST_ITEM.match(line.rstrip("\r\n"))
        if not m:
            continue
        item = " ".join(m.group("item").replace("**", "").split())[:MAX_ITEM_CHARS]
        if len(item.split()) < LIST_MIN_WORDS:
            continue
        q, a = bool(_QUESTION_WORDS.search(item)), bool(_ANSWER_WORDS.search(item))
        section = ("prompt_response_alignment" if q and a else "prompt_related" if q
                   else "response_related" if a else "technical")
        out[section].append(item)
        end = line_end
    rubric = Rubric(**{k: v[:MAX_ITEMS_PER_SECTION] for k, v in out.items()})
    if rubric.num_items < LIST_MIN_ITEMS:
        raise RubricParseError("too_few_items" if rubric.num_items else "no_rubric_found", text[:80])
    return _checked(rubric, completion[end:])


def parse_completion(completion: str, fmt: str = "json") -> Rubric:
    """:func:`parse_rubric_list` for ``fmt`` ``list``, else :func:`parse_rubric`."""
    return parse_rubric_list(completion) if fmt == "list" else parse_rubric(completion)


def try_parse_rubric(completion: str, fmt: str = "json") -> tuple[Rubric | None, str | None]:
    """``(rubric, None)`` or ``(None, reason)``; ``fmt`` is the format the policy was asked for."""
    try:
        return parse_completion(completion, fmt), None
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
