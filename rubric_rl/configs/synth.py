"""``synthesize``'s settings (``synth_*``): strategy, budget, seeds, verifiers, outputs; and the strategy names
(:mod:`rubric_rl.synth.strategies` writes their prompts)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .checks import at_least, choice

NEW_QUESTION, REPHRASE, AUGMENT_ANSWER, AUTO = "new_question", "rephrase", "augment_answer", "auto"
SIMILAR_QUESTION = "similar_question"  # the closed loop's: a new question like a seed (Kessler et al. 2025)
STRATEGIES = (NEW_QUESTION, REPHRASE, AUGMENT_ANSWER, SIMILAR_QUESTION)
STRATEGY_CHOICES = STRATEGIES + (AUTO,)
SEEDED = (REPHRASE, AUGMENT_ANSWER, SIMILAR_QUESTION)  # strategies that need a seed set
NEEDS_DOCUMENT = (NEW_QUESTION, SIMILAR_QUESTION)  # strategies that write from the document alone
# 'auto': answer augmentation up to this budget/seed-set ratio, new questions above it. Chan et al. (2024) report
# the crossover at 16-27 (about 12 with a stronger student); on the offline world new questions won at every
# ratio from 1 to 16 (scripts/budget_rule.py, reports/budget_rule/), see synth.strategies.choose_strategy.
AUTO_RATIO_THRESHOLD = 16.0
# synth_push_to_hub / synth_hf_license: the shapes the hub accepts (huggingface_hub.utils.validate_repo_id's rules,
# written here so that parsing the config imports no hub client)
HUB_REPO_ID = re.compile(r"(?=.{3,96}$)(?!.*(?:--|\.\.))[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(?<![.-])")
HUB_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")


@dataclass
class SynthConfig:
    _argument_group_name = "synthesis (synth_*): strategy, budget, seed set, verifiers, outputs"

    synth_strategy: str = field(
        default=NEW_QUESTION,
        metadata={"help": "Generation strategy: 'new_question' (new questions from a document under a rubric), "
                          "'rephrase' (rephrase seed questions), 'augment_answer' (new answers to seed questions), "
                          "'similar_question' (a new question of the seed's kind about another fact of its document), "
                          "or 'auto' (answer augmentation when budget/seed-set size <= synth_auto_ratio_threshold, "
                          "else new questions; after Chan et al. 2024)."},
    )
    synth_seed_samples: str | None = field(
        default=None,
        metadata={"help": "Seed set for 'rephrase', 'augment_answer' and 'auto': chat-format jsonl "
                          "({'messages': [...], 'doc_id': ...}); 'doc_id' links a seed to its document. Never the "
                          "validation or test set."},
    )
    synth_budget: int | None = field(
        default=None,
        metadata={"help": "Maximum teacher queries for the run (resumes included). Default: "
                          "synth_max_queries_per_sample * num_samples."},
    )
    synth_max_queries_per_sample: float = field(
        default=4.0, metadata={"help": "Default budget per requested sample, when synth_budget is not set."}
    )
    synth_auto_ratio_threshold: float = field(
        default=AUTO_RATIO_THRESHOLD,
        metadata={"help": "'auto' strategy: budget/seed-set ratio at or below which answers are augmented instead of "
                          "new questions written. Default 16: the low end of the crossover Chan et al. (2024) report "
                          "(16-27; about 12 with a stronger student). On the offline world new questions won at "
                          "every ratio from 1 to 16 (scripts/budget_rule.py): task- and teacher-dependent, measure "
                          "it on yours."},
    )
    synth_batch_size: int = field(
        default=32, metadata={"help": "Teacher queries per chunk; the run checkpoints after every chunk."}
    )
    synth_seed: int = field(default=0, metadata={"help": "Seed for the item order, teacher seeds and rubric generation."})
    synth_eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation sets (chat jsonl, e.g. validation and test) no training sample may overlap "
                          "with: n-gram decontamination. Empty: decontamination is off (a warning says so)."},
    )
    synth_decontam_ngram: int = field(default=8, metadata={"help": "Decontamination n-gram size (words)."})
    synth_decontam_threshold: float = field(
        default=0.5, metadata={"help": "A sample is contaminated when it covers more than this share of an "
                                       "evaluation prompt's informative tokens."}
    )
    synth_grounding: bool = field(default=True, metadata={"help": "Reject answers not grounded in the document."})
    synth_grounding_min_overlap: float = field(
        default=0.5, metadata={"help": "Grounding: minimum share of the answer's content words found in the document."}
    )
    synth_grounding_min_claim_overlap: float = field(
        default=0.75, metadata={"help": "Grounding: minimum share of the answer's claim (its content words the question stem does not hold, plus the words of the option its letter names) found in the document; 0 turns the claim check off."}
    )
    synth_safety: bool = field(default=True, metadata={"help": "Apply the safety blocklist."})
    synth_blocklist_file: str | None = field(
        default=None, metadata={"help": "Extra blocklist patterns, one regex per line ('category: regex' allowed)."}
    )
    synth_dedup: bool = field(default=True, metadata={"help": "Remove near-duplicate samples (MinHash over shingles)."})
    synth_dedup_threshold: float = field(
        default=0.8, metadata={"help": "Near-duplicate when the shingle Jaccard similarity is >= this."}
    )
    synth_save_dataset: str | None = field(
        default=None, metadata={"help": "Also save the samples as an HF datasets folder here (load_from_disk)."}
    )
    synth_hf_dataset: str | None = field(
        default=None,
        metadata={"help": "Also write the samples as a Hugging Face dataset folder here, in the hub's layout: "
                          "data/train-*.parquet (columns messages, doc_id, the provenance fields, provenance as "
                          "JSON) and a dataset card README.md (sources and their sha256, rubric source, teacher, "
                          "strategy, verifier statistics, command line, versions). datasets.load_dataset(DIR) "
                          "loads it. The folder is replaced on every run; one that holds anything else is refused. "
                          "Default with synth_push_to_hub: OUTPUT's name with .hf instead of .jsonl."},
    )
    synth_hf_license: str | None = field(
        default=None,
        metadata={"help": "License of the dataset for the card's metadata, as a hub license id (apache-2.0, "
                          "cc-by-4.0, other...). The documents' and the teacher's terms decide it; unset, the "
                          "card has no license and says so."},
    )
    synth_push_to_hub: str | None = field(
        default=None,
        metadata={"help": "After the run, upload the synth_hf_dataset folder (card included) to this Hugging Face "
                          "Hub dataset repo (OWNER/NAME). The token comes from the HF_TOKEN environment variable, "
                          "checked before any generation. A failed upload is an error; the local folder is kept."},
    )
    synth_push_private: bool = field(
        default=True,
        metadata={"help": "Create the synth_push_to_hub repo private (default); false: public. An existing repo "
                          "keeps its visibility."},
    )
    synth_write_rejected: bool = field(
        default=False, metadata={"help": "Also write rejected candidates with their reason to OUTPUT.rejected.jsonl."}
    )
    synth_overwrite: bool = field(
        default=False,
        metadata={"help": "Start over when OUTPUT exists from a run with other arguments (default: refuse)."},
    )
    synth_progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        choice("synth_strategy", self.synth_strategy, STRATEGY_CHOICES)
        if self.synth_strategy in SEEDED and not self.synth_seed_samples:
            raise ValueError(f"synth_seed_samples is required for synth_strategy={self.synth_strategy!r}")
        if self.synth_budget is not None and self.synth_budget < 1:
            raise ValueError(f"synth_budget must be >= 1, got {self.synth_budget!r}")
        for name in ("synth_max_queries_per_sample", "synth_auto_ratio_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("synth_batch_size", "synth_decontam_ngram"):
            at_least(name, getattr(self, name), 1)
        if not 0 <= self.synth_decontam_threshold < 1:
            raise ValueError(f"synth_decontam_threshold must be in [0, 1), got {self.synth_decontam_threshold!r}")
        if not 0 <= self.synth_grounding_min_claim_overlap <= 1:
            raise ValueError("synth_grounding_min_claim_overlap must be in [0, 1], got "
                             f"{self.synth_grounding_min_claim_overlap!r}")
        for name in ("synth_grounding_min_overlap", "synth_dedup_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.synth_push_to_hub is not None and not HUB_REPO_ID.fullmatch(self.synth_push_to_hub):
            raise ValueError(f"synth_push_to_hub must be a hub repo id OWNER/NAME (letters, digits, '-', '_', '.'; "
                             f"at most 96 characters), got {self.synth_push_to_hub!r}")
        if self.synth_hf_license is not None and not HUB_LICENSE_ID.fullmatch(self.synth_hf_license):
            raise ValueError(f"synth_hf_license must be a hub license id such as 'apache-2.0', 'cc-by-4.0' or "
                             f"'other', got {self.synth_hf_license!r}")
        if self.synth_hf_dataset is not None:
            if not self.synth_hf_dataset.strip():
                raise ValueError("synth_hf_dataset must be a folder path, got ''")
            if self.synth_save_dataset and os.path.abspath(self.synth_save_dataset) == os.path.abspath(self.synth_hf_dataset):
                raise ValueError(f"synth_hf_dataset and synth_save_dataset must be different folders, both are "
                                 f"{self.synth_hf_dataset!r}")
        if isinstance(self.synth_eval_files, str):
            self.synth_eval_files = [p for p in self.synth_eval_files.split(",") if p]
        # The files themselves (seed samples, blocklist, eval files, a synth_hf_dataset that is a file) are checked
        # by preflight.check_synthesize, before a model loads: a config is values, not a disk read.



@dataclass
class SynthArguments:
    _argument_group_name = "synthesize: rubric source, documents, output"

    rubric_source: str = field(
        default="none",
        metadata={"help": "Where rubrics come from: an exported rubric generator folder, a rubrics JSON file, "
                          "or 'none' (no rubric)."},
    )
    documents: str = field(default="data/quickstart/documents.jsonl", metadata={"help": "Documents file."})
    output: str = field(default=None, metadata={"help": "Output jsonl of chat samples with provenance."})
    num_samples: int | None = field(default=None, metadata={"help": "Samples to accept (default: one per document)."})

    def __post_init__(self):
        if not self.output:
            raise ValueError("--output is required (the jsonl to write)")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples!r}")
