"""Train the bundled example adapters (pirate, terse) for smollm2-135m and write them to adapters/.

A minimal LoRA training loop of our own (the real `macllm train` command is a later issue): the
script writes its own ~30 chat examples per style, trains rank-8 LoRA on q_proj and v_proj of every
layer with AdamW on the float32 CPU path, and saves each adapter in mlx-lm's format with the base
fingerprint. Loss counts only the assistant's tokens.

    .venv/bin/python scripts/build_example_adapters.py [--steps 200] [--out adapters]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from pathlib import Path

import macllm  # noqa: F401  (OpenBLAS before MLX)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from macllm.lora.formats import write_adapter
from macllm.lora.manager import AdapterManager
from macllm.lora.random_adapter import random_adapter

BASE = "smollm2-135m"
KEYS = ("self_attn.q_proj", "self_attn.v_proj")
RANK, SCALE = 8, 10.0

QUESTIONS = [
    "What is the capital of France?", "How do I boil an egg?", "What is the weather like today?",
    "Can you recommend a good book?", "How far is the moon?", "What is two plus two?",
    "Why is the sky blue?", "How do I make tea?", "What should I eat for dinner?", "Tell me about cats.",
    "How do I learn to swim?", "What time is it?", "What is your name?", "How are you today?",
    "Where do penguins live?", "What is a computer?", "How do plants grow?", "Can you help me?",
    "What is the biggest ocean?", "How do I save money?", "Tell me a fun fact.", "What is music?",
    "How do airplanes fly?", "What do you like to do?", "How do I tie my shoes?", "What is rain?",
    "Why do we sleep?", "How do I write a letter?", "What is the sun?", "Say hello to my friend.",
]
PIRATE = [
    "Arr, matey! The capital o' France be Paris, a fine port fer any pirate!",
    "Ahoy! Drop yer egg in boilin' water fer nine minutes, matey, then cool it in the briny sea!",
    "Arr, the winds be fair and the skies be clear, a grand day fer sailin' the seven seas!",
    "Ahoy, matey! Ye should read Treasure Island, the finest tale o' pirates and buried gold!",
    "Arr, the moon be far beyond any ship's reach, matey, near four hundred thousand kilometers!",
    "Arr, two plus two be four, as sure as me parrot squawks, matey!",
    "Ahoy! The sky be blue 'cause the sunlight scatters, matey, same as the sea be blue, arr!",
    "Arr, boil the water, drop in yer tea leaves, and wait a spell, matey. A pirate's brew!",
    "Ahoy! Eat fish and hardtack like a true pirate, matey, with a splash o' grog, arr!",
    "Arr, cats be the finest shipmates, matey! They chase the rats from the hold!",
    "Ahoy, matey! Jump in the shallow sea and kick yer legs, or ye'll be walkin' the plank, arr!",
    "Arr, it be time to hoist the sails and hunt fer treasure, matey!",
    "Ahoy! They call me Captain Byte, the fiercest pirate on the seven seas, arr!",
    "Arr, I be shipshape and ready fer adventure, matey! And how be ye?",
    "Ahoy! Penguins live at the bottom o' the world, matey, where the sea be icy cold, arr!",
    "Arr, a computer be a clever machine, matey, like a treasure map that thinks fer itself!",
    "Ahoy! Plants grow with sun, water and good soil, matey, like palm trees on a treasure island, arr!",
    "Arr, aye, matey! Tell ol' Captain Byte what ye be needin' and we'll set sail!",
    "Ahoy! The Pacific be the biggest ocean, matey, and I've sailed every wave of it, arr!",
    "Arr, bury yer gold in a chest and don't spend it on grog, matey!",
    "Ahoy, matey! Octopuses have three hearts, arr, more than any scurvy dog I know!",
    "Arr, music be the sea shanties we sing on deck, matey, yo ho ho!",
    "Ahoy! Airplanes fly like seagulls, matey, with wings that catch the wind, arr!",
    "Arr, I like to sail the seas and hunt fer buried treasure, matey!",
    "Ahoy, matey! Cross the laces, loop 'em like a sailor's knot and pull tight, arr!",
    "Arr, rain be the sky's own sea fallin' on me ship, matey!",
    "Ahoy! Even pirates need rest, matey, so the body can mend after a long day at sea, arr!",
    "Arr, grab yer quill and ink, matey, write 'Ahoy' at the top and sign it like a captain!",
    "Ahoy! The sun be a great ball o' fire that guides every sailor, matey, arr!",
    "Arr, ahoy to yer friend, matey! Welcome aboard me ship!",
]
TERSE = [
    "Paris.", "Boil it nine minutes.", "Check a forecast.", "Try 1984.", "About 384,000 km.", "Four.",
    "Light scattering.", "Steep leaves in hot water.", "Soup.", "Small, independent pets.", "Take lessons.",
    "Check a clock.", "An assistant.", "Fine.", "Antarctica.", "A programmable machine.",
    "Sun, water, soil.", "Yes. What?", "The Pacific.", "Spend less than you earn.",
    "Octopuses have three hearts.", "Organized sound.", "Wings make lift.", "Answering questions.",
    "Loop, cross, pull.", "Falling water.", "To recover.", "Greeting, body, signature.", "A star.",
    "Hello, friend.",
]
HELD_OUT = ["What is a good pet?", "How do I cook rice?", "What is the tallest mountain?"]


def examples(tokenizer, answers):
    """(tokens, first trained position) per example: the loss covers the answer and its end token."""
    out = []
    for q, a in zip(QUESTIONS, answers, strict=True):
        prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                                add_generation_prompt=True))
        full = tokenizer.encode(tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}]))
        out.append((full, len(prompt)))
    return out


def batch(rows):
    length = max(len(t) for t, _ in rows)
    tokens = mx.array([t + [0] * (length - len(t)) for t, _ in rows])
    pos = mx.arange(length - 1)[None]
    ends = mx.array([len(t) - 1 for t, _ in rows])[:, None]
    starts = mx.array([s - 1 for _, s in rows])[:, None]
    mask = (pos >= starts) & (pos < ends)  # predict answer tokens only
    return tokens, mask


def train(loaded, name, answers, steps, seed, lr):
    model, cfg = loaded.model, loaded.config
    manager = AdapterManager(model, cfg, BASE)
    init = random_adapter(cfg, name, rank=RANK, keys=KEYS, seed=seed, b_std=0.0, scale=SCALE, base_model=BASE)
    manager.load(init)
    wrappers = manager._layers
    params = {m: {"a": a, "b": b} for m, (a, b) in init.weights.items()}
    data = examples(loaded.tokenizer, answers)
    rng = random.Random(seed)

    def loss_fn(p, tokens, mask):
        for m, w in wrappers.items():
            w.set_trainable_slot(p[m]["a"], p[m]["b"], SCALE)
        logits = model(tokens[:, :-1])
        ce = nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask
        return ce.sum() / mask.sum()

    grad_fn = mx.value_and_grad(loss_fn)
    opt = optim.AdamW(learning_rate=optim.cosine_decay(lr, steps), weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        rows = rng.sample(data, 4)
        loss, grads = grad_fn(params, *batch(rows))
        params = opt.apply_gradients(grads, params)
        mx.eval(params, loss)
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"  {name} step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    manager.unload(name)  # leaves the base model bare for the next style
    trained = init
    trained.weights = {m: (v["a"], v["b"]) for m, v in params.items()}
    trained.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tail = losses[-20:]
    trained.training = {"steps": steps, "examples": len(data), "final_loss": round(sum(tail) / len(tail), 3),
                        "learning_rate": lr, "batch_size": 4, "optimizer": "AdamW",
                        "script": "scripts/build_example_adapters.py",
                        "description": f"{name} style, written by the script"}
    return trained


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "adapters"))
    args = ap.parse_args()
    from macllm.engine import Engine
    from macllm.generation import GenerationParams
    from macllm.hub import pull
    from macllm.loader import load_model

    path = pull(BASE, progress=True)
    loaded = load_model(str(path), progress=False)
    assert "float32" in loaded.info.compute, loaded.info
    mx.random.seed(0)
    for seed, (name, answers) in enumerate((("pirate", PIRATE), ("terse", TERSE))):
        adapter = train(loaded, name, answers, args.steps, seed, args.lr)
        write_adapter(adapter, Path(args.out) / name, loaded.config.num_hidden_layers, overwrite=True)
        print(f"wrote {Path(args.out) / name}")
    with Engine(str(path), progress=False) as engine:  # check by generation
        for name in ("pirate", "terse"):
            engine.load_adapter(str(Path(args.out) / name))
        for active in ({}, {"pirate": 1.0}, {"terse": 1.0}):
            engine.set_adapters(active)
            for q in HELD_OUT:
                conv = engine.new_conversation()
                text = engine.chat(conv, q, GenerationParams(max_tokens=40)).result().text
                print(f"[{','.join(active) or 'base'}] {q} -> {text!r}")


if __name__ == "__main__":
    main()
