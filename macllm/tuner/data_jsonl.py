"""mlx-lm's data folder: train.jsonl and valid.jsonl, one example a line, in one of three formats.

    chat:         {"messages": [{"role": ..., "content": ...}, ...]}
    completions:  {"prompt": ..., "completion": ...}
    text:         {"text": ...}

With mask_prompt, chat examples train only the last message and completions only the completion.
"""

from __future__ import annotations

import json
from pathlib import Path

from macllm.errors import MacllmError
from macllm.tuner.examples import Example, TrainingData


def _encode(tokenizer, row: dict, where: str, mask_prompt: bool, max_seq: int) -> Example:
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise MacllmError(f"{where}: 'messages' must be a non-empty list")
        tokens = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=False))
        prompt = 0
        if mask_prompt:
            head = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
            prompt = len(tokenizer.encode(head))
    elif "prompt" in row and "completion" in row:
        prompt_text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                                    add_generation_prompt=True)
        tokens = tokenizer.encode(tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}],
            add_generation_prompt=False))
        prompt = len(tokenizer.encode(prompt_text)) if mask_prompt else 0
    elif "text" in row:
        if mask_prompt:
            raise MacllmError(f"{where}: --mask-prompt needs chat or completions data, not text")
        tokens = tokenizer.encode(str(row["text"]))
        if tokenizer.eos_token_id is not None:
            tokens.append(tokenizer.eos_token_id)
        prompt = 0
    else:
        raise MacllmError(f"{where}: expected 'messages', 'prompt'+'completion' or 'text'")
    return Example(tokens[:max_seq], min(prompt, max(0, len(tokens[:max_seq]) - 1)), where)


def read_jsonl(path: Path, tokenizer, max_seq: int, mask_prompt: bool) -> list[Example]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MacllmError(f"{path.name} line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise MacllmError(f"{path.name} line {number} is not a JSON object")
        example = _encode(tokenizer, row, f"{path.name}:{number}", mask_prompt, max_seq)
        if len(example.tokens) >= 2:
            out.append(example)
    return out


def load_jsonl_folder(root: Path, tokenizer, max_seq: int, mask_prompt: bool) -> TrainingData:
    train = read_jsonl(root / "train.jsonl", tokenizer, max_seq, mask_prompt)
    valid_path = root / "valid.jsonl"
    valid = read_jsonl(valid_path, tokenizer, max_seq, mask_prompt) if valid_path.is_file() else []
    if not train:
        raise MacllmError(f"{root / 'train.jsonl'} holds no examples")
    stats: dict[str, object] = {
        "source": str(root), "kind": "jsonl", "files": 2 if valid else 1, "chunks": len(train) + len(valid),
        "train_chunks": len(train), "valid_chunks": len(valid),
        "tokens": sum(len(e.tokens) for e in train + valid),
        "train_tokens": sum(len(e.tokens) for e in train), "valid_tokens": sum(len(e.tokens) for e in valid),
        "skipped": {}}
    return TrainingData(train, valid, stats)
