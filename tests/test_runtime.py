"""Freed activation memory kept for reuse, when asked: repeated forward passes stop costing page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from dynamic_tinybert.runtime import keep_freed_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# ten forward passes of a small BERT over 16 x 200 tokens; prints the minor page faults they cost
FORWARD_PASSES = """
import resource, sys, torch
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.model import BertConfig, BertForQuestionAnswering
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
config = BertConfig(vocab_size=100, hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_hidden_layers=2)
model = BertForQuestionAnswering(config).eval()
ids = torch.randint(5, 100, (16, 200))
with torch.inference_mode():
    model(ids)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model(ids)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FORWARD_PASSES, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@glibc_only
@pytest.mark.slow
def test_keeping_freed_memory_spares_repeated_forward_passes_most_of_their_page_faults():
    default, kept = page_faults("default"), page_faults("keep")
    assert kept * 5 < default, (kept, default)  # measured here: 3,200 against 66,881


@glibc_only
def test_it_applies_once_and_reports_success():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_loading_a_model_and_answering_leave_mallocs_settings_alone(tiny_checkpoint):
    """A threaded server keeps glibc's defaults: only the CLI's long batch jobs opt in."""
    script = (
        "import sys; from dynamic_tinybert import QuestionAnswerer, runtime; "
        "qa = QuestionAnswerer.from_pretrained(sys.argv[1]); qa(question='who lives in paris ?', "
        "context='bob lives in paris .'); print(runtime._kept)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_checkpoint)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
