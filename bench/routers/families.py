"""Pre-router families: from the request alone, the probability that a cheaper tier's answer is good enough.

Each family is registered in bench.registry.ROUTER_FAMILIES and describes itself. A family fits JSON-safe
parameters (no pickle: vocabularies, weights and isotonic knots as lists) and scores requests with one function,
`raw`, used alike by calibration replay and by bench.router, so both make identical decisions. Scores become
probabilities through isotonic regression fitted on cross-fitted (out-of-fold) scores.

- rules: longer requests are harder (length in bench's word tokens), and a request matching one of the suite's
  `prerouter.hard_patterns` is sent past the cheaper tier;
- tfidf: scikit-learn TF-IDF (words and word pairs) with logistic regression;
- embedding: logistic regression on llama.cpp mean-pooled embeddings of a catalog model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.routers.features import word_count

FOLDS = 5
HARD = -1e9  # the rules family's raw score for a request matching a hard pattern


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    needs_embedding: bool = False

    def fit(self, texts: list[str], emb: np.ndarray | None, y: np.ndarray, options: dict[str, Any]) -> dict:
        raise NotImplementedError

    def raw(self, params: dict, texts: list[str], emb: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


def _constant(y: np.ndarray) -> dict | None:
    """Parameters of a constant score when the labels cannot teach a classifier anything."""
    if y.size == 0 or np.all(y == y[0]):
        return {"constant": float(y[0]) if y.size else 0.0}
    return None


def _logistic(X: Any, y: np.ndarray) -> tuple[list[float], float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=2000, random_state=0)
    model.fit(X, y.astype(int))
    return [float(c) for c in model.coef_[0]], float(model.intercept_[0])


class Rules(Family):
    def fit(self, texts, emb, y, options):
        return {"hard_patterns": list(options.get("hard_patterns") or [])}

    def raw(self, params, texts, emb):
        patterns = [re.compile(p) for p in params.get("hard_patterns") or []]
        return np.array([HARD if any(p.search(t) for p in patterns) else -float(word_count(t)) for t in texts])


TOKEN_PATTERN = r"(?u)\b\w+\b"
NGRAMS = (1, 2)


class Tfidf(Family):
    def fit(self, texts, emb, y, options):
        if (c := _constant(y)) is not None:
            return c
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, token_pattern=TOKEN_PATTERN,
                              max_features=20000)
        X = vec.fit_transform(texts)
        coef, intercept = _logistic(X, y)
        vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
        return {"vocabulary": vocab, "idf": [float(v) for v in vec.idf_], "coef": coef, "intercept": intercept,
                "ngram_range": list(NGRAMS), "token_pattern": TOKEN_PATTERN, "sublinear_tf": True,
                "lowercase": True}

    def raw(self, params, texts, emb):
        if "constant" in params:
            return np.full(len(texts), params["constant"])
        from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

        counts = CountVectorizer(ngram_range=tuple(params["ngram_range"]), token_pattern=params["token_pattern"],
                                 lowercase=params["lowercase"],
                                 vocabulary={t: i for i, t in enumerate(params["vocabulary"])})
        tfidf = TfidfTransformer(sublinear_tf=params["sublinear_tf"])
        tfidf.idf_ = np.asarray(params["idf"], dtype=np.float64)
        X = tfidf.transform(counts.transform(texts))
        return np.asarray(X @ np.asarray(params["coef"], dtype=np.float64)).reshape(-1) + params["intercept"]


class Embedding(Family):
    def fit(self, texts, emb, y, options):
        if (c := _constant(y)) is not None:
            return c
        coef, intercept = _logistic(emb, y)
        return {"coef": coef, "intercept": intercept}

    def raw(self, params, texts, emb):
        if "constant" in params:
            return np.full(len(texts), params["constant"])
        coef = np.asarray(params["coef"], dtype=np.float64)
        # one dot product per request, so a batch and a single request sum in the same order
        return np.array([float(np.dot(row, coef)) for row in np.asarray(emb, dtype=np.float64)]) + params["intercept"]


RULES = Rules("rules", "length in words (longer is harder) and the suite's hard_patterns")
TFIDF = Tfidf("tfidf", "TF-IDF of words and word pairs, logistic regression (scikit-learn)")
EMBEDDING = Embedding("embedding", "logistic regression on llama.cpp mean-pooled embeddings of a catalog model",
                      needs_embedding=True)


# ---------------------------------------------------------------- calibration

def isotonic(raw: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Knots of the isotonic regression of labels on scores (non-decreasing, clipped outside the data)."""
    from sklearn.isotonic import IsotonicRegression

    if raw.size == 0:
        return {"x": [0.0], "y": [0.0]}
    if np.unique(raw).size < 2:
        return {"x": [float(raw[0])], "y": [float(y.mean())]}
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(raw, y.astype(float))
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def probability(raw: np.ndarray, knots: dict[str, list[float]]) -> np.ndarray:
    """Calibrated probability of each raw score: linear between isotonic knots, flat beyond them."""
    x, y = np.asarray(knots["x"]), np.asarray(knots["y"])
    if x.size == 1:
        return np.full(np.shape(raw), y[0])
    return np.interp(np.clip(raw, x[0], x[-1]), x, y)


def calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float | None:
    """Expected calibration error: |mean label - mean probability| weighted over 10 equal-width bins."""
    if p.size == 0:
        return None
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(float(y[m].mean()) - float(p[m].mean()))
    return err


def folds(y: np.ndarray, k: int = FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-fitting folds (stratified where both labels have k members), seeded."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = y.size
    k = max(2, min(k, n))
    if n < 4:
        return [(np.arange(n), np.arange(n))]
    counts = np.bincount(y.astype(int), minlength=2)
    if counts.min() >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(n), y.astype(int)))
    return list(KFold(k, shuffle=True, random_state=0).split(np.zeros(n)))


@dataclass
class Fit:
    """A family fitted for one cheaper tier: final parameters, isotonic knots, and cross-fitted probabilities."""

    family: str
    params: dict
    knots: dict
    oof: np.ndarray          # calibrated out-of-fold probabilities of the calibration samples
    ece_calibration: float | None  # of probabilities whose isotonic map never saw the sample (nested folds)

    def predict(self, texts: list[str], emb: np.ndarray | None) -> np.ndarray:
        from bench.registry import ROUTER_FAMILIES

        return probability(ROUTER_FAMILIES.get(self.family).raw(self.params, texts, emb), self.knots)


def cross_fit(family: Family, texts: list[str], emb: np.ndarray | None, y: np.ndarray,
              options: dict[str, Any]) -> Fit:
    """Fit on every fold but one and score the one left out; isotonic on those scores; final fit on all."""
    raw = np.zeros(len(texts))
    for train, test in folds(y):
        params = family.fit([texts[i] for i in train], None if emb is None else emb[train], y[train], options)
        raw[test] = family.raw(params, [texts[i] for i in test], None if emb is None else emb[test])
    knots = isotonic(raw, y)
    oof = probability(raw, knots)
    # calibration error measured honestly: each fold's probabilities from an isotonic map fitted on the others
    honest = np.zeros(len(texts))
    for train, test in folds(y):
        honest[test] = probability(raw[test], isotonic(raw[train], y[train]))
    final = family.fit(texts, emb, y, options)
    return Fit(family=family.name, params=final, knots=knots, oof=oof, ece_calibration=calibration_error(honest, y))


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
