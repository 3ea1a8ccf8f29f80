"""Quantization: weights.py (the leaf both loader and convert use), affine, calibration, distill, convert,
perplexity."""
