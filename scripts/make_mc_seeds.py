#!/usr/bin/env python
"""The quickstart's seed questions in the test set's format: ``data/quickstart/seeds_mc.jsonl``.

    python scripts/make_mc_seeds.py [--output data/quickstart/seeds_mc.jsonl]

Each seed of ``data/quickstart/warmup.jsonl`` (mixed formats: open, true/false, cloze, multiple choice) is
rewritten by the template teacher (an offline stand-in) as a four-option multiple-choice question about the same
fact of the same document, answered step by step and ending in "The answer is (X)." (the format of every test
and validation item), in the teacher's phrasing (not the test's). Deterministic. The closed loop uses it to test
the selection rules where the seeds come from the test distribution, as in Kessler et al. (arXiv:2512.00884).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default=str(ROOT / "data" / "quickstart" / "warmup.jsonl"))
    ap.add_argument("--documents", default=str(ROOT / "data" / "quickstart" / "documents.jsonl"))
    ap.add_argument("--output", default=str(ROOT / "data" / "quickstart" / "seeds_mc.jsonl"))
    a = ap.parse_args(argv)

    from rubric_rl.data.documents import load_chat_samples, load_documents
    from rubric_rl.data.world import extract_facts
    from rubric_rl.jsonl import write_jsonl
    from rubric_rl.synth.parse import parse_sample
    from rubric_rl.teachers.template import TemplateTeacher, _fact_for_question, _stable_int

    docs = {d["id"]: d["text"] for d in load_documents(a.documents)}
    teacher = TemplateTeacher(list(docs.values()))
    rows = []
    for i, seed in enumerate(load_chat_samples(a.seeds)):
        text = docs[str(seed["doc_id"])]
        question = seed["messages"][0]["content"]
        fact, _ = _fact_for_question(extract_facts(text), question, question.split("\n", 1)[0])
        if fact is None:
            raise SystemExit(f"{a.seeds}:{i + 1}: no fact of document {seed['doc_id']} matches the seed question")
        rng = random.Random(_stable_int(text, question, "seeds_mc"))
        sample = teacher._compose([fact], "", rng, "mc", (True, False, True, False))
        messages, reason = parse_sample(sample)
        if messages is None:
            raise SystemExit(f"{a.seeds}:{i + 1}: the rewritten seed does not parse ({reason})")
        rows.append({"messages": messages, "doc_id": seed["doc_id"]})
    write_jsonl(a.output, rows)
    print(f"{len(rows)} seeds -> {a.output}")


if __name__ == "__main__":
    main()
