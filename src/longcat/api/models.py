"""Model list and detail, in the platform's shapes, from the catalog."""

from __future__ import annotations

from typing import Any

from longcat.config import ModelConfig
from longcat.engines.base import Engine

SUPPORTED_PARAMETERS = [
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "stream",
    "tools",
    "tool_choice",
    "response_format",
    "structured_outputs",
    "thinking",
]


def model_summary(model: ModelConfig) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


# Where an upstream lives is the operator's business: only admins' keys see it.
INTERNAL_FIELDS = ("upstream", "base_url", "base_urls", "replica_status")


def model_detail(model: ModelConfig, engine: Engine, *, operator: bool = False) -> dict[str, Any]:
    described = engine.describe()
    if not operator:
        described = {k: v for k, v in described.items() if k not in INTERNAL_FIELDS}
    inputs = ["text", "image"] if model.vision else ["text"]
    return {
        **model_summary(model),
        "name": model.display_name,
        "description": model.description,
        "context_length": model.context_window,
        "max_output_tokens": model.max_output,
        "architecture": {
            "input_modalities": inputs,
            "output_modalities": ["text"],
            "modality": "+".join(inputs) + "->text",
            "tokenizer": described.get("tokenizer", "unknown"),
            "instruct_type": described.get("instruct_type", "chatml" if engine.kind == "embedded" else None),
        },
        "supported_parameters": SUPPORTED_PARAMETERS,
        "pricing": {"prompt": "0", "completion": "0"},
        "engine": described,
    }
