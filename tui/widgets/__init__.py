"""Widgets of the macllm app."""
