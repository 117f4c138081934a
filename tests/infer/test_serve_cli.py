"""`moelab serve`'s config: the shipped YAML loads, errors name the field, the app builds from disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from moelab.config import ConfigError
from moelab.infer.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs/serve").glob("*.yaml")), ids=lambda p: p.name
)
def test_serve_configs_load(path):
    cfg = ServeConfig.from_yaml(path)
    assert cfg.host == "127.0.0.1" and cfg.api_key is None


def test_bad_serve_config_names_the_field():
    with pytest.raises(ConfigError, match="limits.max_n"):
        ServeConfig.from_dict({}, ["limits.max_n=0"])
    with pytest.raises(ConfigError, match="limits.unknown"):
        ServeConfig.from_dict({"limits": {"unknown": 1}})


def test_build_app_from_a_run_dir(tmp_path, text_models, chat_tokenizer):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from moelab.checkpoint.layout import save_checkpoint
    from moelab.commands.serve import build_app

    from .serving import running_server

    run = tmp_path / "myrun"
    save_checkpoint(run, step=1, tokens=0, model=text_models["dots1"])
    chat_tokenizer.save(run)
    app, name = build_app(
        str(run),
        ServeConfig.from_dict({}, ["limits.max_tokens=8", "default_max_tokens=4", "max_batch=2"]),
    )
    assert name == "myrun"
    assert app.state.server.gen.engine.max_len == 1024  # 2048 + 8 asked, capped at the context
    with running_server(app) as url:
        r = httpx.post(
            url + "/v1/completions",
            json={"model": "myrun", "prompt": "the", "max_tokens": 4, "temperature": 0},
            timeout=30,
        )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
