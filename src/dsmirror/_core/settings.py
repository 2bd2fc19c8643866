"""Configuration read once from the environment into frozen values, then passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    env: Mapping[str, str]
    config_dir: Path  # user catalog: <config_dir>/mirrors.yaml
    state_dir: Path  # measured source statistics, seeding state
    hf_cache: Path  # HF_HUB_CACHE
    ollama_models: Path  # OLLAMA_MODELS
    hf_token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        home = Path(e.get("HOME") or Path.home())
        config = Path(e.get("XDG_CONFIG_HOME") or home / ".config") / "dsmirror"
        state = Path(e.get("XDG_STATE_HOME") or home / ".local" / "state") / "dsmirror"
        hf_home = Path(e.get("HF_HOME") or Path(e.get("XDG_CACHE_HOME") or home / ".cache") / "huggingface")
        hf_cache = Path(e.get("HF_HUB_CACHE") or e.get("HUGGINGFACE_HUB_CACHE") or hf_home / "hub")
        ollama = Path(e.get("OLLAMA_MODELS") or home / ".ollama" / "models")
        token = e.get("HF_TOKEN") or e.get("HUGGING_FACE_HUB_TOKEN")
        if not token:
            p = hf_home / "token"
            try:
                token = p.read_text().strip() or None
            except OSError:
                token = None
        return cls(e, config, state, hf_cache, ollama, token)

    def __repr__(self) -> str:  # never print the token
        return f"Settings(config_dir={self.config_dir}, state_dir={self.state_dir}, hf_cache={self.hf_cache})"
