"""Training benchmarks on SmolLM2-135M (not a test).

    speed:   our tokens/s (float32 CPU fast path, and --keep-quantized) vs `python -m mlx_lm lora` on the
             same chunks of the same notes, from the same GGUF (converted to an mlx-lm folder for mlx-lm).
    quality: train 2 epochs on ~40 notes (25-35k tokens) and compare perplexity before/after on the
             training notes, on held-out notes of the same corpus, and on unrelated text written here.

    .venv/bin/python scripts/bench_train.py speed [--iters 8] [--mlx-iters 3]
    .venv/bin/python scripts/bench_train.py quality
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import macllm  # noqa: F401  (OpenBLAS before MLX)

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO.parent / "shared" / "data" / "notes"
MODEL = "smollm2-135m"

# mlx_lm.lora's terminal output is a rich table with rounded numbers; its own report callback gives the
# exact figures. `run` replaces any callback it is given, so the driver swaps in ours by name.
MLX_LM_DRIVER = """
import json, sys
import mlx_lm.lora as lora
from mlx_lm.tuner.callbacks import TrainingCallback

class Report(TrainingCallback):
    def on_train_loss_report(self, info):
        print("MLXLM_REPORT " + json.dumps(info), flush=True)

lora.get_reporting_callbacks = lambda *a, **k: Report()
sys.argv = ["mlx_lm.lora"] + sys.argv[1:]
lora.main()
"""

# Written for this benchmark: nothing like the notes corpus (software how-tos).
UNRELATED = """\
The orchard at the end of the lane was planted by my grandmother in the spring after the long winter.
She chose pears because they keep well in a cool cellar, and apples because children like them. Every
autumn the family gathered to pick the fruit, wrapping the best pears one by one in old newspaper.

Bread takes patience more than skill. Mix flour, water, salt and a little yeast, then leave the dough
covered overnight in a cool kitchen. In the morning fold it a few times, shape it gently into a round,
and let it rise again until it wobbles when the bowl is shaken. Bake it hot, with steam for the first
twenty minutes, and wait for it to cool before cutting, however good it smells.

The river floods most years in March. The water spreads over the low meadows, and for a week the
herons stand in what used to be grass, watching for fish that have wandered too far from the channel.
When the flood drains away it leaves a line of reeds and branches along the fence, and the soil is dark
and rich for the summer hay.

My neighbour keeps bees in three white hives beside the hedge. In July the bees work the lime trees
along the road, and the honey from those weeks is pale and tastes faintly of mint. She says the bees
know her by her voice, and she always tells them the news of the village before she opens a hive.
"""


def corpus(tokenizer, want_tokens=(25_000, 35_000), max_notes=40, held_out=8):
    """(training notes, held-out notes): every fifth note in path order, small ones, until ~30k tokens."""
    files = sorted(p for p in NOTES.rglob("*.md"))
    chosen, held, total = [], [], 0
    for path in files[::5]:
        n = len(tokenizer.encode(path.read_text(encoding="utf-8")))
        if n > 2000:
            continue
        if len(chosen) < max_notes and total + n <= want_tokens[1]:
            chosen.append(path)
            total += n
        elif len(held) < held_out:
            held.append(path)
    return chosen, held, total


def copy_notes(paths, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        rel = p.relative_to(NOTES)
        (folder / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / rel)
    return folder


def run_ours(model, notes, name, out_dir, args, extra=()):
    cmd = [sys.executable, "-m", "macllm.cli", "train", "--json", "--model", str(model), "--notes", str(notes),
           "--name", name, "--out-dir", str(out_dir), "--force", *map(str, args), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        raise SystemExit(f"macllm train failed: {proc.stderr.strip()[-500:]}")
    return events


def steady_tokens_per_sec(events, skip=2):
    """Total tokens / total step time after the first `skip` steps (they include compilation)."""
    steps = [e for e in events if e["event"] == "step"][skip:]
    secs = sum(e["tokens"] / e["tokens_per_sec"] for e in steps)
    return round(sum(e["tokens"] for e in steps) / secs, 1) if secs > 0 else None


def speed(args):
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.hub import pull
    from macllm.loader import read_model_files
    from macllm.tuner.data import load_notes

    gguf = pull(MODEL, progress=False)
    cfg, weights, tokenizer, _ = read_model_files(gguf)
    chosen, _, _ = corpus(tokenizer)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    notes = copy_notes(chosen, work / "notes")
    common = ["--batch", args.batch, "--max-seq", args.max_seq, "--val-fraction", 0, "--iters", args.iters]
    result = {"model": MODEL, "batch": args.batch, "max_seq": args.max_seq, "rank": 8, "layers": "all",
              "targets": "q,k,v,o,gate,up,down"}
    ours = run_ours(gguf, notes, "speed", work / "out", common)
    result["ours_float32_tok_s"] = steady_tokens_per_sec(ours)
    result["ours_float32_peak_mb"] = max(e["peak_memory_mb"] for e in ours if e["event"] == "step")
    quant = run_ours(gguf, notes, "speedq", work / "out", [*common[:-1], args.mlx_iters + 2], ["--keep-quantized"])
    result["ours_quantized_tok_s"] = steady_tokens_per_sec(quant)
    result["ours_quantized_peak_mb"] = max(e["peak_memory_mb"] for e in quant if e["event"] == "step")
    # mlx-lm: the same chunks as {"text": ...} lines, from the same weights as an mlx-lm folder.
    data = load_notes(notes, tokenizer, args.max_seq, 0.0, 0)
    jsonl = work / "jsonl"
    jsonl.mkdir()
    lines = "".join(json.dumps({"text": tokenizer.decode(e.tokens, skip_special=True)}) + "\n" for e in data.train)
    (jsonl / "train.jsonl").write_text(lines)
    (jsonl / "valid.jsonl").write_text(lines.split("\n", 1)[0] + "\n")
    folder = save_mlx_folder(cfg, weights, tokenizer, work / "mlx-model")
    cmd = [sys.executable, "-c", MLX_LM_DRIVER, "--train", "--data", str(jsonl), "--model", str(folder),
           "--iters", str(args.mlx_iters), "--batch-size", str(args.batch), "--max-seq-length", str(args.max_seq),
           "--num-layers", "-1", "--steps-per-report", "1", "--steps-per-eval", "100000", "--val-batches", "1",
           "--adapter-path", str(work / "mlx-adapter")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    reports = [(r["iteration"], r["tokens_per_second"], r["peak_memory"])
               for r in (json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                         if line.startswith("MLXLM_REPORT "))]
    if not reports:
        raise SystemExit(f"mlx_lm lora printed no reports: {proc.stdout[-800:]} {proc.stderr[-800:]}")
    steady = reports[1:] or reports  # the first includes compilation
    result["mlx_lm_tok_s"] = round(sum(float(t) for _, t, _ in steady) / len(steady), 2)
    result["mlx_lm_peak_mb"] = round(max(float(m) for *_, m in reports) * 1000, 1)  # GB (1e9 bytes) -> MB
    result["mlx_lm_reports"] = [(int(i), float(t)) for i, t, _ in reports]
    result["speedup_float32"] = round(result["ours_float32_tok_s"] / result["mlx_lm_tok_s"], 1)
    result["ratio_quantized"] = round(result["ours_quantized_tok_s"] / result["mlx_lm_tok_s"], 2)
    shutil.rmtree(work, ignore_errors=True)
    return result


def perplexity(model, examples, batch=4) -> float:
    import mlx.core as mx
    import mlx.nn as nn

    from macllm.tuner.batches import collate

    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch):
        tokens, mask, _ = collate(examples[i:i + batch])
        logits = model(tokens[:, :-1]).astype(mx.float32)
        ce = (nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask).sum()
        total += ce.item()
        count += mask.sum().item()
    return math.exp(total / count)


def quality(args):
    from macllm.hub import pull
    from macllm.loader import load_model
    from macllm.lora import formats
    from macllm.lora.manager import AdapterManager
    from macllm.tuner.data import note_examples
    from macllm.tuner.examples import Example

    gguf = pull(MODEL, progress=False)
    loaded = load_model(str(gguf), progress=False)
    tok = loaded.tokenizer
    chosen, held, total = corpus(tok)
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    notes = copy_notes(chosen, work / "notes")
    events = run_ours(gguf, notes, "notes", work / "out", ["--epochs", args.epochs, "--max-seq", args.max_seq])
    done = events[-1]
    sets = {
        "training_notes": [e for p in chosen for e in note_examples(p.name, p.read_text(), tok, args.max_seq)],
        "held_out_notes": [e for p in held for e in note_examples(p.name, p.read_text(), tok, args.max_seq)],
        "unrelated_text": [Example(tok.encode(par)) for par in UNRELATED.split("\n\n")],
    }
    before = {k: perplexity(loaded.model, v) for k, v in sets.items()}
    manager = AdapterManager(loaded.model, loaded.config, MODEL)
    manager.load(formats.read_adapter(Path(done["adapter"])))
    manager.activate({"notes": 1.0})
    after = {k: perplexity(loaded.model, v) for k, v in sets.items()}
    result = {"model": MODEL, "notes": len(chosen), "note_tokens": total, "held_out_notes": len(held),
              "summary": {k: done["summary"][k] for k in ("steps", "epochs", "time_s", "tokens_per_sec", "train_loss",
                                                           "val_ppl_before", "val_ppl_after", "peak_memory_mb",
                                                           "outcome")},
              "perplexity": {k: {"before": round(before[k], 3), "after": round(after[k], 3),
                                 "change_pct": round(100 * (after[k] / before[k] - 1), 1)} for k in sets}}
    shutil.rmtree(work, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("speed", "quality"))
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--mlx-iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-seq", type=int, default=512)
    ap.add_argument("--epochs", type=float, default=2)
    args = ap.parse_args()
    print(json.dumps(speed(args) if args.mode == "speed" else quality(args), indent=2))


if __name__ == "__main__":
    main()
