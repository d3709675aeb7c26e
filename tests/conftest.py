import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "data" / "quickstart"
TINY = "tiny:hidden=32,layers=2,heads=4,seed=0"

# Tests never touch the network or the user's caches.
os.environ.setdefault("RUBRIC_RL_CACHE", tempfile.mkdtemp(prefix="rubric_rl_test_cache_"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def quickstart_dir() -> Path:
    return QUICKSTART


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rubric_rl.models import load_tokenizer

    return load_tokenizer(TINY)
