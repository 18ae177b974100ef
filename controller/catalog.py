"""The built-in model catalogue (controller/data/models.toml)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

from controller.config import ModelConfig


@cache
def builtin_models() -> tuple[ModelConfig, ...]:
    text = resources.files("controller").joinpath("data/models.toml").read_text("utf-8")
    return tuple(ModelConfig.model_validate(m) for m in tomllib.loads(text)["models"])


def find_model(model: str, firmware: str) -> ModelConfig:
    """Catalogue entry for a model on a firmware (case-insensitive); KeyError if unknown."""
    for entry in builtin_models():
        if entry.model.lower() == model.lower() and (entry.firmware or firmware) == firmware:
            return entry
    known = sorted({f"{m.model}:{m.firmware}" for m in builtin_models()})
    raise KeyError(f"unknown model {model!r} on firmware {firmware!r}; known: {', '.join(known)}")
