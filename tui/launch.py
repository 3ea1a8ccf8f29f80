"""How `macllm chat` starts the full-screen app: the UI side of `macllm.commands.chat_cmd.AppLauncher`."""

from __future__ import annotations

from tui.app import MacllmApp


def launch_app(*, model: str, keep_quantized: bool, default_settings: dict,
               adapters: list[tuple[str, str, float]], kv_bits: int | None) -> None:
    app = MacllmApp(model=model, keep_quantized=keep_quantized, default_settings=default_settings,
                    adapters=adapters, kv_bits=kv_bits)
    try:
        app.run()
    finally:
        app.bridge.shutdown()  # however the app ended: release the engine thread's MLX streams
        if app.store is not None:
            app.store.close()  # folds the WAL back into the chat file
