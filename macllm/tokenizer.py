"""Text <-> token ids for one model: encoding, decoding, chat templates and streamed output."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from tokenizers import Tokenizer as HFTokenizer

from macllm.chat_template import TemplateLimitError, compile_chat_template, render_chat_template
from macllm.errors import MacllmError
from macllm.formats.gguf_vocab import build_hf_tokenizer_from_gguf, gguf_default_add_bos

# Special tokens that end an assistant turn in common chat formats; the generator
# stops on any of them, not only on the declared EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Tokenizer:
    def __init__(
        self,
        hf: HFTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: set[int],
        add_bos: bool,
        chat_template: str | None,
        eos_token_id: int | None = None,
    ):
        self._hf = hf
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.special_ids = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
        self.eos_token_ids = set(eos_token_ids) | self._end_of_turn_ids()
        self._compiled: tuple[str, jinja2.Template] | None = None

    # -- constructors ---------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: dict) -> Tokenizer:
        hf = build_hf_tokenizer_from_gguf(metadata)
        eos = _int_or_none(metadata.get("tokenizer.ggml.eos_token_id"))
        end_ids = {eos, *(_int_or_none(metadata.get(f"tokenizer.ggml.{k}_token_id")) for k in ("eot", "eom"))}
        add_bos = metadata.get("tokenizer.ggml.add_bos_token")
        return cls(
            hf,
            bos_token_id=_int_or_none(metadata.get("tokenizer.ggml.bos_token_id")),
            eos_token_id=eos,
            eos_token_ids={i for i in end_ids if i is not None},
            add_bos=gguf_default_add_bos(metadata) if add_bos is None else bool(add_bos),
            chat_template=metadata.get("tokenizer.chat_template") or None,
        )

    @classmethod
    def from_folder(cls, path) -> Tokenizer:
        """A Hugging Face model folder (tokenizer.json + tokenizer_config.json + configs)."""
        folder = Path(path)
        tokenizer_json = folder / "tokenizer.json"
        if not tokenizer_json.exists():
            raise MacllmError(f"{folder} has no tokenizer.json; download the model's tokenizer files too")
        try:
            hf = HFTokenizer.from_file(str(tokenizer_json))
        except Exception as e:
            raise MacllmError(f"cannot read {tokenizer_json} ({str(e).splitlines()[0] if str(e) else e!r})") from None
        config = _read_json(folder / "tokenizer_config.json")

        # Older Llama-style folders only say "add BOS" through the post-processor.
        leading_token = _post_processor_leading_token(_read_json(tokenizer_json).get("post_processor"))
        bos_token = _token_content(config.get("bos_token")) or leading_token
        bos_id = hf.token_to_id(bos_token) if bos_token else None
        if bos_id is None:
            bos_id = _int_or_none(_read_json(folder / "config.json").get("bos_token_id"))
        add_bos = config.get("add_bos_token")
        if add_bos is None:
            add_bos = leading_token is not None and leading_token == bos_token

        eos_token = _token_content(config.get("eos_token"))
        eos_id = hf.token_to_id(eos_token) if eos_token else None
        eos_ids = {eos_id} if eos_id is not None else set()
        for name in ("generation_config.json", "config.json"):
            eos_ids |= _int_set(_read_json(folder / name).get("eos_token_id"))
        if eos_id is None and eos_ids:
            eos_id = min(eos_ids)
        return cls(
            hf,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            eos_token_ids=eos_ids,
            add_bos=bool(add_bos),
            chat_template=_folder_chat_template(folder, config),
        )

    # -- ids <-> text ---------------------------------------------------------

    @property
    def hf_tokenizer(self):
        """The underlying `tokenizers.Tokenizer` (for saving a tokenizer.json)."""
        return self._hf

    def token_string(self, token_id: int | None) -> str:
        """The vocabulary entry itself (e.g. '<|im_end|>' or 'Ġhello'); '' for None."""
        return self._token_text(token_id)

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Raw text to ids; special-token strings in the text become their ids.

        add_bos=None follows the model's metadata. BOS is never doubled: chat
        templates such as Llama 3's already start the text with it.
        """
        # Post-processors (TemplateProcessing) are bypassed; BOS is our decision alone.
        ids = self._hf.encode(text, add_special_tokens=False).ids
        want_bos = self.add_bos if add_bos is None else add_bos
        if want_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def piece(self, token_id: int) -> str:
        """Readable text of one token; a partial UTF-8 byte token shows as e.g. '\\xf0'."""
        text = self._hf.decode([int(token_id)], skip_special_tokens=False)
        if "\ufffd" not in text:
            return text
        raw = self._hf.id_to_token(int(token_id)) or ""
        data = _byte_level_bytes(raw)
        return raw if data is None else data.decode("utf-8", errors="backslashreplace")

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, a partial UTF-8 character's included (OpenAI's logprobs `bytes`)."""
        text = self._hf.decode([int(token_id)], skip_special_tokens=False)
        if "\ufffd" in text:
            data = _byte_level_bytes(self._hf.id_to_token(int(token_id)) or "")
            if data is not None:
                return data
        return text.encode("utf-8")

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)

    # -- chat -----------------------------------------------------------------

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, system: str | None = None,
        enable_thinking: bool | None = None, tools: list[dict] | None = None,
    ) -> str:
        """Render messages to prompt text. `system` replaces a leading system message or is prepended.
        `enable_thinking` reaches templates of reasoning models (Qwen3); None leaves it undefined, so the
        template's own default holds, as in transformers. `tools` (OpenAI shape) reaches templates that offer
        tools; macllm.tools.render_tool_prompt also readies tool calls in the history for them."""
        messages = list(messages)
        if system is not None:
            if messages and messages[0].get("role") == "system":
                messages = messages[1:]
            messages.insert(0, {"role": "system", "content": system})
        variables = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._token_text(self.bos_token_id),
            "eos_token": self._token_text(self.eos_token_id),
        }
        if enable_thinking is not None:
            variables["enable_thinking"] = enable_thinking
        if tools is not None:
            variables["tools"] = tools
        template = self._template()
        input_chars = sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages)
        input_chars += len(str(tools or ""))  # the tools' schemas are rendered too
        try:
            return render_chat_template(template, variables, input_chars, len(messages))
        except TemplateLimitError as e:
            raise MacllmError(f"the model's chat template was stopped: {e}; it is broken or hostile, "
                              f"so use another model file") from None
        except jinja2.TemplateError as e:
            raise MacllmError(f"the model's chat template failed: {e}") from None
        except Exception as e:  # the template is code from the model file: anything it raises is its fault
            detail = next(iter(str(e).splitlines()), "")
            raise MacllmError(f"the model's chat template failed: {type(e).__name__}: {detail}") from None

    def _template(self) -> jinja2.Template:
        source = self.chat_template or CHATML_TEMPLATE
        # Keyed on the source so assigning chat_template later takes effect.
        if self._compiled is None or self._compiled[0] != source:
            try:
                self._compiled = (source, compile_chat_template(source))
            except jinja2.TemplateError as e:
                raise MacllmError(f"the model's chat template is invalid: {e}") from None
            except RecursionError:  # a parser recursion, e.g. thousands of nested brackets
                raise MacllmError("the model's chat template is invalid: it is nested too deeply") from None
        return self._compiled[1]

    def _token_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self._hf.id_to_token(token_id) or ""

    def _end_of_turn_ids(self) -> set[int]:
        ids = (self._hf.token_to_id(t) for t in END_OF_TURN_TOKENS)
        return {i for i in ids if i is not None and i in self.special_ids}


class StreamDecoder:
    """Turns ids arriving one at a time into text pieces, never splitting a UTF-8 character.

    Decodes only a short window: the tokens already emitted last time (as context,
    so decoders that strip a leading space behave) plus the ones not yet emitted.
    The concatenation of all outputs equals Tokenizer.decode(all ids).
    """

    # A UTF-8 char spans at most 4 byte tokens; past this the bytes are simply invalid.
    MAX_HELD_TOKENS = 8

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._window: list[int] = []
        self._emitted = 0  # tokens in the window whose text was already returned

    def add(self, token_id: int) -> str:
        self._window.append(int(token_id))
        context_text, full_text = self._decode_window()
        held = len(self._window) - self._emitted
        if len(full_text) <= len(context_text):
            return ""
        if full_text.endswith("\ufffd") and held < self.MAX_HELD_TOKENS:
            return ""  # an incomplete multi-byte character: wait for its other bytes
        self._window = self._window[self._emitted :]
        self._emitted = len(self._window)
        return full_text[len(context_text) :]

    def flush(self) -> str:
        context_text, full_text = self._decode_window()
        self._window = []
        self._emitted = 0
        return full_text[len(context_text) :]

    def _decode_window(self) -> tuple[str, str]:
        decode = self._tokenizer.decode
        return (
            decode(self._window[: self._emitted], skip_special=self._skip_special),
            decode(self._window, skip_special=self._skip_special),
        )


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, others map to U+0100+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_BYTE_LEVEL = _byte_level_table()


def _byte_level_bytes(token: str) -> bytes | None:
    if not token or any(c not in _BYTE_LEVEL for c in token):
        return None
    return bytes(_BYTE_LEVEL[c] for c in token)


def _folder_chat_template(folder: Path, config: dict) -> str | None:
    # Newer transformers save the template in its own file instead of the config.
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template:
        template = _read_json(folder / "chat_template.json").get("chat_template")
    return template or None


def _post_processor_leading_token(processor: dict | None) -> str | None:
    """The special token a TemplateProcessing post-processor puts before the text, if any."""
    if not isinstance(processor, dict):
        return None
    if processor.get("type") == "Sequence":
        for inner in processor.get("processors", []):
            token = _post_processor_leading_token(inner)
            if token:
                return token
        return None
    if processor.get("type") != "TemplateProcessing":
        return None
    single = processor.get("single") or []
    first = single[0] if single else {}
    return first.get("SpecialToken", {}).get("id") if isinstance(first, dict) else None


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MacllmError(f"cannot read {path} ({e})") from None
    return data if isinstance(data, dict) else {}


def _token_content(token) -> str | None:
    """tokenizer_config.json writes tokens as a string or as {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _int_set(value) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple)):
        return {int(v) for v in value}
    return {int(value)}
