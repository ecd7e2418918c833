"""bf16 and int8 encoder Linear layers for CPU inference: what changes, what stays fp32, how close the logits stay."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from torch import nn

from dynamic_tinybert import LengthConfig, QuestionAnswerer, cli, precision
from dynamic_tinybert.precision import BFloat16Linear, Int8Linear, precision_of, with_precision

from conftest import tiny_model

IDS = torch.tensor([[2, 5, 6, 7, 3, 8, 9, 10, 11, 12, 3], [2, 5, 6, 3, 8, 9, 3, 0, 0, 0, 0]])
MASK = (IDS != 0).long()
TYPES = torch.tensor([[0] * 5 + [1] * 6, [0] * 4 + [1] * 7])


def logits(model, length_config=None) -> torch.Tensor:
    with torch.inference_mode():
        out = model(IDS, MASK, TYPES, length_config=length_config)
    return torch.stack([out.start_logits, out.end_logits])


def linears_in(module: nn.Module) -> list[nn.Module]:
    """Every Linear layer under `module`: fp32, bf16 or dynamically quantised."""
    return [m for m in module.modules() if type(m).__name__ in ("Linear", "BFloat16Linear")]


def test_fp32_is_the_model_itself():
    model = tiny_model()
    assert with_precision(model, "fp32") is model


def test_bf16_off_the_cpu_casts_a_copy_of_the_whole_model_and_int8_is_refused():
    model = tiny_model().to("meta")  # stands in for a GPU: any device but the CPU
    cast = with_precision(model, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in cast.parameters()) and not cast.training
    assert precision_of(cast) == "bf16"
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left alone
    with pytest.raises(ValueError, match="int8.*CPU only"):
        with_precision(model, "int8")


def test_bf16_replaces_every_encoder_linear_and_leaves_the_rest_fp32():
    model = tiny_model()
    fast = with_precision(model, "bf16")
    linears = linears_in(fast.bert.encoder)
    assert len(linears) == 6 * model.config.num_hidden_layers
    assert all(isinstance(m, BFloat16Linear) and m.weight.dtype == torch.bfloat16 for m in linears)
    assert fast.qa_outputs.weight.dtype == torch.float32
    assert fast.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    assert all(m.weight.dtype == torch.float32 for m in fast.modules() if isinstance(m, nn.LayerNorm))


def test_the_original_model_is_left_untouched():
    model = tiny_model()
    before = logits(model)
    with_precision(model, "bf16")
    with_precision(model, "int8")
    assert all(isinstance(m, nn.Linear) for m in linears_in(model.bert.encoder))
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("selection", ["attention", "learned"])
@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.02), ("int8", 0.05)])
def test_logits_stay_close_to_fp32_at_full_length_and_while_dropping(precision, tolerance, selection):
    model = tiny_model(seed=3, token_selection=selection)
    fast = with_precision(model, precision)
    dropping = LengthConfig.ratios([0.8, 0.6, 0.4])
    for config in (None, dropping):
        exact, approximate = logits(model, config), logits(fast, config)
        assert approximate.dtype == torch.float32
        scale = exact.abs().max()
        assert (approximate - exact).abs().max() <= tolerance * scale
        assert not torch.equal(approximate, exact)  # it really ran in lower precision


@pytest.mark.parametrize("native_bf16", [True, False])
def test_int8_quantises_every_encoder_linear_but_the_first_feed_forward_output(native_bf16, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    fast = with_precision(tiny_model(), "int8")
    first, *rest = fast.bert.encoder.layer
    kept = first.output.dense  # bf16 where the CPU has it, else fp32
    assert type(kept) is (BFloat16Linear if native_bf16 else nn.Linear)
    for layer in fast.bert.encoder.layer:
        quantised = [m for m in layer.modules() if isinstance(m, Int8Linear)]
        assert len(quantised) == (5 if layer is first else 6) and all(m.weight.dtype == torch.int8 for m in quantised)
        assert layer.attention.output.dense.out_dtype == torch.float32  # the residual stream stays fp32
        assert getattr(layer.output.dense, "out_dtype", torch.float32) == torch.float32


def test_int8_scales_each_token_on_its_own_so_one_loud_token_does_not_crush_the_others():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(4, 64)
    x[0] *= 1000.0  # one token with huge activations (one scale per batch would round the rest to zero)
    exact, approximate = linear(x).detach(), Int8Linear(linear)(x)
    for row in range(4):
        assert (approximate[row] - exact[row]).norm() <= 0.02 * exact[row].norm()


def test_int8_rows_are_independent_so_a_batch_gives_each_row_the_numbers_it_gets_alone():
    layer = Int8Linear(nn.Linear(32, 16))
    x = torch.randn(519, 32)
    together = layer(x)
    apart = torch.cat([layer(x[i : i + 5]) for i in range(0, len(x), 5)])
    assert torch.equal(together, apart)


def test_int8_gives_the_same_products_through_onednn_or_int_mm_and_survives_copies(monkeypatch):
    layer, x = Int8Linear(nn.Linear(64, 48)), torch.randn(9, 64)
    packed = layer(x)  # oneDNN's quantised Linear where this torch has it
    assert torch.equal(copy.deepcopy(layer)(x), packed) and torch.equal(pickle.loads(pickle.dumps(layer))(x), packed)
    monkeypatch.setattr(precision, "can_pack_int8_weights", lambda: False)
    assert torch.allclose(layer(x), packed, rtol=1e-5, atol=1e-6)


def test_int8_linear_takes_any_leading_shape_and_returns_its_out_dtype():
    linear = nn.Linear(16, 8)
    out = Int8Linear(linear, torch.bfloat16)(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 8) and out.dtype == torch.bfloat16


def test_packed_bf16_weights_give_the_same_numbers_as_f_linear_and_survive_copies():
    linear = BFloat16Linear(nn.Linear(48, 24))
    x = torch.randn(7, 48)
    with torch.inference_mode():
        packed = linear(x)  # packs the weight on the way
        plain = torch.nn.functional.linear(x.bfloat16(), linear.weight, linear.bias).float()
    assert torch.equal(packed, plain)
    with torch.inference_mode():
        assert torch.equal(copy.deepcopy(linear)(x), packed)
        assert torch.equal(pickle.loads(pickle.dumps(linear))(x), packed)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_token_scorers_stay_fp32_linear_layers(precision):
    fast = with_precision(tiny_model(token_selection="learned"), precision)
    scorers = [layer.token_scorer for layer in fast.bert.encoder.layer]
    assert all(type(s) is nn.Linear and s.weight.dtype == torch.float32 for s in scorers)
    assert precision_of(fast) == precision


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_precision_of_a_model_is_what_with_precision_made_it(precision):
    assert precision_of(with_precision(tiny_model(), precision)) == precision


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, int8"):
        with_precision(tiny_model(), "fp8")


def test_from_pretrained_applies_the_precision(tiny_checkpoint):
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint, precision="bf16")
    assert all(isinstance(m, BFloat16Linear) for m in linears_in(qa.model.bert.encoder))
    assert qa(question="where does alice live ?", context="alice lives in paris .")["answer"]


def test_dtb_ask_takes_a_precision_and_refuses_unknown_ones(tiny_checkpoint, capsys):
    args = ["ask", "where does alice live ?", "--context", "alice lives in paris .", "--model", str(tiny_checkpoint)]
    assert cli.main([*args, "--precision", "int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["answer"]
    assert cli.main([*args, "--precision", "fp8"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dtb_eval_reports_precision_and_peak_memory(tiny_checkpoint, tmp_path, capsys):
    from synthetic import synthetic_dataset, write_squad_file

    data = write_squad_file(synthetic_dataset(5, seed=1), tmp_path / "data.json")
    args = ["eval", "--model", str(tiny_checkpoint), "--data", str(data), "--predictions", str(tmp_path / "p.json")]
    assert cli.main([*args, "--precision", "bf16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == "bf16" and summary["peak_rss_mib"] > 10


def test_bf16_on_a_cpu_that_emulates_it_warns_that_fp32_is_faster(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16.*use fp32"):
        with_precision(tiny_model(), "bf16")


def test_bf16_on_a_cpu_with_native_bf16_says_nothing(monkeypatch, recwarn):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with_precision(tiny_model(), "bf16")
    assert not [w for w in recwarn if "bf16" in str(w.message)]


def test_the_native_bf16_probe_answers_a_bool():
    assert isinstance(precision.cpu_has_native_bf16(), bool)
