"""Prompt building: chat messages for chat models, one plain text for base (completion) models."""

from __future__ import annotations

from typing import Any

from bench.config.suite import PromptConfig


def render(template: str, fields: dict[str, Any]) -> str:
    return template.format_map({k: ("" if v is None else v) for k, v in fields.items()})


def chat_messages(prompt: PromptConfig, fields: dict[str, Any]) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    for shot in prompt.few_shot:
        messages.append({"role": "user", "content": render(prompt.template, shot.input)})
        messages.append({"role": "assistant", "content": shot.output})
    messages.append({"role": "user", "content": render(prompt.template, fields)})
    return messages


def completion_prompt(prompt: PromptConfig, fields: dict[str, Any]) -> str:
    """A base model sees the same content as plain text: instructions, worked examples, then the input."""
    parts = []
    if prompt.system:
        parts.append(prompt.system.strip())
    for shot in prompt.few_shot:
        parts.append(f"Input:\n{render(prompt.template, shot.input).strip()}\nAnswer:\n{shot.output.strip()}")
    parts.append(f"Input:\n{render(prompt.template, fields).strip()}\nAnswer:\n")
    return "\n\n".join(parts)
