"""`moelab export`: transformers loads the directory with the same logits; vLLM's key layout; refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from moelab.checkpoint.export import check_layout, expected_hf_keys
from moelab.checkpoint.hf import CheckpointError
from moelab.checkpoint.layout import save_checkpoint
from moelab.cli import main
from moelab.infer.chat import builtin_template
from moelab.model import build_model, get_preset

transformers = pytest.importorskip("transformers")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def _randomized(model):
    """A copy with non-trivial norms and dots correction bias (zeros would hide a dropped bias)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("expert_bias"):
                buf.copy_(0.3 * torch.randn(buf.shape, generator=gen))
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module", params=["dots1", "olmoe"])
def exported(request, tmp_path_factory, text_models, chat_tokenizer):
    family = request.param
    model = _randomized(text_models[family])
    root = tmp_path_factory.mktemp(f"export-{family}")
    save_checkpoint(root / "run", step=1, tokens=0, model=model)
    chat_tokenizer.save(root / "run")
    out = root / "hf"
    args = [
        "export",
        str(root / "run"),
        str(out),
        "--dtype",
        "float32",
        "--max-shard-size",
        "200KB",
    ]
    assert main(args) == 0
    return family, model, out


def test_transformers_gives_the_same_logits(exported):
    family, model, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ("Dots1ForCausalLM" if family == "dots1" else "OlmoeForCausalLM")
    x = torch.randint(
        0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        delta = (hf(x).logits - model(x).logits).abs().max().item()
    assert delta <= 1e-5, f"{family}: max |Δlogit| = {delta:.2e}"


def test_sharded_files_have_the_vllm_layout(exported):
    family, model, out = exported
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert set(index["weight_map"]) == expected_hf_keys(model.config)
    assert "model.layers.1.mlp.experts.15.down_proj.weight" in index["weight_map"]
    if family == "dots1":
        assert "model.layers.1.mlp.shared_experts.gate_proj.weight" in index["weight_map"]
        assert "model.layers.1.mlp.gate.e_score_correction_bias" in index["weight_map"]
    check_layout(out, model.config)


def test_tokenizer_chat_template_and_generation_config(exported, chat_tokenizer):
    family, _, out = exported
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "the router café 数据"
    assert tok.encode(text, add_special_tokens=False) == chat_tokenizer.encode(text)
    rendered = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert rendered == builtin_template(family).render(CHAT)
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert chat_tokenizer.eos_id in eos and gen["bos_token_id"] is None
    end_of_response = chat_tokenizer.hf.token_to_id("<|endofresponse|>")
    assert (end_of_response in eos) == (family == "dots1")


def test_bf16_export_keeps_the_correction_bias_fp32(tmp_path, text_models, chat_tokenizer):
    from safetensors import safe_open

    model = _randomized(text_models["dots1"])
    save_checkpoint(tmp_path / "run", step=1, tokens=0, model=model)
    assert (
        main(
            [
                "export",
                str(tmp_path / "run"),
                str(tmp_path / "hf"),
                "--tokenizer",
                str(_tok(tmp_path, chat_tokenizer)),
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["model_type"] == "dots1"
    with safe_open(str(tmp_path / "hf/model.safetensors"), framework="pt") as fh:
        bias = fh.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
        assert bias.dtype == torch.float32
        assert fh.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    torch.testing.assert_close(bias, model.layers["1"].mlp.gate.expert_bias, rtol=0, atol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32


def _tok(tmp_path, tokenizer):
    return tokenizer.save(tmp_path / "tok")


def test_inexpressible_config_is_refused_with_the_reason(tmp_path, capsys):
    cfg = get_preset("tiny-olmoe")
    cfg.num_layers = 1
    cfg.moe.expert_bias = True  # an aux-free bias: transformers' OLMoE has no such buffer
    save_checkpoint(tmp_path / "run", step=1, tokens=0, model=build_model(cfg))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    assert "no expert bias" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_layout_check_catches_fused_experts_and_a_bf16_bias(exported, tmp_path):
    from safetensors.torch import save_file

    family, model, _ = exported
    tensors = {k: torch.zeros(1) for k in expected_hf_keys(model.config)}
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    tensors["model.layers.1.mlp.experts.gate_up_proj"] = torch.zeros(1)  # transformers-5 fused
    if family == "dots1":
        tensors["model.layers.1.mlp.gate.e_score_correction_bias"] = torch.zeros(1).bfloat16()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        check_layout(tmp_path, model.config)
    problems = str(err.value).split("\n  - ")[1:]
    expected = [
        "missing model.layers.1.mlp.experts.3.up_proj.weight",
        "unexpected model.layers.1.mlp.experts.gate_up_proj",
    ]
    if family == "dots1":
        expected.append("model.layers.1.mlp.gate.e_score_correction_bias is BF16, not F32")
    assert problems == expected
