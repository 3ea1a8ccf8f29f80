"""The adapters panel: every adapter (your store + the bundled examples) with its base model and
training summary. Enter swaps one in alone; B builds a blend with per-adapter scales; N returns to
the base model; R retrains one whose notes changed since training (on the train screen, from its weights).
Adapters made for another base are shown dimmed with the reason."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from macllm.lora.weight_bounds import MAX_ADAPTER_WEIGHT
from tui.keymap import bindings

SCALE_STEP = 0.25


def training_line(row: dict) -> str:
    t = row.get("training") or {}
    if not t:
        return ""
    parts = []
    data = t.get("data") or {}
    if data.get("files"):
        parts.append(f"{data['files']} notes")
    if t.get("steps"):
        parts.append(f"{t['steps']} steps")
    for key, label in (("val_ppl_after", "val ppl"), ("final_val_loss", "val loss")):
        if t.get(key) is not None:
            parts.append(f"{label} {t[key]:.2f}")
            break
    if row.get("notes_changed"):
        parts.append(f"{row['notes_changed']} notes changed since training (R: retrain)")
    return ", ".join(parts)


def retrain_problem(row: dict) -> str | None:
    """Why `macllm train --retrain` cannot take this adapter, in one line; None when it can."""
    if row.get("where") != "user":
        return f"{row['name']} is a bundled example; retraining works on adapters you trained"
    if row.get("notes_changed") is None:
        return f"{row['name']} was not trained here on a notes folder that still exists; nothing to retrain on"
    return None


def incompatibility(row: dict, model_fingerprint: str | None) -> str | None:
    if "error" in row:
        return row["error"]
    wanted = row.get("base_fingerprint")
    if model_fingerprint and wanted and wanted != model_fingerprint:
        return f"made for {row.get('base_model') or wanted}"
    return None


class AdaptersScreen(ModalScreen[dict | None]):
    """Dismisses with the adapters to activate ({name: scale}; {} = none) or None (no change)."""

    SCOPE = "adapters"
    BINDINGS = bindings(SCOPE)

    def __init__(self, rows: list[dict], active: dict[str, float], model_fingerprint: str | None) -> None:
        super().__init__(classes="dialog-screen")
        self.rows = rows
        self.blend = dict(active)
        self.fingerprint = model_fingerprint
        self.problems = {r["name"]: incompatibility(r, model_fingerprint) for r in rows}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog adapters"):
            yield Label("Adapters — Enter: use alone · B: blend · +/−: scale · A: apply blend · N: none · "
                        "R: retrain",
                        classes="dialog-title")
            yield DataTable(id="adapter-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="blend")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("adapter", "base model", "rank", "layers", "trained on", "status")
        self.redraw()
        table.focus()

    def redraw(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in self.rows:
            name = row["name"]
            problem = self.problems[name]
            status = problem or (f"active ×{self.blend[name]:g}" if name in self.blend else row.get("where", ""))
            cells = [name, str(row.get("base_model") or "?"), str(row.get("rank", "?")), str(row.get("layers", "?")),
                     training_line(row), status]
            style = "dim" if problem else ("bold" if name in self.blend else "")
            table.add_row(*(Text(c, style=style) for c in cells), key=name)
        if self.rows:
            table.move_cursor(row=min(cursor, len(self.rows) - 1))
        blend = ", ".join(f"{k} ×{v:g}" for k, v in self.blend.items()) or "none (base model)"
        self.query_one("#blend", Label).update(f"Blend: {blend}")

    def selected(self) -> str | None:
        if not self.rows:
            return None
        name = self.rows[self.query_one(DataTable).cursor_row]["name"]
        if self.problems[name]:
            self.notify(f"{name}: {self.problems[name]}", severity="warning")
            return None
        return name

    def action_use_only(self) -> None:
        name = self.selected()
        if name:
            self.dismiss({name: 1.0})

    def action_toggle_blend(self) -> None:
        name = self.selected()
        if name:
            if name in self.blend:
                del self.blend[name]
            else:
                self.blend[name] = 1.0
            self.redraw()

    def action_scale(self, direction: int) -> None:
        name = self.selected()
        if name and name in self.blend:
            scale = round(self.blend[name] + direction * SCALE_STEP, 2)
            self.blend[name] = min(MAX_ADAPTER_WEIGHT, max(0.0, scale))  # the engine refuses more
            self.redraw()

    def action_apply_blend(self) -> None:
        self.dismiss(dict(self.blend))

    def action_none(self) -> None:
        self.dismiss({})

    def action_retrain(self) -> None:
        """Close the panel and retrain the adapter under the cursor on the train screen."""
        if not self.rows:
            return
        row = self.rows[self.query_one(DataTable).cursor_row]
        problem = retrain_problem(row)
        if problem:
            self.notify(problem, severity="warning")
            return
        self.dismiss(None)
        self.app.retrain_adapter(row["name"])  # type: ignore[attr-defined]  # MacllmApp
