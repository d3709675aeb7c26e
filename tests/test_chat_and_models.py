import json

import pytest
import torch

from rubric_rl.data.chat import IGNORE_INDEX, tokenize_chat
from rubric_rl.models import TinySpec, load_causal_lm, load_tokenizer

MSGS = [{"role": "system", "content": "Be precise."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}]


def test_tiny_spec_parse_and_errors():
    s = TinySpec.parse("tiny:hidden=48,layers=3,heads=4,seed=7")
    assert (s.hidden, s.layers, s.heads, s.seed) == (48, 3, 4, 7)
    for bad in ("tiny:hidden=x", "tiny:colour=3", "tiny:hidden=30,heads=4"):
        try:
            TinySpec.parse(bad)
        except ValueError as err:
            assert "tiny spec" in str(err)
        else:
            raise AssertionError(bad)


def test_assistant_mask_covers_exactly_the_answer(tiny_tokenizer):
    tc = tokenize_chat(tiny_tokenizer, MSGS)
    ans_ids = [t for t, l in zip(tc.input_ids, tc.labels) if l != IGNORE_INDEX]
    assert tiny_tokenizer.decode(ans_ids) == "It is 4.<|end|>"
    short = tokenize_chat(tiny_tokenizer, MSGS, max_length=5)
    assert short.truncated and len(short.input_ids) == 5 and short.num_loss_tokens == 0


def test_tiny_model_is_deterministic_and_generates(tiny_tokenizer):
    a = load_causal_lm("tiny:hidden=32,layers=2,heads=4,seed=0", tiny_tokenizer)
    b = load_causal_lm("tiny:hidden=32,layers=2,heads=4,seed=0", tiny_tokenizer)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    enc = tiny_tokenizer.apply_chat_template(MSGS[:2], add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)
    out = a.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 or out[0, -1] == tiny_tokenizer.eos_token_id
    assert load_tokenizer("tiny:hidden=32,layers=2,heads=4,seed=0").vocab_size == tiny_tokenizer.vocab_size


def test_load_chat_samples_names_file_and_line(tmp_path):
    from rubric_rl.data.documents import DataFileError, load_chat_samples

    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "subtask": "s"}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good["messages"]) + "\n")
    rows = load_chat_samples(path)  # a bare messages list per line is accepted; blank lines skipped
    assert [r["line"] for r in rows] == [1, 3] and rows[0]["subtask"] == "s" and rows[1]["messages"] == good["messages"]
    for bad, what in (("{not json", "invalid JSON"), (json.dumps({"messages": [{"role": "user"}]}), "not a chat sample"),
                      (json.dumps({"text": "no messages"}), "not a chat sample")):
        path.write_text(json.dumps(good) + "\n" + bad + "\n")
        with pytest.raises(DataFileError, match=rf"chat.jsonl:2: {what}"):
            load_chat_samples(path)
    path.write_text("\n")
    with pytest.raises(DataFileError, match="no samples"):
        load_chat_samples(path)
    with pytest.raises(DataFileError, match="file not found"):
        load_chat_samples(tmp_path / "missing.jsonl")


def test_tiny_tokenizer_corpus_is_named_files_not_the_folder(quickstart_dir):
    """A file added to data/quickstart (seeds_mc.jsonl was) must not change the tiny tokenizer and every number
    made with it: the corpus is a fixed list of the world's files."""
    from rubric_rl.models import default_tiny_corpus

    corpus = default_tiny_corpus()
    assert [p.name for p in corpus] == ["documents.jsonl", "test.jsonl", "validation.jsonl", "warmup.jsonl",
                                        "seed_rubrics.json"]
    assert all(p.exists() for p in corpus)
    assert (quickstart_dir / "seeds_mc.jsonl").exists() and quickstart_dir / "seeds_mc.jsonl" not in corpus


def test_the_tiny_corpus_ships_as_package_data_equal_to_the_world(quickstart_dir):
    """The tiny tokenizer reads its corpus through importlib.resources (an installed wheel has no data/ folder); the
    package's copy is the quickstart world's files byte for byte, so the tokenizer and every tiny number stay as
    they were (scripts/make_quickstart_world.py writes both)."""
    from importlib.resources import files

    from rubric_rl.models import TINY_CORPUS_FILES, TINY_CORPUS_PACKAGE, default_tiny_corpus

    package = files("rubric_rl").joinpath(*TINY_CORPUS_PACKAGE)
    assert [str(p) for p in default_tiny_corpus()] == [str(package / n) for n in TINY_CORPUS_FILES]
    for name in TINY_CORPUS_FILES:
        assert (package / name).read_bytes() == (quickstart_dir / name).read_bytes(), name
