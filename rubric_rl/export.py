"""Export a trained rubric generator as a standalone model folder.

``EXPORT_DIR`` gets merged weights (safetensors; LoRA adapters are merged into the base), the
tokenizer, a generation config with the sampling settings of training, ``rubric_rl_export.json``
(the prompt settings :class:`~rubric_rl.generator.RubricGenerator` needs), the reward curve
(``reward_curve.png``) and a model card (``README.md``) with the base model, the run's config, the
reward curve and a few sampled rubrics. ``AutoModelForCausalLM.from_pretrained(EXPORT_DIR)`` loads it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from .generator import EXPORT_META, RubricGenerator
from .jsonl import read_jsonl

logger = logging.getLogger(__name__)


class ExportError(RuntimeError):
    pass


def _latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1])) if ckpts else None


def _model_source(run_dir: Path) -> Path:
    """The final policy in ``run_dir``, or its latest checkpoint if the run did not finish."""
    for candidate in (run_dir, _latest_checkpoint(run_dir)):
        if candidate is None:
            continue
        if (candidate / "adapter_config.json").exists() or (candidate / "config.json").exists():
            return candidate
    raise ExportError(f"{run_dir}: no trained policy found (no model files, no checkpoint-N folder)")


def load_trained_policy(run_dir: str | Path):
    """(model with merged weights, tokenizer, run args) of a training run folder."""
    from transformers import AutoTokenizer

    from .models import load_causal_lm, load_tokenizer

    run_dir = Path(run_dir)
    args_path = run_dir / "rubric_rl_args.json"
    if not args_path.exists():
        raise ExportError(f"{run_dir}: not a rubric-rl run folder (no rubric_rl_args.json)")
    run_args = json.loads(args_path.read_text())
    rl = run_args["rubric_rl"]
    src = _model_source(run_dir)
    tok_dir = src if (src / "tokenizer_config.json").exists() else run_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if (tok_dir / "tokenizer_config.json").exists() \
        else load_tokenizer(rl["policy_model_name_or_path"])
    if (src / "adapter_config.json").exists():
        from peft import PeftModel

        base_name = str(run_dir / "sft_warmstart") if rl.get("policy_sft_warmstart") else rl["policy_model_name_or_path"]
        base = load_causal_lm(base_name, tokenizer, dtype=rl.get("policy_dtype", "auto"),
                              trust_remote_code=rl.get("policy_trust_remote_code", False))
        model = PeftModel.from_pretrained(base, str(src)).merge_and_unload()
    else:
        model = load_causal_lm(str(src), tokenizer, dtype="auto",
                               trust_remote_code=rl.get("policy_trust_remote_code", False))
    return model, tokenizer, run_args


def plot_reward_curve(metrics_path: Path, png_path: Path) -> list[tuple[int, float]]:
    rows = read_jsonl(metrics_path) if metrics_path.exists() else []
    points = [(r["step"], r["reward"]) for r in rows if isinstance(r.get("reward"), int | float)]
    if not points:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, rewards = zip(*points)
    k = max(1, len(rewards) // 10)
    few = len(rewards) <= 20
    ax.plot(steps, rewards, lw=1, alpha=0.5 if k > 1 else 1.0, marker="o" if few else None, ms=3, label="reward")
    if k > 1:  # with under 20 steps the moving mean is the reward itself: not drawn over it
        smooth = [sum(rewards[max(0, i - k + 1):i + 1]) / len(rewards[max(0, i - k + 1):i + 1])
                  for i in range(len(rewards))]
        ax.plot(steps, smooth, lw=2, label=f"reward, moving mean of {k} steps")
    handles, labels = ax.get_legend_handles_labels()
    valid = [(r["step"], r["valid_rate"]) for r in rows if isinstance(r.get("valid_rate"), int | float)]
    if valid:
        ax2 = ax.twinx()
        ax2.plot(*zip(*valid), color="grey", lw=1, ls="--", marker="s" if few else None, ms=3,
                 label="valid rate (right axis)")
        ax2.set_ylabel("valid rate")
        ax2.set_ylim(0, 1.05)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward (as shaped)")
    ax.set_title("Rubric generator: reward during RL")
    ax.legend(handles, labels, loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return points


def _model_card(run_args: dict, points, samples, base_model: str) -> str:
    rl, grpo = run_args.get("rubric_rl", {}), run_args.get("grpo", {})
    lines = [
        "---", "library_name: transformers", "tags: [rubric-rl, grpo, trl, synthetic-data]",
        f"base_model: {base_model}" if not base_model.startswith("tiny:") else "", "---", "",
        "# Rubric generator trained with rubric-rl", "",
        "Given a domain document, this model writes a rubric (prompt-related, response-related, "
        "prompt-response alignment, technical aspects) that guides a teacher LLM to write training samples. "
        "It was trained with GRPO (TRL); the reward was the influence of the teacher's samples on the target "
        "model's validation objective.", "",
        "## Base model", "", f"`{base_model}`" + (" (offline tiny random model: quickstart only)"
                                                    if base_model.startswith("tiny:") else ""), "",
        "## Training configuration", "",
        "| key | value |", "|---|---|",
    ]
    keys = [("documents", rl), ("task_description", rl), ("reward_invalid_penalty", rl), ("reward_if_scaling", rl),
            ("policy_use_peft", rl), ("loss_type", grpo), ("learning_rate", grpo), ("max_steps", grpo),
            ("num_generations", grpo), ("beta", grpo), ("seed", grpo)]
    run_all = run_args.get("influence", {})
    for key, src in keys:
        if key in src:
            lines.append(f"| {key} | `{src[key]}` |")
    for key in ("target_model_name_or_path", "influence_estimator", "influence_direction"):
        if key in run_all:
            lines.append(f"| {key} | `{run_all[key]}` |")
    lines += ["", "## Reward curve", ""]
    if points:
        lines += ["![reward curve](reward_curve.png)", "", "| step | reward |", "|---|---|"]
        stride = max(1, len(points) // 10)
        lines += [f"| {s} | {r:.4f} |" for s, r in points[::stride]]
    else:
        lines.append("(no logged steps)")
    lines += ["", "## Sampled rubrics", ""]
    for doc_id, g in samples:
        status = "parsed" if g.rubric is not None else f"did not parse ({g.reason})"
        shown = g.rubric.render() if g.rubric is not None else g.text[:500]
        lines += [f"**{doc_id}** ({status}):", "", "```", shown, "```", ""]
    lines += ["## Use", "", "```python", "from rubric_rl.generator import RubricGenerator",
              "gen = RubricGenerator.from_pretrained('PATH')", "rubrics = gen.generate([document_text])", "```",
              "", "or `rubric-rl synthesize --rubric_source PATH ...`.", ""]
    return "\n".join(lines)


def export_run(run_dir: str | Path, export_dir: str | Path, *, push_to_hub: str | None = None,
               private: bool = True, num_examples: int = 3, seed: int = 0) -> Path:
    """Write the standalone rubric generator of ``run_dir`` to ``export_dir``; optionally push it."""
    from .data.documents import load_documents

    run_dir, export_dir = Path(run_dir), Path(export_dir)
    model, tokenizer, run_args = load_trained_policy(run_dir)
    rl, grpo = run_args["rubric_rl"], run_args.get("grpo", {})
    export_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float32) if model.dtype == torch.float64 else model
    gen_cfg = model.generation_config
    gen_cfg.do_sample = True
    gen_cfg.temperature = float(grpo.get("temperature", 1.0))
    gen_cfg.top_p = float(grpo.get("top_p", 1.0))
    gen_cfg.max_new_tokens = int(grpo.get("max_completion_length") or 256)
    gen_cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(export_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(export_dir))
    gen_cfg.save_pretrained(str(export_dir))
    meta = {
        "task": rl["task_description"], "max_document_chars": rl["max_document_chars"],
        "rubric_format": rl.get("rubric_format", "json"),
        "max_new_tokens": gen_cfg.max_new_tokens, "temperature": gen_cfg.temperature, "top_p": gen_cfg.top_p,
        "base_model": rl["policy_model_name_or_path"], "run_dir": str(run_dir.resolve()),
    }
    (export_dir / EXPORT_META).write_text(json.dumps(meta, indent=1))
    points = plot_reward_curve(run_dir / "metrics.jsonl", export_dir / "reward_curve.png")

    samples = []
    try:
        docs = load_documents(rl["documents"], text_field=rl.get("document_text_field", "text"))[:num_examples]
        gen = RubricGenerator(model, tokenizer, task=meta["task"], max_document_chars=meta["max_document_chars"],
                              max_new_tokens=meta["max_new_tokens"], temperature=meta["temperature"],
                              top_p=meta["top_p"], device="cpu" if not torch.cuda.is_available() else None,
                              rubric_format=meta["rubric_format"])
        samples = list(zip([d["id"] for d in docs], gen.generate_raw([d["text"] for d in docs], seed=seed)))
    except Exception as err:  # the card is still written; the reason is in it and in the log
        logger.warning("could not sample rubrics for the model card: %s", err)
    (export_dir / "README.md").write_text(_model_card(run_args, points, samples, meta["base_model"]),
                                          encoding="utf-8")
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()  # token from HF_TOKEN / the login cache, never from a config
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(export_dir), repo_id=push_to_hub,
                          commit_message="Upload rubric generator trained with rubric-rl")
        logger.info("pushed %s to the hub as %s", export_dir, push_to_hub)
    return export_dir
