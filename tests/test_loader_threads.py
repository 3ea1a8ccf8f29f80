"""Models load on any thread: each loading thread dequantizes on streams of its own (MLX streams
belong to the thread that made them)."""

import threading

from macllm.loader import load_model


def test_quantized_model_loads_on_several_threads_in_turn(tmp_path):
    from tests import tiny_models

    path = tiny_models.write_tiny_gguf(tmp_path / "q.gguf", quant="q4_1")
    errors = []

    def load():
        try:
            load_model(str(path), progress=False)
        except Exception as e:  # reported below
            errors.append(e)

    load()  # this thread
    for _ in range(2):
        t = threading.Thread(target=load)
        t.start()
        t.join()
    assert not errors, errors
