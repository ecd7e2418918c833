"""`AnswerOptions` is the one definition of the answering options: the CLI, HTTP and benchmark follow it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from test_frontier import CONTEXTS, FRONTIER, MID, QUESTIONS, TOP

from dynamic_tinybert import AnswerOptions, LengthConfig, QuestionAnswerer
from dynamic_tinybert.benchmark import Workload
from dynamic_tinybert.cli import build_parser
from dynamic_tinybert.frontier import Frontier
from dynamic_tinybert.options import option_names, option_type

DEFAULTS = {f.name: f.default for f in dataclasses.fields(AnswerOptions)}


def parsed_defaults(*command: str) -> dict:
    args = build_parser().parse_args([*command])
    return {name: getattr(args, name) for name in option_names() if hasattr(args, name)}


def test_dtb_ask_and_serve_have_a_flag_for_every_option_with_its_default():
    assert parsed_defaults("ask", "q?", "--context", "c") == DEFAULTS
    assert parsed_defaults("serve") == DEFAULTS


def test_dtb_eval_search_and_sweep_read_answers_up_to_30_tokens_and_otherwise_keep_the_defaults():
    window = ("batch_size", "max_seq_len", "doc_stride", "max_question_len", "max_answer_len")
    for command in (["eval", "--data", "d"], ["search", "--data", "d"], ["sweep", "--data", "d"]):
        defaults = parsed_defaults(*command)
        assert set(window) <= set(defaults), command
        assert defaults == {**{k: v for k, v in DEFAULTS.items() if k in defaults}, "max_answer_len": 30}, command


def test_flags_parse_to_the_options_types():
    args = build_parser().parse_args(
        ["ask", "q?", "--context", "c", "--top-k", "3", "--no-align-to-words", "--length-config", "0.9,0.5"]
    )
    options = AnswerOptions(**{name: getattr(args, name) for name in option_names()})
    assert options.top_k == 3 and options.align_to_words is False
    assert options.length_config == LengthConfig.parse("0.9,0.5")


def test_the_http_parameters_are_the_per_request_options_all_optional():
    from dynamic_tinybert.serving import Parameters

    fields = Parameters.model_fields
    assert list(fields) == option_names(per_request_only=True) == [n for n in DEFAULTS if n != "batch_size"]
    assert all(field.default is None and not field.is_required() for field in fields.values())
    for name, field in fields.items():
        expected = str if name == "length_config" else option_type(name)
        assert field.annotation == (expected | None), name


def test_the_pipeline_options_are_ones_the_transformers_pipeline_takes_by_that_name():
    transformers = pytest.importorskip("transformers")
    sanitize = inspect.signature(transformers.QuestionAnsweringPipeline._sanitize_parameters).parameters
    names = AnswerOptions().pipeline_kwargs()
    assert set(names) == {
        "top_k",
        "doc_stride",
        "max_answer_len",
        "max_seq_len",
        "max_question_len",
        "handle_impossible_answer",
        "align_to_words",
    }
    assert set(names) <= set(sanitize)


def test_the_benchmark_shares_its_settings_as_answer_options():
    hints = {f.name: f.type for f in dataclasses.fields(Workload)}
    assert hints["options"] == "AnswerOptions"


def test_a_length_choice_replaces_the_one_held_and_other_options_stay():
    held = AnswerOptions(budget=0.5, top_k=3)
    assert held.updated(length_config=TOP.length_config) == AnswerOptions(length_config=TOP.length_config, top_k=3)
    assert held.updated(latency_ms=None) == AnswerOptions(top_k=3)
    assert held.updated(max_answer_len=4) == AnswerOptions(budget=0.5, top_k=3, max_answer_len=4)


def test_an_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown option 'top_n'"):
        AnswerOptions().updated(top_n=2)


@pytest.mark.parametrize("choice", [dict(budget=0.6), dict(length_config=MID.length_config), {}])
def test_a_call_chooses_its_length_config_once(tiny_checkpoint: Path, monkeypatch, choice: dict):
    FRONTIER.save(tiny_checkpoint)
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    chosen = []
    monkeypatch.setattr(QuestionAnswerer, "length_config_for", _recording(QuestionAnswerer.length_config_for, chosen))
    picks = []
    monkeypatch.setattr(Frontier, "choose", _recording(Frontier.choose, picks))
    qa.run(QUESTIONS, CONTEXTS, **choice)
    assert chosen == [choice.get("length_config", MID.length_config if choice else None)]
    assert len(picks) == (1 if "budget" in choice else 0)


def _recording(function, calls: list):
    def recorded(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append(result)
        return result

    return recorded
