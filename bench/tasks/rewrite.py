"""rewrite: chrF against the reference (0..1), and whether the required terms survived."""

from __future__ import annotations

from typing import Any

from bench.tasks.base import Scored, TaskKind, word_count


def chrf(prediction: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(prediction, [reference]).score) / 100.0


def required_terms(sample: dict[str, Any], options: Any) -> list[str]:
    terms = list(options.required_terms)
    if options.required_terms_field:
        extra = sample.get(options.required_terms_field) or []
        terms += [extra] if isinstance(extra, str) else list(extra)
    return terms


def terms_kept(text: str, terms: list[str]) -> float | None:
    if not terms:
        return None
    low = text.casefold()
    return sum(1 for t in terms if str(t).casefold() in low) / len(terms)


def score(output: str, reference: Any, sample: dict[str, Any], options: Any) -> Scored:
    text = output.strip()
    kept = terms_kept(text, required_terms(sample, options))
    within = options.max_words is None or word_count(text) <= options.max_words
    verified = bool(text) and within and (kept is None or kept == 1.0)
    return Scored(parsed=text, verified=verified,
                  scores={"chrf": chrf(text, str(reference)), "terms_kept": kept, "length_ok": float(within)})


TASK = TaskKind(name="rewrite", metric="chrf", metrics=("chrf", "terms_kept", "length_ok"), higher_is_better=True,
                score_fn=score)
