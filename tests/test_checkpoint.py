"""Tests for checkpoints in the Hugging Face layout: saving, loading (ours and transformers'), errors, hub ids."""

from __future__ import annotations

import collections
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from dynamic_tinybert import CheckpointError, QuestionAnswerer, checkpoint
from dynamic_tinybert.model import BertForQuestionAnswering

from conftest import make_tiny_tokenizer, minilm_dir, tiny_config, tiny_model, tiny_vocab

QUESTION = "who was born in paris?"
CONTEXT = "the king was born in paris in the year 1990."
PAIRS = [
    (QUESTION, CONTEXT),
    ("where does the queen live?", "the queen lives in london, the capital of england, with the king."),
]
SAVED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"}
ANSWER_KEYS = {"score", "start", "end", "answer"}
TINY_POSITIONS = tiny_config().max_position_embeddings
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- helpers -------------------------------------------------------------------------------------------------


def lively_model(seed: int = 0) -> BertForQuestionAnswering:
    """A tiny model whose weights are all far from their initial values, so logits are O(1) and every weight counts."""
    model = tiny_model(seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            parameter.copy_(1 + noise if name.endswith("LayerNorm.weight") else noise)
    return model


def encode_batch(tokenizer: Tokenizer, pairs=PAIRS) -> dict[str, torch.Tensor]:
    """Question/context pairs as a padded batch (the second row is longer, so the first one has padding)."""
    encodings = [tokenizer.encode(question, context) for question, context in pairs]
    width = max(len(e.ids) for e in encodings)

    def padded(rows):
        return torch.tensor([row + [0] * (width - len(row)) for row in rows])

    return {
        "input_ids": padded([e.ids for e in encodings]),
        "attention_mask": padded([e.attention_mask for e in encodings]),
        "token_type_ids": padded([e.type_ids for e in encodings]),
    }


@torch.no_grad()
def span_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(2, B, T) start and end logits of our model or of a transformers one."""
    out = model(**batch)
    return torch.stack([out.start_logits, out.end_logits])


def load_quietly(directory: Path, head_seed: int = 0) -> BertForQuestionAnswering:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return checkpoint.load_model(directory, head_seed=head_seed)


def weights_of(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def rewrite_weights(directory: Path, state: dict[str, torch.Tensor]) -> None:
    (directory / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")


def checkpoint_error(call, *args, **kwargs) -> str:
    """The message of the CheckpointError that call(*args) raises; it must be a single line."""
    with pytest.raises(CheckpointError) as excinfo:
        call(*args, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def assert_same_weights(model: BertForQuestionAnswering, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == state.keys()
    for name, tensor in state.items():
        assert own[name].dtype == torch.float32, name
        assert torch.equal(own[name], tensor.float()), name


def assert_answer_in_context(answer: dict, context: str) -> None:
    assert set(answer) == ANSWER_KEYS
    assert context[answer["start"] : answer["end"]] == answer["answer"]
    assert answer["answer"]
    assert 0.0 <= answer["score"] <= 1.0


# --- saving and reloading ------------------------------------------------------------------------------------


@pytest.fixture
def tokenizer(tmp_path: Path) -> Tokenizer:
    return make_tiny_tokenizer()


@pytest.fixture
def lively_checkpoint(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    return checkpoint.save_checkpoint(lively_model(), tokenizer, tmp_path / "lively")


def test_saved_checkpoint_has_the_hugging_face_files(tiny_checkpoint: Path):
    assert {p.name for p in tiny_checkpoint.iterdir()} == SAVED_FILES


def test_saving_twice_into_the_same_directory_leaves_no_temporary_files(tmp_path: Path, tokenizer: Tokenizer):
    directory = tmp_path / "saved"
    checkpoint.save_checkpoint(tiny_model(0), tokenizer, directory)
    checkpoint.save_checkpoint(tiny_model(1), tokenizer, directory)
    assert sorted(p.name for p in directory.iterdir()) == sorted(SAVED_FILES)
    assert_same_weights(checkpoint.load_model(directory), tiny_model(1).state_dict())


def test_saved_checkpoint_reloads_with_identical_weights(tiny_checkpoint: Path):
    assert_same_weights(checkpoint.load_model(tiny_checkpoint), tiny_model().state_dict())


def test_saved_checkpoint_reloads_with_identical_logits(lively_checkpoint: Path, tokenizer: Tokenizer):
    batch = encode_batch(tokenizer)
    assert torch.equal(span_logits(checkpoint.load_model(lively_checkpoint), batch), span_logits(lively_model(), batch))


def test_saved_tokenizer_reloads_giving_the_same_ids(tiny_checkpoint: Path, tokenizer: Tokenizer):
    reloaded = checkpoint.load_tokenizer(tiny_checkpoint)
    assert reloaded.encode(QUESTION, CONTEXT).ids == tokenizer.encode(QUESTION, CONTEXT).ids


def test_saving_as_float16_halves_the_weights_file(tmp_path: Path, tokenizer: Tokenizer):
    full = checkpoint.save_checkpoint(tiny_model(), tokenizer, tmp_path / "fp32")
    half = checkpoint.save_checkpoint(tiny_model(), tokenizer, tmp_path / "fp16", dtype=torch.float16)
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    assert {t.dtype for t in weights_of(half).values()} == {torch.float16}


def test_float16_checkpoint_loads_back_as_float32_within_float16_rounding(tmp_path: Path, tokenizer: Tokenizer):
    original = lively_model().state_dict()
    directory = checkpoint.save_checkpoint(lively_model(), tokenizer, tmp_path / "fp16", dtype=torch.float16)
    loaded = checkpoint.load_model(directory).state_dict()
    for name, tensor in original.items():
        assert loaded[name].dtype == torch.float32, name
        assert torch.equal(loaded[name], tensor.half().float()), name
        torch.testing.assert_close(loaded[name], tensor, rtol=2**-10, atol=2**-24)


def tokenizer_from_vocab(directory: Path, tokens: list[str], lowercase: bool = True) -> Tokenizer:
    (directory / "words.txt").write_text("".join(f"{token}\n" for token in tokens))
    return BertWordPieceTokenizer(str(directory / "words.txt"), lowercase=lowercase)._tokenizer


def test_tokenizer_config_records_whether_the_tokenizer_lowercases(tmp_path: Path):
    cased = tokenizer_from_vocab(tmp_path, tiny_vocab(), lowercase=False)
    directory = checkpoint.save_checkpoint(tiny_model(), cased, tmp_path / "cased")
    assert json.loads((directory / "tokenizer_config.json").read_text())["do_lower_case"] is False


def vocab_txt_ids_and_tokenizer_json_ids(directory: Path, tokens: list[str]) -> tuple[list[int], list[int]]:
    """Ids of QUESTION/CONTEXT from a saved checkpoint's tokenizer.json, and from its vocab.txt alone."""
    tokenizer = tokenizer_from_vocab(directory, tokens)
    saved = checkpoint.save_checkpoint(tiny_model(vocab_size=len(tokens)), tokenizer, directory / "saved")
    from_json = checkpoint.load_tokenizer(saved).encode(QUESTION, CONTEXT).ids
    (saved / "tokenizer.json").unlink()
    return checkpoint.load_tokenizer(saved).encode(QUESTION, CONTEXT).ids, from_json


def test_vocab_txt_alone_gives_the_same_ids_as_tokenizer_json(tmp_path: Path):
    from_vocab, from_json = vocab_txt_ids_and_tokenizer_json_ids(tmp_path, list(dict.fromkeys(tiny_vocab())))
    assert from_vocab == from_json


def test_vocab_txt_alone_gives_the_same_ids_as_tokenizer_json_when_a_token_is_repeated(tmp_path: Path):
    tokens = tiny_vocab()
    tokens.insert(5, "the")  # id 5 ends up unused: the later "the" wins
    from_vocab, from_json = vocab_txt_ids_and_tokenizer_json_ids(tmp_path, tokens)
    assert from_vocab == from_json


# --- interoperability with transformers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    module = pytest.importorskip("transformers")
    verbosity = module.logging.get_verbosity()
    module.logging.set_verbosity_error()
    yield module
    module.logging.set_verbosity(verbosity)


def test_transformers_loads_our_checkpoint_with_no_missing_or_unexpected_keys(transformers, lively_checkpoint: Path):
    _, info = transformers.BertForQuestionAnswering.from_pretrained(lively_checkpoint, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


def test_transformers_gives_our_logits_for_our_checkpoint(transformers, lively_checkpoint: Path, tokenizer: Tokenizer):
    theirs = transformers.BertForQuestionAnswering.from_pretrained(lively_checkpoint).eval()
    batch = encode_batch(tokenizer)
    real = batch["attention_mask"].bool()
    ours_logits, their_logits = span_logits(lively_model(), batch), span_logits(theirs, batch)
    assert ours_logits.abs().max() > 0.5  # logits big enough for the tolerance to mean something
    torch.testing.assert_close(ours_logits[:, real], their_logits[:, real], rtol=0, atol=1e-4)


def test_transformers_tokenizer_gives_our_ids_for_a_question_and_context(
    transformers, tiny_checkpoint: Path, tokenizer: Tokenizer
):
    theirs = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)(QUESTION, CONTEXT)
    ours = tokenizer.encode(QUESTION, CONTEXT)
    assert theirs["input_ids"] == ours.ids
    assert theirs["token_type_ids"] == ours.type_ids


@pytest.mark.parametrize(
    ("safe_serialization", "weights_file"), [(True, "model.safetensors"), (False, "pytorch_model.bin")]
)
def test_loads_a_checkpoint_saved_by_transformers_with_equal_logits(
    transformers, tmp_path: Path, tokenizer: Tokenizer, safe_serialization: bool, weights_file: str
):
    config = transformers.BertConfig(**vars(tiny_config()))
    torch.manual_seed(0)
    theirs = transformers.BertForQuestionAnswering(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    directory = tmp_path / "from-transformers"
    theirs.save_pretrained(directory, safe_serialization=safe_serialization)
    assert (directory / weights_file).is_file()
    batch = encode_batch(tokenizer)
    real = batch["attention_mask"].bool()
    ours_logits = span_logits(checkpoint.load_model(directory), batch)
    torch.testing.assert_close(ours_logits[:, real], span_logits(theirs, batch)[:, real], rtol=0, atol=1e-4)


# --- pickles are read with weights_only=True ----------------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling() -> torch.Tensor:
    UNPICKLED.append("payload ran")
    return torch.zeros(2)


class Payload:
    """An object whose unpickling runs _record_unpickling: what a malicious pytorch_model.bin would do."""

    def __reduce__(self):
        return (_record_unpickling, ())


@pytest.fixture(params=["instance", "ordered_dict"])
def malicious_checkpoint(request, tmp_path: Path) -> Path:
    UNPICKLED.clear()
    directory = tmp_path / "malicious"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    state = tiny_model().state_dict()
    if request.param == "instance":
        torch.save(Payload(), directory / "pytorch_model.bin")
    else:
        torch.save(collections.OrderedDict(state, **{"qa_outputs.bias": Payload()}), directory / "pytorch_model.bin")
    yield directory
    UNPICKLED.clear()


def test_malicious_pickle_payload_runs_when_unpickled_unsafely(malicious_checkpoint: Path):
    """Control for the next test: the payload is live, so its not running there means it was refused."""
    torch.load(malicious_checkpoint / "pytorch_model.bin", weights_only=False)
    assert UNPICKLED == ["payload ran"]


def test_pickle_holding_a_non_tensor_object_is_refused_without_running_it(malicious_checkpoint: Path):
    message = checkpoint_error(checkpoint.load_model, malicious_checkpoint)
    assert "pytorch_model.bin" in message
    assert UNPICKLED == []


def test_pickle_of_plain_tensors_loads(tmp_path: Path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    torch.save(tiny_model().state_dict(), directory / "pytorch_model.bin")
    assert_same_weights(checkpoint.load_model(directory), tiny_model().state_dict())


def test_pickle_holding_a_number_instead_of_a_tensor_is_an_error_naming_the_file(tmp_path: Path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    torch.save({**tiny_model().state_dict(), "qa_outputs.bias": 3}, directory / "pytorch_model.bin")
    assert "pytorch_model.bin" in checkpoint_error(checkpoint.load_model, directory)


# --- sharded safetensors -----------------------------------------------------------------------------------

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@pytest.fixture
def sharded_checkpoint(tiny_checkpoint: Path) -> Path:
    state = weights_of(tiny_checkpoint)
    names = sorted(state)
    halves = {SHARDS[0]: names[: len(names) // 2], SHARDS[1]: names[len(names) // 2 :]}
    for shard, shard_names in halves.items():
        save_file({k: state[k] for k in shard_names}, tiny_checkpoint / shard)
    weight_map = {name: shard for shard, shard_names in halves.items() for name in shard_names}
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in state.values())}, "weight_map": weight_map}
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    (tiny_checkpoint / "model.safetensors").unlink()
    return tiny_checkpoint


def test_sharded_safetensors_checkpoint_loads_every_shard(sharded_checkpoint: Path):
    assert_same_weights(checkpoint.load_model(sharded_checkpoint), tiny_model().state_dict())


def test_missing_shard_is_an_error_naming_it(sharded_checkpoint: Path):
    (sharded_checkpoint / SHARDS[1]).unlink()
    assert SHARDS[1] in checkpoint_error(checkpoint.load_model, sharded_checkpoint)


def test_weight_index_that_is_not_an_object_is_an_error_naming_it(sharded_checkpoint: Path):
    index = sharded_checkpoint / "model.safetensors.index.json"
    index.write_text(json.dumps(list(SHARDS)))
    assert str(index) in checkpoint_error(checkpoint.load_model, sharded_checkpoint)


# --- bare BertModel checkpoints (the real MiniLM-L6-H384 sentence encoder) -----------------------------------


@pytest.fixture(scope="module")
def minilm() -> Path:
    return minilm_dir()


@pytest.fixture(scope="module")
def minilm_weights(minilm: Path) -> dict[str, torch.Tensor]:
    return load_file(minilm / "model.safetensors")


@pytest.mark.slow
def test_bare_bertmodel_checkpoint_loads_its_encoder_weights(minilm: Path, minilm_weights: dict[str, torch.Tensor]):
    own = load_quietly(minilm).state_dict()
    encoder = {k: v for k, v in minilm_weights.items() if not k.startswith(("pooler.", "embeddings.position_ids"))}
    assert len(encoder) == len(own) - 2  # everything but qa_outputs.weight and .bias
    for name, tensor in encoder.items():
        assert torch.equal(own["bert." + name], tensor), name


@pytest.mark.slow
def test_bare_bertmodel_checkpoint_pooler_is_ignored(minilm: Path, minilm_weights: dict[str, torch.Tensor]):
    assert "pooler.dense.weight" in minilm_weights
    assert not [name for name in load_quietly(minilm).state_dict() if "pooler" in name]


@pytest.mark.slow
def test_bare_bertmodel_checkpoint_warns_that_qa_outputs_is_freshly_initialised(minilm: Path):
    with pytest.warns(UserWarning, match="qa_outputs"):
        checkpoint.load_model(minilm, head_seed=0)


@pytest.mark.slow
def test_bare_bertmodel_head_is_the_same_for_the_same_seed(minilm: Path):
    first, second = load_quietly(minilm, head_seed=3), load_quietly(minilm, head_seed=3)
    assert torch.equal(first.qa_outputs.weight, second.qa_outputs.weight)
    assert torch.equal(first.qa_outputs.bias, second.qa_outputs.bias)


@pytest.mark.slow
def test_bare_bertmodel_head_differs_between_seeds(minilm: Path):
    first, second = load_quietly(minilm, head_seed=3), load_quietly(minilm, head_seed=4)
    assert not torch.equal(first.qa_outputs.weight, second.qa_outputs.weight)


def test_checkpoint_with_a_span_head_loads_without_warning(tiny_checkpoint: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.load_model(tiny_checkpoint)


def test_old_tensorflow_layernorm_gamma_and_beta_names_load(tiny_checkpoint: Path):
    state = weights_of(tiny_checkpoint)
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    assert sum("gamma" in k for k in renamed) == 1 + 2 * tiny_config().num_hidden_layers
    rewrite_weights(tiny_checkpoint, renamed)
    assert_same_weights(checkpoint.load_model(tiny_checkpoint), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_in_a_checkpoint_load_as_float32(tiny_checkpoint: Path, dtype: torch.dtype):
    state = {k: v.to(dtype) for k, v in weights_of(tiny_checkpoint).items()}
    rewrite_weights(tiny_checkpoint, state)
    model = checkpoint.load_model(tiny_checkpoint)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert_same_weights(model, state)


# --- errors: one CheckpointError line that names the culprit ------------------------------------------------


def test_directory_without_config_json_is_an_error(tmp_path: Path):
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tmp_path)
    assert str(tmp_path) in message
    assert "config.json" in message


def test_relative_path_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert "./nope" in checkpoint_error(QuestionAnswerer.from_pretrained, "./nope")


@pytest.mark.parametrize("path", ["/tmp/nope-xyz", "~/nope-xyz"])
def test_absolute_or_home_path_that_does_not_exist_is_an_error(path: str):
    if Path(path).expanduser().exists():
        pytest.skip(f"{path} exists on this machine")
    assert path in checkpoint_error(QuestionAnswerer.from_pretrained, path)


def test_file_instead_of_directory_is_an_error(tiny_checkpoint: Path):
    path = tiny_checkpoint / "config.json"
    assert str(path) in checkpoint_error(checkpoint.resolve, path)


@pytest.mark.parametrize("keep", [0, 8, 100, 0.5, -10], ids=["empty", "8-bytes", "header", "half", "all-but-10"])
def test_truncated_safetensors_file_is_an_error_naming_it(tiny_checkpoint: Path, keep: float):
    path = tiny_checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    assert str(path) in checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)


def test_config_json_that_is_not_json_is_an_error_naming_it(tiny_checkpoint: Path):
    (tiny_checkpoint / "config.json").write_text("{hidden_size: 32,")
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)
    assert str(tiny_checkpoint / "config.json") in message
    assert "JSON" in message


def test_config_json_that_is_not_an_object_is_an_error_naming_it(tiny_checkpoint: Path):
    (tiny_checkpoint / "config.json").write_text("[32, 3]")
    assert str(tiny_checkpoint / "config.json") in checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"vocab_size": -5}, "vocab_size"),
        ({"layer_norm_eps": "1e-12"}, "layer_norm_eps"),
        ({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob"),
        ({"num_hidden_layers": 10**8}, "parameters"),
        ({"hidden_act": ["gelu"]}, "hidden_act"),
        ({"pad_token_id": 10**6}, "pad_token_id"),
    ],
    ids=["no-heads", "negative-vocab", "string-eps", "string-dropout", "huge", "list-activation", "pad-outside-vocab"],
)
def test_config_json_with_bad_fields_is_refused_before_building_naming_the_field(
    tiny_checkpoint: Path, change: dict, field: str
):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (tiny_checkpoint / "config.json").write_text(json.dumps({**config, **change}))
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)
    assert str(tiny_checkpoint / "config.json") in message and field in message


@pytest.mark.parametrize("shard", ["/etc/passwd", "../outside.safetensors", "sub/model.safetensors", ".."])
def test_a_weight_index_naming_a_file_outside_the_checkpoint_is_refused_before_opening_it(
    tiny_checkpoint: Path, monkeypatch, shard: str
):
    (tiny_checkpoint / "model.safetensors").rename(tiny_checkpoint / "model-00001-of-00001.safetensors")
    weight_map = {"qa_outputs.weight": shard, "qa_outputs.bias": "model-00001-of-00001.safetensors"}
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    opened = []
    monkeypatch.setattr(checkpoint, "load_file", lambda path, *a, **kw: opened.append(path))
    message = checkpoint_error(checkpoint.load_state_dict, tiny_checkpoint)
    assert repr(shard) in message and "inside the checkpoint" in message
    assert opened == []


@pytest.mark.parametrize("dtype, name", [(torch.float32, "float32"), (torch.float16, "float16")])
def test_config_json_says_what_dtype_the_weights_are_stored_in(tmp_path: Path, dtype, name: str):
    directory = checkpoint.save_checkpoint(tiny_model(), make_tiny_tokenizer(), tmp_path / name, dtype)
    assert json.loads((directory / "config.json").read_text())["torch_dtype"] == name
    assert next(checkpoint.load_model(directory).parameters()).dtype == torch.float32  # always computed in fp32


def test_config_json_with_impossible_shape_is_an_error_naming_it(tiny_checkpoint: Path):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (tiny_checkpoint / "config.json").write_text(json.dumps({**config, "hidden_size": 30}))
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)
    assert str(tiny_checkpoint / "config.json") in message
    assert "hidden_size" in message


def test_tensor_with_the_wrong_shape_is_an_error_naming_it_and_both_shapes(tiny_checkpoint: Path):
    name = "bert.encoder.layer.1.attention.self.query.weight"
    state = weights_of(tiny_checkpoint)
    state[name] = torch.zeros(32, 16)
    rewrite_weights(tiny_checkpoint, state)
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)
    assert name in message
    assert "(32, 16)" in message
    assert "(32, 32)" in message


def test_unexpected_extra_weight_is_an_error_naming_it(tiny_checkpoint: Path):
    name = "bert.encoder.layer.3.output.dense.weight"  # the tiny config has layers 0-2 only
    state = weights_of(tiny_checkpoint)
    state[name] = torch.zeros(32, 48)
    rewrite_weights(tiny_checkpoint, state)
    assert name in checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)


def test_missing_encoder_weight_is_an_error_naming_it(tiny_checkpoint: Path):
    name = "bert.encoder.layer.2.output.LayerNorm.bias"
    state = weights_of(tiny_checkpoint)
    del state[name]
    rewrite_weights(tiny_checkpoint, state)
    assert name in checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)


def test_directory_without_weights_is_an_error_naming_it(tiny_checkpoint: Path):
    (tiny_checkpoint / "model.safetensors").unlink()
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint)
    assert str(tiny_checkpoint) in message
    assert "model.safetensors" in message
    assert "pytorch_model.bin" in message


def test_directory_without_tokenizer_files_is_an_error_naming_it(tiny_checkpoint: Path):
    (tiny_checkpoint / "tokenizer.json").unlink()
    (tiny_checkpoint / "vocab.txt").unlink()
    message = checkpoint_error(QuestionAnswerer.from_pretrained, tiny_checkpoint, max_seq_len=TINY_POSITIONS)
    assert str(tiny_checkpoint) in message
    assert "tokenizer.json" in message
    assert "vocab.txt" in message


# --- hub ids, offline, from a hand-made cache ---------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in offline mode.

    huggingface_hub copies HF_HUB_OFFLINE and HF_HUB_CACHE into `constants` at import time (hf_hub_download and
    snapshot_download read `constants.HF_HUB_CACHE` per call; file_download keeps an unused HUGGINGFACE_HUB_CACHE
    copy), and offline mode lives in the HTTP sessions it caches per thread (an OfflineAdapter mounted when a
    session is made): patch the constants, then drop the cached sessions so that new ones are made offline.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.file_download as file_download
    from huggingface_hub.utils import reset_sessions

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(file_download, "HUGGINGFACE_HUB_CACHE", str(cache))
    reset_sessions()
    yield cache
    reset_sessions()


def cache_repo(cache: Path, repo_id: str, source: Path, files) -> Path:
    """Lay files out as huggingface_hub caches a download of repo_id at COMMIT; returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in files:
        shutil.copy(source / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_hub_id_resolves_to_its_cached_snapshot_offline(hub_cache: Path, tiny_checkpoint: Path):
    snapshot = cache_repo(hub_cache, "org/name", tiny_checkpoint, SAVED_FILES)
    assert checkpoint.resolve("org/name") == snapshot


def test_question_answerer_from_a_cached_hub_id_answers_offline(hub_cache: Path, tiny_checkpoint: Path):
    cache_repo(hub_cache, "org/name", tiny_checkpoint, SAVED_FILES)
    qa = QuestionAnswerer.from_pretrained("org/name", max_seq_len=TINY_POSITIONS)
    assert_answer_in_context(qa(question=QUESTION, context=CONTEXT), CONTEXT)


def test_hub_id_missing_from_the_cache_is_an_error_saying_so(hub_cache: Path):
    message = checkpoint_error(checkpoint.resolve, "org/absent")
    assert "org/absent" in message
    assert "cache" in message
    assert "offline" in message.lower()


def test_cached_hub_repo_without_config_json_is_an_error_naming_it(hub_cache: Path, tiny_checkpoint: Path):
    cache_repo(hub_cache, "org/no-config", tiny_checkpoint, SAVED_FILES - {"config.json"})
    message = checkpoint_error(checkpoint.resolve, "org/no-config")
    assert "org/no-config" in message
    assert "config.json" in message


def test_malformed_hub_id_is_an_error_naming_it(hub_cache: Path):
    assert "org/not a name!" in checkpoint_error(checkpoint.resolve, "org/not a name!")


def test_cached_hub_repo_with_only_config_and_pickled_weights_resolves_and_loads(hub_cache: Path, tmp_path: Path):
    source = tmp_path / "pickled"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    torch.save(tiny_model().state_dict(), source / "pytorch_model.bin")
    snapshot = cache_repo(hub_cache, "org/pickled", source, ["config.json", "pytorch_model.bin"])
    directory = checkpoint.resolve("org/pickled")
    assert directory == snapshot
    assert_same_weights(checkpoint.load_model(directory), tiny_model().state_dict())


def test_cached_hub_repo_with_sharded_safetensors_resolves_and_loads(hub_cache: Path, sharded_checkpoint: Path):
    files = [p.name for p in sharded_checkpoint.iterdir()]
    cache_repo(hub_cache, "org/sharded", sharded_checkpoint, files)
    assert_same_weights(checkpoint.load_model(checkpoint.resolve("org/sharded")), tiny_model().state_dict())


# --- the user's entry point ---------------------------------------------------------------------------------


def test_question_answerer_from_a_checkpoint_directory_answers_with_a_span_of_the_context(tiny_checkpoint: Path):
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint, max_seq_len=TINY_POSITIONS)
    assert_answer_in_context(qa(question=QUESTION, context=CONTEXT), CONTEXT)


def test_question_answerer_loads_a_checkpoint_with_fewer_than_384_positions_using_default_options(
    tiny_checkpoint: Path,
):
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    assert_answer_in_context(qa(question=QUESTION, context=CONTEXT), CONTEXT)
