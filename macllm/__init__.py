"""macllm: a local LLM engine on MLX (no UI imports here)."""

from macllm import backend as _backend

# Must run before anything imports mlx.core (see backend.py).
_backend.bootstrap()

__version__ = "0.1.0"
