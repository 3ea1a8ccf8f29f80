"""Screens of the macllm app."""
