"""The engines: ONNX Runtime over the exported length-adaptive graph gives the eager model's logits and answers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic_tinybert import LengthConfig, QuestionAnswerer, checkpoint
from dynamic_tinybert.engines import OnnxRuntimeEngine, TorchEngine, choose_engine
from dynamic_tinybert.features import collate
from dynamic_tinybert.model import RANK_QUESTION, select_tokens, token_ranks
from dynamic_tinybert.onnx_export import export, quantize_int8, select_in_window, window_feed
from dynamic_tinybert.squad import load_squad

from conftest import SAMPLE_V11, make_tiny_tokenizer, tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIGS = [
    None,
    LengthConfig.ratios((0.8, 0.5, 0.3), protect_question=True),
    LengthConfig.ratios((1.0, 0.6, 0.6)),
    LengthConfig.ratios((0.9, 0.9, 0.2), protect_question=True),
    LengthConfig.tokens((30, 12, 5)),  # counts over the window's length, for the shortest windows
]


def random_window(length: int, vocab_size: int, generator: torch.Generator):
    ids = torch.randint(5, vocab_size, (1, length), generator=generator)
    types = (torch.arange(length) >= length // 3).long()[None]
    return ids, types


@pytest.mark.parametrize("selection", ["learned", "attention"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_onnx_runtime_fp32_gives_the_eager_logits_at_every_length_and_configuration(selection, config):
    model = tiny_model(token_selection=selection)
    engine = OnnxRuntimeEngine(model, "fp32", threads=1)
    assert not any(module.training for module in model.modules())  # the export left the model as it found it
    generator = torch.Generator().manual_seed(1)
    for length in (2, 9, 40, 127):  # other lengths than the export's example, the shortest and the longest
        ids, types = random_window(length, model.config.vocab_size, generator)
        batch = collate([_Window(ids, types)])
        expected = TorchEngine(model).logits(batch, config)
        assert abs(engine.logits(batch, config) - expected).max() < 1e-4


class _Window:
    """Just what `collate` reads of a window."""

    def __init__(self, ids: torch.Tensor, types: torch.Tensor) -> None:
        self.length = ids.shape[1]
        self.encoding = type("Encoding", (), {"ids": ids[0].tolist(), "type_ids": types[0].tolist()})()


@st.composite
def windows_to_select_in(draw):
    """A window's significance (few distinct values, so ties are common), token types, a keep count and
    whether question tokens are protected."""
    length = draw(st.integers(1, 40))
    significance = draw(st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.5, 3.0]), min_size=length, max_size=length))
    types = draw(st.lists(st.integers(0, 1), min_size=length, max_size=length))
    return torch.tensor(significance), torch.tensor(types), draw(st.integers(1, length)), draw(st.booleans())


@given(windows_to_select_in())
@settings(max_examples=300, deadline=None)
def test_the_graphs_selection_keeps_what_the_eager_selection_keeps(case):
    """`select_in_window` (one window, a few operators) against `model.select_tokens` (batched sorts), ties and
    protected question tokens included."""
    significance, types, keep, protect = case
    mask = torch.ones(1, len(types), dtype=torch.bool)
    rank = token_ranks(mask, types[None], protect_question=protect)
    expected, _ = select_tokens(significance[None], mask, rank, torch.tensor([keep]))
    question = (token_ranks(mask, types[None], protect_question=True) == RANK_QUESTION)[0]
    first = torch.arange(len(types)) == 0
    keep_question = torch.tensor(keep // 2 if protect else 0)
    index = select_in_window(significance, question, first, torch.tensor(keep), keep_question)
    assert index.tolist() == expected[0].tolist()


def test_a_window_feed_protects_half_of_each_layers_tokens_for_the_question_or_none():
    ids, types = torch.arange(10), torch.zeros(10, dtype=torch.long)
    protected = window_feed(ids, types, LengthConfig.ratios((1.0, 0.5, 0.3), protect_question=True), 3)
    assert protected["input_ids"].shape == (1, 10) and protected["keep"].tolist() == [10, 5, 3]
    assert protected["keep_question"].tolist() == [5, 2, 1]
    unprotected = window_feed(ids, types, LengthConfig.ratios((1.0, 0.5, 0.3)), 3)
    assert unprotected["keep_question"].tolist() == [0, 0, 0]
    full = window_feed(ids, types, None, 3)
    assert full["keep"].tolist() == [10, 10, 10] and full["keep_question"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_padded_batch_gives_each_window_its_own_logits(threads):
    """Each row runs unpadded (one by one, or side by side on one thread each); padded positions get 0."""
    model = tiny_model(token_selection="learned")
    engine = OnnxRuntimeEngine(model, "fp32", threads=threads)
    generator = torch.Generator().manual_seed(0)
    windows = [_Window(*random_window(n, model.config.vocab_size, generator)) for n in (5, 30, 17)]
    for config in CONFIGS:
        together = engine.logits(collate(windows), config)
        for row, window in enumerate(windows):
            alone = engine.logits(collate([window]), config)[:, 0]
            assert abs(together[:, row, : window.length] - alone).max() < 1e-5
            assert not together[:, row, window.length :].any()
            assert abs(alone - TorchEngine(model).logits(collate([window]), config)[:, 0]).max() < 1e-4


def test_windows_side_by_side_run_on_a_session_per_thread():
    """Threads sharing one ONNX Runtime session slow each other down: each worker holds its own."""
    engine = OnnxRuntimeEngine(tiny_model(token_selection="learned"), "fp32", threads=2)
    own, pool = engine.side_by_side
    both_running = threading.Barrier(2)

    def held(_) -> tuple[int, int]:
        both_running.wait(timeout=30)
        return threading.get_ident(), id(own.session)

    threads, sessions = zip(*pool.map(held, range(2)))
    assert len(set(threads)) == 2 and len(set(sessions)) == 2
    assert id(engine.session) not in sessions  # the lone-window session, on every thread, is apart


def test_int8_quantises_every_encoder_projection_and_leaves_the_scorers_and_span_head_in_fp32():
    model = tiny_model(token_selection="learned")
    graph = onnx.load_from_string(quantize_int8(export(model)))
    shapes = {w.name: tuple(w.dims) for w in graph.graph.initializer}
    float_weights = [shapes.get(n.input[1]) for n in graph.graph.node if n.op_type == "MatMul"]
    config = model.config
    layers = config.num_hidden_layers
    assert sorted(float_weights) == sorted([(config.hidden_size, 1)] * layers + [(config.hidden_size, 2)])
    assert sum(n.op_type == "MatMulInteger" for n in graph.graph.node) == 6 * layers


def test_int8_stays_close_to_fp32():
    model = tiny_model(token_selection="learned")
    fp32, int8 = OnnxRuntimeEngine(model, "fp32", threads=1), OnnxRuntimeEngine(model, "int8", threads=1)
    generator = torch.Generator().manual_seed(2)
    for config in CONFIGS:
        batch = collate([_Window(*random_window(60, model.config.vocab_size, generator))])
        exact, quantised = fp32.logits(batch, config), int8.logits(batch, config)
        assert not np.array_equal(exact, quantised)  # it is quantised
        assert abs(exact - quantised).max() < 0.1 * abs(exact).max()


@pytest.fixture
def tiny_dir(tmp_path):
    directory = tmp_path / "tiny"
    model = tiny_model(token_selection="learned", max_position_embeddings=384)
    checkpoint.save_checkpoint(model, make_tiny_tokenizer(), directory)
    return directory


QUESTIONS = ["who won the super bowl?", "where does alice live?", "what city was bob born in?"]
CONTEXTS = [
    "the denver broncos won the super bowl in the year of the game, and the panthers lost it in london. " * 3,
    "alice lives in paris with bob; bob was born in berlin, the capital of germany. " * 12,
    "bob was born in rome, a city in italy; carol in oslo. " * 2,
]


@pytest.mark.parametrize("options", [{}, {"length_config": CONFIGS[1]}, {"length_config": CONFIGS[3], "top_k": 3}])
def test_the_answerer_on_onnx_runtime_answers_as_on_torch(tiny_dir, options):
    """Many windows (the second context overflows its window), batched on torch, one by one on ONNX Runtime."""
    eager = QuestionAnswerer.from_pretrained(tiny_dir, engine="torch", batch_size=4, max_seq_len=64, doc_stride=16)
    exported = QuestionAnswerer.from_pretrained(
        tiny_dir, engine="onnxruntime", batch_size=4, max_seq_len=64, doc_stride=16
    )
    assert (eager.engine.name, exported.engine.name) == ("torch", "onnxruntime")
    windows = eager.windows(QUESTIONS, CONTEXTS)
    assert len(windows) > len(QUESTIONS)
    config = options.get("length_config")
    for a, b in zip(eager.logits(windows, config, 4)[0], exported.logits(windows, config, 4)[0]):
        assert a.shape == b.shape and abs(a - b).max() < 1e-4
    expected = eager(question=QUESTIONS, context=CONTEXTS, **options)
    got = exported(question=QUESTIONS, context=CONTEXTS, **options)
    flat = lambda answers: [a for group in answers for a in (group if isinstance(group, list) else [group])]  # noqa: E731
    for a, b in zip(flat(got), flat(expected), strict=True):
        assert {**a, "score": 0} == {**b, "score": 0} and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_auto_picks_onnx_runtime_for_int8_on_the_cpu_only():
    assert choose_engine("auto", "int8", "cpu") == "onnxruntime"
    assert choose_engine("auto", "fp32", "cpu") == "torch"
    assert choose_engine("auto", "bf16", "cpu") == "torch"
    assert choose_engine("auto", "bf16", "cuda") == "torch"
    assert choose_engine("onnxruntime", "fp32", "cpu") == "onnxruntime"


@pytest.mark.parametrize(
    "engine, precision, device, message",
    [
        ("tensorrt", "fp32", "cpu", "engine must be one of auto, torch, onnxruntime"),
        ("onnxruntime", "bf16", "cpu", "runs fp32 or int8, not bf16"),
        ("onnxruntime", "fp32", "cuda", "CPU only"),
    ],
)
def test_an_engine_that_cannot_run_is_refused_before_loading(tiny_dir, engine, precision, device, message):
    with pytest.raises(ValueError, match=message):
        QuestionAnswerer.from_pretrained(tiny_dir, engine=engine, precision=precision, device=device)


def test_int8_from_pretrained_runs_on_onnx_runtime_and_keeps_the_fp32_model_for_explain(tiny_dir):
    qa = QuestionAnswerer.from_pretrained(tiny_dir, precision="int8")
    assert (qa.engine.name, qa.engine.precision) == ("onnxruntime", "int8")
    assert next(qa.model.parameters()).dtype == torch.float32
    answer = qa(question=QUESTIONS[0], context=CONTEXTS[0])
    assert CONTEXTS[0][answer["start"] : answer["end"]] == answer["answer"]
    assert qa.explain(QUESTIONS[0], CONTEXTS[0]).kept  # explain traces the eager model


@pytest.mark.slow
def test_the_shipped_model_on_onnx_runtime_gives_the_eager_answers_on_the_dev_sample_under_every_budget():
    """fp32: the same answers (text and offsets) as eager torch, at full length and at every frontier point."""
    eager = QuestionAnswerer.from_pretrained(engine="torch")
    exported = QuestionAnswerer.from_pretrained(engine="onnxruntime")
    questions = load_squad(SAMPLE_V11).questions[:60]
    inputs = [{"question": q.question, "context": q.context} for q in questions]
    for budget in [None, *(p.macs_ratio for p in eager.frontier.points)]:
        expected, got = eager(inputs, budget=budget), exported(inputs, budget=budget)
        for a, b in zip(got, expected, strict=True):
            assert (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"])
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
