"""Prune Once for All: the cubic schedule, 1x4 and unstructured masks, pruning and locked sparsity in the training
loop (resumable, with distillation and LengthDrop), `dtb info`'s sparsity report, and sparse checkpoints that load
and answer exactly like dense ones.

Models are tiny (hidden 32) except the BERT-base-shaped checkpoint (hidden 768, 2 layers, tiny vocabulary).
Torch runs on one thread: the machine has two cores and shares them.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset, write_squad_file

from dynamic_tinybert import BertForQuestionAnswering, LengthConfig, QuestionAnswerer, checkpoint, cli
from dynamic_tinybert.evaluate import evaluate
from dynamic_tinybert.frontier import Frontier, Point
from dynamic_tinybert.training import (
    LengthDrop,
    PredictionDistillation,
    SpanLoss,
    TrainSettings,
    WindowSettings,
    label_windows,
    train,
)
from dynamic_tinybert.training.pruning import (
    BLOCK_SHARE,
    Pruner,
    PruningSchedule,
    encoder_linears,
    magnitude_mask,
    sparsity_report,
)

from conftest import make_tiny_tokenizer, one_torch_thread, tiny_config, tiny_model

TOKENIZER = make_tiny_tokenizer()
WINDOWS = WindowSettings(max_seq_len=64, doc_stride=16)
FEATURES = label_windows(TOKENIZER, synthetic_dataset(40, seed=0, facts=4).questions, WINDOWS)  # 5 batches of 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def small_model(seed: int = 0, **overrides):
    """hidden 32, intermediate 48: every encoder weight has a whole number of 1x4 blocks at 75% sparsity."""
    return tiny_model(seed, **{"num_hidden_layers": 2, "max_position_embeddings": 64, **overrides})


def settings(output_dir: Path, **overrides) -> TrainSettings:
    values = dict(epochs=2, batch_size=8, learning_rate=1e-3, save_every=1000, log_every=1, seed=3)
    return TrainSettings(output_dir, **{**values, **overrides})


def zero_fractions(model) -> dict[str, float]:
    return {name: (linear.weight == 0).float().mean().item() for name, linear in encoder_linears(model).items()}


def prune_once(model, sparsity: float, pattern: str = "1x4"):
    """Magnitude-prune every encoder weight to `sparsity` in one go, as a released sparse checkpoint is."""
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            linear.weight.mul_(magnitude_mask(linear.weight, sparsity, pattern))
    return model


def assert_1x4(weight: torch.Tensor) -> None:
    out_features, in_features = weight.shape
    kept = weight.view(out_features // 4, 4, in_features) != 0
    assert (kept == kept[:, :1]).all()


# --------------------------------------------------------------------------------------------------
# The cubic schedule


def test_cubic_schedule_is_zero_until_it_starts_and_exactly_the_target_from_its_end():
    schedule = PruningSchedule(0.8, start=10, end=110, every=10)
    assert [schedule.sparsity(t) for t in (0, 5, 10)] == [0.0, 0.0, 0.0]
    assert schedule.sparsity(110) == 0.8 and schedule.sparsity(1000) == 0.8


def test_cubic_schedule_rises_monotonically_and_fastest_at_first():
    schedule = PruningSchedule(0.8, start=10, end=110)
    values = [schedule.sparsity(t) for t in range(0, 130)]
    assert values == sorted(values)
    assert schedule.sparsity(60) == pytest.approx(0.8 * (1 - 0.5**3))  # s_f + (0 - s_f)(1 - 1/2)^3
    assert schedule.sparsity(20) - schedule.sparsity(10) > schedule.sparsity(110) - schedule.sparsity(100)


def test_masks_update_every_k_steps_from_start_and_at_the_end():
    schedule = PruningSchedule(0.5, start=3, end=20, every=5)
    assert [t for t in range(40) if schedule.updates_at(t)] == [3, 8, 13, 18, 20]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target=0.0, end=10), "target sparsity"),
        (dict(target=1.0, end=10), "target sparsity"),
        (dict(target=0.8, end=10, pattern="2x2"), "pattern"),
        (dict(target=0.8, start=10, end=10), "end after it starts"),
        (dict(target=0.8, start=-1, end=10), "start step"),
        (dict(target=0.8, end=10, every=0), "interval"),
    ],
)
def test_bad_schedules_are_refused_with_a_message_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningSchedule(**kwargs)


# --------------------------------------------------------------------------------------------------
# Masks


def test_1x4_masks_keep_or_prune_whole_blocks_of_4_consecutive_output_rows():
    weight = torch.randn(48, 32)
    mask = magnitude_mask(weight, 0.8, "1x4")
    assert_1x4(weight * mask)
    blocks = 48 // 4 * 32
    assert (~mask).sum().item() == 4 * round(0.8 * blocks)


def test_1x4_masks_prune_the_blocks_of_least_mean_magnitude():
    weight = torch.ones(8, 4)
    weight[4:8, 2] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # mean 0.75: the weakest block despite its 3.0
    weight[0:4, 1] = torch.tensor([0.9, 0.9, 0.9, 0.9])  # mean 0.9: the next weakest
    mask = magnitude_mask(weight, 2 / 8, "1x4")
    assert (~mask).nonzero().tolist() == [[r, 1] for r in range(4)] + [[r, 2] for r in range(4, 8)]


def test_unstructured_masks_prune_the_target_fraction_of_single_weights():
    weight = torch.randn(30, 32)  # 30 rows: no whole 1x4 blocks, no matter
    mask = magnitude_mask(weight, 0.8, "unstructured")
    assert (~mask).sum().item() == round(0.8 * 30 * 32)
    assert weight.abs()[~mask].max() <= weight.abs()[mask].min()


def test_pruning_reaches_the_target_in_every_encoder_weight_and_never_unprunes_one():
    model = small_model()
    schedule = PruningSchedule(0.75, start=0, end=10, every=2)
    pruner = Pruner(model, schedule)
    generator = torch.Generator().manual_seed(0)
    pruned_before = {name: torch.zeros_like(mask) for name, mask in pruner.masks.items()}
    for step in range(1, 13):
        with torch.no_grad():  # an "optimiser step" that revives pruned weights with large values
            for linear in encoder_linears(model).values():
                linear.weight.add_(torch.randn(linear.weight.shape, generator=generator))
        pruner.step(step)
        for name, linear in encoder_linears(model).items():
            pruned = linear.weight == 0
            assert (pruned | ~pruned_before[name]).all(), f"step {step}: {name} un-pruned a weight"
            pruned_before[name] = pruned
            assert_1x4(linear.weight)
    assert set(zero_fractions(model).values()) == {0.75}
    assert pruner.sparsity() == 0.75


@pytest.mark.parametrize("selection", ["attention", "learned"])
def test_pruning_leaves_embeddings_span_head_biases_layer_norms_and_token_scorers_alone(selection):
    model = small_model(token_selection=selection)
    before = copy.deepcopy(model.state_dict())
    pruner = Pruner(model, PruningSchedule(0.75, end=1, every=1))
    pruner.step(1)
    encoder_weights = {f"{name}.weight" for name in encoder_linears(model)}
    assert len(encoder_weights) == 2 * 6  # query, key, value, attention output, intermediate, output per layer
    for name, tensor in model.state_dict().items():
        if name not in encoder_weights:
            assert torch.equal(tensor, before[name]), name


def test_1x4_pruning_of_output_sizes_not_divisible_by_4_is_refused():
    model = small_model(hidden_size=30, num_attention_heads=3)
    with pytest.raises(ValueError, match="divisible by 4.*has 30"):
        Pruner(model, PruningSchedule(0.8, end=10))
    Pruner(model, PruningSchedule(0.8, end=10, pattern="unstructured"))  # single weights: any shape


# --------------------------------------------------------------------------------------------------
# In the training loop


def test_training_prunes_on_schedule_logs_sparsity_and_records_how(tmp_path):
    model = small_model()
    schedule = PruningSchedule(0.75, start=1, end=7, every=2)
    train(model, TOKENIZER, SpanLoss(), FEATURES, settings(tmp_path, pruning=schedule))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    sparsity = [entry["sparsity"] for entry in logged if "loss" in entry]
    assert len(sparsity) == 10 and sparsity == sorted(sparsity)
    assert sparsity[0] == 0.0 and sparsity[6:] == [0.75] * 4  # reached at step 7, then held
    saved = checkpoint.load_model(tmp_path / "model")
    assert sparsity_report(saved)["pattern"] == "1x4" and set(zero_fractions(saved).values()) == {0.75}
    recorded = json.loads((tmp_path / "train_settings.json").read_text())
    assert recorded["pruning"] == {"target": 0.75, "end": 7, "pattern": "1x4", "start": 1, "every": 2}


def test_a_locked_fine_tune_keeps_every_zero_of_a_sparse_model(tmp_path):
    sparse = prune_once(small_model(), 0.5)
    model = copy.deepcopy(sparse)
    train(model, TOKENIZER, SpanLoss(), FEATURES, settings(tmp_path, lock_sparsity=True))
    for (name, before), after in zip(encoder_linears(sparse).items(), encoder_linears(model).values()):
        assert torch.equal(after.weight == 0, before.weight == 0), name
        assert not torch.equal(after.weight, before.weight), f"{name} did not train"


def test_an_unlocked_fine_tune_fills_a_sparse_model_in(tmp_path):
    model = prune_once(small_model(), 0.5)
    train(model, TOKENIZER, SpanLoss(), FEATURES, settings(tmp_path))
    assert sparsity_report(model)["pattern"] == "dense"


class Interrupted(Exception):
    """Stands in for a crash or pre-emption in the middle of training."""


def test_a_resumed_pruning_run_with_distillation_and_length_drop_ends_identical(tmp_path):
    teacher = small_model(seed=11, hidden_dropout_prob=0.0)
    schedule = PruningSchedule(0.75, start=1, end=9, every=3)
    run_settings = dict(pruning=schedule, save_every=2)

    def objective():
        return LengthDrop(PredictionDistillation(teacher), seed=1)

    def stop_at_5(step: int) -> None:
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(
            small_model(),
            TOKENIZER,
            objective(),
            FEATURES,
            settings(tmp_path / "run", **run_settings),
            on_step=stop_at_5,
        )
    resumed = small_model()
    train(resumed, TOKENIZER, objective(), FEATURES, settings(tmp_path / "run", **run_settings), resume=True)
    straight = small_model()
    train(straight, TOKENIZER, objective(), FEATURES, settings(tmp_path / "straight", **run_settings))
    for name, tensor in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], tensor, atol=1e-6, rtol=0), name
        assert torch.equal(resumed.state_dict()[name] == 0, tensor == 0), name
    assert set(zero_fractions(straight).values()) == {0.75}


def test_pruning_that_would_end_after_the_run_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="pruning ends at step 11, after the run's last step 10"):
        train(small_model(), TOKENIZER, SpanLoss(), FEATURES, settings(tmp_path, pruning=PruningSchedule(0.8, end=11)))


# --------------------------------------------------------------------------------------------------
# Sparsity report


def test_sparsity_report_of_a_dense_model():
    report = sparsity_report(small_model())
    assert report == {
        "overall": 0.0,
        "pattern": "dense",
        "block_shares": {"1x4": 0.0, "4x1": 0.0},
        "layers": [0.0, 0.0],
    }


def test_sparsity_report_of_unstructured_zeros():
    report = sparsity_report(prune_once(small_model(), 0.5, "unstructured"))
    assert report["pattern"] == "unstructured" and report["overall"] == pytest.approx(0.5)


def test_a_few_stray_zeros_inside_kept_blocks_leave_a_1x4_model_1x4_and_the_share_says_how_many():
    """A random initialisation or fp16 rounding makes a few weights of kept blocks exactly zero."""
    model = prune_once(small_model(), 0.75)
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            kept = (linear.weight != 0).nonzero()[0]
            linear.weight[kept[0], kept[1]] = 0.0  # one stray zero in each matrix
    report = sparsity_report(model)
    assert report["pattern"] == "1x4"
    assert BLOCK_SHARE <= report["block_shares"]["1x4"] < 1.0
    assert report["block_shares"]["4x1"] < 0.5


def test_zeros_mostly_outside_whole_blocks_are_unstructured_and_the_share_is_reported():
    report = sparsity_report(prune_once(small_model(), 0.75, "unstructured"))
    assert report["pattern"] == "unstructured"
    assert 0.0 < report["block_shares"]["1x4"] < BLOCK_SHARE


def test_dtb_info_names_the_pattern_and_the_share_of_zeros_in_whole_blocks(dtb, tmp_path):
    model = prune_once(small_model(), 0.75)
    with torch.no_grad():
        linear = next(iter(encoder_linears(model).values()))
        kept = (linear.weight != 0).nonzero()[0]
        linear.weight[kept[0], kept[1]] = 0.0
    directory = checkpoint.save_checkpoint(model, TOKENIZER, tmp_path / "sparse", torch.float16)
    code, out, err = dtb("info", "--model", directory)
    assert code == 0, err
    assert "zeros in 1x4 blocks" in out and "in whole 1x4 blocks" in out and "unstructured" not in out


def test_sparsity_report_tells_4x1_blocks_along_input_columns_from_1x4():
    model = small_model()
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            linear.weight.mul_(magnitude_mask(linear.weight.T.contiguous(), 0.5, "1x4").T)
    assert sparsity_report(model)["pattern"] == "4x1"


def test_sparsity_report_gives_each_layer_its_own_fraction():
    model = small_model()
    with torch.no_grad():
        for name, linear in encoder_linears(model).items():
            if name.startswith("bert.encoder.layer.1."):
                linear.weight.mul_(magnitude_mask(linear.weight, 0.75, "1x4"))
    report = sparsity_report(model)
    assert report["layers"] == [0.0, 0.75] and report["pattern"] == "1x4"


# --------------------------------------------------------------------------------------------------
# A BERT-base-shaped 80% 1x4 checkpoint: loads, reports and answers like any other

QUESTIONS = ["where does alice live ?", "who lives in paris ?"]
CONTEXTS = ["carol lives in rome . alice lives in oslo . bob lives in paris ."] * 2
RATIOS = LengthConfig.ratios([0.7, 0.4])


def logits(model, length_config: LengthConfig | None = None) -> torch.Tensor:
    encoded = [TOKENIZER.encode(q, c) for q, c in zip(QUESTIONS, CONTEXTS)]
    ids = torch.tensor([e.ids for e in encoded])
    types = torch.tensor([e.type_ids for e in encoded])
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), types, length_config=length_config)
    return torch.stack([out.start_logits, out.end_logits])


@pytest.fixture(scope="module")
def sparse_base(tmp_path_factory):
    """hidden 768, intermediate 3072, 12 heads, 2 layers; 80% of every encoder weight zero in 1x4 blocks."""
    config = tiny_config(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=2)
    torch.manual_seed(0)
    model = prune_once(BertForQuestionAnswering(config).eval(), 0.8)
    directory = checkpoint.save_checkpoint(model, TOKENIZER, tmp_path_factory.mktemp("sparse-base"))
    return model, directory


def test_a_sparse_bert_base_checkpoint_gives_the_logits_it_was_saved_with(sparse_base):
    model, directory = sparse_base
    loaded = checkpoint.load_model(directory)
    for length_config in (None, RATIOS):
        assert torch.allclose(logits(loaded, length_config), logits(model, length_config), atol=1e-4, rtol=0)
    assert not torch.allclose(logits(loaded, RATIOS), logits(loaded), atol=1e-4)  # the config drops tokens


def test_a_sparse_checkpoint_answers_within_a_budget_as_with_the_chosen_length_config(sparse_base, tmp_path):
    model, saved = sparse_base
    directory = shutil.copytree(saved, tmp_path / "with-frontier")
    point = Point(RATIOS, f1=50.0, em=40.0, macs=1.0, macs_ratio=0.5, keep_ratios=(0.7, 0.4), data="synthetic")
    full_length = Point(LengthConfig.ratios([1.0, 1.0]), 60.0, 50.0, 2.0, 1.0, (1.0, 1.0), "synthetic")
    Frontier([point], full_length).save(directory)
    budgeted = QuestionAnswerer.from_pretrained(directory, budget=0.6)
    configured = QuestionAnswerer(model, TOKENIZER, length_config=RATIOS)
    full = QuestionAnswerer(model, TOKENIZER)
    answers = {
        name: qa(question=QUESTIONS, context=CONTEXTS, top_k=3)
        for name, qa in [("budget", budgeted), ("config", configured), ("full", full)]
    }
    assert answers["budget"] == answers["config"] != answers["full"]


@pytest.fixture
def dtb(capsys):
    def run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_info_json_reports_80_percent_1x4_sparsity_per_layer(dtb, sparse_base):
    _, directory = sparse_base
    code, out, err = dtb("info", "--model", directory, "--json", "--lengths", "64")
    assert code == 0, err
    sparsity = json.loads(out)["sparsity"]
    assert sparsity["pattern"] == "1x4"
    assert sparsity["overall"] == pytest.approx(0.8, abs=1e-4)
    assert sparsity["layers"] == pytest.approx([0.8, 0.8], abs=1e-4)


def test_info_table_shows_the_sparsity_and_its_pattern(dtb, sparse_base):
    _, directory = sparse_base
    code, out, err = dtb("info", "--model", directory, "--lengths", "64")
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert rows["sparsity"].startswith("0.8000 (zeros in 1x4 blocks")
    assert rows["layer_sparsity"] == "0.8000 0.8000"


def test_export_sparse_compresses_an_80_percent_sparse_model_and_loads_back_exactly(dtb, sparse_base, tmp_path):
    model, directory = sparse_base
    code, out, err = dtb("export", "--model", directory, "--output", tmp_path / "packed", "--fp16", "--sparse")
    assert code == 0, err
    packed = tmp_path / "packed" / checkpoint.SPARSE_SAFETENSORS
    dense_fp16 = sum(v.numel() * 2 for v in model.state_dict().values())
    assert packed.stat().st_size < 0.4 * dense_fp16
    assert not (tmp_path / "packed" / checkpoint.SAFETENSORS).exists()
    loaded = checkpoint.load_model(tmp_path / "packed")
    expected = {k: v.half().float() for k, v in model.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())  # zeros stay exact


def test_pack_sparse_leaves_matrices_with_fewer_than_half_zeros_dense():
    half = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    mostly_full = torch.tensor([[0.0, 1.0], [3.0, 2.0]])
    packed, shapes = checkpoint.pack_sparse({"half": half, "full": mostly_full, "bias": torch.zeros(4)})
    assert shapes == {"half": [2, 2]}
    assert set(packed) == {"half.nonzero_bits", "half.nonzero_values", "full", "bias"}
    assert torch.equal(checkpoint.unpack_sparse(packed, shapes, "test")["half"], half)


def test_a_sparse_checkpoint_whose_bitmask_and_values_disagree_is_refused(tmp_path):
    packed, shapes = checkpoint.pack_sparse({"w": torch.tensor([[0.0, 1.0], [0.0, 2.0]])})
    packed["w.nonzero_values"] = packed["w.nonzero_values"][:1]
    with pytest.raises(checkpoint.CheckpointError, match="w: the bitmask does not match its 1 values"):
        checkpoint.unpack_sparse(packed, shapes, "test")


def test_a_sparse_checkpoint_whose_bitmask_is_too_short_for_its_matrix_is_refused():
    packed, shapes = checkpoint.pack_sparse({"w": torch.zeros(4, 4).index_fill_(1, torch.tensor([0]), 1.0)})
    packed["w.nonzero_bits"] = packed["w.nonzero_bits"][:1]
    with pytest.raises(checkpoint.CheckpointError, match="w: a bitmask of 1 bytes for 16 weights"):
        checkpoint.unpack_sparse(packed, shapes, "test")


# --------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = checkpoint.save_checkpoint(small_model(), TOKENIZER, root / "tiny")
    data = write_squad_file(synthetic_dataset(40, seed=0), root / "train.json")
    return model_dir, data


TRAIN_ARGS = ["--max-seq-len", "64", "--doc-stride", "16", "--batch-size", "8", "--holdout-articles", "0"]


def test_cli_train_distill_pd_prunes_with_length_drop_and_records_it(dtb, run_files, tmp_path):
    model_dir, data = run_files
    out = tmp_path / "run"
    args = ["train", "distill", "--stage", "pd", "--teacher", model_dir, "--student", model_dir, "--length-drop"]
    args += ["--data", data, "--output", out, "--epochs", "2", "--cache-dir", tmp_path / "cache", *TRAIN_ARGS]
    args += ["--prune-to", "0.75", "--prune-pattern", "unstructured", "--prune-end", "8", "--prune-every", "2"]
    code, _, err = dtb(*args)
    assert code == 0, err
    report = sparsity_report(checkpoint.load_model(out / "model"))
    assert report["overall"] == 0.75 and report["pattern"] == "unstructured"
    recorded = json.loads((out / "train_settings.json").read_text())
    assert recorded["pruning"] == {"target": 0.75, "end": 8, "pattern": "unstructured", "start": 0, "every": 2}
    assert recorded["lock_sparsity"] is False


def test_cli_train_finetune_lock_sparsity_keeps_the_zeros(dtb, run_files, tmp_path):
    _, data = run_files
    sparse_dir = checkpoint.save_checkpoint(prune_once(small_model(), 0.5), TOKENIZER, tmp_path / "sparse")
    args = ["train", "finetune", "--model", sparse_dir, "--data", data, "--output", tmp_path / "run", "--epochs", "1"]
    code, _, err = dtb(*args, "--lock-sparsity", "--cache-dir", tmp_path / "cache", *TRAIN_ARGS)
    assert code == 0, err
    trained = checkpoint.load_model(tmp_path / "run" / "model")
    assert set(zero_fractions(trained).values()) == {0.5} and sparsity_report(trained)["pattern"] == "1x4"
    assert json.loads((tmp_path / "run" / "train_settings.json").read_text())["lock_sparsity"] is True


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prune-to", "1.5", "--prune-end", "8"], "target sparsity must be in (0, 1)"),
        (["--prune-to", "0", "--prune-end", "8"], "target sparsity must be in (0, 1)"),
        (["--prune-to", "0.8", "--prune-start", "8", "--prune-end", "8"], "end after it starts"),
        (["--prune-to", "0.8", "--prune-end", "8", "--prune-every", "0"], "interval"),
        (["--prune-to", "0.8", "--prune-end", "8", "--prune-pattern", "2x2"], "invalid choice"),
        (["--prune-to", "0.8"], "--prune-to needs --prune-end"),
        (["--prune-end", "8"], "--prune-end needs --prune-to"),
        (["--prune-to", "0.8", "--prune-end", "8", "--lock-sparsity"], "not allowed with"),
        (["--prune-to", "0.8", "--prune-end", "50"], "pruning ends at step 50, after the run's last step 5"),
    ],
)
def test_cli_bad_pruning_options_are_one_line_errors(dtb, run_files, tmp_path, extra, message):
    model_dir, data = run_files
    args = ["train", "finetune", "--model", model_dir, "--data", data, "--output", tmp_path / "o", "--epochs", "1"]
    code, out, err = dtb(*args, "--cache-dir", tmp_path / "cache", *TRAIN_ARGS, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and message in err, err


def test_cli_1x4_pruning_of_a_model_with_odd_output_sizes_is_a_one_line_error(dtb, run_files, tmp_path):
    _, data = run_files
    odd = checkpoint.save_checkpoint(small_model(hidden_size=30, num_attention_heads=3), TOKENIZER, tmp_path / "odd")
    args = ["train", "finetune", "--model", odd, "--data", data, "--output", tmp_path / "o", "--epochs", "1"]
    code, _, err = dtb(*args, "--cache-dir", tmp_path / "cache", *TRAIN_ARGS, "--prune-to", "0.8", "--prune-end", "4")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "divisible by 4" in err, err


# --------------------------------------------------------------------------------------------------
# Quality: Prune Once for All on the synthetic task

QUALITY_TRAIN = synthetic_dataset(4000, seed=1, facts=2)
QUALITY_HELD_OUT = synthetic_dataset(300, seed=2, facts=2)


def held_out_f1(model) -> float:
    qa = QuestionAnswerer(model.eval(), TOKENIZER, max_answer_len=30, batch_size=64)
    return evaluate(qa, QUALITY_HELD_OUT).metrics["f1"]


@pytest.mark.slow
def test_an_80_percent_pruned_student_distilled_from_its_dense_teacher_keeps_f1_within_5_points(
    synthetic_teacher, tmp_path
):
    teacher = synthetic_teacher  # conftest's: trained from random initialisation, 12 epochs of 8,000 questions
    features = label_windows(TOKENIZER, QUALITY_TRAIN.questions, WINDOWS)
    quality = dict(batch_size=32, learning_rate=1e-3, save_every=100_000, log_every=50)
    teacher_f1 = held_out_f1(teacher)
    assert teacher_f1 >= 90.0

    one_shot = prune_once(copy.deepcopy(teacher), 0.8)
    student = copy.deepcopy(teacher)
    schedule = PruningSchedule(0.8, end=200, every=10)  # then 175 steps of recovery at that sparsity
    train(
        student,
        TOKENIZER,
        PredictionDistillation(teacher),
        features,
        TrainSettings(tmp_path / "s", epochs=3, pruning=schedule, **quality),
    )

    assert sparsity_report(student)["overall"] == pytest.approx(0.8, abs=1e-3)
    assert held_out_f1(one_shot) <= teacher_f1 - 20.0  # pruning alone really hurts
    assert held_out_f1(student) >= teacher_f1 - 5.0
