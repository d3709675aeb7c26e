"""Policy prompts: guiding text + target task + document, as chat messages."""

from __future__ import annotations

from ..configs.train import DEFAULT_TASK, RubricRLArguments
from ..rubric import RUBRIC_FORMAT_INSTRUCTIONS, RUBRIC_LIST_EXAMPLE, RUBRIC_LIST_INSTRUCTIONS

POLICY_SYSTEM = (
    "You design rubrics that guide a teacher model to write training samples. A good rubric makes the "
    "teacher write samples that teach the target task well."
)


def policy_messages(document: str, task: str = DEFAULT_TASK,
                    max_document_chars: int = RubricRLArguments.max_document_chars,
                    rubric_format: str = RubricRLArguments.rubric_format) -> list[dict]:
    """The policy's prompt. ``rubric_format`` ``json`` asks for OptimSyn's four-part JSON object; ``list``
    (small instruct models, e.g. SmolLM2-135M, which write valid JSON for ~1 prompt in 8) asks for a short
    bulleted list, with an example."""
    doc = document.strip()
    if len(doc) > max_document_chars:
        doc = doc[:max_document_chars].rsplit(" ", 1)[0] + " ..."
    if rubric_format == "list":
        user = (f"Target task: {task}\n\nDocument:\n{doc}\n\nWrite a rubric: instructions that make a teacher "
                f"write one good training sample for the target task from this document. {RUBRIC_LIST_INSTRUCTIONS}"
                f"\n\n{RUBRIC_LIST_EXAMPLE}")
    else:
        user = f"Target task: {task}\n\nDocument:\n{doc}\n\nWrite a rubric for this document. {RUBRIC_FORMAT_INSTRUCTIONS}"
    return [{"role": "system", "content": POLICY_SYSTEM}, {"role": "user", "content": user}]


def build_prompt_dataset(documents: list[dict], task: str = DEFAULT_TASK,
                         max_document_chars: int = RubricRLArguments.max_document_chars,
                         rubric_format: str = RubricRLArguments.rubric_format):
    """An HF dataset with a conversational ``prompt`` column plus ``doc_id`` and ``document`` columns
    (TRL passes the extra columns to reward functions)."""
    import datasets

    rows = [
        {"prompt": policy_messages(d["text"], task, max_document_chars, rubric_format), "doc_id": d["id"],
         "document": d["text"]}
        for d in documents
        if d["text"].strip()
    ]
    return datasets.Dataset.from_list(rows)
