"""The suite file: typed models (unknown keys are errors) and the loader that maps errors to lines."""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from bench.config.validate import validate
from bench.config.yamlpos import line_for, load_yaml_with_lines
from bench.errors import UserInputError

TASK_KINDS = ("summarize", "classify", "extract", "rewrite", "normalize")


class Strict(BaseModel):
    # allow_inf_nan=False: `target: .nan` or `tolerance: .inf` are errors, not silent nonsense
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


# ---------------------------------------------------------------- dataset and split

class DatasetConfig(Strict):
    """Where samples come from and which fields are input and reference."""

    path: str | None = Field(None, description="file relative to the suite: .jsonl, .json, .csv or .parquet")
    hub: str | None = Field(None, description="a dataset id on the hub (needs a network)")
    hub_split: str = "train"
    revision: str | None = None
    id_field: str = "id"
    input_fields: list[str] = Field(..., min_length=1)
    reference_field: str

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if bool(self.path) == bool(self.hub):
            raise ValueError("give exactly one of 'path' (a local file) or 'hub' (a dataset id)")
        if self.path and Path(self.path).suffix.lower() not in (".jsonl", ".json", ".csv", ".parquet"):
            raise ValueError(f"path {self.path!r}: expected a .jsonl, .json, .csv or .parquet file")
        return self


class SplitConfig(Strict):
    seed: int = 0
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)


# ---------------------------------------------------------------- prompt

class FewShot(Strict):
    input: dict[str, Any]
    output: str


class PromptConfig(Strict):
    system: str | None = None
    template: str
    few_shot: list[FewShot] = []

    @field_validator("template")
    @classmethod
    def _template_parses(cls, v: str) -> str:
        template_fields(v)
        return v


def template_fields(template: str) -> list[str]:
    """Field names a template uses: '{name}' placeholders, '{{' and '}}' escape braces."""
    names = []
    try:
        for _, name, spec, conv in string.Formatter().parse(template):
            if name is None:
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or spec or conv:
                raise ValueError(f"placeholder {{{name}}} is not a plain field name")
            names.append(name)
    except ValueError as exc:
        raise ValueError(f"template: {exc}; write literal braces as '{{{{' and '}}}}'") from None
    return names


# ---------------------------------------------------------------- task kinds (discriminated on 'kind')

class ClassifyTask(Strict):
    kind: Literal["classify"]
    labels: list[str] = Field(..., min_length=2)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        from bench.tasks.base import norm_text

        if any(not norm_text(label) for label in v):
            raise ValueError("a label is empty; an empty answer would then count as a verified label")
        seen: dict[str, str] = {}
        for label in v:
            key = norm_text(label)
            if key in seen:
                raise ValueError(f"duplicate label {label!r} (same as {seen[key]!r} ignoring case and spaces); "
                                 "duplicates skew macro-F1")
            seen[key] = label
        return v


class ExtractTask(Strict):
    kind: Literal["extract"]
    json_schema: dict[str, Any]

    @field_validator("json_schema")
    @classmethod
    def _schema_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(v)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        for ref in _refs(v):
            _resolve_local_ref(v, ref)
        return v


def _refs(node: Any) -> list[str]:
    """Every $ref string in a schema."""
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if isinstance(n.get("$ref"), str):
                out.append(n["$ref"])
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def _resolve_local_ref(schema: dict[str, Any], ref: str) -> None:
    """A $ref must point inside the schema: bench never fetches a remote one, and one that resolves nowhere would
    fail every sample at scoring time."""
    if not ref.startswith("#"):
        raise ValueError(f"$ref {ref!r} points outside the schema; only local refs ('#/$defs/...') are allowed, "
                         "bench never fetches remote ones")
    frag = ref[1:]
    if frag and not frag.startswith("/"):  # a plain-name anchor
        if frag not in {n.get("$anchor") for n in _walk(schema) if isinstance(n, dict)}:
            raise ValueError(f"$ref {ref!r} names no $anchor in the schema")
        return
    node: Any = schema
    for part in [p.replace("~1", "/").replace("~0", "~") for p in frag.split("/")[1:]]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f"$ref {ref!r} resolves nowhere in the schema (no {part!r})")


def _walk(node: Any) -> list[Any]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        if isinstance(n, dict):
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


class SummarizeTask(Strict):
    kind: Literal["summarize"]
    max_words: int = Field(..., gt=0)


class RewriteTask(Strict):
    kind: Literal["rewrite"]
    max_words: int | None = Field(None, gt=0)
    required_terms: list[str] = []
    required_terms_field: str | None = Field(None, description="a sample field listing terms that must be kept")


class NormalizeTask(Strict):
    kind: Literal["normalize"]
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


TaskConfig = Annotated[
    Union[ClassifyTask, ExtractTask, SummarizeTask, RewriteTask, NormalizeTask],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- generation

MAX_PARALLEL = 64  # requests decoded at once: llama.cpp's sequences per context stay well below its own cap


class GenerationConfig(Strict):
    max_tokens: int = Field(128, gt=0, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 0
    stop: list[str] = []
    parallel: int = Field(1, ge=1, le=MAX_PARALLEL, description="requests decoded at once (llama.cpp: sequences in one "
                          "context, continuous batching); a backend that cannot batch runs one at a time and says so")

    def key(self) -> str:
        """The settings that change answers. `parallel` is left out: greedy answers do not depend on it, each row
        records the concurrency it ran at, and a rerun at another --parallel resumes the same cell."""
        return hashlib.sha256(json.dumps(self.model_dump(exclude={"parallel"}), sort_keys=True).encode()).hexdigest()[:8]


# ---------------------------------------------------------------- backends (discriminated on 'kind')

class LlamaCppBackendConfig(Strict):
    kind: Literal["llamacpp"]
    n_threads: int | None = Field(None, gt=0, description="default: physical cores")
    n_ctx: int = Field(4096, gt=0)
    n_batch: int = Field(512, gt=0)
    n_gpu_layers: int = 0
    warmup: bool = True
    extra_buffers: bool | None = Field(
        None, description="llama.cpp's repacking buffer types (AMX, CPU repack); default: off where the CPU "
        "advertises AMX, since VMs that advertise it may fault on its instructions")


class FakeBackendConfig(Strict):
    """A deterministic stand-in for unit tests: answers from the reference with a set accuracy."""

    kind: Literal["fake"]
    accuracy: float = Field(1.0, ge=0.0, le=1.0)
    accuracy_by_model: dict[str, float] = Field({}, description="per-model accuracy, overriding `accuracy`")
    hard_pattern: str | None = Field(None, description="a regular expression: requests whose text matches it are "
                                     "'hard' and answered with accuracy_hard_by_model (pre-router tests)")
    accuracy_hard_by_model: dict[str, float] = Field({}, description="per-model accuracy on hard requests")
    tokens_per_s: float = Field(1000.0, gt=0)
    tokens_per_s_by_model: dict[str, float] = Field({}, description="per-model speed, overriding `tokens_per_s`")
    delay_s: float = Field(0.0, ge=0, le=10, description="real seconds slept per request (for fault tests)")
    fail_load: bool = False


class OpenAIBackendConfig(Strict):
    kind: Literal["openai"]
    name: str = Field(..., description="the tier's id in results, e.g. 'gpt-4o-mini' or 'vllm-h100-qwen'")
    base_url: str
    model: str
    api_key_env: str | None = Field(None, description="name of the environment variable that holds the key")
    price: str | None = Field(None, description="price-table entry; default: the model name")
    input_usd_per_mtok: float | None = Field(None, ge=0)
    output_usd_per_mtok: float | None = Field(None, ge=0)
    locality: Literal["local", "on-prem", "cloud"] = "cloud"
    hardware: str | None = Field(None, description="profile id of the server's machine: priced per hour, not per token")
    concurrency: int = Field(4, gt=0, le=256)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    logprobs: bool = True
    chat: bool = True


class VLLMBackendConfig(Strict):
    kind: Literal["vllm"]
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    hf_model: str | None = Field(None, description="hub id or local directory; default: the catalog's GGUF file")
    tokenizer: str | None = Field(None, description="the original model's tokenizer (hub id or directory); "
                                  "default: the catalog entry's hf_tokenizer. vLLM needs one beside a GGUF file")


BackendConfig = Annotated[
    Union[LlamaCppBackendConfig, FakeBackendConfig, OpenAIBackendConfig, VLLMBackendConfig],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- models in the matrix

class SourceConfig(Strict):
    kind: Literal["path", "hub", "pypi"]
    path: str | None = None
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    packages: list[str] = []
    files: list[str] = []
    sha256: str | None = None


class ModelRef(Strict):
    id: str
    quantizations: list[str] = []
    source: SourceConfig | None = None
    chat: bool | None = None


def _default_backend() -> BackendConfig:
    """The embedded default: llama.cpp in this process."""
    return LlamaCppBackendConfig(kind="llamacpp")


class MatrixConfig(Strict):
    models: list[ModelRef | str] = []
    backends: list[BackendConfig] = Field(default_factory=lambda: [_default_backend()])
    hardware: list[str] = Field([], description="hardware profiles to cross the in-process cells with; each cell "
                                "runs on a Ray node advertising that profile (needs --ray or executor: ray)")

    @field_validator("hardware")
    @classmethod
    def _distinct_hardware(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a hardware profile is listed twice")
        return v

    def model_refs(self) -> list[ModelRef]:
        return [ModelRef(id=m) if isinstance(m, str) else m for m in self.models]


class ExecutorConfig(Strict):
    """Where cells run: `local` (this machine, the default) or `ray` (a Ray cluster at `address`)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="the Ray cluster's address; default: 'auto'")


def regexes(v: list[str]) -> list[str]:
    """Check that every string compiles as a regular expression (a field validator's body)."""
    for pattern in v:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return v


class PreRouterConfig(Strict):
    """Pre-generation routing: which router families `bench thresholds` fits, and their inputs."""

    families: list[str] = Field(["rules", "tfidf", "embedding"], description="router families to fit and compare "
                                "(bench.routers.families); [] fits none")
    hard_patterns: list[str] = Field([], description="regular expressions: a request matching any is sent past the "
                                     "cheaper tier (the rules family's suite rules)")
    embedding_model: str = Field("smollm2-135m-instruct", description="catalog model whose llama.cpp embeddings "
                                 "the embedding family reads")

    @field_validator("families")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        from bench.registry import ROUTER_FAMILIES

        for name in v:
            if name not in ROUTER_FAMILIES:
                raise ValueError(f"unknown router family {name!r}; known: {', '.join(ROUTER_FAMILIES.names())}")
        return v

    @field_validator("hard_patterns")
    @classmethod
    def _hard(cls, v: list[str]) -> list[str]:
        return regexes(v)


# ---------------------------------------------------------------- the suite

class LoadConfig(Strict):
    """Operating points (bench/sweep.py): timing passes at these concurrency levels over a fixed subset."""

    concurrency: list[int] = Field([], description="levels to time each cell at, e.g. [1, 4, 8]; [] times none "
                                   "(the cell is priced one request at a time)")
    timing_samples: int = Field(64, ge=1, description="samples each level's pass times (the first by id); a level "
                                "is said to meet max_p95_latency_s only from >= 59 of them (a 95% bound on p95)")

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= MAX_PARALLEL for x in v):
            raise ValueError(f"levels must be whole numbers from 1 to {MAX_PARALLEL}")
        return sorted(set(v))


class Suite(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    task: TaskConfig
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    prompt: PromptConfig
    metric: str | None = Field(None, description="default: the task kind's metric")
    target: float = Field(..., description="the quality the task needs, on the metric's scale")
    tolerance: float = Field(0.02, ge=0, description="a drop beyond this is a regression in 'bench compare'")
    sensitive: bool = Field(False, description="data must stay on local or on-prem tiers")
    personal_data: list[str] = Field([], description="extra regular expressions marking a request as holding "
                                     "personal data (beside e-mail, phone, card and IBAN): such a request is routed "
                                     "only to local or on-prem tiers")

    @field_validator("personal_data")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return regexes(v)
    max_p95_latency_s: float | None = Field(None, gt=0)
    min_samples: int = Field(30, ge=1, description="fewer scored samples than this decide nothing: "
                             "insufficient_data, never meets_target")
    delta: float = Field(0.05, gt=0, lt=0.5, description="the chance a chosen routing policy may miss its target")
    limit: int | None = Field(None, gt=0, description="use at most this many samples")
    prerouter: PreRouterConfig = PreRouterConfig()
    generation: GenerationConfig = GenerationConfig()
    matrix: MatrixConfig = MatrixConfig()
    executor: ExecutorConfig = ExecutorConfig()
    load: LoadConfig = LoadConfig()

    # set by the loader
    path: Path | None = Field(None, exclude=True)
    sha256: str | None = Field(None, exclude=True)
    _lines: dict = PrivateAttr(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.task.kind

    def data_path(self) -> Path | None:
        if not self.dataset.path:
            return None
        base = self.path.parent if self.path else Path.cwd()
        return (base / self.dataset.path).resolve()


def load_suite(path: str | Path) -> Suite:
    """Load and validate a suite file; every error names the file, the line and the field."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise UserInputError("a suite must be a YAML mapping of keys (name, task, dataset, ...)", file=str(path))
    suite = validate(Suite, data, lines, path)
    _check_metric(suite, lines, path)
    suite.path = path.resolve()
    suite.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    suite._lines = lines
    return suite


def _check_metric(suite: Suite, lines: dict, path: Path) -> None:
    """The metric must be one its task kind computes, and the target, tolerance and delta within its 0..1 scale."""
    from bench.errors import did_you_mean
    from bench.tasks import get_task

    kind = get_task(suite.task.kind)
    if suite.metric is not None and suite.metric not in kind.metrics:
        raise UserInputError(f"metric {suite.metric!r} is not one that task kind {kind.name!r} computes; expected "
                             f"one of {', '.join(kind.metrics)}", file=str(path), line=line_for(lines, ("metric",)),
                             field="metric", hint=did_you_mean(suite.metric, kind.metrics))
    metric = suite.metric or kind.metric
    for key, value in (("target", suite.target), ("tolerance", suite.tolerance)):
        if not 0 <= value <= 1:
            raise UserInputError(f"{key} {value:g} is outside the 0..1 scale of {metric}", file=str(path),
                                 line=line_for(lines, (key,)), field=key)


def suite_line(suite: Suite, *keys: Any) -> int | None:
    """Line of a key path in the suite's file, for errors raised after load (dataset checks)."""
    return line_for(getattr(suite, "_lines", {}), tuple(keys))
