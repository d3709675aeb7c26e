"""The GGUF path of models.py on a tiny Llama written in-process with the ``gguf`` package (no network).

The file is written the way llama.cpp's converter writes one (q/k rows permuted for its RoPE layout, a
byte-level BPE vocabulary with merges, the chat template), so loading it exercises transformers' real
GGUF reader and dequantiser, then our folder/file resolution and the quantizer clean-up.
"""

import json

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF path needs the 'gguf' package (pip install -e '.[gguf]')")

from rubric_rl.models import (  # noqa: E402
    TinySpec, build_tiny_model, build_tiny_tokenizer, gguf_location, load_causal_lm, load_tokenizer, resolve_local,
)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp's convert_hf_to_gguf.LlamaModel.permute (transformers undoes it when reading)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, spec: TinySpec):
    tok = build_tiny_tokenizer(spec.vocab)
    model = build_tiny_model(spec, tok).eval()
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)  # all F32
    # tokenizer: gpt2-style byte-level BPE, as llama.cpp stores SmolLM2's
    tj = json.loads(tok.backend_tokenizer.to_str())
    vocab = tj["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in tj["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])  # 3 = control, 1 = normal
    w.add_token_merges(merges)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    sd = model.state_dict()
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = _permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tok


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model, tok = write_tiny_gguf(path, TinySpec(hidden=32, layers=2, heads=4, seed=3))
    return path, model, tok


def test_gguf_location_forms(tmp_path):
    assert gguf_location("a/b/m.gguf") == ("a/b", "m.gguf")
    assert gguf_location("folder::m.Q4_1.gguf") == ("folder", "m.Q4_1.gguf")
    assert gguf_location("Qwen/Qwen2.5-0.5B") is None
    assert gguf_location("tiny:hidden=8") is None


@pytest.mark.parametrize("form", ["path", "folder::file"])
def test_gguf_model_loads_and_matches_the_original(tiny_gguf, form):
    path, ref, ref_tok = tiny_gguf
    name = str(path) if form == "path" else f"{path.parent}::{path.name}"
    tok = load_tokenizer(name)
    text = "Mivorane is an inhibitor of the enzyme; answer step by step."
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert tok.chat_template == ref_tok.chat_template
    model = load_causal_lm(name, tok).eval()
    assert model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    ids = torch.tensor([ref_tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_gguf_model_saves_as_plain_safetensors_folder(tiny_gguf, tmp_path):
    path, ref, ref_tok = tiny_gguf
    model = load_causal_lm(str(path))
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in cfg
    again = load_causal_lm(str(tmp_path / "m")).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_missing_gguf_and_missing_local_folder_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_causal_lm(str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="fetch_smollm2"):
        resolve_local("~/no/such/SmolLM2-135M-Instruct")
    assert resolve_local("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub ids pass through


def test_gguf_without_the_package_says_what_to_install(tiny_gguf, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match=r"rubric-rl\[gguf\]"):
        load_causal_lm(str(tiny_gguf[0]))
