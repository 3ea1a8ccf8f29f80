"""Live LoRA adapters: layers with swappable slots, mlx-lm / PEFT formats, the adapter store, fusing."""

from macllm.lora.adapter import Adapter
from macllm.lora.manager import AdapterManager

__all__ = ["Adapter", "AdapterManager"]
