"""Answer scores for generated text: SQuAD v1.1 exact match and token F1, each a max over gold answers.

Both compare *normalised* strings. The normalisation is the official SQuAD v1.1 one, applied in this
order: lowercase; delete every ASCII punctuation character (``string.punctuation``, so "U.S." -> "us"
and "well-known" -> "wellknown"); delete the whole words "a", "an", "the"; collapse runs of
whitespace to one space and strip the ends.

With ``p`` and ``g`` the normalised prediction and gold split on spaces, and ``c`` the size of their
multiset intersection: EM = [p == g]; F1 = 2 P R / (P + R) with P = c / |p|, R = c / |g|, and F1 = 0
when c = 0 (as in the official v1.1 script, which also gives 0 when both are empty).
"""
from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation (see the module docstring)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(answers) -> list[str]:
    golds = [answers] if isinstance(answers, str) else list(answers)
    if not golds:
        raise ValueError("no gold answers to score against: every sample needs at least one answer.")
    return golds


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answers) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    return max(_exact(prediction, g) for g in _golds(answers))


def f1_score(prediction: str, answers) -> float:
    """Token F1 of the normalised prediction against each gold answer; the best one."""
    return max(_f1(prediction, g) for g in _golds(answers))


def squad_scores(predictions: list[str], answers: list) -> dict[str, list[float]]:
    """Per-sample ``{"exact_match": [...], "f1": [...]}``; ``answers[i]`` is a string or a list of strings."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists: pass one "
                         f"answer list per prediction.")
    return {"exact_match": [exact_match(p, a) for p, a in zip(predictions, answers)],
            "f1": [f1_score(p, a) for p, a in zip(predictions, answers)]}
