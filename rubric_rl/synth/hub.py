"""``synthesize``'s dataset as users share it: a Hugging Face dataset folder with a dataset card, and its upload.

``synth_hf_dataset DIR`` (default with ``synth_push_to_hub``: ``OUT.hf/`` beside ``OUT.jsonl``) gets the layout
``Dataset.push_to_hub`` writes on the hub, so the local folder and the hub repo hold the same files::

    DIR/README.md                          the dataset card (YAML metadata + the text below)
    DIR/data/train-00000-of-00001.parquet  the accepted samples, in OUT.jsonl's order

``datasets.load_dataset(DIR)`` (or ``load_dataset("OWNER/NAME")`` after the push) loads split ``train`` with the
columns of :func:`dataset_rows`: ``messages``, ``doc_id``, the provenance fields as columns (``item``,
``rubric_source``, ``rubric_text``, ``teacher``, ``strategy``, ``seed``, ``seed_sample``, ``verifiers``; ``influence``
when the samples were scored) and ``provenance``, the whole provenance object as JSON, so that a row gives back
its jsonl line exactly (:func:`jsonl_record`).

The card's metadata is ``huggingface_hub.DatasetCardData`` (license when ``synth_hf_license`` is set,
task_categories, size_categories, tags ``synthetic`` and ``rubric-rl``) with the ``configs`` / ``data_files`` and
``dataset_info`` (features, split sizes) entries ``datasets`` writes, so the hub's viewer reads the files. Its text
records the documents file and its sha256, the rubric source (for an exported generator: its base model and the
training run's reward settings, when the run folder is still there), the teacher and its sampling, the strategy,
the verifier statistics from the run's summary, the influence summary of scored samples, the command line,
rubric-rl's version, the git commit and package versions (:func:`rubric_rl.provenance.provenance`), and how it was
made, with its limits.

The upload (:func:`push_folder`) is ``HfApi.create_repo`` + ``upload_folder`` of DIR with the token of ``HF_TOKEN``;
:func:`check_hub_settings` refuses a missing token (and ``HF_HUB_OFFLINE``) before any generation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..jsonl import iter_jsonl
from ..provenance import file_sha256

logger = logging.getLogger(__name__)

CARD = "README.md"
DATA_DIR = "data"
SPLIT = "train"
MAX_SHARD_BYTES = 500 * 2**20  # Dataset.push_to_hub's default max_shard_size
TAGS = ["synthetic", "rubric-rl"]
TASK_CATEGORIES = ["text-generation", "question-answering"]
EXPORT_META_FILE = "rubric_rl_export.json"  # generator.EXPORT_META (not imported: it would load torch)
TOKEN_ENV = "HF_TOKEN"
_TRUE = ("1", "on", "yes", "true")


class HubPushError(UserError):
    """The upload failed; the message names the repo and the error and says where the local copy is."""


# ---------------------------------------------------------------------------------------------- before the run
def dataset_dir(synth_cfg, output: str | Path) -> Path | None:
    """The folder to write: ``synth_hf_dataset``, else ``OUT.hf`` when pushing, else None."""
    if synth_cfg.synth_hf_dataset:
        return Path(synth_cfg.synth_hf_dataset)
    if synth_cfg.synth_push_to_hub:
        out = Path(output)
        return Path(f"{out.with_suffix('') if out.suffix == '.jsonl' else out}.hf")
    return None


def hub_token() -> str | None:
    return os.environ.get(TOKEN_ENV, "").strip() or None


def check_hub_settings(synth_cfg, output: str | Path) -> None:
    """Refuse, before any generation: a push without ``HF_TOKEN`` or under ``HF_HUB_OFFLINE``, and a dataset
    folder that holds something other than an earlier rubric-rl dataset (it is replaced)."""
    repo = synth_cfg.synth_push_to_hub
    if repo:
        if not hub_token():
            raise UserError(f"synth_push_to_hub {repo}: {TOKEN_ENV} is not set; export {TOKEN_ENV} (a token with "
                            "write access: https://huggingface.co/settings/tokens), or drop synth_push_to_hub")
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
            raise UserError(f"synth_push_to_hub {repo}: HF_HUB_OFFLINE is set, so no upload can happen; unset it, "
                            "or drop synth_push_to_hub")
    folder = dataset_dir(synth_cfg, output)
    if folder is not None and folder.resolve() in Path(output).resolve().parents:
        raise UserError(f"synth_hf_dataset: {folder} holds --output {output}, and the folder is replaced on every "
                        "run; choose a folder beside it")
    if folder is not None and not _replaceable(folder):
        raise UserError(f"synth_hf_dataset: {folder} exists and is not a dataset rubric-rl wrote (it is replaced on "
                        "every run); choose another folder")


def _replaceable(folder: Path) -> bool:
    """Absent, empty, or an earlier rubric-rl dataset folder (README.md with the rubric-rl tag, data/)."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    if not names:
        return True
    if not names <= {CARD, DATA_DIR, ".cache", ".gitattributes"} or CARD not in names:
        return False
    try:
        from huggingface_hub import DatasetCard

        tags = DatasetCard.load(folder / CARD).data.to_dict().get("tags") or []
    except Exception:  # an unreadable card is not ours
        return False
    return "rubric-rl" in tags


# ---------------------------------------------------------------------------------------------- rows
def jsonl_record(row: dict) -> dict:
    """The jsonl line a dataset row was made from (the inverse of :func:`dataset_rows`)."""
    record = {"messages": [dict(m) for m in row["messages"]], "doc_id": row["doc_id"],
              "provenance": json.loads(row["provenance"])}
    if "influence" in row:
        record["influence"] = row["influence"]
    return record


def _influence(record: dict):
    value = record.get("influence", (record.get("provenance") or {}).get("influence"))
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def dataset_rows(jsonl_path: str | Path):
    """``(rows, features)`` of the samples file: one row per line, in order. ``verifiers`` is a struct of the
    verifier names the run used (verdict strings); ``influence`` is a column only when some line has one (at top
    level, as ``rubric-rl score`` writes it, or in the provenance)."""
    import datasets

    records = list(iter_jsonl(jsonl_path))
    verifier_names: list[str] = []
    for r in records:
        for name in (r.get("provenance") or {}).get("verifiers") or {}:
            if name not in verifier_names:
                verifier_names.append(name)
    scored = any(_influence(r) is not None for r in records)
    rows = []
    for r in records:
        p = r.get("provenance") or {}
        row = {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]],
               "doc_id": str(r.get("doc_id", p.get("doc_id", ""))),
               "item": p.get("item") if isinstance(p.get("item"), int) else None,
               "rubric_source": p.get("rubric_source"), "rubric_text": p.get("rubric_text"),
               "teacher": p.get("teacher"), "strategy": p.get("strategy"), "seed": p.get("seed"),
               "seed_sample": p.get("seed_sample")}
        if verifier_names:
            row["verifiers"] = {name: (p.get("verifiers") or {}).get(name) for name in verifier_names}
        if scored:
            row["influence"] = r.get("influence", p.get("influence"))
        row["provenance"] = json.dumps(p, ensure_ascii=False)
        rows.append(row)
    string, integer = datasets.Value("string"), datasets.Value("int64")
    features = {"messages": datasets.List({"role": string, "content": string}), "doc_id": string, "item": integer,
                "rubric_source": string, "rubric_text": string, "teacher": string, "strategy": string,
                "seed": integer, "seed_sample": integer}
    if verifier_names:
        features["verifiers"] = {name: string for name in verifier_names}
    if scored:
        features["influence"] = datasets.Value("float64")
    features["provenance"] = string
    return rows, datasets.Features(features)


def influence_summary(values) -> dict | None:
    """n, mean, std (sample), min, quantiles and max of the finite influence values; None when there are none."""
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
    import numpy as np

    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    q = np.quantile(np.asarray(vals, dtype=float), [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": n, "mean": mean, "std": std, "min": vals[0], "q05": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "q95": float(q[4]), "max": vals[-1]}


def size_category(n: int) -> str:
    for limit, name in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                        (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")):
        if n < limit:
            return name
    return "n>1B"


# ---------------------------------------------------------------------------------------------- the card

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cell(value) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return "`" + text.replace("|", "\\|").replace("`", "'").replace("\n", " ") + "`"


def _table(pairs, head=("key", "value")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in pairs), ""]


def _file_line(path) -> str:
    p = Path(path)
    return f"`{path}` (sha256 `{file_sha256(p)}`)" if p.is_file() else f"`{path}` (not found when the card was written)"


def _rubric_source_lines(source) -> list[str]:
    if source.kind == "none":
        return ["Kind `none`: no rubric; the teacher wrote from the document alone.", ""]
    if source.kind == "file":
        n = len(source.rubrics or [])
        return [f"Kind `file`: the rubrics file {_file_line(source.spec)}, {n} rubric(s), used in turn.", ""]
    lines = [f"Kind `generator`: the exported rubric generator `{source.spec}` wrote one rubric per document "
             "(the rubrics are in each row's `rubric_text` and `provenance`).", ""]
    meta = _read_json(Path(source.spec) / EXPORT_META_FILE) or {}
    pairs = [(k, meta[k]) for k in ("base_model", "rubric_format", "temperature", "top_p", "max_new_tokens")
             if k in meta]
    run_dir = source.run_dir or meta.get("run_dir")
    args = _read_json(Path(run_dir) / "rubric_rl_args.json") if run_dir else None
    if run_dir:
        pairs.append(("training run", run_dir))
    if args:
        rl, grpo, infl = args.get("rubric_rl", {}), args.get("grpo", {}), args.get("influence", {})
        pairs += [(k, rl[k]) for k in sorted(rl) if k.startswith("reward_")]
        pairs += [(k, infl[k]) for k in ("target_model_name_or_path", "influence_estimator", "influence_direction",
                                         "influence_validation_data") if k in infl]
        pairs += [(k, grpo[k]) for k in ("max_steps", "num_generations", "learning_rate", "seed") if k in grpo]
        summary = _read_json(Path(run_dir) / "run_summary.json") or {}
        reward = summary.get("reward") or {}
        if reward.get("steps"):
            pairs.append(("reward, first vs last 20 % of steps",
                          f"{reward['first_mean']:.4g} -> {reward['last_mean']:.4g} ({reward['steps']} steps)"))
    elif run_dir:
        lines += [f"The training run's settings are not recorded here (`{run_dir}/rubric_rl_args.json` was not "
                  "readable when the card was written).", ""]
    return lines + (_table(pairs) if pairs else [])


def _verifier_lines(summary: dict, cfg) -> list[str]:
    counts = [("accepted", summary.get("accepted")), ("requested (num_samples)", summary.get("num_samples")),
              ("teacher queries spent / budget", f"{summary.get('queries_spent')} / {summary.get('budget')}"),
              ("stopped", summary.get("stopped")),
              ("accepted beyond num_samples, not written", summary.get("surplus")),
              ("infrastructure failures (retried, not counted)", summary.get("infrastructure_failures")),
              ("items skipped (no teacher query)", summary.get("items_skipped") or {})]
    rejected, by_verifier = summary.get("rejected") or {}, summary.get("rejected_by_verifier") or {}
    blocklist = "built-in" + (f" + {cfg.synth_blocklist_file}" if cfg.synth_blocklist_file else "")
    settings = [("grounding (min content-word overlap)", cfg.synth_grounding_min_overlap if cfg.synth_grounding
                 else "off"),
                ("safety blocklist", blocklist if cfg.synth_safety else "off"),
                ("decontamination n-gram / threshold", f"{cfg.synth_decontam_ngram} / {cfg.synth_decontam_threshold}"
                 if cfg.synth_eval_files else "off"),
                ("near-duplicate Jaccard threshold", cfg.synth_dedup_threshold if cfg.synth_dedup else "off")]
    return ["## Verifier statistics", "", *_table(counts),
            *(_table(list(rejected.items()), head=("rejected: reason", "candidates")) if rejected
              else ["Rejected: none.", ""]),
            *(_table(list(by_verifier.items()), head=("rejected by", "candidates")) if by_verifier else []),
            "Verifier settings:", "", *_table(settings)]


def _influence_lines(influence: dict | None, num_rows: int, summary: dict) -> list[str]:
    if not influence:
        return []
    stats = [(k, f"{influence[k]:.6g}") for k in ("mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max")]
    lines = ["## Influence", "",
             f"{influence['n']} of {num_rows} samples carry an influence score (their effect on the target model's "
             "validation objective, from `rubric-rl score`; higher is more useful in its direction).", "",
             *_table(stats, head=("statistic", "influence"))]
    if isinstance(summary.get("influence"), dict):  # the scoring settings, when the summary records them
        lines += _table(sorted(summary["influence"].items()), head=("scoring setting", "value"))
    return lines


def card_text(*, num_rows: int, summary: dict, synth_cfg, teacher_cfg, documents: str, num_documents: int,
              source, command_line: str, influence: dict | None, repo_id: str | None, folder: Path) -> str:
    """The card's Markdown body (everything below the YAML block)."""
    from .. import __version__
    from ..provenance import provenance

    made, cfg = provenance(), synth_cfg
    teacher = [("backend", teacher_cfg.teacher_backend), ("model", teacher_cfg.teacher_model_name_or_path),
               ("label", summary.get("teacher")), ("temperature", teacher_cfg.teacher_temperature),
               ("top_p", teacher_cfg.teacher_top_p), ("max_new_tokens", teacher_cfg.teacher_max_new_tokens),
               ("max_document_chars", teacher_cfg.teacher_max_document_chars)]
    versions = [("rubric-rl", __version__), ("git commit", made.get("commit")), ("dirty tree", made.get("dirty")),
                ("python", made.get("python")), *((pkg, v) for pkg, v in (made.get("versions") or {}).items() if v)]
    sources = [f"- Documents: {_file_line(documents)}, {num_documents} non-empty documents."]
    if cfg.synth_seed_samples:
        sources.append(f"- Seed samples: {_file_line(cfg.synth_seed_samples)}.")
    sources += ([f"- Decontaminated against: {_file_line(p)}." for p in cfg.synth_eval_files] if cfg.synth_eval_files
                else ["- Decontamination against evaluation sets was **off** (no `synth_eval_files`)."])
    columns = ("`messages` (the chat), `doc_id` (the document it was written from), `item` (the run's item number), "
               "`rubric_source`, `rubric_text` (the rubric the teacher followed; empty without one), `teacher`, "
               "`strategy`, `seed` (the teacher's sampling seed), `seed_sample` (the seed sample's index, for seeded "
               "strategies), `verifiers` (each verifier's verdict)"
               + (", `influence` (the sample's influence score)" if influence else "")
               + ", and `provenance`: the whole provenance object of the jsonl line as JSON.")
    return "\n".join([
        f"# {repo_id or folder.name}", "",
        f"Synthetic chat samples (a user question, an assistant answer) written by `rubric-rl synthesize`: "
        f"{num_rows} samples that passed every verifier, from {num_documents} documents.", "",
        "```python", "from datasets import load_dataset", "",
        f"ds = load_dataset({(repo_id or str(folder))!r}, split={SPLIT!r})", "```", "",
        "## Columns", "", columns, "",
        "## Sources", "", *sources, "",
        "## Rubric source", "", *_rubric_source_lines(source),
        "## Teacher", "", *_table(teacher),
        "## Strategy", "",
        f"`{summary.get('strategy')}` ({summary.get('strategy_why')}); synthesis seed {cfg.synth_seed}.", "",
        *_verifier_lines(summary, cfg),
        *_influence_lines(influence, num_rows, summary),
        "## Reproduce", "", "```bash", command_line, "```", "", *_table(versions),
        "## How it was made, and its limits", "", _how_it_was_made(summary, cfg, teacher_cfg, source), ""])


def _how_it_was_made(summary: dict, cfg, teacher_cfg, source) -> str:
    rubric = {"none": "without a rubric", "file": "under rubrics from a fixed file",
              "generator": "under rubrics an RL-trained rubric generator wrote for each document"}.get(source.kind, "")
    checks = ["format", "a non-trivial answer"]
    checks += ["lexical grounding in the document"] if cfg.synth_grounding else []
    checks += ["a regex safety blocklist"] if cfg.synth_safety else []
    checks += ["n-gram decontamination against the evaluation sets named above"] if cfg.synth_eval_files else []
    checks += ["MinHash near-duplicate removal"] if cfg.synth_dedup else []
    off = [name for name, on in (("grounding", cfg.synth_grounding), ("safety", cfg.synth_safety),
                                 ("decontamination", bool(cfg.synth_eval_files)), ("dedup", cfg.synth_dedup)) if not on]
    text = (f"For each planned item the teacher (`{summary.get('teacher')}`) was asked once for a question and its "
            f"answer about one document, {rubric}, with the `{summary.get('strategy')}` strategy. A candidate was "
            f"kept only when it parsed and passed every check: {', '.join(checks[:-1])} and {checks[-1]}"
            + (f" ({', '.join(off)}: off in this run)" if off else "") + ". "
            "These checks are lexical: grounding counts the answer's content words found in the document and does "
            "not prove the answer right, the blocklist is no safety classifier, and decontamination covers only "
            "the listed files. The answers are as correct as the teacher; no human reviewed them. The documents' "
            "and the teacher's terms decide how the data may be used"
            + ("" if cfg.synth_hf_license else "; no license was set for this card (`synth_hf_license`)") + ".")
    if teacher_cfg.teacher_backend == "template":
        text += (" The teacher was rubric-rl's offline template teacher, which fills fixed question templates from "
                 "the document's sentences: this dataset tests the pipeline and is not meant to train a model.")
    return text


def build_card(*, ds, folder: Path, nbytes: int, download_size: int, summary: dict, synth_cfg,
               **text_kw):
    """The ``huggingface_hub.DatasetCard``: metadata (with ``configs``/``dataset_info`` as ``datasets`` writes them)
    and :func:`card_text`."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(license=synth_cfg.synth_hf_license, task_categories=TASK_CATEGORIES,
                           size_categories=[size_category(len(ds))], tags=TAGS,
                           pretty_name=text_kw.get("repo_id") or folder.name)
    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=nbytes, num_examples=len(ds)))
    info = DatasetInfo(features=ds.features, splits=splits, download_size=download_size, dataset_size=nbytes)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs({"default": {"data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}}
                    ).to_dataset_card_data(data)
    body = card_text(num_rows=len(ds), summary=summary, synth_cfg=synth_cfg, folder=folder, **text_kw)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ---------------------------------------------------------------------------------------------- write, push
def write_dataset(jsonl_path: str | Path, folder: str | Path, *, summary: dict, synth_cfg, teacher_cfg,
                  documents: str, num_documents: int, source, command_line: str,
                  repo_id: str | None = None) -> dict:
    """Write ``folder`` (parquet shards + card) from the samples file, replacing an earlier one only once the new
    one is complete. Returns ``{"dir", "rows", "shards", "influence"}``."""
    import datasets

    folder = Path(folder)
    if not _replaceable(folder):
        raise UserError(f"synth_hf_dataset: {folder} exists and is not a dataset rubric-rl wrote; choose another "
                        "folder")
    rows, features = dataset_rows(jsonl_path)
    ds = datasets.Dataset.from_list(rows, features=features)
    nbytes = ds.data.nbytes
    num_shards = max(1, math.ceil(nbytes / MAX_SHARD_BYTES))
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / DATA_DIR).mkdir(parents=True)
    download_size = 0
    for k in range(num_shards):
        shard = tmp / DATA_DIR / f"{SPLIT}-{k:05d}-of-{num_shards:05d}.parquet"
        ds.shard(num_shards=num_shards, index=k, contiguous=True).to_parquet(str(shard))
        download_size += shard.stat().st_size
    influence = influence_summary(row.get("influence") for row in rows)
    card = build_card(ds=ds, folder=folder, nbytes=nbytes, download_size=download_size,
                      summary=summary, synth_cfg=synth_cfg, teacher_cfg=teacher_cfg, documents=documents,
                      num_documents=num_documents, source=source, command_line=command_line, influence=influence,
                      repo_id=repo_id)
    card.save(tmp / CARD)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("synthesize: wrote the dataset %s (%d rows, %d parquet shard(s), card %s)", folder, len(ds),
                num_shards, folder / CARD)
    return {"dir": str(folder), "rows": len(ds), "shards": num_shards, "influence": influence}


def push_folder(folder: str | Path, repo_id: str, *, private: bool) -> dict:
    """Upload ``folder`` to the dataset repo ``repo_id`` (created if missing; old data shards are replaced).
    Raises :class:`HubPushError` (the local folder is kept) on any failure."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    token = hub_token()
    if not token:
        raise HubPushError(f"synth_push_to_hub {repo_id}: {TOKEN_ENV} is not set; the dataset is kept in {folder}")
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                                   commit_message="Upload synthetic dataset written by rubric-rl synthesize",
                                   delete_patterns=[f"{DATA_DIR}/*"])
    except Exception as err:  # the network, the token's rights, the hub: all end here, loudly
        logger.error("synthesize: pushing %s to the hub as %s failed: %s", folder, repo_id, err)
        raise HubPushError(f"pushing {folder} to the hub dataset repo {repo_id} failed ({type(err).__name__}: "
                           f"{err}); the dataset is kept in {folder}: rerun the same command (the finished run is "
                           f"reused and only pushed), or `hf upload {repo_id} {folder} --repo-type dataset`") from err
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/datasets/{repo_id}"
    logger.info("synthesize: pushed %s to the hub as %s (%s)", folder, repo_id, url)
    return {"repo_id": repo_id, "private": private, "url": str(url)}
