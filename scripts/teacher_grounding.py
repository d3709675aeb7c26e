#!/usr/bin/env python
"""How many wrong answers of a real teacher does the grounding verifier let through?

A real teacher (default: SmolLM2-135M-Instruct through the `transformers` backend, after
`python scripts/fetch_smollm2.py`) answers the shipped multiple-choice items (`augment_answer`: the item's
question, its document, the `mc_stepwise` calibration rubric). Each answer is labelled right or wrong by the
option it commits to (the letter after "answer is", else the only option text it names), against the item's
gold letter; answers that commit to nothing are counted apart. Then every answer goes through the grounding
verifier with the claim check (the default) and without it (``min_claim_overlap=0``: the verifier before
it), and the pass rates are printed per label. Writes OUTPUT (json) with every answer.

    python scripts/teacher_grounding.py --items data/quickstart/test.jsonl --output runs/teacher_grounding.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


def committed_option(answer: str, choices: list[str]) -> int | None:
    m = re.search(r"answer is:?\s*\(?([A-J])\)?", answer, re.IGNORECASE)
    if m and ord(m.group(1).upper()) - 65 < len(choices):
        return ord(m.group(1).upper()) - 65
    named = [k for k, c in enumerate(choices) if c.lower() in answer.lower()]
    return named[0] if len(named) == 1 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", default="data/quickstart/test.jsonl")
    p.add_argument("--documents", default="data/quickstart/documents.jsonl")
    p.add_argument("--rubric", default="data/calibration/mc_stepwise.json")
    p.add_argument("--model", default="~/.cache/rubric_rl/models/SmolLM2-135M-Instruct")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="runs/teacher_grounding.json")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from rubric_rl.jsonl import read_jsonl
    from rubric_rl.provenance import provenance
    from rubric_rl.rubric import Rubric
    from rubric_rl.synth.grounding import GroundingVerifier
    from rubric_rl.synth.strategies import augment_answer_messages
    from rubric_rl.synth.verifiers import Candidate
    from rubric_rl.teachers.base import TeacherRequest
    from rubric_rl.teachers.hf import TransformersTeacher

    items = read_jsonl(a.items)[:a.limit or None]
    docs = {d["id"]: d["text"] for d in read_jsonl(a.documents)}
    rubric = Rubric.from_dict(json.load(open(a.rubric))[0])
    model = str(Path(a.model).expanduser())
    teacher = TransformersTeacher(model, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                  device="cpu", dtype="float32")
    reqs = [TeacherRequest(augment_answer_messages(docs[it["doc_id"]], rubric, it["messages"][0]["content"]),
                           seed=k) for k, it in enumerate(items)]
    t0 = time.perf_counter()
    results = teacher.generate(reqs)
    gen_s = time.perf_counter() - t0
    new, old = GroundingVerifier(), GroundingVerifier(min_claim_overlap=0.0)
    rows, counts = [], {}
    for it, res in zip(items, results):
        text = (res.text or "").strip()
        answer = text.split("Answer:", 1)[1].strip() if "Answer:" in text else text
        pick = committed_option(answer, it["choices"])
        label = "none" if pick is None else ("right" if "ABCDEFGHIJ"[pick] == it["answer"] else "wrong")
        cand = Candidate([{"role": "user", "content": it["messages"][0]["content"]},
                          {"role": "assistant", "content": answer}], docs[it["doc_id"]])
        r_new, r_old = new(cand), old(cand)
        rows.append({"doc_id": it["doc_id"], "label": label, "answer": answer, "new": r_new, "old": r_old})
        c = counts.setdefault(label, {"n": 0, "pass_old": 0, "pass_new": 0})
        c["n"] += 1
        c["pass_old"] += r_old is None
        c["pass_new"] += r_new is None
    for label, c in sorted(counts.items()):
        print(f"{label:6s} {c['n']:3d} answers: pass today (no claim check) {c['pass_old']:3d}, "
              f"with the claim check {c['pass_new']:3d}")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "model": model, "temperature": a.temperature,
                               "generation_s": round(gen_s, 1), "counts": counts, "rows": rows, **provenance()},
                              indent=1))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
