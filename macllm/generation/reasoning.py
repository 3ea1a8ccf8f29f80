"""Reasoning models write their thinking between <think> and </think> before the answer (Qwen3,
DeepSeek-R1 and the like). ReasoningSplitter routes streamed text to `reasoning` or `answer`, never
showing a tag or a half-arrived tag."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class SplitText:
    """What one piece of streamed text added to each part."""

    reasoning: str = ""
    answer: str = ""


def template_thinks(template: str | None) -> bool:
    """Whether a chat template knows think blocks (it writes or strips them)."""
    return bool(template) and THINK_CLOSE in template  # type: ignore[operator]


def prompt_opens_thinking(prompt_text: str) -> bool:
    """The prompt itself ends inside a think block (templates that start the model's thinking for it)."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


class ReasoningSplitter:
    """Feed text pieces as they stream; each call returns what became visible in each part.

    Before anything visible, a leading <think> opens the reasoning; any other text makes everything the
    answer. Inside, text up to </think> is reasoning. Newlines around the tags are the format's own (the
    templates strip them when they send thinking back), so they are dropped here too."""

    def __init__(self, inside: bool = False):
        self._state = "reasoning" if inside else "start"
        self._held = ""  # text that may still be (part of) a tag or trimmed whitespace
        self._reasoning_started = False
        self._answer_started = False

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning"

    def feed(self, text: str) -> SplitText:
        self._held += text
        reasoning, answer = [], []
        while self._held:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._held = stripped[len(THINK_OPEN):]
                    self._state = "reasoning"
                    continue
                if THINK_OPEN.startswith(stripped):  # blank so far, or part of the tag
                    break
                self._state = "answer"
            elif self._state == "reasoning":
                if not self._reasoning_started:
                    self._held = self._held.lstrip("\n")
                    if not self._held:
                        break
                    self._reasoning_started = True
                end = self._held.find(THINK_CLOSE)
                if end >= 0:
                    reasoning.append(self._held[:end].rstrip("\n"))
                    self._held = self._held[end + len(THINK_CLOSE):]
                    self._state = "answer"
                    continue
                keep = _held_back(self._held, THINK_CLOSE)
                reasoning.append(self._held[:len(self._held) - keep])
                self._held = self._held[len(self._held) - keep:]
                break
            else:
                if not self._answer_started:
                    self._held = self._held.lstrip("\n")
                    if not self._held:
                        break
                    self._answer_started = True
                answer.append(self._held)
                self._held = ""
        return SplitText("".join(reasoning), "".join(answer))

    def flush(self) -> SplitText:
        """The end of the text: what was held back goes to the part it was in."""
        held, self._held = self._held, ""
        if self._state == "reasoning":
            return SplitText(reasoning=held.strip("\n"))
        if self._state == "start":
            held = held.strip()
        return SplitText(answer=held if self._answer_started else held.lstrip("\n"))


def _held_back(text: str, tag: str) -> int:
    """How many trailing characters to hold: a possible start of `tag`, and newlines that may precede it."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n + _trailing_newlines(text[:-n])
    return _trailing_newlines(text)


def _trailing_newlines(text: str) -> int:
    return len(text) - len(text.rstrip("\n"))
