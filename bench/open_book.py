"""Open-book SQuAD: every dev question against all dev paragraphs, through a BM25 index and the reader.

What it measures, on SQuAD v1.1 dev with all its paragraphs indexed (`retrieval.Retriever`, saved and
loaded memory-mapped):
- retrieval recall@k (a gold answer appears in a retrieved passage), every dev question;
- the reader (`reading.rank_answers`) over the top k = 5, 10, 20 passages, at full length and at frontier
  budgets: EM, F1 and questions/s (tokenising, model and ranking; retrieval not counted), the first
  --reader-limit questions, beside the same questions read from their own paragraph (the ceiling);
- the top answer's F1 under three scores on the same logits: the pipeline's per-window softmax, Haystack's
  raw start + end sum, and this project's margin over [CLS] (the calibrated score);
- calibration: scale and bias fitted on TRAINING articles the shipped model did not train on (train-v2.0's
  last 2 articles with answerable questions, its held-out split, and those with unanswerable questions
  only): the top answers of --fit-limit answerable questions read over the top 5 passages of an index of
  those articles and as many other training paragraphs as make the pool as large as dev's (retrieval as
  hard); then the expected calibration error of the top answer's score on dev, with a bootstrap interval;
- SQuAD v2.0 through the same path: the no-answer threshold chosen on those held-out training questions
  (the answerable ones and --fit-limit / 2 unanswerable ones), then HasAns / NoAns F1 on the first
  --v2-limit dev-v2.0 questions against all dev-v2.0 paragraphs.

    python bench/open_book.py --threads 1 --precision bf16 --reader-limit 200 --output bench/results/open-book
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.checkpoint import DEFAULT_MODEL
from dynamic_tinybert.decoding import decode_answers
from dynamic_tinybert.features import Window
from dynamic_tinybert.precision import PRECISIONS
from dynamic_tinybert.reading import (
    Document,
    ScoreCalibration,
    expected_calibration_error,
    fit_score_calibration,
    rank_answers,
    save_score_calibration,
)
from dynamic_tinybert.retrieval import Retriever, split_passages
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import SquadDataset, exact_match_score, load_squad, score_predictions

MAX_ANSWER_LEN = 30  # as `dtb eval` and bench/squad_dev.py read SQuAD
PASSAGE_CHARS = 5000  # longer than any SQuAD paragraph: one passage per paragraph
HELD_OUT_ARTICLES = 2  # the shipped model's held-out training articles (its model card)
UNFITTED = ScoreCalibration()  # margins are what the fit needs; the scale is refitted
HAYSTACK = ScoreCalibration(scale=0.1, bias=0.0, null_weight=0.0)  # ExtractiveReader's score


def paragraphs(dataset: SquadDataset) -> list[str]:
    return [p["context"] for article in dataset.articles for p in article["paragraphs"]]


def paragraph_index(dataset: SquadDataset, name: str, folder: Path, distractors: list[str] = ()) -> Retriever:
    """Every paragraph of the file as one passage (and `distractors` beside them), indexed, saved and
    loaded back memory-mapped."""
    texts = paragraphs(dataset) + list(distractors)
    passages = [p for i, text in enumerate(texts) for p in split_passages(text, name, str(i), 1, PASSAGE_CHARS)]
    Retriever.build(passages, passage_chars=PASSAGE_CHARS).save(folder / name)
    return Retriever.load(folder / name)


def held_out(train_file: Path, pool: int) -> tuple[SquadDataset, list[str]]:
    """The training articles the shipped model did not train on: the last HELD_OUT_ARTICLES of those with
    answerable questions (its held-out split) and those with none (it trained on answerable questions only);
    and paragraphs of the other articles, drawn at random, to fill a pool of `pool` passages, so that
    retrieving from it is as hard as from dev's."""
    train = load_squad(train_file)
    trained, _ = load_squad(train_file, answerable_only=True).split_articles(HELD_OUT_ARTICLES)
    seen = {q.title for q in trained.questions}
    held = train.select(q.id for q in train.questions if q.title not in seen)
    others = paragraphs(trained)
    rng = np.random.default_rng(0)
    count = max(0, min(len(others), pool - len(paragraphs(held))))
    return held, [others[i] for i in sorted(rng.choice(len(others), count, replace=False))]


def retrieve_all(retriever: Retriever, dataset: SquadDataset, k: int) -> tuple[list[list[Document]], float]:
    started = time.perf_counter()
    found = [[Document(p.id, p.text) for p, _ in retriever.retrieve(q.question, k)] for q in dataset.questions]
    return found, time.perf_counter() - started


def recall(dataset: SquadDataset, retrieved: list[list[Document]], ks: list[int]) -> dict:
    hits = {k: 0 for k in ks}
    for question, documents in zip(dataset.questions, retrieved):
        rank = next((r for r, d in enumerate(documents) if any(a in d.text for a in question.answers)), None)
        for k in ks:
            hits[k] += rank is not None and rank < k
    return {f"recall@{k}": round(100 * hits[k] / len(dataset.questions), 2) for k in ks}


@dataclass
class Reading:
    """One question's retrieved documents, windowed in bands of rank (so each k is timed on its own)."""

    documents: list[Document]
    bands: list[list[Window]]  # windows of the documents ranked [0, k1), [k1, k2), ...
    tokenise_seconds: list[float]


def window_bands(qa: QuestionAnswerer, questions, retrieved, ks: list[int]) -> list[Reading]:
    readings = []
    for question, documents in zip(questions, retrieved):
        bands, seconds = [], []
        for low, high in zip([0, *ks[:-1]], ks):
            started = time.perf_counter()
            band = qa.document_windows(question.question, documents[low:high]) if documents[low:high] else []
            bands.append([replace(w, example=w.example + low) for w in band])
            seconds.append(time.perf_counter() - started)
        readings.append(Reading(documents, bands, seconds))
    return readings


def band_logits(qa: QuestionAnswerer, readings: list[Reading], config, batch_size: int):
    """Logits of every band of every question (batched across questions, band by band) and each band's seconds."""
    logits = [[None] * len(r.bands) for r in readings]
    seconds = []
    for b in range(len(readings[0].bands)):
        windows = [w for r in readings for w in r.bands[b]]
        started = time.perf_counter()
        starts, ends = qa.logits(windows, config, batch_size) if windows else ([], [])
        seconds.append(time.perf_counter() - started)
        position = 0
        for q, reading in enumerate(readings):
            n = len(reading.bands[b])
            logits[q][b] = (starts[position : position + n], ends[position : position + n])
            position += n
    return logits, seconds


def up_to(reading: Reading, logits, bands: int):
    windows = [w for band in reading.bands[:bands] for w in band]
    starts = [s for b in range(bands) for s in logits[b][0]]
    ends = [e for b in range(bands) for e in logits[b][1]]
    return windows, starts, ends


def ranked(reading: Reading, logits, bands: int, k: int, calibration: ScoreCalibration, top_k: int = 5) -> dict:
    windows, starts, ends = up_to(reading, logits, bands)
    return rank_answers(
        windows, starts, ends, reading.documents[:k], top_k, MAX_ANSWER_LEN, calibration=calibration
    )


def pipeline_top(reading: Reading, logits, bands: int, k: int) -> str:
    """The top answer as the transformers pipeline would rank answers from several contexts: by its score."""
    windows, starts, ends = up_to(reading, logits, bands)
    best = (-1.0, "")
    for d, document in enumerate(reading.documents[:k]):
        mine = [i for i, w in enumerate(windows) if w.example == d]
        if not mine:
            continue
        answers = decode_answers(
            document.text,
            [windows[i] for i in mine],
            [starts[i] for i in mine],
            [ends[i] for i in mine],
            max_answer_len=MAX_ANSWER_LEN,
        )
        if answers and answers[0]["score"] > best[0]:
            best = (answers[0]["score"], answers[0]["answer"])
    return best[1]


def v1_scores(dataset: SquadDataset, predictions: dict) -> dict:
    metrics = score_predictions(dataset, predictions)
    return {"em": round(metrics["exact_match"], 2), "f1": round(metrics["f1"], 2)}


def right(question, answer: str) -> bool:
    return any(exact_match_score(answer, gold) for gold in question.answers)


def ece_interval(scores: list[float], correct: list[bool], draws: int = 1000) -> tuple[float, float]:
    """The 95% bootstrap interval of the expected calibration error: how much of it is sampling noise."""
    rng = np.random.default_rng(0)
    scores, correct = np.asarray(scores), np.asarray(correct)
    resamples = rng.integers(0, len(scores), (draws, len(scores)))
    samples = [expected_calibration_error(scores[i], correct[i]) for i in resamples]
    low, high = np.percentile(samples, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def reliability(scores: list[float], correct: list[bool], bins: int = 5) -> list[dict]:
    scores, correct = np.asarray(scores), np.asarray(correct, dtype=float)
    which = np.minimum((scores * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append(
                {
                    "scores": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                    "answers": int(members.sum()),
                    "mean_score": round(float(scores[members].mean()), 3),
                    "right": round(float(correct[members].mean()), 3),
                }
            )
    return rows


def measure(args) -> dict:
    qa = QuestionAnswerer.from_pretrained(args.model, precision=args.precision, max_answer_len=MAX_ANSWER_LEN)
    ks = sorted(args.ks)
    folder = Path(tempfile.mkdtemp(prefix="open-book-"))
    result: dict = {"model": "shipped model" if args.model is None else str(args.model), "ks": ks}

    # 1. calibration and no-answer threshold on held-out training articles
    dev = load_squad(args.dev)
    held, distractors = held_out(args.train, len(paragraphs(dev)))
    held_index = paragraph_index(held, "held-out", folder, distractors)
    answerable = [q.id for q in held.questions if not q.is_impossible][: args.fit_limit]
    unanswerable = [q.id for q in held.questions if q.is_impossible][: args.fit_limit // 2]
    fit = held.select(answerable + unanswerable)
    fit_docs, _ = retrieve_all(held_index, fit, 5)
    fit_readings = window_bands(qa, fit.questions, fit_docs, [5])
    fit_logits, _ = band_logits(qa, fit_readings, None, args.batch_size)
    fit_ranked = [ranked(r, lg, 1, 5, UNFITTED) for r, lg in zip(fit_readings, fit_logits)]
    margins, correct = [], []
    for question, answers in zip(fit.questions, fit_ranked):
        if not question.is_impossible and answers["answers"]:
            margins.append(answers["answers"][0]["margin"])
            correct.append(right(question, answers["answers"][0]["answer"]))
    fitted_on = (
        f"{args.train.name}, articles the model did not train on: top answers of {len(margins)} answerable "
        f"questions over the top 5 of {len(held_index)} passages ({len(distractors)} from other articles)"
    )
    calibration = fit_score_calibration(margins, correct, fitted_on=fitted_on)
    if args.save_calibration is not None:
        save_score_calibration(args.save_calibration, calibration)
    na_probs, predictions = {}, {}
    for question, answers in zip(fit.questions, fit_ranked):
        scores = [float(calibration(a["margin"])) for a in answers["answers"]]
        na_probs[question.id] = float(np.prod([1 - s for s in scores])) if scores else 1.0
        predictions[question.id] = answers["answers"][0]["answer"] if answers["answers"] else ""
    threshold = score_predictions(fit, predictions, na_probs=na_probs)["best_f1_thresh"]
    result["calibration"] = {**calibration.to_dict(), "no_answer_threshold": round(threshold, 4)}
    print(result["calibration"], flush=True)

    # 2. retrieval over all dev paragraphs
    dev_index = paragraph_index(dev, "dev-v1.1", folder)
    retrieved, seconds = retrieve_all(dev_index, dev, max(ks))
    result["retrieval"] = {
        "questions": len(dev.questions),
        "passages": len(dev_index),
        **recall(dev, retrieved, [1, *ks]),
        "queries_per_second": round(len(dev.questions) / seconds, 1),
    }
    print(result["retrieval"], flush=True)

    # 3. the reader on the first questions, at each length and k
    reader = dev.select(q.id for q in dev.questions[: args.reader_limit])
    readings = window_bands(qa, reader.questions, retrieved[: len(reader.questions)], ks)
    single = qa.run([q.question for q in reader.questions], [q.context for q in reader.questions]).answers
    result["ceiling"] = v1_scores(reader, {q.id: a[0]["answer"] for q, a in zip(reader.questions, single)})
    rows, scoring, calibration_rows = [], [], []
    for name, budget in [("full length", None), *[(f"budget {b}", b) for b in args.budgets]]:
        config = qa.length_config_for(qa.options(budget=budget))
        logits, band_seconds = band_logits(qa, readings, config, args.batch_size)
        for bands, k in enumerate(ks, start=1):
            started = time.perf_counter()
            answers = [ranked(r, lg, bands, k, calibration) for r, lg in zip(readings, logits)]
            seconds = time.perf_counter() - started + sum(band_seconds[:bands])
            seconds += sum(sum(r.tokenise_seconds[:bands]) for r in readings)
            top = {q.id: a["answers"][0]["answer"] if a["answers"] else "" for q, a in zip(reader.questions, answers)}
            rows.append(
                {
                    "length": name,
                    "length_config": str(config or "full"),
                    "k": k,
                    **v1_scores(reader, top),
                    "questions_per_second": round(len(reader.questions) / seconds, 2),
                }
            )
            print(rows[-1], flush=True)
            if budget is not None:
                continue
            pipeline = {q.id: pipeline_top(r, lg, bands, k) for q, r, lg in zip(reader.questions, readings, logits)}
            haystack = [ranked(r, lg, bands, k, HAYSTACK, top_k=1) for r, lg in zip(readings, logits)]
            raw = {q.id: a["answers"][0]["answer"] if a["answers"] else "" for q, a in zip(reader.questions, haystack)}
            scoring.append(
                {
                    "k": k,
                    "pipeline_f1": v1_scores(reader, pipeline)["f1"],
                    "haystack_raw_sum_f1": v1_scores(reader, raw)["f1"],
                    "margin_f1": rows[-1]["f1"],
                }
            )
            tops = [(q, a["answers"][0]) for q, a in zip(reader.questions, answers) if a["answers"]]
            scores = [a["score"] for _, a in tops]
            rights = [right(q, a["answer"]) for q, a in tops]
            haystack_tops = [(q, a["answers"][0]) for q, a in zip(reader.questions, haystack) if a["answers"]]
            haystack_scores = [a["score"] for _, a in haystack_tops]
            haystack_rights = [right(q, a["answer"]) for q, a in haystack_tops]
            calibration_rows.append(
                {
                    "k": k,
                    "answers": len(tops),
                    "right": round(100 * float(np.mean(rights)), 2),
                    "mean_score": round(float(np.mean(scores)), 3),
                    "ece": round(expected_calibration_error(scores, rights), 4),
                    "ece_95": ece_interval(scores, rights),
                    "haystack_ece": round(expected_calibration_error(haystack_scores, haystack_rights), 4),
                    "bins": reliability(scores, rights),
                }
            )
    result["reader"] = {"questions": len(reader.questions), "rows": rows}
    result["scoring"] = scoring
    result["calibration_dev"] = calibration_rows

    # 4. SQuAD v2.0 dev through the same path, the threshold chosen on the held-out training questions
    dev2 = load_squad(args.dev_v2)
    dev2_index = paragraph_index(dev2, "dev-v2.0", folder)
    slice2 = dev2.select(q.id for q in dev2.questions[: args.v2_limit])
    docs2, _ = retrieve_all(dev2_index, slice2, 5)
    readings2 = window_bands(qa, slice2.questions, docs2, [5])
    logits2, _ = band_logits(qa, readings2, None, args.batch_size)
    predictions2, na_probs2 = {}, {}
    for question, reading, lg in zip(slice2.questions, readings2, logits2):
        answers = ranked(reading, lg, 1, 5, calibration)
        predictions2[question.id] = answers["answers"][0]["answer"] if answers["answers"] else ""
        na_probs2[question.id] = answers["no_answer"]
    metrics = score_predictions(slice2, predictions2, na_probs=na_probs2, na_prob_threshold=threshold)
    result["v2"] = {
        "questions": len(slice2.questions),
        "passages": len(dev2_index),
        "k": 5,
        **{key: round(metrics[key], 2) for key in ("f1", "exact", "HasAns_f1", "NoAns_f1") if key in metrics},
        "HasAns_total": metrics.get("HasAns_total"),
        "NoAns_total": metrics.get("NoAns_total"),
        "threshold": round(threshold, 4),
    }
    print(result["v2"], flush=True)
    result["machine"] = (
        f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.precision}, "
        f"batch {args.batch_size}"
    )
    return result


def markdown(result: dict) -> str:
    r, reader, v2 = result["retrieval"], result["reader"], result["v2"]
    ks = result["ks"]
    cal = result["calibration"]
    lines = [
        "# Open-book SQuAD: every question against all dev paragraphs",
        "",
        f"{result['model']}; {result['machine']}. Reader, scoring and calibration rows: the first "
        f"{reader['questions']} dev questions (of {r['questions']:,}); retrieval: all of them.",
        "",
        f"## Retrieval (BM25, {r['passages']:,} passages, {r['queries_per_second']:.0f} queries/s)",
        "",
        "| " + " | ".join(f"recall@{k}" for k in [1, *ks]) + " |",
        "|" + "---|" * (len(ks) + 1),
        "| " + " | ".join(f"{r[f'recall@{k}']:.2f}" for k in [1, *ks]) + " |",
        "",
        "## Reader over the top k passages",
        "",
        f"Ceiling, each question read from its own paragraph: EM {result['ceiling']['em']:.2f}, "
        f"F1 {result['ceiling']['f1']:.2f}. Questions/s count tokenising, the model and ranking, not retrieval.",
        "",
        "| length | keep ratios | k | EM | F1 | questions/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in reader["rows"]:
        lines.append(
            f"| {row['length']} | {row['length_config']} | {row['k']} | {row['em']:.2f} | {row['f1']:.2f} "
            f"| {row['questions_per_second']:.1f} |"
        )
    lines += [
        "",
        "## Cross-document scoring: F1 of the top answer, same logits (full length)",
        "",
        "| k | pipeline (per-window softmax) | Haystack (raw start + end) | margin over [CLS] (this project) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['k']} | {s['pipeline_f1']:.2f} | {s['haystack_raw_sum_f1']:.2f} | {s['margin_f1']:.2f} |"
        for s in result["scoring"]
    ]
    lines += [
        "",
        f"## Calibration (fitted on {cal['fitted_on']}: scale {cal['scale']:.4f}, bias {cal['bias']:.4f})",
        "",
        "| k | top answers | right (EM) % | mean score | ECE (10 bins) | its 95% bootstrap interval "
        "| ECE of Haystack's score |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['k']} | {c['answers']} | {c['right']:.2f} | {c['mean_score']:.3f} | {c['ece']:.4f} "
        f"| {c['ece_95'][0]:.4f}-{c['ece_95'][1]:.4f} | {c['haystack_ece']:.4f} |"
        for c in result["calibration_dev"]
    ]
    last = result["calibration_dev"][-1]
    lines += ["", f"Reliability at k = {last['k']}:", "", "| score | answers | mean score | right |"]
    lines += ["|---|---|---|---|"]
    lines += [f"| {b['scores']} | {b['answers']} | {b['mean_score']:.3f} | {b['right']:.3f} |" for b in last["bins"]]
    lines += [
        "",
        f"## SQuAD v2.0 dev, open book (first {v2['questions']} questions, {v2['passages']:,} passages, k = 5)",
        "",
        f"No-answer threshold {v2['threshold']:.4f} on the no-answer probability, chosen on the held-out "
        "training questions (answerable and not) to maximise their F1.",
        "",
        "| F1 | EM | HasAns F1 | NoAns F1 |",
        "|---|---|---|---|",
        f"| {v2['f1']:.2f} | {v2['exact']:.2f} | {v2.get('HasAns_f1', float('nan')):.2f} "
        f"({v2['HasAns_total']}) | {v2.get('NoAns_f1', float('nan')):.2f} ({v2['NoAns_total']}) |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", type=Path, help=f"checkpoint directory (default: the shipped {DEFAULT_MODEL.name})")
    add_data_arg(parser, "dev-v1.1.json.gz", "--dev", "SQuAD v1.1 dev")
    add_data_arg(parser, "dev-v2.0.json.gz", "--dev-v2", "SQuAD v2.0 dev")
    add_data_arg(parser, "train-v2.0.json.gz", "--train", "SQuAD v2.0 train (its last articles fit the calibration)")
    parser.add_argument("--reader-limit", type=int, default=200, help="dev questions the reader answers")
    parser.add_argument("--fit-limit", type=int, default=400, help="held-out answerable training questions to fit on")
    parser.add_argument("--v2-limit", type=int, default=200, help="dev-v2.0 questions")
    parser.add_argument("--ks", type=lambda t: [int(k) for k in t.split(",")], default=[5, 10, 20])
    parser.add_argument("--budgets", type=lambda t: [float(b) for b in t.split(",") if b], default=[0.7, 0.55])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="encoder Linear layers (CPU)")
    parser.add_argument("--save-calibration", type=Path, help="write the fitted answer_scores.json to this folder")
    add_run_args(parser, output_required=False)
    args = parse_args(parser)
    keep_freed_memory()
    result = measure(args)
    show_result(args.output, markdown(result), result, args.model or DEFAULT_MODEL)


if __name__ == "__main__":
    main()
