"""The macllm terminal app."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from textual.app import App

from macllm import hub
from macllm.errors import MacllmError
from macllm.hub.catalog import DEFAULT_MODEL
from macllm.rag.store import index_path
from macllm.storage.atomic import atomic_write
from macllm.storage.chat_store import ChatStore, ChatStoreError, default_path, fresh_path, read_only_error
from tui.bridge import EngineBridge
from tui.commands import MacllmCommands
from tui.events import AdaptersChanged, AdaptersFailed, ModelLoaded, ModelLoadFailed
from tui.keymap import bindings
from tui.last_notes import load_last_notes
from tui.screens.chat import ChatScreen
from tui.state import AppState


def implementation_words(implementation: str) -> str:
    """Whose model code runs the model: macllm's own, or mlx-lm's class for an architecture we do not implement."""
    return "macllm's own implementation" if implementation == "own" else f"runs on {implementation}'s model class"


class MacllmApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "macllm"
    COMMANDS = App.COMMANDS | {MacllmCommands}
    BINDINGS = bindings("app")

    def __init__(self, model: str = DEFAULT_MODEL, keep_quantized: bool = False, store: ChatStore | None = None,
                 default_settings: dict | None = None, adapters: list[tuple[str, str, float]] | None = None,
                 kv_bits: int | None = None) -> None:
        """The options of `macllm chat`; `store`: the saved chats (default $MACLLM_HOME/chats.sqlite3)."""
        super().__init__()
        self.state = AppState(model_source=model, keep_quantized=keep_quantized, kv_bits=kv_bits,
                              chat_defaults=dict(default_settings or {}), startup_adapters=list(adapters or []))
        self.store: ChatStore | None = store
        self.store_path = store.path if store is not None else default_path()
        self.store_problem: str | None = None  # one line while chats cannot be saved; the chat screen shows it
        if store is None:
            try:
                self.store = ChatStore(self.store_path)
            except ChatStoreError as e:  # the app still starts: the chat screen says why and offers a fresh file
                self.store_problem = str(e)
        if self.store is not None and not self.store.writable:
            self.store_problem = str(read_only_error(self.store_path))
        self.bridge = EngineBridge(self)

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.state))
        self.ensure_model(self.state.model_source)
        self.watch_last_notes()

    def watch_last_notes(self) -> None:
        """Keep the folder last indexed in the notes panel indexed from launch: a catch-up pass for what
        changed while the app was closed, then the watcher (rag/watch.py, on the engine thread)."""
        last = load_last_notes()
        if last is None or not index_path(last.index).exists():
            return
        self.state.notes_folder = last.folder
        if self.state.notes_index is None:
            self.state.notes_index = last.index
        self.bridge.watch_notes(last.folder, last.index, catch_up=True)

    # --- chat file -----------------------------------------------------------------------------
    def use_fresh_store(self) -> ChatStore:
        """Continue in a new chat file beside the one that cannot be used, which is left as it is (its
        connection only read from it). Raises ChatStoreError when the new file cannot be made either."""
        store = ChatStore(fresh_path(self.store_path))
        if self.store is not None:
            self.store.close()
        self.store, self.store_path, self.store_problem = store, store.path, None
        return store

    # --- model --------------------------------------------------------------------------------
    def ensure_model(self, source: str) -> None:
        """Load `source` unless it is what is loaded (or loading) already."""
        if source and (source != self.bridge.model_source or not (self.bridge.ready or self.bridge.loading)):
            self.bridge.load_model(source, keep_quantized=self.state.keep_quantized)
            self.refresh_status()

    def on_model_loaded(self, message: ModelLoaded) -> None:
        info = message.info
        self.notify(f"{info.source} ready · {info.compute} · {implementation_words(info.implementation)}", timeout=3)
        if self.state.kv_bits:
            self.bridge.set_kv_bits(self.state.kv_bits)
        self.refresh_status()
        startup = self.state.startup_adapters
        if startup:
            self.bridge.apply_adapters({name: scale for _, name, scale in startup},
                                       refs={name: ref for ref, name, _ in startup})
            self.state.startup_adapters = []

    def on_adapters_changed(self, message: AdaptersChanged) -> None:
        active = ", ".join(f"{k} ×{v:g}" for k, v in message.active.items()) or "none (base model)"
        self.notify(f"Adapters: {active} · swapped in {message.elapsed_ms:.1f} ms", timeout=4)
        self.refresh_status()

    def on_adapters_failed(self, message: AdaptersFailed) -> None:
        self.notify(message.error, title="Adapters unchanged", severity="error", timeout=8)
        self.refresh_status()  # the bridge recorded the set the engine really has active

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self.notify(message.error, title=f"Could not load {message.source}", severity="error", timeout=8)
        self.refresh_status()  # before the picker covers the chat screen: it no longer says "loading"
        self.action_pick_model(reason=message.error)

    def refresh_status(self) -> None:
        for screen in self.screen_stack:  # the chat screen may be under a dialog
            if isinstance(screen, ChatScreen):
                screen.update_status()

    def model_choices(self) -> list[str]:
        return [m["name"] for m in self.known_models()]

    def known_models(self) -> list[dict]:
        """The catalog and local models; none (a path can still be typed) when the models folder cannot be
        read or made, e.g. under a read-only $MACLLM_HOME, which a notification says."""
        try:
            return hub.local_models()
        except (MacllmError, OSError) as e:
            self.notify(f"Models cannot be listed: {e}", severity="warning", timeout=8)
            return []

    def action_pick_model(self, reason: str | None = None) -> None:
        from tui.screens.model_picker import ModelPicker  # start-up time: loaded when first opened

        def chosen(source: str | None) -> None:
            if source:
                self.state.model_source = source
                if isinstance(self.screen, ChatScreen):
                    self.screen.settings.model = source
                self.ensure_model(source)

        self.push_screen(ModelPicker(self.known_models(), reason), chosen)

    # --- training -----------------------------------------------------------------------------
    def action_train(self) -> None:
        """The training screen; installed once, so a run goes on (and keeps its plot) while chatting."""
        from tui.screens.train import TrainScreen  # start-up time: loaded when first opened

        if not self.is_screen_installed("train"):
            self.install_screen(TrainScreen(self.state), "train")
        if not isinstance(self.screen, TrainScreen):
            self.push_screen("train")

    def retrain_adapter(self, name: str) -> None:
        """The training screen, retraining `name` on its notes folder from its weights (the adapters panel's R)."""
        from tui.screens.train import TrainScreen  # start-up time: loaded when first opened

        if not self.is_screen_installed("train"):
            self.install_screen(TrainScreen(self.state), "train")
        screen = self.get_screen("train")
        if isinstance(screen, TrainScreen):
            screen.pending_retrain = name  # started once the screen is shown (and mounted)
        self.action_train()

    def action_use_trained_adapter(self) -> None:
        if self.state.trained_adapter:
            self.bridge.use_adapter(self.state.trained_adapter)

    # --- everywhere -----------------------------------------------------------------------
    def action_help(self) -> None:
        from tui.screens.help import HelpScreen  # start-up time: loaded when first opened

        self.push_screen(HelpScreen())

    def copy_text(self, text: str) -> None:
        """OSC 52 (works over SSH in most terminals); pbcopy as well on macOS."""
        self.copy_to_clipboard(text)
        if sys.platform == "darwin" and shutil.which("pbcopy"):
            subprocess.run(["pbcopy"], input=text.encode(), check=False)
        self.notify("Copied the last answer.")

    def export_chat(self, store: ChatStore, chat_id: str) -> Path:
        """The chat as Markdown in the current folder, written atomically and private (0600) like the chats."""
        title = store.get_conversation(chat_id).title
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in title).strip("-")[:40] or "chat"
        path = Path.cwd() / f"{safe}-{datetime.now():%Y%m%d-%H%M%S}.md"
        try:
            atomic_write(path, store.export_markdown(chat_id))
        except OSError as e:
            raise MacllmError(f"could not export to {path.parent}: {e.strerror or e}; "
                              "start macllm in a writable folder to export there") from None
        return path

    async def action_quit(self) -> None:
        self.bridge.shutdown()
        self.exit()
