"""The bundled chat templates render the prompts their model families expect.

Rendered the way Hugging Face tokenizers render chat templates (a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, bos/eos tokens and raise_exception passed in), without loading a tokenizer.
"""

from importlib import resources

import pytest
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def render(name: str, messages: list[dict], **extra) -> str:
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    text = resources.files("runtime.templates").joinpath(f"{name}.jinja").read_text("utf-8")
    return env.from_string(text).render(messages=messages, bos_token="<s>", eos_token="</s>", **extra)


def test_llama2_conversation_with_system_prompt():
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert render("llama2", messages, add_generation_prompt=True) == (
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWhat is the capital of France? [/INST]"
        " Paris. </s><s>[INST] And of Italy? [/INST]"
    )


def test_llama2_without_system_prompt():
    assert render("llama2", [{"role": "user", "content": " Hi "}]) == "<s>[INST] Hi [/INST]"


def test_llama2_rejects_roles_out_of_order():
    with pytest.raises(TemplateError, match="alternate"):
        render("llama2", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_chatml_adds_the_assistant_header_when_asked():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render("chatml", messages, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not render("chatml", messages, add_generation_prompt=False).endswith("assistant\n")
