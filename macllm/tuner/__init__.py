"""Fine-tuning LoRA adapters (`macllm train`): data, batches, the compiled step, checkpoints, sessions."""
