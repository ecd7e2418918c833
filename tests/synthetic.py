"""A synthetic question-answering task a tiny model can learn in seconds: who lives where.

context:  "carol lives in rome . alice lives in oslo . bob lives in paris ."
question: "where does alice live ?" -> "oslo"      "who lives in paris ?" -> "bob"
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dynamic_tinybert.squad import SquadDataset, SquadQuestion

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "henry"]
CITIES = ["paris", "london", "berlin", "rome", "madrid", "vienna", "oslo", "athens"]


def synthetic_dataset(questions: int, seed: int, facts: int = 4, prefix: str = "q") -> SquadDataset:
    """`questions` questions, each about one of `facts` facts stated in its own context."""
    rng = random.Random(seed)
    paragraphs, flat = [], []
    for i in range(questions):
        names, cities = rng.sample(NAMES, facts), rng.sample(CITIES, facts)
        context = " ".join(f"{name} lives in {city} ." for name, city in zip(names, cities))
        k = rng.randrange(facts)
        fact_start = context.index(f"{names[k]} lives in {cities[k]}")
        if rng.random() < 0.5:
            question, answer = f"where does {names[k]} live ?", cities[k]
            start = fact_start + len(f"{names[k]} lives in ")
        else:
            question, answer, start = f"who lives in {cities[k]} ?", names[k], fact_start
        qid = f"{prefix}{seed}-{i}"
        qa = {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}
        paragraphs.append({"context": context, "qas": [qa]})
        flat.append(SquadQuestion(qid, question, context, "synthetic", (answer,), (start,), False))
    return SquadDataset("1.1", [{"title": "synthetic", "paragraphs": paragraphs}], flat)


def write_squad_file(dataset: SquadDataset, path: Path) -> Path:
    path.write_text(json.dumps({"version": dataset.version, "data": dataset.articles}))
    return path
