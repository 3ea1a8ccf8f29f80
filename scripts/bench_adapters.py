#!/usr/bin/env python3
"""Live adapters on the real SmolLM2-135M: swap time, load + activate time, decode speed with 0/1/2/4
active adapters, and what mlx-lm needs to change adapter (a full mlx_lm.load of model + adapter).

    .venv/bin/python scripts/bench_adapters.py [--gen-tokens 128] [--json-out FILE]

Adapters are random rank-8 LoRAs on all attention and MLP projections of every layer (B nonzero, so
the delta is really computed). The decode speeds are interleaved: each of `--rounds` rounds measures bare
(adapters unloaded), then 0, 1, 2 and 4 active, one generation each, and the median of the rounds is
reported, so a burst of load elsewhere on the machine falls on every configuration alike rather than on
one. Prints progress, the load average and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import macllm  # noqa: F401  (OpenBLAS before MLX)

PROSE = ("The harbour town woke slowly. Fishing boats came in with the tide, gulls argued over the nets, and "
         "the baker on Quay Street opened at six as she had for thirty-one years. ")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def decode_tps(engine, prompt, tokens: int) -> float:
    from macllm.generation import GenerationParams

    params = GenerationParams(max_tokens=tokens, temperature=0.0)
    return engine.generate(prompt, params).result().stats.generation_tps


BLENDS = (("0", {}), ("1", {"a0": 1.0}), ("2", {"a0": 1.0, "a1": 0.5}), ("4", {f"a{i}": 0.5 for i in range(4)}))


def swap_times(engine, names: list[str]) -> dict:
    swaps = []
    for i in range(40):
        t0 = time.perf_counter()
        engine.set_adapters({names[i % 2]: 1.0})
        swaps.append(time.perf_counter() - t0)
    blend_swaps = []
    for i in range(20):
        t0 = time.perf_counter()
        engine.set_adapters({names[i % 2]: 1.0, names[2]: 0.5 + 0.1 * (i % 3)})
        blend_swaps.append(time.perf_counter() - t0)
    return {"median": ms(statistics.median(swaps)), "max": ms(max(swaps)),
            "blend_of_2_median": ms(statistics.median(blend_swaps))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the decode configurations")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    from macllm.engine import Engine
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.hub import pull
    from macllm.loader import read_model_files
    from macllm.lora.formats import write_adapter
    from macllm.lora.random_adapter import ALL_KEYS, random_adapter

    path = pull(args.model, progress=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    summary: dict = {"model": args.model, "adapter": "rank 8, q/k/v/o/gate/up/down, all layers"}
    with Engine(str(path), progress=False) as engine:
        cfg = engine.loaded.config
        summary["compute"] = engine.info.compute
        names = [f"a{i}" for i in range(4)]
        dirs = {}
        for i, name in enumerate(names):
            adapter = random_adapter(cfg, name, rank=8, keys=ALL_KEYS, seed=i, b_std=0.02, base_model=args.model)
            dirs[name] = write_adapter(adapter, tmp / name, cfg.num_hidden_layers)
        summary["adapter_file_mb"] = round((dirs["a0"] / "adapters.safetensors").stat().st_size / 1e6, 2)
        prompt = engine.tokenize(PROSE * 4)[:128]

        decode_tps(engine, prompt, 16)  # warm-up: the first generation's one-off costs fall on no configuration
        summary["load_average_before"] = round(os.getloadavg()[0], 2)
        decode: dict[str, list[float]] = {"bare": [], **{label: [] for label, _ in BLENDS}}
        for round_ in range(args.rounds):
            print(f"decode round {round_ + 1}/{args.rounds}: bare, 0, 1, 2, 4 active…", file=sys.stderr)
            loaded = {a["name"] for a in engine.adapters["loaded"]}
            for name in names:
                if name in loaded:
                    engine.unload_adapter(name)
            decode["bare"].append(decode_tps(engine, prompt, args.gen_tokens))
            load_times = []
            for name in names:
                t0 = time.perf_counter()
                engine.load_adapter(str(dirs[name]))
                engine.set_adapters({name: 1.0})
                load_times.append(time.perf_counter() - t0)
            if round_ == 0:
                summary["load_and_activate_ms"] = {"first": ms(load_times[0]),
                                                   "median": ms(statistics.median(load_times))}
                summary["swap_ms"] = swap_times(engine, names)
            for label, active in BLENDS:
                engine.set_adapters(active)
                decode[label].append(decode_tps(engine, prompt, args.gen_tokens))
        summary["load_average_after"] = round(os.getloadavg()[0], 2)
        summary["decode_tps_per_round"] = {k: [round(v, 1) for v in runs] for k, runs in decode.items()}
        medians = {k: round(statistics.median(runs), 1) for k, runs in decode.items()}
        summary["decode_tps"] = medians
        summary["one_adapter_slowdown_pct"] = round(100 * (1 - medians["1"] / medians["0"]), 1)
        summary["one_adapter_slowdown_pct_per_round"] = [round(100 * (1 - one / none), 1)
                                                         for one, none in zip(decode["1"], decode["0"], strict=True)]

    # mlx-lm: changing adapter means loading the model again with the new adapter_path.
    print("mlx-lm reload…", file=sys.stderr)
    import mlx_lm

    cfg, weights, tokenizer, _ = read_model_files(path)
    folder = save_mlx_folder(cfg, weights, tokenizer, tmp / "mlx-lm-model")
    reloads = []
    for name in ("a0", "a1", "a0"):
        t0 = time.perf_counter()
        mlx_lm.load(str(folder), adapter_path=str(dirs[name]))
        reloads.append(time.perf_counter() - t0)
    summary["mlx_lm_change_adapter_ms"] = {"first": ms(reloads[0]), "median_warm": ms(statistics.median(reloads[1:]))}
    summary["goals"] = {"swap_le_5ms": summary["swap_ms"]["median"] <= 5,
                        "load_activate_le_100ms": summary["load_and_activate_ms"]["median"] <= 100,
                        "one_adapter_cost_le_15pct": summary["one_adapter_slowdown_pct"] <= 15}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
