"""What quantization costs: perplexity of each recipe against the source weights, ours and mlx-lm's side
by side on the same float weights, plus first and second load time of an imported GGUF.

    MACLLM_HOME=~/.cache/macllm-test .venv/bin/python scripts/bench_quantize.py [--models smollm2-135m,gemma3-270m]

Evaluation text: the first --tokens tokens of ../shared/data/notes/python/*.md (context 512, stride 256).
Calibration text (for the calibrated and distilled rows): every other folder of ../shared/data/notes, so the evaluation
notes are never seen while calibrating. The peer row is mx.quantize, which is what mlx_lm.convert uses.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import macllm  # noqa: E402,F401  (loads OpenBLAS before MLX)

# isort: split
import mlx.core as mx  # noqa: E402

NOTES = Path(__file__).resolve().parents[2] / "shared" / "data" / "notes"
EVAL_FOLDER = "python"


def peer_quantize(weights: dict, bits: int, group_size: int) -> tuple[dict, dict]:
    """mlx-lm's way: mx.quantize on every quantizable matrix."""
    from macllm.quant.weights import is_quantizable

    out = {}
    for name, value in weights.items():
        if is_quantizable(name, value, group_size):
            prefix = name[: -len(".weight")]
            out[name], out[f"{prefix}.scales"], out[f"{prefix}.biases"] = mx.quantize(
                value.astype(mx.float16), group_size=group_size, bits=bits)
        else:
            out[name] = value
    return out, {"group_size": group_size, "bits": bits}


def calibration_folder(tmp: Path) -> Path:
    """Links to every note outside the evaluation folder."""
    folder = tmp / "calibration"
    folder.mkdir()
    for note in sorted(NOTES.rglob("*.md")):
        rel = note.relative_to(NOTES)
        if rel.parts[0] != EVAL_FOLDER:
            (folder / "__".join(rel.parts)).symlink_to(note)
    return folder


def load_times(name: str) -> dict:
    """First load (imports a k-quant GGUF into the cache) and second load (reads the cache)."""
    from macllm.formats.gguf_import import import_cache_path
    from macllm.hub import resolve_model
    from macllm.loader import load_model

    path = resolve_model(name, progress=False)
    if path.suffix != ".gguf":
        return {}
    shutil.rmtree(import_cache_path(path), ignore_errors=True)
    times = {}
    for label in ("first_load_s", "second_load_s"):
        start = time.perf_counter()
        load_model(name, progress=False)
        times[label] = round(time.perf_counter() - start, 2)
    return times


def bench_model(name: str, tokens: int, tmp: Path, calibration_tokens: int, distill_epochs: int) -> dict:
    from macllm.hub import resolve_model
    from macllm.loader import build_model
    from macllm.quant.calibration import activation_importance, read_calibration_text
    from macllm.quant.convert import float_weights
    from macllm.quant.distill import distill_scales
    from macllm.quant.perplexity import perplexity
    from macllm.quant.weights import quantize_weights

    cfg, weights, tokenizer = float_weights(resolve_model(name, progress=False))
    cfg.quantization = None
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((NOTES / EVAL_FOLDER).glob("*.md")))
    ids = tokenizer.encode(text)[:tokens]

    def measure(label: str, qweights: dict, quant: dict | None, seconds: float) -> dict:
        c = copy.copy(cfg)
        c.quantization = quant
        model, _ = build_model(c, dict(qweights))
        ppl = perplexity(model, ids, context=512, stride=256).ppl
        size = sum(v.nbytes for v in qweights.values())
        row = {"recipe": label, "ppl": round(ppl, 3), "weights_mb": round(size / 1e6, 1),
               "quantize_s": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        return row

    rows = [measure("source (exact dequantization)", weights, None, 0.0)]
    start = time.perf_counter()
    model, _ = build_model(cfg, dict(weights))
    calib = tokenizer.encode(read_calibration_text(calibration_folder(tmp)))[:calibration_tokens]
    importance = activation_importance(model, calib, "lm_head.weight" not in weights)
    calibrate_s = time.perf_counter() - start
    del model
    recipes = [
        ("8-bit g64", dict(bits=8, group_size=64, search=True)),
        ("4-bit g32", dict(bits=4, group_size=32, search=True)),
        ("4-bit g64, min/max (--no-search)", dict(bits=4, group_size=64)),
        ("4-bit g64, mlx-lm (mx.quantize)", None),
        ("4-bit g64, search (default)", dict(bits=4, group_size=64, search=True)),
        ("4-bit g64, --calibrate", dict(bits=4, group_size=64, search=True, importance=importance)),
        ("--mixed", dict(bits=4, group_size=64, mixed=True, search=True)),
        ("--mixed --calibrate", dict(bits=4, group_size=64, mixed=True, search=True, importance=importance)),
    ]
    if distill_epochs:
        recipes += [(f"4-bit g64, --calibrate --distill {distill_epochs}", recipes[5][1] | {"distill": True}),
                    (f"--mixed --calibrate --distill {distill_epochs}", recipes[7][1] | {"distill": True})]
    for label, kwargs in recipes:
        start = time.perf_counter()
        kwargs = dict(kwargs) if kwargs is not None else None
        distill = kwargs.pop("distill", False) if kwargs else False
        if kwargs is None:
            qweights, quant = peer_quantize(weights, 4, 64)
        else:
            qweights, quant = quantize_weights(dict(weights), **kwargs)
        if distill:
            qweights = distill_scales(cfg, weights, qweights, quant, calib, distill_epochs)
        mx.eval(list(qweights.values()))
        seconds = time.perf_counter() - start + (calibrate_s if "importance" in (kwargs or {}) else 0.0)
        rows.append(measure(label, qweights, quant, seconds))
    source = rows[0]["ppl"]
    for row in rows:
        row["vs_source_pct"] = round(100 * (row["ppl"] / source - 1), 1)
    peer = next(r for r in rows if "mlx-lm" in r["recipe"])["ppl"]
    ours = min(r["ppl"] for r in rows if r["recipe"].startswith("4-bit g64, --calibrate"))
    return {"model": name, "eval_tokens": len(ids), "calibration_tokens": len(calib), "rows": rows,
            "peer_ppl_over_ours_4bit_g64": round(peer / ours, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--calibration-tokens", type=int, default=8192)
    parser.add_argument("--distill", type=int, default=2, metavar="EPOCHS", help="0 skips the distilled rows")
    parser.add_argument("--no-load-times", action="store_true")
    args = parser.parse_args()
    if not NOTES.is_dir():
        print(f"needs the notes corpus at {NOTES}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.models.split(",")):
            result = {} if args.no_load_times else load_times(name)
            (Path(tmp) / str(i)).mkdir()
            result.update(bench_model(name, args.tokens, Path(tmp) / str(i), args.calibration_tokens,
                                      args.distill))
            results.append(result)
    print()
    for result in results:
        print(f"{result['model']}: {result['eval_tokens']} tokens, calibration {result['calibration_tokens']}"
              + (f", first load {result['first_load_s']} s, second {result['second_load_s']} s"
                 if "first_load_s" in result else ""))
        print(f"  {'recipe':40} {'ppl':>8} {'vs source':>10} {'weights MB':>11} {'seconds':>8}")
        for r in result["rows"]:
            print(f"  {r['recipe']:40} {r['ppl']:8.3f} {r['vs_source_pct']:+9.1f}% {r['weights_mb']:11.1f}"
                  f" {r['quantize_s']:8.1f}")
        print(f"  mlx-lm 4-bit g64 perplexity / our best 4-bit g64: {result['peer_ppl_over_ours_4bit_g64']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
