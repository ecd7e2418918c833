"""SQuAD data files and scoring that reproduces the official SQuAD evaluation scripts.

Reported SQuAD numbers are only comparable when they come from the official scorers
(``evaluate-v1.1.py`` and ``evaluate-v2.0.py``), so this module reimplements their rules exactly:
the same answer normalisation, the same token F1 (which differs between v1.1 and v2.0 on empty
answers), the same maximum over reference answers, and for v2.0 the same no-answer threshold search.

Unlike the scripts, nothing here prints: missing predictions are returned under ``"missing"`` and
problems are raised as exceptions.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import re
import string
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .fileio import atomic_write_text

__all__ = [
    "SquadDataset",
    "SquadQuestion",
    "exact_match_score",
    "f1_score",
    "f1_score_v2",
    "load_predictions",
    "load_squad",
    "normalize_answer",
    "score_predictions",
    "write_predictions",
]

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class SquadQuestion:
    """One question with its paragraph, flattened so that models need not walk the nested JSON."""

    id: str
    question: str
    context: str
    title: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    is_impossible: bool


@dataclass(frozen=True)
class SquadDataset:
    """A SQuAD file: the raw ``data`` list (what the official scorers walk) and its flattened questions.

    ``articles`` always holds exactly the questions in ``questions``, so that scoring a filtered or
    limited dataset scores exactly the questions that were run.
    """

    version: str
    articles: list[dict]
    questions: list[SquadQuestion]

    @property
    def is_v2(self) -> bool:
        """Whether to score with SQuAD v2.0 rules (unanswerable questions, v2.0 F1)."""
        return self.version.startswith("v2") or any(q.is_impossible for q in self.questions)

    def select(self, ids: Iterable[str]) -> SquadDataset:
        """The questions whose id is in `ids`, with `articles` trimmed to them (so scoring covers just those)."""
        wanted = set(ids)
        articles = []
        for article in self.articles:
            paragraphs = [
                {**p, "qas": [qa for qa in p["qas"] if qa["id"] in wanted]}
                for p in article["paragraphs"]
                if any(qa["id"] in wanted for qa in p["qas"])
            ]
            if paragraphs:
                articles.append({**article, "paragraphs": paragraphs})
        return SquadDataset(self.version, articles, [q for q in self.questions if q.id in wanted])

    def split_articles(self, held_out: int) -> tuple[SquadDataset, SquadDataset]:
        """(the rest, the last `held_out` articles): a held-out slice that shares no paragraph with training.

        This is the one held-out rule: `dtb train` evaluates on these articles each epoch and `dtb search`
        measures F1 on them, so a frontier is never searched on questions the model was trained on.
        """
        titles = list(dict.fromkeys(q.title for q in self.questions))
        if not 0 < held_out < len(titles):
            raise ValueError(
                f"cannot hold out {held_out} of {len(titles)} articles: holdout_articles must be >= 1 "
                "(held-out articles, not training ones) and leave at least one article to train on"
            )
        held = set(titles[-held_out:])
        return (
            self.select(q.id for q in self.questions if q.title not in held),
            self.select(q.id for q in self.questions if q.title in held),
        )


# --------------------------------------------------------------------------------------------------
# Reading SQuAD files


def _not_squad(path: str | os.PathLike, reason: str) -> ValueError:
    return ValueError(f"{os.fspath(path)}: not a SQuAD file: {reason}")


def _read_json_bytes(path: str | os.PathLike, what: Callable[[str], ValueError]) -> object:
    """Read a JSON document, gunzipping it when the name ends in .gz or the bytes are gzip."""
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise what("not a regular file")
        raise FileNotFoundError(errno.ENOENT, "file not found", os.fspath(path))
    raw = p.read_bytes()
    if p.name.endswith(".gz") or raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise what(f"not a valid gzip file ({exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise what(f"not UTF-8 text ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise what(f"not valid JSON ({exc})") from exc


def _iter_questions(path: str | os.PathLike, articles: list) -> Iterator[tuple[int, int, dict, SquadQuestion]]:
    """Yield (article index, paragraph index, raw qa dict, parsed question) in file order."""
    for a_idx, article in enumerate(articles):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise _not_squad(path, f"data[{a_idx}] has no 'paragraphs' list")
        title = article.get("title", "")
        for p_idx, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a_idx}].paragraphs[{p_idx}]"
            if (
                not isinstance(paragraph, dict)
                or not isinstance(paragraph.get("context"), str)
                or not isinstance(paragraph.get("qas"), list)
            ):
                raise _not_squad(path, f"{where} lacks a 'context' string or a 'qas' list")
            for q_idx, qa in enumerate(paragraph["qas"]):
                qwhere = f"{where}.qas[{q_idx}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
                    raise _not_squad(path, f"{qwhere} has no string 'id'")
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                    isinstance(a, dict) and isinstance(a.get("text"), str) for a in answers
                ):
                    raise _not_squad(path, f"{qwhere} 'answers' is not a list of {{'text': ...}} objects")
                yield (
                    a_idx,
                    p_idx,
                    qa,
                    SquadQuestion(
                        id=qa["id"],
                        question=str(qa.get("question", "")),
                        context=paragraph["context"],
                        title=str(title),
                        answers=tuple(a["text"] for a in answers),
                        answer_starts=tuple(int(a.get("answer_start", -1)) for a in answers),
                        is_impossible=bool(qa.get("is_impossible", False)),
                    ),
                )


def load_squad(path: str | os.PathLike, answerable_only: bool = False, limit: int | None = None) -> SquadDataset:
    """Read a SQuAD ``.json`` or ``.json.gz`` file.

    ``answerable_only`` drops unanswerable questions (the answerable part of SQuAD v2.0 train is the
    SQuAD v1.1 training set). ``limit`` keeps the first N questions in file order. Either way the
    returned ``articles`` are trimmed to the kept questions (emptied paragraphs and articles are
    dropped; the input dicts are not modified) so that scoring covers exactly those questions.

    Raises FileNotFoundError for a missing file and ValueError("<path>: not a SQuAD file: <reason>")
    for anything that is not gzip/JSON with a SQuAD ``data`` list.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    doc = _read_json_bytes(path, lambda reason: _not_squad(path, reason))
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _not_squad(path, "no top-level 'data' list")
    raw_articles: list = doc["data"]
    version = str(doc.get("version", ""))

    questions: list[SquadQuestion] = []
    # article index -> paragraph index -> kept qa dicts, in file order
    kept: dict[int, dict[int, list[dict]]] = {}
    trimmed = False
    for a_idx, p_idx, qa, question in _iter_questions(path, raw_articles):
        if answerable_only and question.is_impossible:
            trimmed = True
            continue
        if limit is not None and len(questions) >= limit:
            trimmed = True
            break
        questions.append(question)
        kept.setdefault(a_idx, {}).setdefault(p_idx, []).append(qa)

    if not trimmed:
        articles = raw_articles
    else:
        articles = []
        for a_idx, paragraphs in kept.items():
            article = dict(raw_articles[a_idx])
            article["paragraphs"] = [
                {**raw_articles[a_idx]["paragraphs"][p_idx], "qas": qas} for p_idx, qas in paragraphs.items()
            ]
            articles.append(article)
    return SquadDataset(version=version, articles=articles, questions=questions)


# --------------------------------------------------------------------------------------------------
# Official metrics

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Normalise as the official scripts do: lower-case, drop ASCII punctuation, drop a/an/the, squash spaces.

    The steps run in the official order; punctuation is deleted, not replaced by a space, so "The-End" becomes
    "theend" and keeps its "the".
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0 (the same in v1.1 and v2.0)."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of SQuAD v1.1 (a normalised-empty prediction or answer always scores 0)."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def f1_score_v2(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of SQuAD v2.0: when either side is empty after normalisation, 1 if both are, else 0.

    This is what lets an empty prediction ("no answer") score 1 on an unanswerable question.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return _token_f1(pred_tokens, gold_tokens)


def _iter_qas(articles: Iterable[dict]) -> Iterator[dict]:
    for article in articles:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def _score_v1(dataset: SquadDataset, predictions: Mapping[str, str]) -> dict:
    """evaluate-v1.1.py: mean over all questions of max-over-references EM and F1, x100."""
    exact = f1 = 0.0
    total = 0
    missing: list[str] = []
    for qa in _iter_qas(dataset.articles):
        total += 1
        qid = qa["id"]
        if qid not in predictions:
            missing.append(qid)
            continue
        references = [a["text"] for a in qa["answers"]]
        if not references:
            raise ValueError(f"question {qid} has no reference answers; it cannot be scored with SQuAD v1.1 rules")
        prediction = predictions[qid]
        exact += max(exact_match_score(prediction, ref) for ref in references)
        f1 += max(f1_score(prediction, ref) for ref in references)
    if total == 0:
        raise ValueError("cannot score a dataset with no questions")
    return {
        "exact_match": 100.0 * exact / total,
        "f1": 100.0 * f1 / total,
        "total": total,
        "missing": missing,
    }


def _best_threshold(
    predictions: Mapping[str, str],
    raw_scores: dict[str, float],
    na_probs: Mapping[str, float],
    has_answer: dict[str, bool],
    total: int,
) -> tuple[float, float]:
    """evaluate-v2.0.py's find_best_thresh: sweep the no-answer threshold over the sorted na_probs.

    Starting from "answer nothing" (every unanswerable question right), questions are switched to
    answered in increasing na_prob order and the best running score is kept. Questions without a
    prediction (not in ``raw_scores``) count 0 throughout.
    """
    score = float(sum(1 for qid, has in has_answer.items() if not has and qid in raw_scores))
    best_score, best_thresh = score, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in raw_scores:
            continue
        if has_answer[qid]:
            score += raw_scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best_score:
            best_score, best_thresh = score, na_probs[qid]
    return 100.0 * best_score / total, float(best_thresh)


def _score_v2(
    dataset: SquadDataset,
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None,
    na_prob_threshold: float,
) -> dict:
    """evaluate-v2.0.py, except that questions without a prediction score 0 instead of crashing it."""
    has_answer: dict[str, bool] = {}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    missing: list[str] = []
    for qa in _iter_qas(dataset.articles):
        qid = qa["id"]
        has_answer[qid] = bool(qa["answers"])
        references = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        if qid not in predictions:
            missing.append(qid)
            continue
        prediction = predictions[qid]
        exact_raw[qid] = max(exact_match_score(prediction, ref) for ref in references)
        f1_raw[qid] = max(f1_score_v2(prediction, ref) for ref in references)
    total = len(has_answer)
    if total == 0:
        raise ValueError("cannot score a dataset with no questions")

    if na_probs is not None:
        lacking = [qid for qid in exact_raw if qid not in na_probs]
        if lacking:
            raise ValueError(f"na_probs has no value for {len(lacking)} predicted question(s), e.g. {lacking[:5]}")

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        if na_probs is None:
            return dict(raw)
        return {qid: (float(not has_answer[qid]) if na_probs[qid] > na_prob_threshold else s) for qid, s in raw.items()}

    exact = thresholded(exact_raw)
    f1 = thresholded(f1_raw)

    def summary(qids: list[str], prefix: str = "") -> dict:
        n = len(qids)
        return {
            f"{prefix}exact": 100.0 * sum(exact.get(q, 0.0) for q in qids) / n,
            f"{prefix}f1": 100.0 * sum(f1.get(q, 0.0) for q in qids) / n,
            f"{prefix}total": n,
        }

    result = summary(list(has_answer))
    has_ans_qids = [qid for qid, has in has_answer.items() if has]
    no_ans_qids = [qid for qid, has in has_answer.items() if not has]
    if has_ans_qids:
        result.update(summary(has_ans_qids, "HasAns_"))
    if no_ans_qids:
        result.update(summary(no_ans_qids, "NoAns_"))
    if na_probs is not None:
        best_exact, best_exact_thresh = _best_threshold(predictions, exact_raw, na_probs, has_answer, total)
        best_f1, best_f1_thresh = _best_threshold(predictions, f1_raw, na_probs, has_answer, total)
        result["best_exact"] = best_exact
        result["best_exact_thresh"] = best_exact_thresh
        result["best_f1"] = best_f1
        result["best_f1_thresh"] = best_f1_thresh
    result["missing"] = missing
    return result


def score_predictions(
    dataset: SquadDataset,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_threshold: float = 1.0,
) -> dict:
    """Score ``{question id: answer text}`` exactly as the official script for the dataset's version.

    v1.1 datasets give ``exact_match``, ``f1`` (percentages), ``total`` and ``missing``, as
    evaluate-v1.1.py. v2.0 datasets give evaluate-v2.0.py's ``exact``, ``f1``, ``total``,
    ``HasAns_*`` and ``NoAns_*`` (left out when that group is empty), and with ``na_probs``
    (question id -> probability of no answer) the thresholded scores plus ``best_exact``,
    ``best_exact_thresh``, ``best_f1`` and ``best_f1_thresh``; an empty prediction means "no answer".

    Questions without a prediction are listed under ``missing`` and score 0 (and count 0 in the
    threshold search). evaluate-v1.1.py does the same; evaluate-v2.0.py would instead crash on them
    (or, without answerable/unanswerable groups, leave them out of ``total``). Predictions for ids that
    are not in the dataset are ignored, as both scripts do.
    """
    if dataset.is_v2:
        return _score_v2(dataset, predictions, na_probs, na_prob_threshold)
    if na_probs is not None:
        raise ValueError("na_probs only applies to SQuAD v2.0 datasets; this dataset is v1.1")
    return _score_v1(dataset, predictions)


# --------------------------------------------------------------------------------------------------
# Prediction files


def write_predictions(path: str | os.PathLike, predictions: dict[str, str]) -> None:
    """Write ``{question id: answer text}`` in the official predictions.json format.

    The file is written to a temporary name in the same directory and renamed over ``path``, so a
    reader never sees a half-written file.
    """
    for qid, text in predictions.items():
        if not isinstance(qid, str) or not isinstance(text, str):
            raise TypeError(f"predictions must map str to str; got {qid!r}: {text!r}")
    atomic_write_text(path, json.dumps(predictions, ensure_ascii=False))


def load_predictions(path: str | os.PathLike) -> dict[str, str]:
    """Read a predictions.json (``{question id: answer text}``; ``.gz`` accepted), checking its shape."""
    return _read_id_map(path, "predictions", "answer text", lambda text: isinstance(text, str), "a string")


def load_na_probs(path: str | os.PathLike) -> dict[str, float]:
    """Read SQuAD 2.0 no-answer probabilities (``{question id: probability}``), checking their shape."""

    def is_number(prob: object) -> bool:
        return not isinstance(prob, bool) and isinstance(prob, int | float) and math.isfinite(prob)

    probs = _read_id_map(path, "no-answer probabilities", "probability", is_number, "a number")
    return {qid: float(prob) for qid, prob in probs.items()}


def _read_id_map(path: str | os.PathLike, kind: str, value: str, valid: Callable[[object], bool], want: str) -> dict:
    """A JSON object of question id -> `value`; every value `valid`, or a ValueError naming the file and id."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"{os.fspath(path)}: not a {kind} file: {reason}")

    doc = _read_json_bytes(path, bad)
    if not isinstance(doc, dict):
        raise bad(f"expected a JSON object of question id -> {value}, got {type(doc).__name__}")
    for qid, item in doc.items():
        if not valid(item):
            raise bad(f"{value.split()[0]} for {qid!r} is {type(item).__name__}, not {want}")
    return doc
