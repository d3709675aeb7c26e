"""Generation strategies: what the teacher is asked to write, and how to choose between them.

Three strategies after Chan et al., "Balancing Cost and Effectiveness of Synthetic Data Generation
Strategies for LLMs" (2024, arXiv:2409.19759), and the closed loop's, each costing ONE teacher query per
candidate sample:

* ``new_question``     a new question and its answer from a document, under a rubric (the RL default);
* ``rephrase``         a seed question rephrased (same information asked in other words) and answered;
* ``augment_answer``   a new answer to a seed question, the question kept as is;
* ``similar_question`` a new question of the seed question's kind (format, answer style) about another fact of
  the seed's document, and its answer: what the teacher writes for a selected seed in the closed loop of Kessler
  et al. (arXiv:2512.00884), so that what a selection rule measures on a seed carries over to its new sample.

``auto`` picks one of them from the teacher-query budget and the seed set, see :func:`choose_strategy`.

Prompt layout (shared with the offline template teacher, which reads it back when it is served over
HTTP): labelled blocks ``Document:``, ``Rubric:``, then ``Seed question:`` / ``Seed answer:``
(rephrase), ``Question:`` (augment_answer) or ``Example question:`` / ``Example answer:`` (similar_question),
then the instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configs.synth import (AUGMENT_ANSWER, AUTO, AUTO_RATIO_THRESHOLD, NEW_QUESTION, REPHRASE, SEEDED,
                             SIMILAR_QUESTION, STRATEGIES, STRATEGY_CHOICES)
from ..rubric import Rubric


TEACHER_SYSTEM = "You are a domain expert who writes high-quality training data for a language model."
NEW_QUESTION_INSTRUCTIONS = (
    "Write one question and its answer, based only on the document and following every criterion of the "
    "rubric. Reply exactly in this format:\nQuestion:\n<the question>\nAnswer:\n<the answer>"
)
REPHRASE_INSTRUCTIONS = (
    "Rephrase the seed question: ask for the same information in different words (do not copy it), following "
    "every criterion of the rubric, then answer the rephrased question based only on the document. Reply exactly "
    "in this format:\nQuestion:\n<the rephrased question>\nAnswer:\n<the answer>"
)
AUGMENT_ANSWER_INSTRUCTIONS = (
    "Write a new answer to the question, based only on the document and following every response criterion of "
    "the rubric. Reply exactly in this format:\nAnswer:\n<the answer>"
)
SIMILAR_QUESTION_INSTRUCTIONS = (
    "Write one new question of the same kind as the example (the same format and the same answer style) about "
    "another fact of the document, following every criterion of the rubric, and its answer, based only on the "
    "document. Reply exactly in this format:\nQuestion:\n<the new question>\nAnswer:\n<the answer>"
)
NO_RUBRIC = "(no rubric: use your judgement)"
NO_DOCUMENT = "(no document: rely on the question)"


def rubric_block(rubric: Rubric | None) -> str:
    return rubric.render() if rubric is not None and rubric.num_items else NO_RUBRIC


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": user}]


def new_question_messages(document: str, rubric: Rubric | None) -> list[dict]:
    return _messages(f"Document:\n{document}\n\nRubric:\n{rubric_block(rubric)}\n\n{NEW_QUESTION_INSTRUCTIONS}")


def rephrase_messages(document: str, rubric: Rubric | None, question: str, answer: str) -> list[dict]:
    return _messages(f"Document:\n{document.strip() or NO_DOCUMENT}\n\nRubric:\n{rubric_block(rubric)}\n\n"
                     f"Seed question:\n{question}\n\nSeed answer:\n{answer}\n\n{REPHRASE_INSTRUCTIONS}")


def augment_answer_messages(document: str, rubric: Rubric | None, question: str) -> list[dict]:
    return _messages(f"Document:\n{document.strip() or NO_DOCUMENT}\n\nRubric:\n{rubric_block(rubric)}\n\n"
                     f"Question:\n{question}\n\n{AUGMENT_ANSWER_INSTRUCTIONS}")


def similar_question_messages(document: str, rubric: Rubric | None, question: str, answer: str) -> list[dict]:
    return _messages(f"Document:\n{document}\n\nRubric:\n{rubric_block(rubric)}\n\nExample question:\n{question}\n\n"
                     f"Example answer:\n{answer}\n\n{SIMILAR_QUESTION_INSTRUCTIONS}")


def strategy_messages(strategy: str, document: str, rubric: Rubric | None,
                      seed_messages: list[dict] | None = None) -> list[dict]:
    """The teacher prompt for one candidate sample of ``strategy``."""
    if strategy == NEW_QUESTION:
        return new_question_messages(document, rubric)
    if strategy not in SEEDED:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not seed_messages:
        raise ValueError(f"strategy {strategy!r} needs a seed sample (seed_messages)")
    question = next((m["content"] for m in seed_messages if m["role"] == "user"), "")
    answer = next((m["content"] for m in reversed(seed_messages) if m["role"] == "assistant"), "")
    if strategy == REPHRASE:
        return rephrase_messages(document, rubric, question, answer)
    if strategy == SIMILAR_QUESTION:
        return similar_question_messages(document, rubric, question, answer)
    return augment_answer_messages(document, rubric, question)


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str
    ratio: float | None  # budget / seed-set size (None without a seed set)
    why: str


def choose_strategy(requested: str, *, budget: int, num_seeds: int,
                    ratio_threshold: float = AUTO_RATIO_THRESHOLD) -> StrategyChoice:
    """Resolve ``requested`` (a strategy or ``"auto"``) for a run with ``budget`` teacher queries and a seed set
    of ``num_seeds`` samples.

    The ``auto`` rule follows Chan et al. (2024, arXiv:2409.19759): the best generation strategy depends
    on the ratio between the teacher-query budget and the size of the seed instruction set. When that
    ratio is LOW, generating new answers to the existing questions (answer augmentation) is most
    effective; as the ratio GROWS, generating new questions becomes optimal (the seed questions are
    exhausted, and diversity of questions matters more than more answers to the same ones). Question
    rephrasing sits in between and is mostly attractive with a weak teacher, so ``auto`` does not pick
    it; ask for it explicitly.

    Rule: ``ratio = budget / num_seeds``; ``augment_answer`` if ``ratio <= ratio_threshold``, else
    ``new_question``; ``new_question`` when there is no seed set.

    The default threshold, 16, is the low end of the crossover the paper reports (BR 16-27 for seed sets of
    100-1,000; about 12 with a stronger student). Measured here (``scripts/budget_rule.py``, the offline
    world, the template teacher, a tiny target fine-tuned from scratch; seed sets of 12 and 48; 3 seeds;
    validation loss): new questions beat answer augmentation at every ratio from 1 to 16 and in every seed,
    so this world shows no crossover. Its teacher writes new questions as good as the seeds, so the paper's
    low-budget advantage of answer augmentation, which comes from a teacher's better answers to existing
    questions, is absent. The crossover moves with the task and the teacher: ``ratio_threshold``
    (``synth_auto_ratio_threshold``) is a setting to measure on yours.
    """
    if requested not in STRATEGY_CHOICES:
        raise ValueError(f"unknown strategy {requested!r}; expected one of {STRATEGY_CHOICES}")
    ratio = budget / num_seeds if num_seeds > 0 else None
    if requested != AUTO:
        if requested in SEEDED and num_seeds == 0:
            raise ValueError(f"strategy {requested!r} needs a seed set (synth_seed_samples), got none")
        return StrategyChoice(requested, ratio, "requested")
    if ratio is None:
        return StrategyChoice(NEW_QUESTION, None, "auto: no seed set, so new questions from the documents")
    if ratio <= ratio_threshold:
        return StrategyChoice(AUGMENT_ANSWER, ratio, f"auto: budget/seeds = {ratio:.2f} <= {ratio_threshold} "
                                                     "(low ratio: new answers to existing questions)")
    return StrategyChoice(NEW_QUESTION, ratio, f"auto: budget/seeds = {ratio:.2f} > {ratio_threshold} "
                                               "(high ratio: new questions)")
