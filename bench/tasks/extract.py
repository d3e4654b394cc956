"""extract: a JSON object (code fences allowed), checked against the suite's schema, scored by field F1."""

from __future__ import annotations

import json
import re
from typing import Any

from bench.tasks.base import Scored, TaskKind, norm_text

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def parse_json(output: str) -> Any:
    """The first JSON value in the answer: inside a code fence if there is one, else the outermost braces."""
    text = output.strip()
    m = _FENCE.search(text)
    if m:
        text = m.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        return json.loads(text[start:i + 1])
                    except ValueError:
                        break
        start = text.find("{", start + 1)
    return None


def norm_value(v: Any) -> Any:
    """Normalize a field value: numbers compare as numbers, strings by case and space, empty as missing."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return round(float(v), 4)
    if isinstance(v, str):
        s = norm_text(v)
        if s in ("", "null", "none", "n/a"):
            return None
        try:
            return round(float(s.replace(",", "")), 4)
        except ValueError:
            return s
    return json.dumps(v, sort_keys=True)


def field_prf(pred: Any, ref: dict[str, Any]) -> dict[str, float]:
    """Field-level precision, recall and F1 over non-null fields with normalized values."""
    pred = pred if isinstance(pred, dict) else {}
    p_items = {k: norm_value(v) for k, v in pred.items() if norm_value(v) is not None}
    r_items = {k: norm_value(v) for k, v in ref.items() if norm_value(v) is not None}
    tp = sum(1 for k, v in p_items.items() if r_items.get(k) == v)
    precision = tp / len(p_items) if p_items else (1.0 if not r_items else 0.0)
    recall = tp / len(r_items) if r_items else (1.0 if not p_items else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def schema_valid(obj: Any, schema: dict[str, Any]) -> bool:
    import jsonschema

    return obj is not None and jsonschema.Draft202012Validator(schema).is_valid(obj)


def score(output: str, reference: Any, sample: dict[str, Any], options: Any) -> Scored:
    obj = parse_json(output)
    ref = reference if isinstance(reference, dict) else json.loads(reference)
    prf = field_prf(obj, ref)
    valid = schema_valid(obj, options.json_schema)
    return Scored(parsed=obj, verified=valid,
                  scores={"field_f1": prf["f1"], "field_precision": prf["precision"],
                          "field_recall": prf["recall"], "schema_valid": float(valid)})


TASK = TaskKind(name="extract", metric="field_f1",
                metrics=("field_f1", "field_precision", "field_recall", "schema_valid"),
                higher_is_better=True, score_fn=score)
