"""Hugging Face checkpoint layout: find it (directory or hub id), load it strictly, save it atomically.

A checkpoint is `config.json`, weights (`model.safetensors`, possibly sharded, this project's compressed
`model.sparse.safetensors`, or `pytorch_model.bin` read with `weights_only=True`) and a WordPiece
tokenizer (`tokenizer.json` or `vocab.txt`). Weight names follow `BertForQuestionAnswering`; bare
`BertModel` checkpoints (no `bert.` prefix, no span head) load too, with a freshly initialised head.
Every problem surfaces as one `CheckpointError` line.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.models import WordPiece

from .fileio import atomic_write, atomic_write_text
from .model import BertConfig, BertForQuestionAnswering

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SPARSE_SAFETENSORS = "model.sparse.safetensors"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
TOKENIZER = "tokenizer.json"
VOCAB = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
OPTIONAL_FILES = (TOKENIZER, VOCAB, TOKENIZER_CONFIG, "pareto.json")

# The question-answering model this package ships: used when no model is named.
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "dynamic-minilm-l6-squad"

# A compressed sparse weight W is stored as these two tensors: the bitmask of W != 0 and the nonzero values.
NONZERO_BITS, NONZERO_VALUES = ".nonzero_bits", ".nonzero_values"

# Weights a QA model does not use: the pretraining heads and the pooler.
IGNORED_PREFIXES = ("bert.pooler.", "cls.", "bert.embeddings.position_ids")


class CheckpointError(Exception):
    """A checkpoint that cannot be found, read or matched to the model; the message is one line."""


def resolve(path_or_id: str | os.PathLike | None, revision: str | None = None) -> Path:
    """A local checkpoint directory for a directory path or a Hugging Face Hub id (None: the shipped model).

    Hub files are fetched with huggingface_hub (cached; HF_HUB_OFFLINE=1 uses the cache only).
    """
    if path_or_id is None:
        if not (DEFAULT_MODEL / CONFIG).is_file():
            raise CheckpointError(f"no model named, and the default model is not installed ({DEFAULT_MODEL})")
        return DEFAULT_MODEL
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"{path}: not a checkpoint directory (no {CONFIG})")
        return path
    name = str(path_or_id)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name}: no such checkpoint directory")
    return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    """Fetch only what loading needs: safetensors weights if the repo has them, else the pickled ones."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def snapshot(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"{repo_id}: not in the local Hugging Face cache and the Hub cannot be reached "
                "(no network, or HF_HUB_OFFLINE=1); download it once with network access"
            ) from None
        except HfHubHTTPError as e:
            reason = str(e).splitlines()[0]
            raise CheckpointError(f"{repo_id}: cannot fetch it from the Hugging Face Hub: {reason}") from None
        except ValueError as e:  # a malformed repo id
            raise CheckpointError(f"{repo_id}: neither a checkpoint directory nor a valid hub id ({e})") from None

    safetensors = [SAFETENSORS, SAFETENSORS_INDEX, "model-*-of-*.safetensors", SPARSE_SAFETENSORS]
    directory = snapshot([CONFIG, *safetensors, *OPTIONAL_FILES])
    if not (directory / CONFIG).is_file():
        raise CheckpointError(f"{repo_id}: the hub repository has no {CONFIG}")
    if not any((directory / name).is_file() for name in (SAFETENSORS, SAFETENSORS_INDEX, SPARSE_SAFETENSORS)):
        directory = snapshot([CONFIG, PICKLE, PICKLE_INDEX, "pytorch_model-*-of-*.bin", *OPTIONAL_FILES])
    return directory


def load_config(directory: Path) -> BertConfig:
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
        return BertConfig.from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{directory / CONFIG}: not valid JSON ({e})") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG}: {e}") from None


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, safetensors preferred; pickles only with weights_only=True."""
    for index_name, reader in ((SAFETENSORS_INDEX, _read_safetensors), (PICKLE_INDEX, _read_pickle)):
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({e})") from None
            for shard in shards:  # refused by name before any file is opened
                if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
                    raise CheckpointError(f"{index}: weight shard {shard!r} is not a file name inside the checkpoint")
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(reader(directory / shard))
            return state
    if (directory / SAFETENSORS).is_file():
        return _read_safetensors(directory / SAFETENSORS)
    if (directory / SPARSE_SAFETENSORS).is_file():
        return _read_sparse_safetensors(directory / SPARSE_SAFETENSORS)
    if (directory / PICKLE).is_file():
        return _read_pickle(directory / PICKLE)
    raise CheckpointError(f"{directory}: no weights ({SAFETENSORS}, {SPARSE_SAFETENSORS} or {PICKLE})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight shard is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({e})") from None


def _read_sparse_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, "pt") as file:
            shapes = json.loads((file.metadata() or {})["sparse_shapes"])
            packed = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt, or not a compressed sparse checkpoint ({e})") from None
    return unpack_sparse(packed, shapes, str(path))


def pack_sparse(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Store each matrix that is at least half zeros as a bitmask of its nonzeros and their values.

    At 80% sparsity an fp16 matrix takes 0.2 * 2 bytes of values plus 1/8 byte of mask per weight, 3.8x
    less than dense. Returns the tensors to save and the shapes of the packed matrices.
    """
    packed, shapes = {}, {}
    for name, tensor in state.items():
        if tensor.dim() == 2 and int((tensor == 0).sum()) * 2 >= tensor.numel():
            nonzero = (tensor != 0).flatten()
            packed[name + NONZERO_BITS] = torch.from_numpy(np.packbits(nonzero.numpy()))
            packed[name + NONZERO_VALUES] = tensor.flatten()[nonzero]
            shapes[name] = list(tensor.shape)
        else:
            packed[name] = tensor
    return packed, shapes


def unpack_sparse(
    packed: dict[str, torch.Tensor], shapes: dict[str, list[int]], source: str
) -> dict[str, torch.Tensor]:
    """The dense state dict of `pack_sparse`'s output: every pruned weight exactly zero again."""
    state = {k: v for k, v in packed.items() if not k.endswith((NONZERO_BITS, NONZERO_VALUES))}
    for name, shape in shapes.items():
        bits, values = packed.get(name + NONZERO_BITS), packed.get(name + NONZERO_VALUES)
        if bits is None or values is None:
            raise CheckpointError(f"{source}: {name} is listed as sparse but its bitmask or values are missing")
        numel = math.prod(shape)
        if bits.numel() != (numel + 7) // 8:  # unpackbits would pad a short mask with zeros
            raise CheckpointError(f"{source}: {name}: a bitmask of {bits.numel()} bytes for {numel} weights")
        nonzero = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
        if int(nonzero.sum()) != values.numel():
            raise CheckpointError(f"{source}: {name}: the bitmask does not match its {values.numel()} values")
        dense = values.new_zeros(numel)
        dense[nonzero] = values
        state[name] = dense.view(shape)
    return state


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight shard is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad or unsafe pickle
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt, or not a plain-tensor PyTorch file ({reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(not_tensors[:5])}")
    return state


def canonical_name(name: str) -> str:
    """Map a checkpoint's weight name onto BertForQuestionAnswering's (old TF names, bare BertModel)."""
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if not name.startswith(("bert.", "qa_outputs.", "cls.")):
        name = "bert." + name
    return name


def load_weights(model: BertForQuestionAnswering, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy a state dict into the model, checking every shape. Returns the names the checkpoint lacked.

    Only the span head may be missing (a base model about to be fine-tuned); it keeps its initialisation.
    """
    state = {canonical_name(k): v for k, v in state.items()}
    own = model.state_dict()
    unexpected = [k for k in state if k not in own and not k.startswith(IGNORED_PREFIXES)]
    if unexpected:
        raise CheckpointError(f"{source}: weights the model does not have: {', '.join(sorted(unexpected)[:5])}")
    for name, tensor in state.items():
        if name in own and tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(own[name].shape)}"
            )
    missing = [k for k in own if k not in state]
    if any(not k.startswith("qa_outputs.") for k in missing):
        raise CheckpointError(f"{source}: weights missing from the checkpoint: {', '.join(missing[:5])}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing


def load_model(directory: Path, head_seed: int = 0) -> BertForQuestionAnswering:
    """Build the model that config.json describes and fill it from the checkpoint's weights (as fp32).

    A checkpoint without a span head gets one initialised from `head_seed`, with a warning.
    """
    config = load_config(directory)
    with torch.random.fork_rng(devices=[]):  # seed the head without touching the caller's RNG
        torch.manual_seed(head_seed)
        model = BertForQuestionAnswering(config)
    missing = load_weights(model, load_state_dict(directory), str(directory))
    if missing:
        warnings.warn(
            f"{directory}: no span head (qa_outputs) in the checkpoint; initialised it randomly (seed {head_seed}). "
            "Fine-tune before trusting its answers.",
            stacklevel=2,
        )
    return model.float().eval()


def interpolate(model: BertForQuestionAnswering, other: BertForQuestionAnswering, weight: float) -> None:
    """Set `model`'s weights to (1 - weight) * its own + weight * `other`'s, tensor by tensor (WiSE-FT).

    Averaging a LengthDrop-trained model with the model it started from keeps much of what LengthDrop gave
    the dropping configurations and gives back much of the full-length accuracy it took (Wortsman et al.
    2022 found the same for robustness); both must share one architecture, token scorers included.
    """
    own, theirs = model.state_dict(), other.state_dict()
    if own.keys() != theirs.keys():
        differing = sorted(own.keys() ^ theirs.keys())
        raise CheckpointError(f"the two models have different weights: {', '.join(differing[:5])}")
    for name, tensor in own.items():
        if tensor.shape != theirs[name].shape:
            raise CheckpointError(
                f"{name} has shape {tuple(tensor.shape)} in one model and {tuple(theirs[name].shape)} in the other"
            )
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.is_floating_point():
                tensor.lerp_(theirs[name].to(tensor.dtype), weight)


def load_tokenizer(directory: Path) -> Tokenizer:
    """The checkpoint's fast WordPiece tokenizer, from tokenizer.json or built from vocab.txt."""
    if (directory / TOKENIZER).is_file():
        try:
            tokenizer = Tokenizer.from_file(str(directory / TOKENIZER))
        except Exception as e:  # tokenizers raises a plain Exception on a bad file
            raise CheckpointError(f"{directory / TOKENIZER}: not a valid tokenizer file ({e})") from None
    elif (directory / VOCAB).is_file():
        settings = {}
        if (directory / TOKENIZER_CONFIG).is_file():
            settings = json.loads((directory / TOKENIZER_CONFIG).read_text())
        tokenizer = BertWordPieceTokenizer(
            WordPiece.read_file(str(directory / VOCAB)),
            lowercase=settings.get("do_lower_case", True),
            strip_accents=settings.get("strip_accents"),
            handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        )._tokenizer
    else:
        raise CheckpointError(f"{directory}: no tokenizer ({TOKENIZER} or {VOCAB})")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def save_checkpoint(
    model: BertForQuestionAnswering,
    tokenizer: Tokenizer,
    directory: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    sparse: bool = False,
) -> Path:
    """Save in the Hugging Face layout (loadable by transformers too); each file is written atomically.

    `sparse` writes the weights compressed (`pack_sparse`) to model.sparse.safetensors instead, which only
    this package reads; it loads back to the same dense weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    if sparse:
        tensors, shapes = pack_sparse(tensors)
        metadata["sparse_shapes"] = json.dumps(shapes)
    weights, other = (SPARSE_SAFETENSORS, SAFETENSORS) if sparse else (SAFETENSORS, SPARSE_SAFETENSORS)
    atomic_write(directory / weights, lambda p: save_file(tensors, p, metadata=metadata))
    (directory / other).unlink(missing_ok=True)  # one set of weights per folder
    # torch_dtype says what the weights are stored as; transformers' pipeline computes in it unless told
    # otherwise (this package always loads them as fp32)
    config = {**model.config.to_dict(), "torch_dtype": str(dtype).removeprefix("torch.")}
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2))
    atomic_write(directory / TOKENIZER, lambda p: tokenizer.save(p))
    atomic_write_text(directory / VOCAB, "".join(f"{token}\n" for token in vocab_lines(tokenizer)))
    lowercase = bool(getattr(tokenizer.normalizer, "lowercase", True))
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase}
    atomic_write_text(directory / TOKENIZER_CONFIG, json.dumps(tokenizer_config, indent=2))
    return directory


def vocab_lines(tokenizer: Tokenizer) -> list[str]:
    """vocab.txt's lines: line i is the token of id i; ids no token uses become [unusedN], as BERT's vocab does."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    return [by_id.get(i, f"[unused{i}]") for i in range(max(by_id) + 1)]
