"""`macllm adapters list`: the adapters in the store and the bundled examples."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("adapters", help="list LoRA adapters (store and bundled examples)")
    asub = p.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND")
    lp = asub.add_parser("list", help="name, base model, rank, layers, size, created, training summary")
    lp.add_argument("--json", action="store_true", help="print JSON")
    lp.set_defaults(run=run_list)
    p.set_defaults(run=run_list, json=False)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def training_summary(training: dict | None) -> str:
    if not isinstance(training, dict):
        return "-"
    parts = []
    if training.get("steps"):
        parts.append(f"{training['steps']} steps")
    if training.get("examples"):
        parts.append(f"{training['examples']} examples")
    if training.get("final_loss") is not None:
        parts.append(f"loss {training['final_loss']:.2f}")
    if training.get("description"):
        parts.append(str(training["description"]))
    return ", ".join(parts) or "-"


def notes_changed_note(changed: int | None) -> str:
    """'; 42 notes changed since training' when the training folder has moved on."""
    if not changed:
        return ""
    return f"; {changed} note{'s' if changed != 1 else ''} changed since training"


def retrain_hint(row: dict) -> str | None:
    """The command that retrains a store adapter whose notes changed since it was trained; None otherwise."""
    from macllm.tuner.retrain import retrain_command

    if not row.get("notes_changed") or row.get("where") != "user":
        return None
    return retrain_command(row["name"])


def run_list(args) -> int:
    from macllm.lora.store import list_adapters
    from macllm.paths import adapters_dir

    rows = list_adapters()
    for adapter in rows:
        hint = retrain_hint(adapter)
        if hint:
            adapter["retrain_command"] = hint
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    if not rows:
        print(f"No adapters yet. Put mlx-lm or PEFT adapter folders in {adapters_dir()}")
        return 0
    header = ("NAME", "BASE", "RANK", "LAYERS", "SIZE", "CREATED", "TRAINING")
    table = [header]
    for r in rows:
        if "error" in r:
            table.append((r["name"], "damaged", "-", "-", _size(r["size_bytes"]), "-", r["error"]))
            continue
        table.append((r["name"], r.get("base_model") or "?", str(r["rank"]), r["layers"], _size(r["size_bytes"]),
                      (r.get("created") or "-")[:10], training_summary(r.get("training"))
                      + notes_changed_note(r.get("notes_changed"))))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for changed in rows:
        if changed.get("retrain_command"):
            print(f"\n{changed['name']}: its notes changed since training; retrain it from its weights on them "
                  f"with\n  {changed['retrain_command']}")
    return 0
