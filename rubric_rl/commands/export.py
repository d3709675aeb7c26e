"""``rubric-rl export``: a trained run's rubric generator as a standalone model folder."""

from __future__ import annotations

import argparse


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rubric-rl export", description="Write a standalone rubric generator "
                                "(merged safetensors weights, tokenizer, generation config, model card).")
    p.add_argument("--run", required=True, help="OUTPUT_DIR of a `rubric-rl train` run.")
    p.add_argument("--output", required=True, help="Folder to write the rubric generator to.")
    p.add_argument("--push_to_hub", default=None, metavar="REPO",
                   help="Also upload to this Hugging Face Hub repo (token from HF_TOKEN or `hf auth login`).")
    p.add_argument("--public", action="store_true", help="Create the hub repo public (default: private).")
    p.add_argument("--num_examples", type=int, default=3, help="Rubrics sampled into the model card.")
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import export_run

    out = export_run(args.run, args.output, push_to_hub=args.push_to_hub, private=not args.public,
                     num_examples=args.num_examples)
    print(f"Exported rubric generator: {out}")
    return 0
