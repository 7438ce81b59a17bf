"""The model catalog: model ids clients send -> the engine that serves each."""

from __future__ import annotations

import asyncio
import logging

from longcat.canonical import ApiError, shown
from longcat.config import ConfigError, ModelConfig, Settings
from longcat.engines.base import Engine

log = logging.getLogger("longcat.catalog")


def build_engine(model: ModelConfig, settings: Settings) -> Engine:
    if model.engine == "embedded":
        from longcat.engines.embedded import EmbeddedEngine

        return EmbeddedEngine(
            model, threads=settings.embedded_threads, slots=settings.embedded_slots, queue_limit=settings.engine_queue_limit
        )
    if model.engine == "mock":
        from longcat.engines.mock import MockEngine

        return MockEngine(model)
    if model.engine == "openai_compat":
        from longcat.engines.openai_compat import OpenAICompatEngine

        return OpenAICompatEngine(model)
    if model.engine == "anthropic_compat":
        from longcat.engines.anthropic_compat import AnthropicCompatEngine

        return AnthropicCompatEngine(model, redis_url=settings.redis_url, redis_prefix=settings.redis_prefix)
    raise ConfigError(
        f"model {model.id!r}: unknown engine {model.engine!r} (known: embedded, mock, openai_compat, anthropic_compat)"
    )


def check_options(model: ModelConfig, env: dict[str, str] | None = None) -> None:
    """Check a catalog entry's engine options the way its engine will, building nothing."""
    if model.engine == "embedded":
        from longcat.engines.embedded import parse_options as embedded

        embedded(model)
    elif model.engine == "mock":
        from longcat.engines.mock import parse_options as mock

        mock(model)
    elif model.engine == "openai_compat":
        from longcat.engines.openai_compat import parse_options as openai_compat

        openai_compat(model, env)
    elif model.engine == "anthropic_compat":
        from longcat.engines.anthropic_compat import parse_options as anthropic_compat

        anthropic_compat(model, env)
    else:
        build_engine(model, Settings())  # raises the unknown-engine error


def check(settings: Settings, env: dict[str, str] | None = None) -> None:
    """Every model's engine options, checked; the error names the config file it came from."""
    for model in settings.models:
        try:
            check_options(model, env)
        except ConfigError as exc:
            where = f"{settings.config_file}: " if settings.config_file else ""
            raise ConfigError(f"{where}{exc}") from None


class Catalog:
    def __init__(self, settings: Settings) -> None:
        self.models: dict[str, ModelConfig] = {m.id: m for m in settings.models}
        self.engines: dict[str, Engine] = {m.id: build_engine(m, settings) for m in settings.models}

    async def start(self) -> None:
        await asyncio.gather(*(e.start() for e in self.engines.values()))

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)

    def route(self, model_id: str) -> tuple[ModelConfig, Engine]:
        engine = self.engines.get(model_id)
        if engine is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ApiError(
                "invalid_request",
                "invalid_parameter",
                f"The model {shown(model_id)} does not exist. Available models: {known}.",
                param="model",
            )
        return self.models[model_id], engine

    def lookup(self, model_id: str) -> tuple[ModelConfig, Engine]:
        """For the model routes: an unknown id is a 404 there (a 400 in a generation request)."""
        if model_id not in self.models:
            raise ApiError("not_found", "model_not_found", f"The model {shown(model_id)} does not exist.", param="model")
        return self.models[model_id], self.engines[model_id]
