"""The training loop: exact resume, checkpoints, metrics, objectives, LengthDrop sub-models, DDP and `dtb train`.

Models are tiny (hidden 32, 2 layers, 64 positions) and the data is the synthetic "who lives where" task in
windows of 64 tokens, so a run is a few dozen optimiser steps. Torch runs on one thread here: the machine has
two cores, and two OpenMP threads fighting another process for one core are many times slower than one.
Whether training learns the task well (F1, distillation gains, LengthDrop accuracy) is tested elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import synthetic_dataset, write_squad_file

from dynamic_tinybert import checkpoint, cli
from dynamic_tinybert.length_config import LengthConfig
from dynamic_tinybert.pipeline import QuestionAnswerer
from dynamic_tinybert.training import (
    IntermediateDistillation,
    LengthDrop,
    PredictionDistillation,
    SpanLoss,
    TokenScoring,
    TrainSettings,
    WindowSettings,
    frozen_with_token_scorers,
    label_windows,
    student_from_teacher_layers,
    train,
)
from dynamic_tinybert.training.data import Features, collate, epoch_batches
from dynamic_tinybert.training.objectives import answer_coverage

from conftest import make_tiny_tokenizer, one_torch_thread, tiny_model

WINDOWS = WindowSettings(max_seq_len=64, doc_stride=16)
TOKENIZER = make_tiny_tokenizer()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def small_model(seed: int = 0, dropout: float = 0.1, **overrides):
    config = dict(num_hidden_layers=2, max_position_embeddings=64, hidden_dropout_prob=dropout)
    config.update(overrides)
    return tiny_model(seed, **config)


@cache
def features(questions: int = 40, facts: int = 4, seed: int = 0):
    return label_windows(TOKENIZER, synthetic_dataset(questions, seed, facts).questions, WINDOWS)


def settings(output_dir: Path, **overrides) -> TrainSettings:
    values = dict(epochs=2, batch_size=8, learning_rate=1e-3, save_every=1000, log_every=1, seed=3)
    values.update(overrides)
    return TrainSettings(output_dir, **values)


class Interrupted(Exception):
    """Stands in for a crash, a pre-emption or Ctrl-C in the middle of training."""


def interrupt_at(step: int):
    def on_step(current: int) -> None:
        if current == step:
            raise Interrupted(step)

    return on_step


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def losses(output_dir: Path) -> list[float]:
    return [entry["loss"] for entry in metrics(output_dir) if "loss" in entry]


def run_resumed(tmp_path: Path, make_model, make_objective, stop: int, **train_settings) -> SimpleNamespace:
    """Train until `stop` interrupts, then resume with a freshly built model and objective.

    Returns the resumed model and objective, the steps the resumed run took, the step of the checkpoint it
    resumed from and that checkpoint's files.
    """
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train(
            make_model(),
            TOKENIZER,
            make_objective(),
            features(),
            settings(out, **train_settings),
            on_step=interrupt_at(stop),
        )
    latest = (out / "checkpoints" / "latest").read_text().strip()
    files = sorted(p.name for p in (out / "checkpoints" / latest).iterdir())
    model, objective, steps = make_model(), make_objective(), []
    train(model, TOKENIZER, objective, features(), settings(out, **train_settings), resume=True, on_step=steps.append)
    return SimpleNamespace(model=model, objective=objective, steps=steps, latest=int(latest.split("-")[1]), files=files)


def run_straight(tmp_path: Path, make_model, make_objective, **train_settings):
    model, objective, steps = make_model(), make_objective(), []
    train(
        model, TOKENIZER, objective, features(), settings(tmp_path / "straight", **train_settings), on_step=steps.append
    )
    return model, objective, steps


# --------------------------------------------------------------------------------------------------
# Resume: an interrupted and resumed run ends exactly where an uninterrupted one does


@pytest.mark.parametrize(
    "stop, save_every, checkpoint_step",
    [
        pytest.param(6, 3, 6, id="right-after-a-checkpoint"),
        pytest.param(8, 3, 6, id="two-steps-after-a-checkpoint"),
        pytest.param(4, 3, 3, id="before-an-epoch-end"),
    ],
)
def test_resumed_span_loss_run_with_dropout_ends_identical(tmp_path, stop, save_every, checkpoint_step):
    # 40 windows / batch 8 = 5 steps per epoch, 10 in all; checkpoints every `save_every` steps and at epoch ends
    make_model = lambda: small_model(dropout=0.1)  # noqa: E731
    resumed = run_resumed(tmp_path, make_model, SpanLoss, stop, save_every=save_every)
    straight, _, all_steps = run_straight(tmp_path, make_model, SpanLoss, save_every=save_every)
    assert resumed.latest == checkpoint_step
    assert resumed.steps == list(range(checkpoint_step + 1, 11)) and all_steps == list(range(1, 11))
    assert max_difference(resumed.model.state_dict(), straight.state_dict()) <= 1e-6
    assert max_difference(straight.state_dict(), make_model().state_dict()) > 1e-3  # it did train


@pytest.mark.parametrize(
    "stop, checkpoint_step",
    [pytest.param(4, 4, id="right-after-a-checkpoint"), pytest.param(5, 4, id="a-step-after-a-checkpoint")],
)
def test_resumed_length_drop_run_with_grad_accum_ends_identical(tmp_path, stop, checkpoint_step):
    # 5 micro-batches per epoch, grad_accum 2: steps of 2, 2 and 1 batches, 6 steps in all
    make_model = lambda: small_model(dropout=0.1)  # noqa: E731
    make_objective = lambda: LengthDrop(SpanLoss(), seed=1)  # noqa: E731
    kw = dict(save_every=2, grad_accum=2)
    resumed = run_resumed(tmp_path, make_model, make_objective, stop, **kw)
    straight, _, all_steps = run_straight(tmp_path, make_model, make_objective, **kw)
    assert resumed.latest == checkpoint_step
    assert resumed.steps == list(range(checkpoint_step + 1, 7)) and all_steps == list(range(1, 7))
    assert max_difference(resumed.model.state_dict(), straight.state_dict()) <= 1e-6


def test_resumed_prediction_distillation_run_ends_identical(tmp_path):
    teacher = small_model(seed=11, dropout=0.0)
    make_model = lambda: small_model(seed=0, dropout=0.1)  # noqa: E731
    make_objective = lambda: PredictionDistillation(teacher)  # noqa: E731
    resumed = run_resumed(tmp_path, make_model, make_objective, stop=7, save_every=4)
    straight, _, _ = run_straight(tmp_path, make_model, make_objective, save_every=4)
    assert resumed.latest == 5 and resumed.steps == list(range(6, 11))  # from the end of the first epoch
    assert max_difference(resumed.model.state_dict(), straight.state_dict()) <= 1e-6


def id_teacher():
    return small_model(seed=21, dropout=0.0, hidden_size=64, intermediate_size=96, num_hidden_layers=4)


def test_resumed_intermediate_distillation_restores_the_fit_layer(tmp_path):
    teacher, student_shape = id_teacher(), small_model(dropout=0.0)
    make_model = lambda: small_model(seed=0, dropout=0.0)  # noqa: E731

    def objectives(first_seed: int):
        """Each objective built draws its fit layer from the next seed: the resumed one starts elsewhere."""
        seeds = iter(range(first_seed, first_seed + 10))

        def make() -> IntermediateDistillation:
            torch.manual_seed(next(seeds))
            return IntermediateDistillation(teacher, student_shape)

        return make

    resumed = run_resumed(tmp_path, make_model, objectives(100), stop=8, save_every=3)
    assert resumed.latest == 6 and "objective.safetensors" in resumed.files
    straight, straight_objective, _ = run_straight(tmp_path, make_model, objectives(100), save_every=3)
    assert max_difference(resumed.model.state_dict(), straight.state_dict()) <= 1e-6
    fit, fit_straight = resumed.objective.trainable.state_dict(), straight_objective.trainable.state_dict()
    assert max_difference(fit, fit_straight) <= 1e-6
    assert max_difference(objectives(101)().trainable.state_dict(), fit_straight) > 1e-3  # restored, not redrawn


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path):
    model, steps = small_model(), []
    train(model, TOKENIZER, SpanLoss(), features(), settings(tmp_path, epochs=1), resume=True, on_step=steps.append)
    assert steps == [1, 2, 3, 4, 5]


def test_resume_of_a_finished_run_trains_no_further(tmp_path):
    out = tmp_path / "run"
    model = small_model()
    train(model, TOKENIZER, SpanLoss(), features(), settings(out, epochs=1))
    again, steps = small_model(seed=5), []
    train(again, TOKENIZER, SpanLoss(), features(), settings(out, epochs=1), resume=True, on_step=steps.append)
    assert steps == []
    assert max_difference(again.state_dict(), model.state_dict()) == 0


def test_kill_while_writing_a_checkpoint_at_an_epoch_end_still_resumes(tmp_path, monkeypatch):
    make_model = lambda: small_model(dropout=0.1)  # noqa: E731
    out = tmp_path / "killed"
    real_replace, renames = os.replace, []

    def killed_on_second_rename(src, dst):
        if Path(src).name == ".step-5.tmp":
            renames.append(src)
            if len(renames) == 1:  # step 5 closes epoch 1: its only save comes after the evaluation
                raise Interrupted("killed while renaming the step-5 checkpoint into place")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_on_second_rename)
    with pytest.raises(Interrupted):
        train(make_model(), TOKENIZER, SpanLoss(), features(), settings(out, save_every=5))
    monkeypatch.setattr(os, "replace", real_replace)
    resumed = make_model()
    train(resumed, TOKENIZER, SpanLoss(), features(), settings(out, save_every=5), resume=True)
    straight, _, _ = run_straight(tmp_path, make_model, SpanLoss, save_every=5)
    assert max_difference(resumed.state_dict(), straight.state_dict()) <= 1e-6


# --------------------------------------------------------------------------------------------------
# Checkpoints, metrics and the final model of one run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """2 epochs x 5 steps, a checkpoint every 2 steps, a held-out set evaluated at each epoch's end."""
    out = tmp_path_factory.mktemp("run")
    model = small_model()
    eval_set = synthetic_dataset(6, seed=99, facts=4)
    result = train(model, TOKENIZER, SpanLoss(), features(), settings(out, save_every=2), eval_set=eval_set)
    return out, model, result


def test_checkpoints_are_written_under_checkpoints_step_n(finished_run):
    out, _, _ = finished_run
    for folder in (out / "checkpoints").glob("step-*"):
        model_files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
        assert sorted(p.name for p in folder.iterdir()) == sorted([*model_files, "trainer.pt"])


def test_a_checkpoint_folder_is_a_model_that_answers_while_the_run_trains(finished_run):
    out, model, _ = finished_run
    qa = QuestionAnswerer.from_pretrained(out / "checkpoints" / "step-10")
    assert max_difference(qa.model.state_dict(), model.state_dict()) == 0
    assert qa(question="where does alice live ?", context="alice lives in paris .")["answer"]


def test_checkpoints_keep_the_two_newest_and_latest_points_at_the_newest(finished_run):
    out, model, _ = finished_run
    directory = out / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["latest", "step-10", "step-8"]
    assert (directory / "latest").read_text().strip() == "step-10"
    assert max_difference(load_file(directory / "step-10" / "model.safetensors"), model.state_dict()) == 0


def test_checkpoints_leave_no_temporary_folders(finished_run):
    out, _, _ = finished_run
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert leftovers == []


def test_trainer_state_loads_with_weights_only(finished_run):
    out, _, _ = finished_run
    state = torch.load(out / "checkpoints" / "step-10" / "trainer.pt", weights_only=True)
    assert state["position"] == {"epoch": 2, "batch": 0, "step": 10}
    assert {"optimizer", "schedule", "rng_cpu"} <= state.keys()
    assert state["schedule"]["last_epoch"] == 10


def test_metrics_jsonl_logs_step_loss_lr_and_throughput(finished_run):
    out, _, _ = finished_run
    entries = [e for e in metrics(out) if "loss" in e]
    assert [e["step"] for e in entries] == list(range(1, 11))
    for e in entries:
        assert math.isfinite(e["loss"]) and e["loss"] > 0
        assert 0 <= e["lr"] <= 1e-3 and e["examples_per_second"] > 0
    assert entries[-1]["lr"] == 0.0  # the linear schedule ends at 0


def test_metrics_jsonl_has_an_eval_entry_per_epoch(finished_run):
    out, _, result = finished_run
    evals = [e for e in metrics(out) if "eval" in e]
    assert [(e["step"], e["epoch"]) for e in evals] == [(5, 1), (10, 2)]
    for e in evals:
        assert 0 <= e["eval"]["f1"] <= 100 and 0 <= e["eval"]["exact_match"] <= 100
    assert result == evals[-1]["eval"]


def test_final_model_is_a_loadable_checkpoint_that_answers(finished_run):
    out, model, _ = finished_run
    directory = out / "model"
    loaded = checkpoint.load_model(directory)
    assert max_difference(loaded.state_dict(), model.state_dict()) == 0
    qa = QuestionAnswerer(loaded, checkpoint.load_tokenizer(directory))
    context = "alice lives in rome . bob lives in oslo ."
    answer = qa(question="where does bob live ?", context=context)
    assert isinstance(answer["answer"], str) and answer["answer"] in context
    assert QuestionAnswerer.from_pretrained(directory)(question="who lives in rome ?", context=context)["answer"]
    assert json.loads((out / "train_settings.json").read_text())["save_every"] == 2


# --------------------------------------------------------------------------------------------------
# Learning, gradient accumulation, the schedule


def test_span_loss_falls_on_the_synthetic_task(tmp_path):
    data = features(64, facts=2)
    model = small_model()
    train(
        model,
        TOKENIZER,
        SpanLoss(),
        data,
        settings(tmp_path, epochs=50, batch_size=16, learning_rate=3e-3, log_every=10),
    )
    logged = losses(tmp_path)
    assert len(logged) == 20  # 4 steps per epoch x 50 epochs, logged every 10
    assert np.mean(logged[-3:]) < 0.5 * logged[0], logged


def test_bf16_autocast_on_cpu_learns_and_keeps_fp32_weights(tmp_path):
    data = features(64, facts=2)
    model = small_model()
    run = settings(tmp_path, epochs=50, batch_size=16, learning_rate=3e-3, log_every=10, precision="bf16")
    assert run.autocast(torch.device("cpu")).fast_dtype == torch.bfloat16
    train(model, TOKENIZER, SpanLoss(), data, run)
    logged = losses(tmp_path)
    assert np.mean(logged[-3:]) < 0.5 * logged[0], logged
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_precision_auto_is_fp32_on_cpu_and_unknown_precisions_are_refused(tmp_path):
    assert not settings(tmp_path).uses_bf16("cpu") and settings(tmp_path).uses_bf16("cuda")
    assert not isinstance(settings(tmp_path).autocast(torch.device("cpu")), torch.autocast)
    assert not settings(tmp_path, precision="fp32").uses_bf16("cuda")
    with pytest.raises(ValueError, match="precision must be one of"):
        settings(tmp_path, precision="fp8")


def test_grad_accum_takes_as_many_optimiser_steps_as_a_doubled_batch(tmp_path):
    data = features(42)  # 11 micro-batches of 4 per epoch (the last one short), or 6 batches of 8
    accumulated, doubled = [], []
    train(
        small_model(),
        TOKENIZER,
        SpanLoss(),
        data,
        settings(tmp_path / "a", batch_size=4, grad_accum=2),
        on_step=accumulated.append,
    )
    train(small_model(), TOKENIZER, SpanLoss(), data, settings(tmp_path / "b", batch_size=8), on_step=doubled.append)
    assert accumulated == doubled == list(range(1, 13))
    for out in (tmp_path / "a", tmp_path / "b"):
        lrs = [e["lr"] for e in metrics(out)]
        assert len(lrs) == 12 and lrs[-1] == 0.0 and min(lrs[:-1]) > 0


def test_learning_rate_warms_up_then_decays_linearly_to_zero(tmp_path):
    train(small_model(), TOKENIZER, SpanLoss(), features(), settings(tmp_path, epochs=4, warmup_ratio=0.25))
    lrs = [e["lr"] for e in metrics(tmp_path)]  # 20 steps, 5 of warmup
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    assert lrs[-1] == 0.0
    np.testing.assert_allclose(np.diff(lrs[peak:]), np.diff(lrs[peak:])[0], rtol=1e-6)


def test_max_steps_stops_mid_epoch_with_the_schedule_ending_there(tmp_path):
    steps = []
    eval_set = synthetic_dataset(6, seed=99, facts=4)
    data = features()  # 5 steps per epoch
    run = settings(tmp_path, epochs=4, max_steps=7, save_every=3)
    train(small_model(), TOKENIZER, SpanLoss(), data, run, eval_set=eval_set, on_step=steps.append)
    assert steps == list(range(1, 8))
    lrs = [e["lr"] for e in metrics(tmp_path) if "lr" in e]
    assert len(lrs) == 7 and lrs[-1] == 0.0
    evals = [e for e in metrics(tmp_path) if "eval" in e]
    assert [e["epoch"] for e in evals] == [1, 1.4]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-7"
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_resuming_a_run_that_reached_max_steps_trains_no_further(tmp_path):
    data, run = features(), settings(tmp_path, epochs=4, max_steps=7)
    train(small_model(), TOKENIZER, SpanLoss(), data, run)
    again = []
    train(small_model(), TOKENIZER, SpanLoss(), data, run, resume=True, on_step=again.append)
    assert again == []


def test_resuming_a_max_steps_run_interrupted_before_the_end_ends_identical(tmp_path):
    kw = dict(epochs=4, max_steps=8, save_every=3)  # 5 steps per epoch: checkpoints at 3, 5 and 6
    resumed = run_resumed(tmp_path, small_model, SpanLoss, 7, **kw)
    straight, _, all_steps = run_straight(tmp_path, small_model, SpanLoss, **kw)
    assert resumed.latest == 6 and resumed.steps == [7, 8] and all_steps == list(range(1, 9))
    assert max_difference(resumed.model.state_dict(), straight.state_dict()) <= 1e-6


def test_training_on_no_windows_is_an_error(tmp_path):
    empty = Features(
        np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32)
    )
    with pytest.raises(ValueError, match="no batch"):
        train(small_model(), TOKENIZER, SpanLoss(), empty, settings(tmp_path))


# --------------------------------------------------------------------------------------------------
# Intermediate-layer distillation and students


def first_batch(size: int = 8):
    data = features()
    return collate(data, epoch_batches(data.lengths, size, seed=0, epoch=0)[0])


def test_intermediate_distillation_has_a_fit_layer_from_student_to_teacher_width():
    objective = IntermediateDistillation(id_teacher(), small_model())
    fit = objective.trainable
    assert isinstance(fit, torch.nn.Linear) and (fit.in_features, fit.out_features) == (32, 64)
    assert all(p.requires_grad for p in fit.parameters())
    assert objective.layer_map == [0, 2, 4]  # embeddings, then student layer i <- teacher layer 2i


def test_intermediate_distillation_has_no_fit_layer_for_equal_widths():
    assert IntermediateDistillation(small_model(seed=1), small_model()).trainable is None


def test_intermediate_distillation_fit_layer_receives_gradients():
    teacher, student = id_teacher(), small_model(dropout=0.0)
    objective = IntermediateDistillation(teacher, student)
    [run_pass] = objective.passes(student, first_batch(), step=0)
    run_pass().loss.backward()
    assert objective.trainable.weight.grad is not None and objective.trainable.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[1].output.dense.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("attention", ["scores", "probs"])
def test_intermediate_distillation_losses_are_finite(attention):
    student = small_model(dropout=0.0)
    objective = IntermediateDistillation(id_teacher(), student, attention=attention)
    [run_pass] = objective.passes(student, first_batch(), step=0)
    loss = run_pass().loss
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0


def test_intermediate_distillation_rejects_unknown_attention():
    with pytest.raises(ValueError, match="attention"):
        IntermediateDistillation(id_teacher(), small_model(), attention="logits")


def test_intermediate_distillation_fit_layer_trains_and_is_checkpointed(tmp_path):
    teacher, student = id_teacher(), small_model(dropout=0.0)
    objective = IntermediateDistillation(teacher, student)
    before = {k: v.clone() for k, v in objective.trainable.state_dict().items()}
    train(student, TOKENIZER, objective, features(), settings(tmp_path, epochs=1))
    after = objective.trainable.state_dict()
    assert max_difference(before, after) > 1e-4
    saved = load_file(tmp_path / "checkpoints" / "step-5" / "objective.safetensors")
    assert max_difference(saved, after) == 0


def test_intermediate_distillation_loss_falls(tmp_path):
    teacher, student = id_teacher(), small_model(dropout=0.0)
    train(
        student,
        TOKENIZER,
        IntermediateDistillation(teacher, student),
        features(),
        settings(tmp_path, epochs=8, learning_rate=3e-3, log_every=5),
    )
    logged = losses(tmp_path)
    assert np.mean(logged[-2:]) < 0.7 * logged[0], logged


def test_student_from_teacher_layers_copies_the_chosen_layers_exactly():
    teacher = small_model(seed=4, num_hidden_layers=4)
    student = student_from_teacher_layers(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == teacher.config.hidden_size
    theirs = teacher.state_dict()
    for name, value in student.state_dict().items():
        if name.startswith("bert.encoder.layer."):
            mine = int(name.split(".")[3])
            name = name.replace(f"layer.{mine}.", f"layer.{[1, 3][mine]}.", 1)
        assert torch.equal(value, theirs[name]), name
    with torch.no_grad():
        student.qa_outputs.weight.add_(1.0)
    assert not torch.equal(student.qa_outputs.weight, teacher.qa_outputs.weight)  # a copy, not shared


@pytest.mark.parametrize("layers", [[], [2, 1], [1, 1], [-1, 2], [0, 4], [4]])
def test_student_from_teacher_layers_rejects_bad_layer_lists(layers):
    with pytest.raises(ValueError, match="student layers"):
        student_from_teacher_layers(small_model(num_hidden_layers=4), layers)


# --------------------------------------------------------------------------------------------------
# LengthDrop's sandwich sub-models


def test_length_drop_smallest_sub_model_keeps_powers_of_one_minus_p():
    smallest, skipped = LengthDrop(SpanLoss(), ratio_bound=0.2).sub_models(6, step=0)[0]
    assert isinstance(smallest, LengthConfig) and smallest.relative and skipped == frozenset()
    np.testing.assert_allclose(smallest.values, [0.8 ** (i + 1) for i in range(6)], rtol=1e-12)


def test_length_drop_random_sub_models_shrink_by_at_most_p_per_layer():
    objective = LengthDrop(SpanLoss(), ratio_bound=0.3, num_sandwich=3)
    for step in range(50):
        chosen = objective.sub_models(5, step)
        assert len(chosen) == 4
        for config, _ in chosen[1:]:
            previous = 1.0
            for ratio in config.values:
                assert 0.7 * previous - 1e-12 <= ratio <= previous
                previous = ratio


def test_length_drop_protecting_the_question_makes_every_sub_model_a_plus_q_config():
    assert not any(c.protect_question for c, _ in LengthDrop(SpanLoss()).sub_models(6, step=0))
    chosen = LengthDrop(SpanLoss(), protect_question=True).sub_models(6, step=0)
    assert len(chosen) == 3 and all(c.protect_question and str(c).endswith("+q") for c, _ in chosen)


def test_length_drop_sub_models_keep_the_question_when_protected():
    model = small_model(dropout=0.0)
    batch = first_batch()
    question_tokens = (batch.token_type_ids == 0) & batch.attention_mask.bool()

    def question_tokens_dropped(protect_question: bool) -> int:
        """Question tokens missing from the last layer of the smallest sub-model (keeps 50%, then 25%)."""
        objective = LengthDrop(SpanLoss(), ratio_bound=0.5, protect_question=protect_question)
        config, _ = objective.sub_models(2, step=0)[0]
        ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
        trace = model(ids, mask, types, length_config=config, trace=True).trace
        dropped = 0
        for b in range(ids.size(0)):
            kept = set(trace.positions[1][b][trace.masks[1][b]].tolist())  # what the last layer saw
            dropped += len(set(torch.nonzero(question_tokens[b]).flatten().tolist()) - kept)
        return dropped

    assert question_tokens_dropped(False) > 0
    assert question_tokens_dropped(True) == 0


def test_length_drop_sub_models_depend_only_on_the_step():
    a, b = LengthDrop(SpanLoss(), seed=5), LengthDrop(SpanLoss(), seed=5)
    torch.manual_seed(0)
    first = a.sub_models(6, step=17)
    torch.manual_seed(1)  # the global RNG does not matter: a resumed run draws the same
    assert b.sub_models(6, step=17) == first
    assert a.sub_models(6, step=18) != first
    assert LengthDrop(SpanLoss(), seed=6).sub_models(6, step=17) != first


def test_length_drop_skips_layers_at_about_the_layer_drop_rate():
    objective = LengthDrop(SpanLoss(), layer_drop=0.2, num_sandwich=2)
    skipped = [len(s) for step in range(200) for _, s in objective.sub_models(6, step)[1:]]
    assert 0.1 < sum(skipped) / (len(skipped) * 6) < 0.3
    assert all(len(s) == 0 for step in range(200) for _, s in objective.sub_models(6, step)[:1])


def test_length_drop_with_no_layer_drop_skips_nothing():
    objective = LengthDrop(SpanLoss(), layer_drop=0.0)
    assert all(skipped == frozenset() for step in range(50) for _, skipped in objective.sub_models(6, step))


def test_length_drop_runs_the_full_model_and_every_sub_model():
    model = small_model(dropout=0.0)
    passes = LengthDrop(SpanLoss(), num_sandwich=2).passes(model, first_batch(), step=3)
    assert len(passes) == 4
    results = [p() for p in passes]  # the full pass first: the sub-models learn from its predictions
    assert all(math.isfinite(r.loss.item()) for r in results)


@pytest.mark.parametrize("fresh_only", [False, True])
def test_length_drop_sub_models_match_the_full_model_everywhere_or_only_where_fresh(fresh_only):
    """A sub-model's loss is the KL from the full model's distribution: over every position (LAT), or with
    fresh_only renormalised over the positions that left its last layer, restored ones taking no part."""
    model = small_model(dropout=0.0)
    batch = first_batch()
    objective = LengthDrop(SpanLoss(), ratio_bound=0.5, num_sandwich=0, fresh_only=fresh_only)
    [full_pass, smallest_pass] = objective.passes(model, batch, step=0)
    full, sub = full_pass(), smallest_pass()
    real = batch.attention_mask.bool()
    assert 0 < (sub.logits.fresh & real).sum() < real.sum()  # it dropped tokens
    matched = sub.logits.fresh & real if fresh_only else real
    expected = 0.0
    for teacher, student in (
        (full.logits.start_logits, sub.logits.start_logits),
        (full.logits.end_logits, sub.logits.end_logits),
    ):
        p = teacher.detach().masked_fill(~matched, -math.inf).log_softmax(dim=-1)
        q = student.masked_fill(~matched, -math.inf).log_softmax(dim=-1)
        expected += (p.exp() * (p - q)).nan_to_num().sum(dim=1).mean() / 2
    torch.testing.assert_close(sub.loss, expected / 2)  # two passes, each weighted 1/2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ratio_bound=0.0),
        dict(ratio_bound=1.0),
        dict(ratio_bound=-0.2),
        dict(num_sandwich=-1),
        dict(layer_drop=1.0),
        dict(layer_drop=-0.1),
    ],
)
def test_length_drop_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        LengthDrop(SpanLoss(), **kwargs)


# Learned token selection


def test_answer_coverage_weighs_the_predicted_span_and_stays_in_the_context():
    start, end = torch.zeros(1, 8), torch.zeros(1, 8)
    start[0, 4], end[0, 6] = 10.0, 10.0
    mask = torch.ones(1, 8, dtype=torch.bool)
    context = torch.arange(8)[None] >= 3

    coverage = answer_coverage(start, end, mask, context)[0]
    assert coverage[:3].sum() == 0
    assert coverage.sum().item() == pytest.approx(1.0)
    assert min(coverage[4], coverage[5], coverage[6]) > 5 * max(coverage[3], coverage[7])  # 5: inside only


def test_token_scoring_trains_the_scorers_and_leaves_the_model_bit_for_bit(tmp_path):
    model = frozen_with_token_scorers(small_model())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train(model, TOKENIZER, TokenScoring(), features(), settings(tmp_path, epochs=4))

    after = model.state_dict()
    scorers = [name for name in after if "token_scorer" in name]
    assert len(scorers) == 4  # weight and bias of each of the 2 layers
    assert all(not torch.equal(after[name], before[name]) for name in scorers)
    assert all(torch.equal(after[name], before[name]) for name in after if name not in scorers)
    logged = losses(tmp_path)
    assert np.mean(logged[-4:]) < np.mean(logged[:4])


def test_token_scoring_refuses_a_model_that_ranks_by_attention(tmp_path):
    with pytest.raises(ValueError, match="token_selection 'learned'"):
        train(small_model(), TOKENIZER, TokenScoring(), features(), settings(tmp_path, epochs=1))


# --------------------------------------------------------------------------------------------------
# The command line, in-process and under torchrun


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A tiny checkpoint (2 layers, 64 positions), a 3-layer teacher and a synthetic SQuAD file."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = checkpoint.save_checkpoint(small_model(), TOKENIZER, root / "tiny")
    teacher_dir = checkpoint.save_checkpoint(small_model(seed=8, num_hidden_layers=3), TOKENIZER, root / "teacher")
    data = write_squad_file(synthetic_dataset(40, seed=0), root / "train.json")
    eval_data = write_squad_file(synthetic_dataset(6, seed=1, prefix="e"), root / "eval.json")
    return root, model_dir, teacher_dir, data, eval_data


WINDOW_ARGS = ["--max-seq-len", "64", "--doc-stride", "16", "--batch-size", "8", "--log-every", "1"]


@pytest.fixture
def dtb(capsys, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it

    def run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_train_finetune_prints_the_model_path(dtb, run_files, tmp_path):
    _, model_dir, _, data, _ = run_files
    out = tmp_path / "run"
    args = ["train", "finetune", "--model", model_dir, "--data", data, "--output", out, "--epochs", "1"]
    code, stdout, err = dtb(*args, *WINDOW_ARGS, "--holdout-articles", "0", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["model"] == str(out / "model")
    assert checkpoint.load_model(out / "model").config.num_hidden_layers == 2
    assert [e["step"] for e in metrics(out)] == [1, 2, 3, 4, 5]
    assert list((tmp_path / "cache").glob("features-*.npz"))


def test_cli_train_resume_continues_from_the_last_checkpoint(dtb, run_files, tmp_path):
    _, model_dir, _, data, eval_data = run_files
    out = tmp_path / "run"
    common = ["train", "finetune", "--model", model_dir, "--data", data, "--output", out, *WINDOW_ARGS]
    common += ["--eval-data", eval_data, "--cache-dir", tmp_path / "cache"]
    code, _, err = dtb(*common, "--epochs", "1")
    assert code == 0, err
    code, stdout, err = dtb(*common, "--epochs", "2", "--resume")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["held_out"]["f1"] >= 0
    entries = metrics(out)
    assert [e["step"] for e in entries if "loss" in e] == list(range(1, 11))  # 6..10 continue 1..5
    assert [e["epoch"] for e in entries if "eval" in e] == [1, 2]


def test_cli_train_distill_pd_from_teacher_layers(dtb, run_files, tmp_path):
    _, _, teacher_dir, data, _ = run_files
    out = tmp_path / "student"
    args = ["train", "distill", "--stage", "pd", "--teacher", teacher_dir, "--student-layers", "1,2"]
    args += ["--data", data, "--output", out, "--epochs", "1", "--holdout-articles", "0"]
    code, stdout, err = dtb(*args, *WINDOW_ARGS, "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["model"] == str(out / "model")
    student = checkpoint.load_model(out / "model")
    assert student.config.num_hidden_layers == 2
    assert len(metrics(out)) == 5


def test_cli_train_distill_id_with_length_drop_is_a_usage_error(dtb, run_files, tmp_path):
    _, _, teacher_dir, data, _ = run_files
    args = ["train", "distill", "--stage", "id", "--teacher", teacher_dir, "--student-layers", "1,2"]
    code, stdout, err = dtb(*args, "--data", data, "--output", tmp_path / "o", "--length-drop")
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "length-drop" in err
    assert not (tmp_path / "o").exists()


def test_cli_train_with_a_missing_data_file_is_a_one_line_error(dtb, run_files, tmp_path):
    _, model_dir, _, _, _ = run_files
    missing = tmp_path / "nope.json"
    args = ["train", "finetune", "--model", model_dir, "--data", missing, "--output", tmp_path / "o"]
    code, stdout, err = dtb(*args, "--cache-dir", tmp_path / "cache")
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and str(missing) in err


def long_context_file(path: Path) -> Path:
    context = " ".join(["alice lives in rome ."] * 30)  # ~150 tokens
    qa = {"id": "q", "question": "where does alice live ?", "answers": [{"text": "rome", "answer_start": 15}]}
    data = [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_cli_train_windows_longer_than_the_model_positions_is_a_one_line_error(dtb, run_files, tmp_path):
    _, model_dir, _, _, _ = run_files  # 64 positions
    data = long_context_file(tmp_path / "long.json")
    args = ["train", "finetune", "--model", model_dir, "--data", data, "--output", tmp_path / "o", "--epochs", "1"]
    args += ["--max-seq-len", "128", "--doc-stride", "32", "--holdout-articles", "0", "--cache-dir", tmp_path / "c"]
    code, _, err = dtb(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_cli_train_epochs_zero_is_a_usage_error(dtb, run_files, tmp_path):
    _, model_dir, _, data, _ = run_files
    args = ["train", "finetune", "--model", model_dir, "--data", data, "--output", tmp_path / "o", "--epochs", "0"]
    code, _, err = dtb(*args, *WINDOW_ARGS, "--holdout-articles", "0", "--cache-dir", tmp_path / "cache")
    assert code == 2 and len(err.strip().splitlines()) == 1


def subprocess_env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(Path(__file__).parent))
    return env


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "dynamic_tinybert.cli", "train", "finetune", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "--data" in done.stdout and "--resume" in done.stdout


def json_objects(text: str) -> list[dict]:
    """The JSON objects in `text`, however they are separated."""
    decoder, found, i = json.JSONDecoder(), [], text.find("{")
    while i >= 0:
        obj, end = decoder.raw_decode(text, i)
        found.append(obj)
        i = text.find("{", end)
    return found


@pytest.mark.slow
def test_torchrun_two_processes_train_with_gloo(run_files, tmp_path):
    _, model_dir, _, data, _ = run_files
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    command += ["-m", "dynamic_tinybert.cli", "train", "finetune", "--model", str(model_dir), "--data", str(data)]
    command += ["--output", str(out), "--epochs", "2", "--holdout-articles", "0", "--cache-dir", str(tmp_path / "c")]
    command += WINDOW_ARGS
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=subprocess_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    checkpoint.load_model(out / "model")
    # 40 windows = 5 batches of 8; two processes take 2 each per epoch (the odd one is dropped): 4 steps
    windows = label_windows(TOKENIZER, synthetic_dataset(40, seed=0).questions, WINDOWS)
    per_rank = len(epoch_batches(windows.lengths, 8, seed=42, epoch=0, rank=0, world_size=2))
    assert per_rank == 2
    entries = [e for e in metrics(out) if "loss" in e]
    assert [e["step"] for e in entries] == list(range(1, 2 * per_rank + 1))  # one process would take 10
    assert entries[-1]["epoch"] == 2.0 and entries[-1]["lr"] == 0.0
    printed = json_objects(done.stdout)  # every rank prints its result; unbuffered, the lines may run together
    assert 1 <= len(printed) <= 2 and all(p["model"] == str(out / "model") for p in printed)


@pytest.mark.slow
def test_the_length_drop_bench_trains_each_variant_from_one_start_and_scores_every_config(tiny_checkpoint, tmp_path):
    train = write_squad_file(synthetic_dataset(40, seed=1), tmp_path / "train.json")
    dev = write_squad_file(synthetic_dataset(8, seed=2), tmp_path / "dev.json")
    output = tmp_path / "length-drop"
    command = [sys.executable, "experiments/length_drop.py", "--model", str(tiny_checkpoint), "--data", str(train)]
    command += ["--eval-data", str(dev), "--train-questions", "40", "--eval-questions", "8", "--steps", "2"]
    command += ["--batch-size", "4", "--variants", "start,span,lengthdrop", "--output", str(output)]
    run = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(output.with_suffix(".json").read_text())
    variants = result["variants"]
    assert list(variants) == ["start", "span", "lengthdrop"]
    assert "train_seconds" not in variants["start"]  # the untrained reference
    assert all(variants[v]["train_seconds"] > 0 and variants[v]["loss"] for v in ("span", "lengthdrop"))
    for entry in variants.values():
        assert list(entry["scores"]) == list(result["configs"])
        assert entry["scores"]["full"]["macs_ratio"] == 1.0
        assert all(0 < s["macs_ratio"] < 1 for name, s in entry["scores"].items() if name != "full")
    assert "| lengthdrop |" in output.with_suffix(".md").read_text()


def test_the_length_drop_bench_names_an_unknown_variant(tmp_path):
    command = [sys.executable, "experiments/length_drop.py", "--data", "x", "--eval-data", "y"]
    command += ["--output", str(tmp_path)]
    run = subprocess.run(
        [*command, "--variants", "span,dropout"], cwd=Path(__file__).parents[1], capture_output=True, text=True
    )
    assert run.returncode == 2 and "unknown dropout" in run.stderr


def test_cli_train_scorers_adds_learned_selection_to_an_unchanged_model(dtb, run_files, tmp_path):
    _, model_dir, _, data, _ = run_files
    out = tmp_path / "scored"
    args = ["train", "scorers", "--model", model_dir, "--data", data, "--output", out, "--epochs", "1"]
    code, stdout, err = dtb(*args, *WINDOW_ARGS, "--holdout-articles", "0", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    scored, original = checkpoint.load_model(out / "model"), checkpoint.load_model(model_dir)
    assert scored.config.token_selection == "learned"
    assert all(torch.equal(scored.state_dict()[name], t) for name, t in original.state_dict().items())
    qa = QuestionAnswerer(scored, TOKENIZER, length_config=LengthConfig.ratios([0.8, 0.5]))
    assert qa(question="where does alice live ?", context="alice lives in rome .")["answer"]


def test_cli_train_scorers_with_length_drop_is_a_usage_error(dtb, run_files, tmp_path):
    _, model_dir, _, data, _ = run_files
    args = ["train", "scorers", "--model", model_dir, "--data", data, "--output", tmp_path / "o", "--length-drop"]
    code, stdout, err = dtb(*args)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "frozen" in err


@pytest.mark.parametrize("flag", ["--protect-question", "--length-drop-fresh-only"])
def test_cli_sub_model_options_without_length_drop_are_a_usage_error(dtb, run_files, tmp_path, flag):
    _, model_dir, _, data, _ = run_files
    args = ["train", "finetune", "--model", model_dir, "--data", data, "--output", tmp_path / "o", flag]
    code, stdout, err = dtb(*args)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and flag in err and "--length-drop" in err


def test_the_token_selection_bench_scores_attention_and_learned_selection_on_the_same_weights(tmp_path):
    model_dir = checkpoint.save_checkpoint(tiny_model(token_selection="learned"), TOKENIZER, tmp_path / "learned")
    dev = write_squad_file(synthetic_dataset(8, seed=2), tmp_path / "dev.json")
    output = tmp_path / "token-selection"
    command = [sys.executable, "experiments/token_selection.py", "--model", str(model_dir)]
    command += ["--frontier-from", str(model_dir), "--eval-data", str(dev), "--eval-questions", "8"]
    command += ["--config", "0.9,0.5,0.3+q", "--output", str(output)]
    run = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(output.with_suffix(".json").read_text())
    assert list(result["attention"]) == ["full", "slope 0.9-0.4", "smallest (0.8^i)"]
    assert list(result["learned"]) == [*result["attention"], "slope 0.9-0.4 +q", "smallest (0.8^i) +q", "0.9,0.5,0.3+q"]
    assert result["attention"]["full"] == result["learned"]["full"]  # identical at full length
    assert "| 0.9,0.5,0.3+q |" in output.with_suffix(".md").read_text()


def test_the_answer_survival_bench_splits_changed_answers_into_dropped_and_kept(tmp_path):
    model_dir = checkpoint.save_checkpoint(tiny_model(token_selection="learned"), TOKENIZER, tmp_path / "learned")
    data = write_squad_file(synthetic_dataset(8, seed=2), tmp_path / "dev.json")
    output = tmp_path / "survival"
    command = [sys.executable, "experiments/answer_survival.py", "--model", str(model_dir), "--data", str(data)]
    command += ["--config", "1.0,1.0,1.0", "--config", "0.5,0.3,0.1", "--output", str(output)]
    run = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    full, dropping = json.loads(output.with_suffix(".json").read_text())["rows"]
    assert full["answer_survives"] == 1.0 and full["changed"] == 0  # full length: the same answers
    assert dropping["survived"] + dropping["dropped"] == dropping["windows"] == full["windows"]
    assert dropping["dropped"] > 0 and dropping["dropped_changed"] <= dropping["dropped"]
    assert dropping["changed"] == dropping["dropped_changed"] + dropping["survived_changed"]
    assert "| 0.5,0.3,0.1 |" in output.with_suffix(".md").read_text()


def test_the_token_selection_bench_refuses_a_model_that_ranks_by_attention(tiny_checkpoint, tmp_path):
    command = [sys.executable, "experiments/token_selection.py", "--model", str(tiny_checkpoint), "--eval-data", "x"]
    run = subprocess.run(
        [*command, "--output", str(tmp_path / "o")], cwd=Path(__file__).parents[1], capture_output=True, text=True
    )
    assert run.returncode == 2 and "not 'learned'" in run.stderr
