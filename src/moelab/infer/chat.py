"""Chat templates: messages → prompt text, for the dots.llm1 and OLMoE (Tülu) formats.

* ``dots``: ``<|system|>S<|endofsystem|><|userprompt|>U<|endofuserprompt|><|response|>A<|endofresponse|>``,
  no newlines between tags, the generation prompt ends in ``<|response|>``, and the instruct
  model stops on ``<|endofresponse|>`` (model_spec §2.9). Without a system message the default
  "You are a helpful assistant." is used, as exllamav3 does (users report worse answers with
  an empty one).
* ``tulu`` (OLMoE-Instruct): ``<|user|>\\nU\\n<|assistant|>\\nA<|endoftext|>\\n``; the generation
  prompt is ``<|assistant|>\\n`` and the model stops on its EOS (§3.7).

A model directory's ``tokenizer_config.json`` wins when it carries a ``chat_template`` (a Jinja
string, or a list of named ones): it is rendered in jinja2's sandbox, as transformers does, with
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and ``raise_exception``.
jinja2 comes with transformers and is imported only then. ``TULU_JINJA`` is the published Tülu
template and ``DOTS_JINJA`` the dots format in Jinja; export writes them into
tokenizer_config.json, and tests check the built-in renderers against them.

What this module does not know: token ids. It produces text and names its stop strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
DOTS_DEFAULT_SYSTEM = "You are a helpful assistant."
EOT = "<|endoftext|>"
DOTS_END_OF_RESPONSE = "<|endofresponse|>"

TULU_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)

DOTS_JINJA = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|system|>" + DOTS_DEFAULT_SYSTEM + "<|endofsystem|>' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>' + message['content'] + '<|endofsystem|>' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|userprompt|>' + message['content'] + '<|endofuserprompt|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|response|>' + message['content'] + '<|endofresponse|>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|response|>' }}{% endif %}"
)
"""The dots format as a Jinja template (written into exported tokenizer_config.json files)."""


def jinja_source(family: str) -> str:
    """The family's chat template as Jinja, for tools that render it themselves (transformers, vLLM)."""
    if family in ("dots1", "dots"):
        return DOTS_JINJA
    if family == "olmoe":
        return TULU_JINJA
    raise ValueError(f"no built-in chat template for family {family!r} (known: dots1, olmoe)")


def check_messages(messages: Any) -> list[Message]:
    """Messages as a list of {role, content} dicts; raises ValueError naming the bad entry."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def render_dots(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    parts = []
    if messages[0]["role"] != "system":
        parts.append(f"<|system|>{DOTS_DEFAULT_SYSTEM}<|endofsystem|>")
    tags = {
        "system": ("<|system|>", "<|endofsystem|>"),
        "user": ("<|userprompt|>", "<|endofuserprompt|>"),
        "assistant": ("<|response|>", DOTS_END_OF_RESPONSE),
    }
    for m in messages:
        start, end = tags[m["role"]]
        parts.append(f"{start}{m['content']}{end}")
    if add_generation_prompt:
        parts.append("<|response|>")
    return "".join(parts)


def render_tulu(
    messages: Sequence[Message], add_generation_prompt: bool = True, eos_token: str = EOT
) -> str:
    parts = []
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "assistant":
            parts.append(f"<|assistant|>\n{m['content']}{eos_token}" + ("" if last else "\n"))
        else:
            parts.append(f"<|{m['role']}|>\n{m['content']}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


@dataclass
class ChatTemplate:
    """A named renderer plus the strings that end an assistant turn."""

    name: str
    render_fn: Callable[[Sequence[Message], bool], str]
    stop_tokens: list[str] = field(default_factory=list)
    """Special-token strings that end a reply (looked up in the vocabulary by the caller)."""

    def render(self, messages: Any, add_generation_prompt: bool = True) -> str:
        return self.render_fn(check_messages(messages), add_generation_prompt)


def builtin_template(family: str) -> ChatTemplate:
    """The family's template: ``dots1``/``dots`` → dots format, ``olmoe`` → Tülu."""
    if family in ("dots1", "dots"):
        return ChatTemplate("dots", render_dots, [DOTS_END_OF_RESPONSE, EOT])
    if family == "olmoe":
        return ChatTemplate("tulu", render_tulu, [EOT])
    raise ValueError(f"no built-in chat template for family {family!r} (known: dots1, olmoe)")


def jinja_template(source: str, bos_token: str | None, eos_token: str | None) -> ChatTemplate:
    """A template string from tokenizer_config.json, rendered in jinja2's sandbox."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as err:  # pragma: no cover - jinja2 ships with transformers
        raise ImportError(
            "a chat_template in tokenizer_config.json needs jinja2: pip install 'moelab[hf]'"
        ) from err

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(source)

    def render(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        try:
            return compiled.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token or "",
                eos_token=eos_token or "",
            )
        except TemplateError as err:
            raise ValueError(f"chat template refused the messages: {err}") from None

    return ChatTemplate("tokenizer_config", render, [t for t in [eos_token] if t])


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(model_dir: str | Path | None, family: str) -> ChatTemplate:
    """The ``chat_template`` of ``model_dir/tokenizer_config.json`` if any, else the family's."""
    config = Path(model_dir) / "tokenizer_config.json" if model_dir else None
    if config is None or not config.is_file():
        return builtin_template(family)
    raw = json.loads(config.read_text())
    source = raw.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or next(iter(named.values()), None)
    if not isinstance(source, str) or not source:
        return builtin_template(family)
    template = jinja_template(
        source, _token_str(raw.get("bos_token")), _token_str(raw.get("eos_token"))
    )
    if family in ("dots1", "dots"):
        template.stop_tokens.append(DOTS_END_OF_RESPONSE)
    return template
