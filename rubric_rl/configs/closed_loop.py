"""Settings of ``rubric-rl closed-loop``: :class:`ClosedLoopConfig` (flat ``loop_*`` fields, parsed with the
evaluation's ``eval_*`` fine-tuning and held-out settings, the teacher and the influence configs) and
:class:`ClosedLoopArguments` (``--output``). Read by :mod:`rubric_rl.loop` and ``config``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import at_least, positive
from .synth import SIMILAR_QUESTION, STRATEGIES

LOSS_OWN = "loss_own"
LOSS_REFERENCE = "loss_reference"
RANDOM = "random"
INFLUENCE = "influence"
STATIC = "static"
BADGE = "badge"
RULES = (LOSS_OWN, LOSS_REFERENCE, RANDOM, INFLUENCE, BADGE, STATIC)
BUDGET_UNITS = ("samples", "queries")
REPORT_FORMAT = 1
RULE_MARKER = "closed_loop_rule.json"  # in OUT/<rule>/: the folder is a source of `rubric-rl evaluate`


@dataclass
class ClosedLoopConfig:
    """Closed-loop, student-guided synthesis (Kessler et al., arXiv:2512.00884): per round, score the seed
    questions with the current student, pick the top seeds by a selection rule, have the teacher write one sample
    per picked seed, fine-tune a fresh student on all synthetic samples so far. Documents, held-out test set,
    target, fine-tuning and seeds are the evaluation's ``eval_*`` fields."""

    _argument_group_name = "closed loop (loop_*): seed questions, selection rules, budget, rounds"

    loop_seed_data: str = field(
        default="data/quickstart/warmup.jsonl",
        metadata={"help": "Seed questions: chat jsonl ({'messages': [...]} with an assistant reference answer), "
                          "each with a 'doc_id' naming its document in eval_documents (new_question writes from "
                          "that document). Never the test set."},
    )
    loop_num_seeds: int = field(
        default=0, metadata={"help": "Seeds drawn from loop_seed_data per run seed (0 = all of them)."})
    loop_rules: list[str] = field(
        default_factory=lambda: [LOSS_OWN, RANDOM, STATIC],
        metadata={"help": f"Selection rules to run, each a separate loop: {list(RULES)}. loss_own: the student's "
                          "loss on its own (greedy) answer, highest first (the paper's winner); loss_reference: its "
                          "loss on the seed's reference answer; random; influence: gradient alignment of the seed "
                          "with the validation set on the current student (influence_validation_data, "
                          "influence_estimator); badge: BADGE's k-means++ over last-layer gradient embeddings of the "
                          "student's own answers (uncertain and diverse); static: no loop, the whole budget in one round spread evenly over "
                          "the seeds (the baseline)."},
    )
    loop_budget: int = field(default=96, metadata={"help": "Total budget of each loop, in loop_budget_unit."})
    loop_budget_unit: str = field(
        default="samples",
        metadata={"help": f"What the budget counts, one of {list(BUDGET_UNITS)}: accepted samples (each round "
                          "spends exactly its share), or teacher queries (infrastructure failures excluded)."},
    )
    loop_rounds: int = field(
        default=4, metadata={"help": "Rounds the budget is split over (evenly, the remainder to the first rounds); "
                                     "static always uses one."})
    loop_strategy: str = field(
        default=SIMILAR_QUESTION,
        metadata={"help": f"What the teacher writes for a picked seed, one of {list(STRATEGIES)}: similar_question "
                          "(a new question of the seed's kind about another fact of its document, with its answer: "
                          "the paper's loop), new_question (a new question from the seed's document, the seed itself "
                          "unseen), rephrase (the seed question reworded), augment_answer (a new answer to it)."},
    )
    loop_rubric_source: str = field(
        default="none",
        metadata={"help": "Rubric of each teacher query: 'none', a rubrics JSON file, or an exported rubric "
                          "generator folder (a trained generator and a closed loop combine)."},
    )
    loop_max_queries_per_sample: float = field(
        default=2.0,
        metadata={"help": "loop_budget_unit=samples: items tried per wanted sample of a round at most; a round "
                          "that runs out has fewer samples and the report says so."},
    )
    loop_answer_max_new_tokens: int = field(
        default=48, metadata={"help": "loss_own: tokens the student may generate per seed answer (greedy)."})
    loop_save_students: bool = field(
        default=True, metadata={"help": "Keep each round's student weights (trainable parameters, safetensors) in "
                                        "its round folder; the last finished round's are always kept for resume."})
    loop_overwrite: bool = field(
        default=False, metadata={"help": "Delete an existing --output folder and start over (else it is resumed, "
                                         "and refused if its settings differ)."})
    loop_progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if isinstance(self.loop_rules, str):
            self.loop_rules = self.loop_rules.replace(",", " ").split()
        bad = [r for r in self.loop_rules if r not in RULES]
        if bad or not self.loop_rules:
            raise ValueError(f"loop_rules must be a non-empty list of {list(RULES)}, got {self.loop_rules!r}")
        if len(set(self.loop_rules)) != len(self.loop_rules):
            raise ValueError(f"loop_rules names a rule twice: {self.loop_rules!r}")
        if self.loop_budget_unit not in BUDGET_UNITS:
            raise ValueError(f"loop_budget_unit must be one of {list(BUDGET_UNITS)}, got {self.loop_budget_unit!r}")
        if self.loop_strategy not in STRATEGIES:
            raise ValueError(f"loop_strategy must be one of {list(STRATEGIES)}, got {self.loop_strategy!r}")
        for name in ("loop_budget", "loop_rounds", "loop_answer_max_new_tokens"):
            at_least(name, getattr(self, name), 1)
        if self.loop_rounds > self.loop_budget:
            raise ValueError(f"loop_rounds ({self.loop_rounds}) must not exceed loop_budget ({self.loop_budget}): "
                             "every round spends at least one unit")
        positive("loop_num_seeds", self.loop_num_seeds, allow_zero=True)
        at_least("loop_max_queries_per_sample", self.loop_max_queries_per_sample, 1)
        if not self.loop_seed_data:
            raise ValueError("loop_seed_data must name the seed questions file")

    def rounds_of(self, rule: str) -> int:
        return 1 if rule == STATIC else self.loop_rounds

    def round_budgets(self, rule: str) -> list[int]:
        """Each round's share of the budget: even, the remainder to the first rounds; sums to loop_budget."""
        n = self.rounds_of(rule)
        base, extra = divmod(self.loop_budget, n)
        return [base + (t < extra) for t in range(n)]


@dataclass
class ClosedLoopArguments:
    _argument_group_name = "closed-loop: run folder"

    output: str | None = field(
        default=None, metadata={"help": "Run folder: per rule and seed the rounds (selection, samples, student, "
                                        "metrics), then report.json, report.md and budget_curve.png."})

    def __post_init__(self):
        if not self.output:
            raise ValueError("--output is required (the closed-loop run folder)")
