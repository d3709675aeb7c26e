#!/usr/bin/env python
"""Write the offline quickstart world to data/quickstart/ (deterministic; the output is committed).

Files:
  documents.jsonl     48 fictional drug monographs: {"id", "title", "text"}
  validation.jsonl    36 target-task items (multiple choice, step-by-step answers), with "subtask"
  test.jsonl          96 held-out target-task items on other facts of the same documents
  seed_rubrics.json   12 hand-written rubrics (what a team would write without rubric-rl)
  warmup.jsonl        96 samples the template teacher writes under the seed rubrics (target warm-up)

Usage: python scripts/make_quickstart_world.py [--out data/quickstart] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rubric_rl.data.world import RELATIONS, document_text, make_drugs, mc_item  # noqa: E402
from rubric_rl.rubric import Rubric  # noqa: E402
from rubric_rl.synth.parse import parse_sample  # noqa: E402
from rubric_rl.teachers.template import TemplateTeacher  # noqa: E402

SEED_RUBRICS = [
    {"prompt_related": ["Ask an open question about what condition the drug is used to treat."],
     "response_related": ["Give a short answer."],
     "prompt_response_alignment": ["The answer must be stated in the document."],
     "technical": ["Use plain text."]},
    {"prompt_related": ["Write a multiple-choice question with four options about the dose."],
     "response_related": ["Give the correct option."],
     "prompt_response_alignment": ["Only one option may be correct."],
     "technical": ["Keep the question self-contained."]},
    {"prompt_related": ["Write a true or false statement about a side effect."],
     "response_related": ["Say whether it is true or false."],
     "prompt_response_alignment": ["The verdict must follow from the document."],
     "technical": ["One sentence per field."]},
    {"prompt_related": ["Ask how the drug works, about its mechanism."],
     "response_related": ["Explain the answer step by step."],
     "prompt_response_alignment": ["Every step must be supported by the document."],
     "technical": ["Avoid lists and tables."]},
    {"prompt_related": ["Create a fill in the blank sentence about the drug class."],
     "response_related": ["Give only the missing words."],
     "prompt_response_alignment": ["The blank must have exactly one answer."],
     "technical": ["Keep it concise."]},
    {"prompt_related": ["Ask a question about contraindications and patient safety."],
     "response_related": ["Quote the document as evidence."],
     "prompt_response_alignment": ["The answer must be grounded in the document."],
     "technical": ["Write complete sentences."]},
    {"prompt_related": ["Write a multiple-choice question with four options about the condition it treats."],
     "response_related": ["Explain the reasoning step by step."],
     "prompt_response_alignment": ["The correct option must match the document."],
     "technical": ["Use plain text."]},
    {"prompt_related": ["Ask an open question about the dosage."],
     "response_related": ["Give a concise answer with the number of mg."],
     "prompt_response_alignment": ["The number must match the document exactly."],
     "technical": ["No extra commentary."]},
    {"prompt_related": ["Ask about the most common adverse effect."],
     "response_related": ["Answer in one word if possible."],
     "prompt_response_alignment": ["The answer must appear in the document."],
     "technical": ["Keep it brief."]},
    {"prompt_related": ["Write a multiple-choice question with four options about the side effect."],
     "response_related": ["Reason step by step and end with the final answer letter."],
     "prompt_response_alignment": ["Distractors must be plausible but wrong."],
     "technical": ["Format options as (A) to (D)."]},
    {"prompt_related": ["Write a true or false statement about the dose."],
     "response_related": ["Justify the verdict with reasoning."],
     "prompt_response_alignment": ["The statement must be checkable against the document."],
     "technical": ["Use plain text."]},
    {"prompt_related": ["Ask an open question about the mechanism of the drug."],
     "response_related": ["Answer according to the document, with a final answer line."],
     "prompt_response_alignment": ["Do not add facts that are not in the document."],
     "technical": ["Keep the answer under three sentences."]},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "quickstart"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    drugs = make_drugs(48, seed=args.seed)
    docs = [{"id": f"doc-{i:03d}", "title": d.name, "text": document_text(d, rng)} for i, d in enumerate(drugs)]
    pool = {rel: [d.facts[rel] for d in drugs] for rel in RELATIONS}

    validation, test = [], []
    for i, drug in enumerate(drugs):
        if i < 36:  # one validation fact per document for the first 36, balanced over subtasks
            item = mc_item(drug, RELATIONS[i % 6], pool, rng)
            item["doc_id"] = docs[i]["id"]
            validation.append(item)
        for k in (2, 4):  # two held-out facts per document, never a validation fact
            item = mc_item(drug, RELATIONS[(i + k) % 6], pool, rng)
            item["doc_id"] = docs[i]["id"]
            test.append(item)

    teacher = TemplateTeacher([d["text"] for d in docs])
    warmup = []
    for i, doc in enumerate(docs):
        for k in range(2):
            rubric = Rubric.from_dict(SEED_RUBRICS[(2 * i + k) % len(SEED_RUBRICS)])
            text = teacher.write(doc["text"], rubric, seed=k)
            messages, reason = parse_sample(text)
            assert messages is not None, reason
            warmup.append({"messages": messages, "doc_id": doc["id"]})

    def dump(name, rows):
        with (out / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    dump("documents.jsonl", docs)
    dump("validation.jsonl", validation)
    dump("test.jsonl", test)
    dump("warmup.jsonl", warmup)
    (out / "seed_rubrics.json").write_text(json.dumps(SEED_RUBRICS, indent=1) + "\n", encoding="utf-8")
    from rubric_rl.models import TINY_CORPUS_FILES, TINY_CORPUS_PACKAGE

    package_copy = Path(__file__).resolve().parents[1] / "rubric_rl" / Path(*TINY_CORPUS_PACKAGE)
    if out.resolve() == (Path(__file__).resolve().parents[1] / "data" / "quickstart").resolve():
        package_copy.mkdir(parents=True, exist_ok=True)  # the tiny tokenizer's corpus, shipped as package data
        for name in TINY_CORPUS_FILES:
            (package_copy / name).write_bytes((out / name).read_bytes())
    print(f"wrote {len(docs)} documents, {len(validation)} validation, {len(test)} test, "
          f"{len(warmup)} warm-up samples, {len(SEED_RUBRICS)} seed rubrics to {out}")


if __name__ == "__main__":
    main()
