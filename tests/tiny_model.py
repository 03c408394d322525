"""A tiny random Llama checkpoint for tests: a byte-level BPE tokenizer, a ChatML template, ~1.5 MB of weights.

Owns building it, deterministically, into a folder that `from_pretrained` (and vLLM) can load without a network.
Random weights say nothing about quality; the model is tuned only so that greedy decoding runs long and varied
enough for flow tests (max_tokens -> "length", stop strings picked from a first run's output).

    python tests/tiny_model.py OUT_DIR
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 350

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CORPUS = [
    "The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today?",
    "I am fine, thank you for asking.",
    "What is the weather like in Berlin?",
    "It is sunny and warm, with a light breeze.",
    "Tell me a story about a dragon and a knight.",
    "Once upon a time there was a small village by the sea.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.",
    "Python is a programming language; Rust and Go are too.",
    "Ray Serve deploys models behind an HTTP endpoint.",
    "The model streams tokens one at a time to the client.",
    "You are a helpful assistant.",
    "Please summarise the following paragraph in one sentence.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The moon orbits the earth about once a month.",
    "Cats and dogs are popular pets around the world.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Can you translate 'good morning' into Spanish? Buenos dias!",
    "Mathematics: 2 + 2 = 4, 3 * 3 = 9, 10 / 2 = 5.",
    "Symbols like @, #, $, %, &, (, ), [, ], {, } appear in code.",
    "The library opens at nine and closes at five.",
    "Trains leave the station every fifteen minutes.",
    "Green, blue, red, yellow, purple and orange are colours.",
    "Do not forget to drink water and sleep well.",
    "Deep learning models have millions of parameters.",
    "The answer to the question is not obvious at first.",
    "Music, art and science make life interesting.",
    "Write a short poem about autumn leaves falling.",
    "user assistant system: roles in a chat conversation.",
    "Zebras, quokkas and yaks live far apart.",
]


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _build_model(tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,  # head_dim 64: what vLLM's CPU attention supports
        max_position_embeddings=512,
        # A wide init makes the random network chaotic enough that greedy decoding wanders instead of repeating
        # one token.
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A zero row gives logit 0, below the best of the other ~190 random logits, so greedy never picks it.
        # Random weights pick EOS as often as anything; tests need long runs, so EOS is never the greedy choice
        # (stop is tested with stop strings). Lone bytes of multi-byte characters and control characters would
        # make the output unreadable and hard to pick stop strings from, so they go too.
        for token_id in _unwanted_token_ids(tokenizer):
            model.lm_head.weight[token_id].zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )
    return model


def _unwanted_token_ids(tokenizer) -> list[int]:
    # Whitespace other than the space would make stop strings awkward to pick from the output.
    printable = set(string.printable) - set("\t\n\r\x0b\x0c")
    return [
        i
        for i in range(len(tokenizer))
        if i in tokenizer.all_special_ids or not set(tokenizer.decode([i])) <= printable
    ]


def build_tiny_model(out_dir: Path) -> Path:
    """Write the tokenizer and model into `out_dir` (created if needed) and return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    model = _build_model(tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_model.py OUT_DIR")
    print(build_tiny_model(Path(sys.argv[1])))
