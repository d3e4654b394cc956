"""The routing policy as a LiteLLM router config: model list and fallback order, and what LiteLLM cannot express."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bench.registry import BACKENDS, backend_traits

HEADER = """\
# LiteLLM router configuration written by `bench thresholds --format litellm` from {source}.
#
# FALLBACK-ONLY: this file does NOT deploy routing.json's policy, and none of routing.json's `expected`
# quality, cost or escalation figures apply to it. LiteLLM falls back only when a call fails (error,
# timeout, rate limit, context window, content policy), never because an answer's confidence is low or its
# structural check (a label from the set, JSON matching the schema) failed. Keeping a cheaper tier's answer
# without those checks would be "always the cheapest tier", which the calibration never admitted. So each
# task's model group here is the tier its policy ends in (the one that answers whatever is escalated), and
# the cheaper tiers of the cascade are left out. To run the real cascade behind LiteLLM, point its model
# group at `bench serve` instead.
#
# Eligibility is expressed by omission: tiers left out for sensitive data or the latency budget are not
# listed. Tiers that bench runs in-process (llama.cpp, vLLM) need an OpenAI-compatible server here: serve
# the model (e.g. `python -m llama_cpp.server --model FILE.gguf`) and set the environment variable named
# in its api_base.
"""


def _env_name(text: str) -> str:
    return "BENCH_" + re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper() + "_API_BASE"


def _deployment(task: dict[str, Any], tier: dict[str, Any], name: str) -> dict[str, Any]:
    rt = tier.get("runtime") or {}
    backend = rt.get("backend") or {}
    gen = (task.get("runtime") or {}).get("generation") or {}
    params: dict[str, Any] = {}
    info: dict[str, Any] = {"bench_cell": tier["cell"], "bench_accept_if": tier["accept_if"],
                            "bench_locality": tier["locality"], "bench_backend": backend.get("kind")}
    if backend.get("kind") == "openai":
        params["model"] = f"openai/{backend.get('model')}"
        params["api_base"] = backend.get("base_url")
        if backend.get("api_key_env"):
            params["api_key"] = f"os.environ/{backend['api_key_env']}"
        params["timeout"] = backend.get("timeout_s")
    else:
        label = rt.get("model") or tier["cell"]
        if rt.get("quantization"):
            label += f"-{rt['quantization']}"
        params["model"] = f"openai/{label}"
        params["api_base"] = f"os.environ/{_env_name(label)}"
        kind = str(backend.get("kind"))
        if kind in BACKENDS and not backend_traits(kind).loads_model_file:
            info["bench_note"] = "a test stand-in backend (no model file): there is nothing to serve"
    for key in ("max_tokens", "temperature", "seed"):
        if gen.get(key) is not None:
            params[key] = gen[key]
    if gen.get("stop"):
        params["stop"] = list(gen["stop"])
    return {"model_name": name, "litellm_params": params, "model_info": info}


def litellm_config(doc: dict[str, Any], source: str = "routing.json") -> str:
    """YAML text: model_list, and router_settings with fallbacks and an alias per task."""
    model_list: list[dict[str, Any]] = []
    fallbacks: list[dict[str, list[str]]] = []
    aliases: dict[str, str] = {}
    used: set[str] = set()
    for task_name in sorted(doc["tasks"]):
        task = doc["tasks"][task_name]
        tiers = {t["cell"]: t for t in task["tiers"]}
        names = []
        chain = (task.get("policy") or {}).get("chain") or []
        for cell in chain[-1:]:  # fallback-only: the tier the policy ends in, see HEADER
            rt = tiers[cell].get("runtime") or {}
            name = f"{task_name}/{rt.get('model') or cell}" + (f"@{rt['quantization']}" if rt.get("quantization")
                                                                else "")
            base, n = name, 2
            while name in used:
                name, n = f"{base}#{n}", n + 1
            used.add(name)
            names.append(name)
            model_list.append(_deployment(task, tiers[cell], name))
        if names:
            aliases[task_name] = names[0]
        if len(names) > 1:
            fallbacks.append({names[0]: names[1:]})
    config = {"model_list": model_list,
              "router_settings": {"model_group_alias": aliases, "fallbacks": fallbacks, "num_retries": 0},
              "bench": {"mode": "fallback-only", "source": source,
                        "note": "does not apply routing.json's policy; its expected figures do not hold here"}}
    return HEADER.format(source=source) + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)


def litellm_path(routing_path: str | Path) -> Path:
    """routing.json -> routing.litellm.yaml, next to it."""
    p = Path(routing_path)
    return p.with_name(p.stem + ".litellm.yaml")


SERVE_HEADER = """\
# LiteLLM router configuration written by `bench thresholds --format litellm --serve-url URL` from {source}.
#
# Each task's model group points at `bench serve {source}` at {url}: bench applies the calibrated policy (accept or
# escalate on confidence and verification, the holdout fallback), so what this gateway deploys is the policy whose
# quality, cost and escalation rate routing.json's `expected` reports. Send requests with the task's input fields
# (`bench_fields`, or a JSON object as the user message) to stay on the calibrated path.
"""


def litellm_serve_config(doc: dict[str, Any], serve_url: str, source: str = "routing.json") -> str:
    """YAML text: one model group per task, each an OpenAI-compatible deployment of `bench serve`."""
    from bench.redact import redact_url

    model_list = [{"model_name": task, "litellm_params": {"model": f"openai/{task}", "api_base": serve_url,
                                                           "api_key": "os.environ/BENCH_SERVE_KEY"},
                   "model_info": {"bench_task": task, "bench_status": doc["tasks"][task].get("status")}}
                  for task in sorted(doc["tasks"])]
    config = {"model_list": model_list, "router_settings": {"num_retries": 0},
              "bench": {"mode": "bench-serve", "source": source, "serve_url": redact_url(serve_url)}}
    return SERVE_HEADER.format(source=source, url=redact_url(serve_url)) + yaml.safe_dump(
        config, sort_keys=False, allow_unicode=True, width=100)
