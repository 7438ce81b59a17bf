"""`longcat config show`: the effective settings as TOML, every secret masked.

Masked are: values whose name says secret (`secret_key`, `metrics_token`, `api_key`, `password`…,
at any depth of a model's options), passwords in URLs (`database_url`, `redis_url`, `smtp_url`, base
URLs) and secret-named query parameters in them. The output is itself a valid config file
(with `***` where a secret was).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import tomlkit

from longcat.config import ModelConfig, Settings, is_secret_name, mask_url

MASK = "***"


def masked(name: str, value: Any) -> Any:
    """`value` fit to print: secrets replaced by `***`, recursively through tables and arrays."""
    if isinstance(value, dict):
        return {k: masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(name, v) for v in value]
    if is_secret_name(name) and value not in ("", None):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _model(model: ModelConfig) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for f in dataclasses.fields(model):
        value = getattr(model, f.name)
        if f.name == "options" or value is None:
            continue
        table[f.name] = value
    table.update(model.options)  # a model's options sit beside its common keys in the file
    return masked("", table)


def render(settings: Settings) -> str:
    doc = tomlkit.document()
    source = str(settings.config_file) if settings.config_file else "no config file"
    doc.add(tomlkit.comment(f"effective settings: defaults < {source} < LONGCAT_* environment; secrets shown as {MASK}"))
    for f in dataclasses.fields(settings):
        if f.name in ("models", "config_file"):
            continue
        value = getattr(settings, f.name)
        if value is None:
            continue
        doc.add(f.name, masked(f.name, value))
        if f.name == "database_url" and not value:
            doc[f.name].comment(f"SQLite: {mask_url(settings.resolved_database_url)}")
    models = tomlkit.aot()
    for model in settings.models:
        models.append(tomlkit.item(_model(model)))
    doc.add(tomlkit.nl())
    doc.add("models", models)
    return tomlkit.dumps(doc)
