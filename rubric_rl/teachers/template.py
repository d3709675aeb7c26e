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

from ..data.world import FACT_SENTENCES, LETTERS, RELATIONS, extract_facts
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

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherResult]:
        return [self._one(r) for r in requests]

    # ------------------------------------------------------------------ internals
    def _one(self, req: TeacherRequest) -> TeacherResult:
        if not req.document.strip():
            return TeacherResult(text=None, error="empty_document")
        rubric = req.rubric or Rubric()
        text = self.write(req.document, rubric, seed=req.seed)
        if text is None:
            return TeacherResult(text=None, error="no_usable_fact")
        return TeacherResult(text=text, completion_tokens=len(text.split()))

    def write(self, document: str, rubric: Rubric, seed: int = 0) -> str | None:
        r = rubric.text()
        rng = random.Random(_stable_int(document, rubric.to_json(), str(seed)))
        facts = extract_facts(document)
        if not facts:
            return self._generic(document, r, rng)
        scores = {rel: _has(r, kws) for rel, kws in RELATION_KEYWORDS.items()}
        best = max(scores.values())
        wanted = [rel for rel in RELATIONS if scores[rel] == best] if best > 0 else list(RELATIONS)
        candidates = [f for f in facts if f[0] in wanted] or facts
        rel, subj, obj, sentence = rng.choice(candidates)

        style = max(STYLE_KEYWORDS, key=lambda k: _has(r, STYLE_KEYWORDS[k]))
        if _has(r, STYLE_KEYWORDS[style]) == 0:
            style = "open"
        reasoning = _has(r, ANSWER_KEYWORDS["reasoning"]) > 0
        concise = _has(r, ANSWER_KEYWORDS["concise"]) > 0 and not reasoning
        final = _has(r, ANSWER_KEYWORDS["final"]) > 0
        cite = _has(r, ANSWER_KEYWORDS["cite"]) > 0
        if cite:
            support = "According to the document, " + (sentence[0].lower() + sentence[1:] if sentence.startswith("The ") else sentence)
        else:
            support = sentence
        question = TEACHER_QUESTIONS[rel].format(s=subj)

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
                answer = f"Let's think step by step. {support} This matches option ({letter})."
                answer += f" The answer is ({letter})." if final else ""
            elif concise:
                answer = f"({letter})"
            else:
                answer = f"The answer is ({letter})." if final else f"({letter}) {obj}"
        elif style == "tf":
            true = rng.random() < 0.5
            shown = obj if true else rng.choice(sorted(self.pool.get(rel, set()) - {obj}) or [obj + " only"])
            question = "True or false: " + FACT_SENTENCES[rel].format(s=subj, o=shown)
            verdict = "True" if true else "False"
            answer = f"{support} So the statement is {verdict.lower()}. {verdict}." if reasoning else verdict
        elif style == "cloze":
            question = "Fill in the blank: " + FACT_SENTENCES[rel].format(s=subj, o="____")
            answer = f"{support} The blank is {obj}." if reasoning else obj
        else:
            if reasoning:
                answer = f"Let's think step by step. {support} So the answer is {obj}."
            elif concise:
                answer = obj
            else:
                answer = support
            if final and not reasoning:
                answer += f" Final answer: {obj}."
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
