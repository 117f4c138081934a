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


@pytest.mark.parametrize("kind", ["hf", "step"])
def test_build_app_from_an_hf_dir_and_a_checkpoint_dir(tmp_path, text_models, chat_tokenizer, kind):
    """An HF directory (tokenizer beside it) and one moelab step directory (--tokenizer given)."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from moelab.checkpoint.hf import save_pretrained
    from moelab.checkpoint.layout import save_checkpoint
    from moelab.commands.serve import build_app
    from moelab.infer.loading import load_generator
    from moelab.infer.sampling import SamplingParams

    from .serving import running_server

    overrides = ["limits.max_tokens=8", "default_max_tokens=4", "max_batch=2"]
    if kind == "hf":
        path = save_pretrained(text_models["olmoe"], tmp_path / "hf")
        chat_tokenizer.save(path)
    else:
        path = save_checkpoint(tmp_path / "run", step=2, tokens=0, model=text_models["dots1"])
        chat_tokenizer.save(tmp_path / "tok")
        overrides.append(f"tokenizer={tmp_path / 'tok'}")
    app, name = build_app(str(path), ServeConfig.from_dict({}, overrides))
    ref = load_generator(path, tokenizer=tmp_path / "tok" if kind == "step" else None)
    (expected,) = ref.complete([ref.prompt_ids("the")], SamplingParams(max_new_tokens=5))
    with running_server(app) as url:
        body = {"model": name, "prompt": "the", "max_tokens": 5, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected.text


def test_moelab_serve_command_answers_over_http(tmp_path, text_models, chat_tokenizer):
    """The real CLI in a subprocess: binds 127.0.0.1, serves /health and a completion."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    import os
    import socket
    import subprocess
    import sys
    import time

    from moelab.checkpoint.hf import save_pretrained

    path = save_pretrained(text_models["olmoe"], tmp_path / "hf")
    chat_tokenizer.save(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MOELAB_API_KEY": "k"}
    cmd = [sys.executable, "-m", "moelab", "serve", str(path), f"port={port}", "max_batch=2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.communicate(timeout=5)[0].decode()[-2000:])
            time.sleep(0.2)
        body = {"model": "hf", "prompt": "the", "max_tokens": 3}
        denied = httpx.post(url + "/v1/completions", json=body, timeout=30)
        ok = httpx.post(
            url + "/v1/completions", json=body, headers={"authorization": "Bearer k"}, timeout=30
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert denied.status_code == 401
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
