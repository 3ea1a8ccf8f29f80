"""Record mlx-lm's teacher-forced picks and greedy tokens on the real SmolLM2 for tests/test_mlx_lm_agreement.py.

mlx-lm loads two folders that our save_mlx_folder writes from the SmolLM2 GGUF (weights as stored, 4-bit; and
dequantized to float32), takes its argmax at each continuation position of the prompts of
tests/data/smollm2_llamacpp_reference.json, teacher forced on llama.cpp's continuations (one forward each), and
generates greedily (generate_step, argmax) from two of them, cut after the first end-of-sequence token.
The test compares our model with these, and recomputes one prompt per peer live with the installed mlx-lm
on freshly written folders: when that check fails (a new mlx-lm, or a change to our folder writer or
dequantizer), rerun this script (~3 minutes on 2 cores: mlx-lm's 4-bit CPU matmul is slow).

    cd /work/main
    .venv/bin/python scripts/record_mlx_lm_reference.py              # pulls smollm2-135m via macllm.hub
    .venv/bin/python scripts/record_mlx_lm_reference.py path/to/SmolLM2-135M-Instruct.Q4_1.gguf

It rewrites tests/data/smollm2_mlx_lm_reference.json (use --out to write elsewhere). Rerun it after
scripts/record_reference.py rewrites the llama.cpp reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import macllm  # noqa: F401  (loads OpenBLAS before MLX)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mlx_lm_reference import (  # noqa: E402  (needs the repo on sys.path)
    GENERATED_TOKENS,
    GENERATION_PROMPTS,
    PEERS,
    RECORDING,
    mlx_lm_greedy,
    mlx_lm_picks,
    prompts_sha256,
    write_mlx_lm_folder,
)
from tests.test_reference_llamacpp import REFERENCE, _sha256  # noqa: E402


def record(gguf: Path) -> dict:
    import mlx.core as mx
    import mlx_lm

    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    if _sha256(gguf) != reference["model_sha256"]:
        raise SystemExit(f"{gguf} is not the model {REFERENCE.name} was recorded from; rerun "
                         "scripts/record_reference.py on it first")
    from macllm.loader import read_tokenizer

    prompts = reference["prompts"]
    eos = read_tokenizer(gguf).eos_token_ids  # our generation loop stops after these; so is mlx-lm's cut
    peers, greedy = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for peer, dequantize in PEERS.items():
            folder = write_mlx_lm_folder(gguf, Path(tmp) / peer, dequantize)
            model, _ = mlx_lm.load(str(folder))
            start = time.perf_counter()
            peers[peer] = mlx_lm_picks(model, prompts)
            greedy[peer] = {p["name"]: mlx_lm_greedy(model, p["prompt_ids"], eos)
                            for p in prompts if p["name"] in GENERATION_PROMPTS}
            print(f"{peer:8s} {len(prompts)} prompts and {len(greedy[peer])} generations in "
                  f"{time.perf_counter() - start:.1f} s")
    return {
        "made_by": "scripts/record_mlx_lm_reference.py: mlx-lm's argmax at each continuation position of "
                   f"{REFERENCE.name}'s prompts, teacher forced ('peers'), and its greedy generate_step tokens "
                   "cut after the first EOS ('greedy'), on mlx-lm folders written by our save_mlx_folder from "
                   "the GGUF (4-bit as stored; float32 dequantized)",
        "model": gguf.name,
        "model_sha256": reference["model_sha256"],
        "mlx_lm_version": mlx_lm.__version__,
        "mlx_version": mx.__version__,
        "prompts_sha256": prompts_sha256(prompts),
        "peers": peers,
        "greedy_tokens": GENERATED_TOKENS,
        "greedy": greedy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="the SmolLM2 GGUF (default: pull smollm2-135m)")
    parser.add_argument("--out", type=Path, default=RECORDING)
    args = parser.parse_args(argv)
    if args.model:
        gguf = Path(args.model)
    else:
        from macllm.hub import pull

        gguf = pull("smollm2-135m")
    data = record(gguf)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.out)  # atomic: a test never reads half a recording
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
