"""The template teacher: an OFFLINE, deterministic stand-in for a teacher LLM.

For the quickstart and tests only. It reads facts out of the document text (the sentence patterns
of the quickstart world, with a generic fallback for any other text) and writes one
question-answer sample whose content really depends on the rubric, so the RL signal of the
quickstart is genuine:

* which fact it asks about: keywords for a relation ("dose", "side effect", "mechanism", ...);
* question style: "multiple-choice"/"options" -> four options; "true or false" -> a statement to
  judge; "fill in the blank" -> a cloze; otherwise an open question;
* answer format: "step by step"/"reasoning"/"explain" -> a reasoning chain that restates the
  supporting fact; "final answer"/"letter" -> ends with "The answer is (X)."; "concise"/"short"
  -> the bare answer; "cite"/"quote"/"according to" -> names the document as the source.

Its output has the layout a real teacher is asked for (``Question:`` ... ``Answer:`` ...), so it
goes through the same parsing and verifiers as real teacher output.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict

from ..data.world import EVAL_QUESTIONS, FACT_PATTERNS, FACT_SENTENCES, LETTERS, RELATIONS, extract_facts
from ..rubric import Rubric
from .base import TeacherRequest, TeacherResult

RELATION_KEYWORDS = {
    "indication": ("indication", "treat", "condition", "disease", "used for", "therapeutic use"),
    "drug_class": ("drug class", "class of", "classif", "category", "type of drug"),
    "mechanism": ("mechanism", "how it works", "how the drug works", "works by", "pharmacolog", "target"),
    "dosage": ("dose", "dosage", "dosing", " mg", "how much", "numeric", "quantit"),
    "contraindication": ("contraindicat", "should not be given", "safety", "risk", "who must avoid"),
    "side_effect": ("side effect", "adverse", "tolerab", "unwanted effect"),
}
# How the template teacher phrases questions (deliberately not the evaluation phrasing).
TEACHER_QUESTIONS = {
    "indication": "{s} is prescribed for which condition?",
    "drug_class": "{s} is classified as which kind of drug?",
    "mechanism": "How does {s} produce its effect?",
    "dosage": "How much {s} is given to an adult per dose?",
    "contraindication": "{s} is contraindicated in patients with which condition?",
    "side_effect": "Which adverse effect is reported most often with {s}?",
}
STYLE_KEYWORDS = {
    "mc": ("multiple-choice", "multiple choice", "options", "choices", "four candidate", "distractor"),
    "tf": ("true or false", "true/false", "yes or no", "yes/no", "statement to verify"),
    "cloze": ("fill in the blank", "fill-in-the-blank", "cloze", "blank"),
}
ANSWER_KEYWORDS = {
    "reasoning": ("step by step", "step-by-step", "reasoning", "explain", "justify", "chain of thought", "derive"),
    "final": ("final answer", "answer letter", "the letter", "option letter", "the answer is", "conclude with"),
    "concise": ("concise", "short answer", "one word", "brief", "single phrase", "only the answer"),
    "cite": ("cite", "quote", "according to", "evidence", "supported by the document", "grounded"),
}


def _has(text: str, words) -> int:
    return sum(text.count(w) for w in words)


def _answer_style(r: str) -> tuple[bool, bool, bool, bool]:
    """(reasoning, concise, final, cite) answer-format flags from a rubric's lower-cased text."""
    reasoning = _has(r, ANSWER_KEYWORDS["reasoning"]) > 0
    concise = _has(r, ANSWER_KEYWORDS["concise"]) > 0 and not reasoning
    return reasoning, concise, _has(r, ANSWER_KEYWORDS["final"]) > 0, _has(r, ANSWER_KEYWORDS["cite"]) > 0


def _support(sentence: str, cite: bool) -> str:
    """The supporting fact sentence, attributed to the document when the rubric asks for citing."""
    if not cite:
        return sentence
    return "According to the document, " + (sentence[0].lower() + sentence[1:] if sentence.startswith("The ")
                                            else sentence)


def _stable_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")


class TemplateTeacher:
    """Offline deterministic teacher (quickstart and tests only; see module docstring)."""

    name = "template"

    def __init__(self, documents: list[str] | None = None):
        # Candidate wrong answers for multiple-choice questions, per relation, from a corpus.
        self.pool: dict[str, set[str]] = defaultdict(set)
        for text in documents or []:
            for rel, _s, o, _sent in extract_facts(text):
                self.pool[rel].add(o)

    def generate(self, requests: list[TeacherRequest], **_sampling) -> list[TeacherResult]:
        """One result per request; sampling keywords (``max_new_tokens``, ...) are accepted and ignored."""
        return [self._one(r) for r in requests]

    # ------------------------------------------------------------------ internals
    def _one(self, req: TeacherRequest) -> TeacherResult:
        fields = _request_fields(req)
        strategy, document, rubric = fields["strategy"], fields["document"], fields["rubric"] or Rubric()
        if strategy == "rephrase":
            text = self.rephrase(fields["question"], fields["answer"], rubric, seed=req.seed)
        elif strategy == "similar_question":
            if not document.strip():
                return TeacherResult(text=None, error="empty_document")
            text = self.similar(document, fields["question"], fields["answer"], rubric, seed=req.seed)
        elif strategy == "augment_answer":
            if not document.strip():
                return TeacherResult(text=None, error="empty_document")
            text = self.answer(document, fields["question"], rubric, seed=req.seed)
        else:
            if not document.strip():
                return TeacherResult(text=None, error="empty_document")
            text = self.write(document, rubric, seed=req.seed)
        if text is None:
            return TeacherResult(text=None, error="no_usable_fact")
        return TeacherResult(text=text, completion_tokens=len(text.split()))

    def write(self, document: str, rubric: Rubric, seed: int = 0) -> str | None:
        r = rubric.text()
        rng = random.Random(_stable_int(document, rubric.to_json(), str(seed)))
        facts = extract_facts(document)
        if not facts:
            return self._generic(document, r, rng)
        style = max(STYLE_KEYWORDS, key=lambda k: _has(r, STYLE_KEYWORDS[k]))
        if _has(r, STYLE_KEYWORDS[style]) == 0:
            style = "open"
        return self._compose(facts, r, rng, style, _answer_style(r))

    def similar(self, document: str, question: str, answer: str, rubric: Rubric, seed: int = 0) -> str | None:
        """The ``similar_question`` strategy: a new question in the seed's format and answer style (read from the
        seed question and answer) about another fact of the document, the rubric choosing which fact."""
        facts = extract_facts(document)
        if not facts or not question.strip():
            return None
        stem = question.strip().split("\n", 1)[0]
        own, _ = _fact_for_question(facts, question, stem)
        rng = random.Random(_stable_int(document, question, rubric.to_json(), str(seed)))
        style, flags = _seed_style(question, answer)
        return self._compose([f for f in facts if f != own] or facts, rubric.text(), rng, style, flags)

    def _compose(self, facts, r: str, rng: random.Random, style: str, flags: tuple[bool, bool, bool, bool]) -> str:
        """A question about one of ``facts`` (the relation the rubric text ``r`` asks for, if any) in ``style``
        (mc, tf, cloze, open) with the answer ``flags`` (reasoning, concise, final, cite)."""
        scores = {rel: _has(r, kws) for rel, kws in RELATION_KEYWORDS.items()}
        best = max(scores.values())
        wanted = [rel for rel in RELATIONS if scores[rel] == best] if best > 0 else list(RELATIONS)
        candidates = [f for f in facts if f[0] in wanted] or facts
        rel, subj, obj, sentence = rng.choice(candidates)
        reasoning, concise, final, cite = flags
        support = _support(sentence, cite)
        question = TEACHER_QUESTIONS[rel].format(s=subj)
        letter, verdict = None, None

        if style == "mc":
            others = sorted(self.pool.get(rel, set()) - {obj}) or sorted({f[2] for f in facts if f[2] != obj})
            while len(others) < 3:
                others.append(f"none of the {len(others) + 1} others")
            options = rng.sample(others, 3) + [obj]
            rng.shuffle(options)
            letter = LETTERS[options.index(obj)]
            question += "\nOptions:\n" + "\n".join(f"({L}) {o}" for L, o in zip(LETTERS, options))
            if reasoning:
                question += "\nThink step by step, then give the letter of the correct option."
        elif style == "tf":
            verdict = rng.random() < 0.5
            shown = obj if verdict else rng.choice(sorted(self.pool.get(rel, set()) - {obj}) or [obj + " only"])
            question = "True or false: " + FACT_SENTENCES[rel].format(s=subj, o=shown)
        elif style == "cloze":
            question = "Fill in the blank: " + FACT_SENTENCES[rel].format(s=subj, o="____")
        answer = _answer_body(support, obj, letter=letter, verdict=verdict, cloze=style == "cloze",
                              reasoning=reasoning, concise=concise, final=final)
        return f"Question:\n{question}\nAnswer:\n{answer}"

    def _generic(self, document: str, r: str, rng: random.Random) -> str | None:
        """Any other text: a cloze on a content word of one sentence."""
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", document) if len(s.split()) >= 4]
        if not sentences:
            return None
        sentence = rng.choice(sentences)
        words = [w for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", sentence)]
        if not words:
            return None
        word = max(words, key=len)
        question = "Fill in the blank: " + sentence.replace(word, "____", 1)
        reasoning = _has(r, ANSWER_KEYWORDS["reasoning"]) > 0
        answer = f"The document says: {sentence} The blank is {word}." if reasoning else word
        return f"Question:\n{question}\nAnswer:\n{answer}"

    # ------------------------------------------------------------------ other strategies
    def rephrase(self, question: str, answer: str, rubric: Rubric, seed: int = 0) -> str | None:
        """The ``rephrase`` strategy: the seed question asked in other words (never the evaluation phrasing),
        its answer kept (it is the same question)."""
        if not question.strip() or not answer.strip():
            return None
        stem, _, rest = question.strip().partition("\n")
        found = _match_question(stem)
        if found is not None:
            rel, subj = found
            new_stem = REPHRASED_QUESTIONS[rel].format(s=subj)
        elif stem.startswith("True or false: "):
            new_stem = "Is the following statement true or false? " + stem[len("True or false: "):]
        elif stem.startswith("Fill in the blank: "):
            new_stem = "Complete the sentence: " + stem[len("Fill in the blank: "):]
        else:
            rng = random.Random(_stable_int(question, rubric.to_json(), str(seed)))
            new_stem = rng.choice(_GENERIC_REPHRASE_PREFIXES) + stem
        new_question = new_stem + ("\n" + rest if rest else "")
        return f"Question:\n{new_question}\nAnswer:\n{answer.strip()}"

    def answer(self, document: str, question: str, rubric: Rubric, seed: int = 0) -> str | None:
        """The ``augment_answer`` strategy: a new answer to ``question`` from the document, in the answer style
        the rubric asks for (deterministic: ``seed`` is accepted for interface parity)."""
        reasoning, concise, final, cite = _answer_style(rubric.text())
        facts = extract_facts(document)
        stem = question.strip().split("\n", 1)[0]
        fact, verdict = _fact_for_question(facts, question, stem)
        if fact is None:
            sentence = _best_sentence(document, question)
            if sentence is None:
                return None
            body = f"The document says: {sentence}" if (reasoning or cite) else sentence
            return f"Answer:\n{body}"
        rel, subj, obj, sentence = fact
        support = _support(sentence, cite)
        options = dict(re.findall(r"^\(([A-D])\)\s*(.+?)\s*$", question, re.MULTILINE))
        letter = next((L for L, o in options.items() if o == obj), None)
        body = _answer_body(support, obj, letter=letter, verdict=verdict, cloze="____" in question,
                            reasoning=reasoning, concise=concise, final=final)
        return f"Answer:\n{body}"


def _seed_style(question: str, answer: str) -> tuple[str, tuple[bool, bool, bool, bool]]:
    """A seed sample's question style (mc, tf, cloze, open) and answer flags (reasoning, concise, final, cite), as
    the template teacher writes them (so a seed it wrote is read back exactly)."""
    q, a = question.strip(), answer.strip()
    if "\nOptions:\n" in q:
        style = "mc"
    elif q.startswith(("True or false: ", "Is the following statement true or false? ")):
        style = "tf"
    elif "____" in q:
        style = "cloze"
    else:
        style = "open"
    reasoning = a.startswith("Let's think step by step.") or " So the statement is " in a or " The blank is " in a
    final = "The answer is (" in a or "Final answer: " in a
    cite = "According to the document" in a
    if style == "mc":
        concise = not reasoning and re.fullmatch(r"\([A-D]\)", a) is not None
    else:  # open: the bare object (a sentence ends with a full stop), before any "Final answer: ..."
        concise = not reasoning and style == "open" and not a.split(" Final answer: ")[0].endswith(".")
    return style, (reasoning, concise, final, cite)


def _answer_body(support: str, obj: str, *, letter: str | None, verdict: bool | None, cloze: bool,
                 reasoning: bool, concise: bool, final: bool) -> str:
    """The answer in the style the rubric asks for: true/false (``verdict``), multiple choice (``letter``),
    cloze, or open. Shared by the ``new_question`` and ``augment_answer`` strategies."""
    if verdict is not None:
        word = "True" if verdict else "False"
        return f"{support} So the statement is {word.lower()}. {word}." if reasoning else word
    if letter is not None:
        if reasoning:
            body = f"Let's think step by step. {support} This matches option ({letter})."
            return body + (f" The answer is ({letter})." if final else "")
        if concise:
            return f"({letter})"
        return f"The answer is ({letter})." if final else f"({letter}) {obj}"
    if cloze:
        return f"{support} The blank is {obj}." if reasoning else obj
    if reasoning:
        return f"Let's think step by step. {support} So the answer is {obj}."
    body = obj if concise else support
    return body + (f" Final answer: {obj}." if final else "")


# How the template teacher rephrases a question it recognises (neither the template nor the evaluation phrasing).
REPHRASED_QUESTIONS = {
    "indication": "For which condition would a doctor prescribe {s}?",
    "drug_class": "To which class of medicines does {s} belong?",
    "mechanism": "What is the mechanism of action of {s}?",
    "dosage": "What dose of {s} does an adult usually take?",
    "contraindication": "In which patients is {s} contraindicated?",
    "side_effect": "What adverse effect do patients on {s} report most often?",
}
_GENERIC_REPHRASE_PREFIXES = ("Answer the following question: ", "Based on the document, answer this: ")


def _question_pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{s}"), r"(?P<s>[A-Z][A-Za-z-]+)") + "$")


_QUESTION_PATTERNS = [(rel, _question_pattern(tpl)) for table in (TEACHER_QUESTIONS, EVAL_QUESTIONS, REPHRASED_QUESTIONS)
                      for rel, tpl in table.items()]


def _match_question(stem: str) -> tuple[str, str] | None:
    for rel, pattern in _QUESTION_PATTERNS:
        m = pattern.match(stem.strip())
        if m:
            return rel, m.group("s")
    return None


def _fact_for_question(facts, question: str, stem: str):
    """The document fact ``question`` asks about, and for a true/false statement its truth value."""
    if not facts:
        return None, None
    found = _match_question(stem)
    if found is not None:
        rel, subj = found
        return next((f for f in facts if f[0] == rel and f[1] == subj), None), None
    for prefix in ("True or false: ", "Is the following statement true or false? "):
        if stem.startswith(prefix):
            statement = stem[len(prefix):].strip()
            for rel, pattern in FACT_PATTERNS.items():
                m = pattern.match(statement)
                if m:
                    fact = next((f for f in facts if f[0] == rel and f[1] == m.group("s")), None)
                    return fact, (fact is not None and fact[2] == m.group("o"))
            return None, None
    if "____" in stem:
        statement = stem.split(": ", 1)[-1].strip()
        for rel, pattern in FACT_PATTERNS.items():
            m = pattern.match(statement.replace("____", "BLANK"))
            if m and m.group("o") == "BLANK":
                return next((f for f in facts if f[0] == rel and f[1] == m.group("s")), None), None
    text = question.lower()
    scores = {rel: _has(text, kws) for rel, kws in RELATION_KEYWORDS.items()}
    subjects = [f for f in facts if f[1].lower() in text] or facts
    best = max(scores.values())
    if best == 0:
        return None, None
    return next((f for f in subjects if scores[f[0]] == best), None), None


def _best_sentence(document: str, question: str) -> str | None:
    q = set(re.findall(r"[a-z]{4,}", question.lower()))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", document) if len(s.split()) >= 4]
    if not sentences:
        return None
    return max(sentences, key=lambda s: len(q & set(re.findall(r"[a-z]{4,}", s.lower()))))


# ---------------------------------------------------------------------- prompts read back from messages
_LABELS = ("Document", "Rubric", "Seed question", "Seed answer", "Example question", "Example answer", "Question")
# A label opens a block only at the start of the prompt or after a blank line (the instructions' own
# "Question:" / "Answer:" format lines do not).
_LABEL_RE = re.compile(r"(?:\A|\n\n)(" + "|".join(_LABELS) + r"):\n")


def _prompt_sections(text: str) -> dict[str, str]:
    """``{label: content}`` of a prompt written by :mod:`rubric_rl.synth.strategies` (instructions stripped)."""
    marks = list(_LABEL_RE.finditer(text))
    out: dict[str, str] = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end():end]
        if k + 1 == len(marks):  # the last block is followed by the instructions paragraph
            body = body.rsplit("\n\n", 1)[0]
        out.setdefault(m.group(1), body.strip())
    return out


def _rubric_from_render(text: str) -> Rubric | None:
    """Inverse of :meth:`Rubric.render` (exact, so that a served template teacher writes what an in-process one does)."""
    from ..rubric import SECTION_TITLES

    by_title = {title: name for name, title in SECTION_TITLES.items()}
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.endswith(":") and line[:-1] in by_title:
            current = by_title[line[:-1]]
            out[current] = []
        elif current is not None and line.startswith("- "):
            out[current].append(line[2:])
    return Rubric(**out) if out else None


def _request_fields(req: TeacherRequest) -> dict:
    """Strategy, document, rubric and seed sample of a request: from the structured fields when the request was
    built in-process, else read back from the prompt (the template teacher behind ``serve-teacher``)."""
    meta = req.meta or {}
    fields = {"strategy": meta.get("strategy"), "document": req.document, "rubric": req.rubric,
              "question": meta.get("seed_question", ""), "answer": meta.get("seed_answer", "")}
    if fields["strategy"] is not None and (req.document or fields["strategy"] == "rephrase"):
        return fields
    user = next((m.get("content", "") for m in reversed(req.messages or []) if m.get("role") == "user"), "")
    sections = _prompt_sections(user) if isinstance(user, str) else {}
    if "Example question" in sections:
        strategy = "similar_question"
    elif "Seed question" in sections:
        strategy = "rephrase"
    elif "Question" in sections:
        strategy = "augment_answer"
    else:
        strategy = "new_question"
    document = sections.get("Document", "")
    if document.startswith("(no document"):
        document = ""
    return {"strategy": fields["strategy"] or strategy, "document": req.document or document,
            "rubric": req.rubric if req.rubric is not None else _rubric_from_render(sections.get("Rubric", "")),
            "question": (fields["question"] or sections.get("Seed question") or sections.get("Example question")
                         or sections.get("Question", "")),
            "answer": fields["answer"] or sections.get("Seed answer") or sections.get("Example answer", "")}
