"""`macllm serve`: an OpenAI-compatible HTTP server over one Engine.

app.py (Starlette routes), requests.py (body parsing and validation), openai_shapes.py (response JSON), sse.py
(server-sent events), scheduler.py (requests -> engine jobs, cancellation, shutdown), errors.py (OpenAI-style
error bodies), runner.py (uvicorn, signals, the bind policy).
"""
