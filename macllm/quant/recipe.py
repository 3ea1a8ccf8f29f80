"""The choices `macllm quantize` offers, without importing MLX (the CLI builds its parser from them)."""

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
CALIBRATION_TOKENS = 8192
# --mixed keeps these at 8 bits: the embedding/head see every token, and the value and down projections
# are the most sensitive matrices in published mixed recipes.
MIXED_HIGH_PRECISION = ("embed_tokens", "lm_head", "v_proj", "down_proj")
