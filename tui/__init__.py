"""The macllm terminal app (Textual). Talks to the engine only through `tui/bridge.py`."""
