"""Model file formats -> (config, weights, tokenizer spec)."""
