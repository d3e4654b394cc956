"""Suite data: load samples through `datasets`, check fields against the suite, split them seeded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config.suite import ClassifyTask, RewriteTask, Suite, suite_line, template_fields
from bench.errors import UserInputError


@dataclass
class Sample:
    id: str
    fields: dict[str, Any]
    reference: Any
    split: str  # "calibration" or "holdout"


def _load_rows(suite: Suite) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    ds_cfg = suite.dataset
    if ds_cfg.hub:
        try:
            ds = datasets.load_dataset(ds_cfg.hub, split=ds_cfg.hub_split, revision=ds_cfg.revision)
        except Exception as exc:
            raise UserInputError(f"cannot load hub dataset {ds_cfg.hub!r}: {exc}", file=str(suite.path),
                                 line=suite_line(suite, "dataset", "hub"), field="dataset.hub") from None
        return [_plain(dict(r)) for r in ds]
    path = suite.data_path()
    assert path is not None
    where: dict[str, Any] = dict(file=str(suite.path), line=suite_line(suite, "dataset", "path"),
                                field="dataset.path")
    if not path.is_file():
        raise UserInputError(f"dataset file not found: {path}", **where)
    if path.stat().st_size == 0:
        raise UserInputError(f"dataset file is empty: {path}", **where)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        # parsed here, not by pyarrow: its type inference turns ISO dates into timestamps
        return _read_json_rows(path, where)
    features = None
    if suffix == ".csv":
        import csv
        import io

        header = next(csv.reader(io.StringIO(read_text_utf8(path, where), newline="")), [])
        # every column as text: inference would turn "+14155550123" into a number
        features = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        ds = datasets.load_dataset(suffix.lstrip("."), data_files=str(path), split="train", keep_in_memory=True,
                                   features=features)
    except Exception as exc:
        raise UserInputError(f"cannot read dataset {path.name}: {str(exc).splitlines()[0]}", **where) from None
    return [_plain(dict(r)) for r in ds]


def _plain(value: Any) -> Any:
    """Dates and times from typed files become ISO strings, so references compare as text."""
    import datetime as dt

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def read_text_utf8(path: Path, where: dict[str, Any]) -> str:
    """The file as UTF-8 text; bytes that are not UTF-8 are an exit-2 error naming the line and byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserInputError(f"{path.name} line {line}: byte {exc.start} (0x{data[exc.start]:02x}) is not UTF-8; "
                             "expected UTF-8 text", **where) from None


def _read_json_rows(path, where: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Lines (or one JSON array), with the line of any broken row in the error."""
    text = read_text_utf8(path, where)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise UserInputError(f"{path.name}: not valid JSON ({exc})", **where) from None
        if not all(isinstance(r, dict) for r in rows):
            raise UserInputError(f"{path.name}: expected an array of JSON objects", **where)
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{path.name} line {i}: not valid JSON ({exc.msg})", **where) from None
        if not isinstance(row, dict):
            raise UserInputError(f"{path.name} line {i}: expected a JSON object per line", **where)
        rows.append(row)
    return rows


def _split_of(sample_id: str, seed: int, holdout_fraction: float) -> str:
    """A split that depends only on the id and seed, so adding rows never moves existing ones."""
    h = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "holdout" if u < holdout_fraction else "calibration"


def load_samples(suite: Suite, limit: int | None = None) -> list[Sample]:
    """Load and check every sample; problems are exit-2 errors raised before any model loads."""
    rows = _load_rows(suite)
    file = str(suite.path)
    if not rows:
        raise UserInputError("dataset has no rows", file=file, line=suite_line(suite, "dataset"), field="dataset")
    ds = suite.dataset
    needed = set(ds.input_fields) | {ds.reference_field, ds.id_field}
    used = set(template_fields(suite.prompt.template))
    unknown = used - set(ds.input_fields)
    if unknown:
        raise UserInputError(f"template names {sorted(unknown)} which are not in dataset.input_fields "
                             f"{ds.input_fields}", file=file, line=suite_line(suite, "prompt", "template"),
                             field="prompt.template")
    for i, shot in enumerate(suite.prompt.few_shot):
        missing = used - set(shot.input)
        if missing:
            raise UserInputError(f"few-shot example lacks fields {sorted(missing)} that the template uses",
                                 file=file, line=suite_line(suite, "prompt", "few_shot", i),
                                 field=f"prompt.few_shot.{i}.input")
    seen: set[str] = set()
    samples = []
    for n, row in enumerate(rows, 1):
        absent = sorted(k for k in needed if row.get(k) is None)
        if absent:
            fld = "dataset.reference_field" if ds.reference_field in absent else "dataset.input_fields"
            raise UserInputError(f"row {n} of the dataset has no value for {absent}", file=file,
                                 line=suite_line(suite, *fld.split(".")), field=fld)
        sid = str(row[ds.id_field])
        if sid in seen:
            raise UserInputError(f"row {n}: duplicate sample id {sid!r}", file=file,
                                 line=suite_line(suite, "dataset", "id_field"), field="dataset.id_field")
        seen.add(sid)
        ref = row[ds.reference_field]
        if isinstance(ref, str) and suite.kind == "extract":
            try:
                ref = json.loads(ref)
            except ValueError:
                raise UserInputError(f"row {n}: reference is not a JSON object", file=file,
                                     field="dataset.reference_field") from None
        samples.append(Sample(id=sid, fields=row, reference=ref,
                              split=_split_of(sid, suite.split.seed, suite.split.holdout_fraction)))
    _check_task_data(suite, samples)
    cap = limit or suite.limit
    if cap:
        samples = _balanced_head(samples, cap)
    return samples


def _balanced_head(samples: list[Sample], n: int) -> list[Sample]:
    """The first n samples in file order, taken alternately from both splits so each gets some."""
    cal = [s for s in samples if s.split == "calibration"]
    hold = [s for s in samples if s.split == "holdout"]
    out: list[Sample] = []
    while len(out) < n and (cal or hold):
        for pool in (cal, hold):
            if pool and len(out) < n:
                out.append(pool.pop(0))
    order = {s.id: i for i, s in enumerate(samples)}
    return sorted(out, key=lambda s: order[s.id])


def _check_task_data(suite: Suite, samples: list[Sample]) -> None:
    file = str(suite.path)
    if isinstance(suite.task, ClassifyTask):
        labels = set(suite.task.labels)
        outside = sorted({str(s.reference) for s in samples} - labels)
        if outside:
            raise UserInputError(f"the label set does not cover references {outside[:5]}", file=file,
                                 line=suite_line(suite, "task", "labels"), field="task.labels")
    if suite.kind == "extract":
        bad = [s.id for s in samples if not isinstance(s.reference, dict)]
        if bad:
            raise UserInputError(f"references must be JSON objects; not for samples {bad[:5]}", file=file,
                                 line=suite_line(suite, "dataset", "reference_field"),
                                 field="dataset.reference_field")
    if isinstance(suite.task, RewriteTask) and suite.task.required_terms_field:
        f = suite.task.required_terms_field
        if any(f not in s.fields for s in samples):
            raise UserInputError(f"some rows have no field {f!r}", file=file,
                                 line=suite_line(suite, "task", "required_terms_field"),
                                 field="task.required_terms_field")
