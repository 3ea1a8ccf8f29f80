"""`macllm quantize SRC OUT`: convert a model to an MLX folder with quantized weights."""

from __future__ import annotations

import json
import sys

from macllm.quant.recipe import BITS, CALIBRATION_TOKENS, GROUP_SIZES, MIXED_HIGH_PRECISION


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="convert a model (HF folder or any GGUF) to a quantized MLX folder")
    p.add_argument("source", metavar="SRC", help="a Hugging Face / MLX folder, a .gguf file or a catalog name")
    p.add_argument("out", metavar="OUT", help="the MLX folder to write (must not exist)")
    p.add_argument("--bits", type=int, default=4, choices=BITS, help="bits per weight (default 4)")
    p.add_argument("--group-size", type=int, default=64, choices=GROUP_SIZES,
                   help="weights sharing one scale and bias (default 64)")
    p.add_argument("--mixed", action="store_true",
                   help=f"keep {', '.join(MIXED_HIGH_PRECISION)} at 8 bits")
    p.add_argument("--calibrate", metavar="TEXT", default=None,
                   help="a text file or folder of notes: weight the rounding error by how the model's "
                        "activations use each weight (better 4-bit quality; takes a forward pass)")
    p.add_argument("--calibration-tokens", type=int, default=CALIBRATION_TOKENS, metavar="N",
                   help=f"tokens of calibration text to read (default {CALIBRATION_TOKENS})")
    p.add_argument("--distill", type=int, nargs="?", const=2, default=0, metavar="EPOCHS",
                   help="with --calibrate: also train each group's scale and bias so the quantized model "
                        "predicts like the original on the calibration text (default 2 epochs; minutes)")
    p.add_argument("--no-search", action="store_true",
                   help="plain min/max rounding per group (fast; what mx.quantize and mlx-lm do)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from macllm.quant.convert import convert

    summary = convert(args.source, args.out, args.bits, args.group_size, args.mixed, progress=not args.json,
                      search=not args.no_search, calibrate=args.calibrate,
                      calibration_tokens=args.calibration_tokens, distill_epochs=args.distill)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"wrote {summary['output']}: {args.bits}-bit, group {args.group_size}, "
          f"{summary['size_bytes'] / 1e6:.1f} MB, {summary['method']}"
          + (f" on {summary['calibration_tokens']} tokens" if summary["calibration_tokens"] else "")
          + f", {summary['seconds']} s")
    if args.mixed:
        print(f"--mixed: kept {len(summary['higher_precision_layers'])} matrices "
              f"({', '.join(MIXED_HIGH_PRECISION)}) at 8 bits", file=sys.stderr)
    return 0
