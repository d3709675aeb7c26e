"""The offline quickstart world: a fictional pharmacology corpus and its target task.

Everything here is deterministic and small. ``scripts/make_quickstart_world.py`` writes it to
``data/quickstart/`` (committed), and the template teacher reads facts back out of document text
with the same sentence patterns. Real runs bring their own documents and validation data; nothing
in the RL loop depends on this module except the template teacher's fact extraction.

Target task (validation and test sets): multiple-choice questions about facts in the documents,
answered with step-by-step reasoning that ends in ``The answer is (X).``
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

RELATIONS = ("indication", "drug_class", "mechanism", "dosage", "contraindication", "side_effect")

# How documents state each relation. The template teacher parses facts back with FACT_PATTERNS.
FACT_SENTENCES = {
    "drug_class": "{s} is a {o}.",
    "indication": "{s} is used to treat {o}.",
    "mechanism": "{s} works by {o}.",
    "dosage": "The standard adult dose of {s} is {o}.",
    "contraindication": "{s} should not be given to patients with {o}.",
    "side_effect": "The most common side effect of {s} is {o}.",
}
FACT_PATTERNS = {
    rel: re.compile(
        "^" + re.escape(tpl).replace(re.escape("{s}"), r"(?P<s>[A-Z][A-Za-z-]+)").replace(re.escape("{o}"), r"(?P<o>.+?)") + "$"
    )
    for rel, tpl in FACT_SENTENCES.items()
}

# Question phrasings of the target task (validation / test) ...
EVAL_QUESTIONS = {
    "indication": "Which condition is {s} used to treat?",
    "drug_class": "Which drug class does {s} belong to?",
    "mechanism": "By which mechanism does {s} act?",
    "dosage": "What is the standard adult dose of {s}?",
    "contraindication": "Which patients should not be given {s}?",
    "side_effect": "What is the most common side effect of {s}?",
}
MC_INSTRUCTION = "Think step by step, then give the letter of the correct option."
LETTERS = "ABCD"

_CLASSES = ["beta blocker", "ACE inhibitor", "statin", "macrolide antibiotic", "neuraminidase inhibitor",
            "direct oral anticoagulant", "second-generation antihistamine", "proton pump inhibitor",
            "triptan", "loop diuretic", "SSRI antidepressant", "calcium channel blocker"]
_CONDITIONS = ["hypertension", "high cholesterol", "bacterial pneumonia", "influenza", "atrial fibrillation",
               "seasonal allergies", "acid reflux", "migraine", "heart failure", "major depression",
               "angina", "type 2 diabetes", "chronic gout", "plaque psoriasis"]
_MECH_VERBS = ["blocking the", "inhibiting the", "activating the", "stabilising the"]
_MECH_TARGETS = ["receptor", "enzyme", "ion channel", "transporter"]
_CONTRA = ["severe kidney disease", "liver failure", "asthma", "a history of angioedema", "pregnancy",
           "active bleeding", "long QT syndrome", "severe low blood pressure", "porphyria", "myasthenia gravis"]
_SIDE = ["dizziness", "nausea", "dry cough", "headache", "fatigue", "muscle pain", "insomnia", "rash",
         "constipation", "drowsiness", "ankle swelling", "taste disturbance"]
_SYL_A = ["Vi", "Ca", "Lo", "Me", "Ta", "Zo", "Pra", "Du", "Fe", "Ri", "No", "Xa", "Bel", "Or", "Sel", "Ky"]
_SYL_B = ["ro", "ra", "ten", "va", "do", "li", "mo", "ne", "xa", "pi", "tu", "za"]
_SYL_C = ["zaline", "mex", "pril", "statin", "mycin", "vir", "xaban", "tadine", "prazole", "triptan",
          "semide", "dipine", "lol", "mab"]
_FILLERS = [
    "{s} was first approved in {year} after trials in {n} centres.",
    "Pharmacists dispense {s} as {form}.",
    "{s} is stored at room temperature away from light.",
    "The half-life of {s} is about {h} hours.",
]
_FORMS = ["film-coated tablets", "capsules", "an oral solution", "extended-release tablets"]


@dataclass
class Drug:
    name: str
    facts: dict[str, str]  # relation -> object


def make_drugs(n: int = 48, seed: int = 0) -> list[Drug]:
    rng = random.Random(seed)
    names: set[str] = set()
    drugs = []
    while len(drugs) < n:
        name = rng.choice(_SYL_A) + rng.choice(_SYL_B) + rng.choice(_SYL_C)
        if name in names:
            continue
        names.add(name)
        target = f"{rng.choice('ABCDKLMNRT')}{rng.choice('KLMRSTX')}-{rng.randint(1, 9)} {rng.choice(_MECH_TARGETS)}"
        facts = {
            "drug_class": rng.choice(_CLASSES),
            "indication": rng.choice(_CONDITIONS),
            "mechanism": f"{rng.choice(_MECH_VERBS)} {target}",
            "dosage": f"{rng.choice([5, 10, 20, 25, 40, 50, 75, 100, 150, 200, 250, 500])} mg "
                      f"{rng.choice(['once daily', 'twice daily', 'three times daily'])}",
            "contraindication": rng.choice(_CONTRA),
            "side_effect": rng.choice(_SIDE),
        }
        drugs.append(Drug(name, facts))
    return drugs


def document_text(drug: Drug, rng: random.Random) -> str:
    sentences = [FACT_SENTENCES[rel].format(s=drug.name, o=drug.facts[rel]) for rel in RELATIONS]
    head, rest = sentences[1], sentences[:1] + sentences[2:]
    rng.shuffle(rest)
    fillers = [f.format(s=drug.name, year=rng.randint(1988, 2021), n=rng.randint(3, 40), form=rng.choice(_FORMS),
                        h=rng.randint(2, 30)) for f in rng.sample(_FILLERS, 2)]
    body = [head] + rest
    body.insert(rng.randint(2, len(body)), fillers[0])
    body.append(fillers[1])
    return " ".join(body)


def extract_facts(text: str) -> list[tuple[str, str, str, str]]:
    """``(relation, subject, object, sentence)`` for every fact sentence in a document."""
    out = []
    for sentence in re.split(r"(?<=\.)\s+", text.strip()):
        sentence = sentence.strip()
        for rel, pattern in FACT_PATTERNS.items():
            m = pattern.match(sentence)
            if m:
                out.append((rel, m.group("s"), m.group("o"), sentence))
                break
    return out


def mc_item(drug: Drug, rel: str, pool: dict[str, list[str]], rng: random.Random) -> dict:
    """A target-task item: multiple choice, answered step by step, ending in 'The answer is (X).'"""
    correct = drug.facts[rel]
    distractors = rng.sample(sorted(set(pool[rel]) - {correct}), 3)
    options = distractors + [correct]
    rng.shuffle(options)
    letter = LETTERS[options.index(correct)]
    question = EVAL_QUESTIONS[rel].format(s=drug.name)
    prompt = question + "\nOptions:\n" + "\n".join(f"({L}) {o}" for L, o in zip(LETTERS, options)) + "\n" + MC_INSTRUCTION
    answer = (f"Let's think step by step. {FACT_SENTENCES[rel].format(s=drug.name, o=correct)} "
              f"This matches option ({letter}). The answer is ({letter}).")
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "subtask": rel,
        "choices": options,
        "answer": letter,
        "doc_id": None,
    }
