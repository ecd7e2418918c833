"""dynamic-tinybert: extractive question answering that trades a little accuracy for a lot of speed.

A BERT question-answering model whose layers keep fewer and fewer tokens (Drop-and-Restore), chosen per
call by a `LengthConfig`, behind a callable shaped like the transformers question-answering pipeline.
"""

from .checkpoint import CheckpointError
from .length_config import LengthConfig, LengthConfigError
from .model import BertConfig, BertForQuestionAnswering
from .options import AnswerOptions
from .pipeline import QuestionAnswerer

__all__ = [
    "AnswerOptions",
    "BertConfig",
    "BertForQuestionAnswering",
    "CheckpointError",
    "LengthConfig",
    "LengthConfigError",
    "QuestionAnswerer",
]
__version__ = "0.1.0"
