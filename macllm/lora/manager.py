"""AdapterManager: the adapters loaded onto one model, and which are active at what scale.

Loading validates everything (base fingerprint, target modules, shapes) before touching the model, so
a bad adapter changes nothing. Activating only re-points each adapted layer's active delta: no weight
is copied or rebuilt, which is what makes a swap take milliseconds.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.errors import MacllmError
from macllm.lora.adapter import Adapter
from macllm.lora.expert_layers import LoRASwitchLinear
from macllm.lora.layers import LoRALinear, base_dims, compute_dtype, is_expert_layer
from macllm.lora.store import fingerprint
from macllm.lora.weight_bounds import weight_problem


def _child(parent, part: str):
    if isinstance(parent, list):
        return parent[int(part)] if part.isdigit() and int(part) < len(parent) else None
    if isinstance(parent, nn.Module):
        return parent.get(part) if part in parent else None
    return None


def find_module(model: nn.Module, path: str):
    """(parent, key, module) for a dotted module path, or None if there is no such module."""
    parent, node, key = None, model, None
    for part in path.split("."):
        parent, key, node = node, part, _child(node, part)
        if node is None:
            return None
    return parent, key, node


class AdapterManager:
    def __init__(self, model: nn.Module, config, base_id: str | None = None):
        self.model = model
        self.fingerprint = fingerprint(config)
        self.base_id = base_id
        self.loaded: dict[str, Adapter] = {}
        self.active: dict[str, float] = {}  # name -> user weight (multiplies the adapter's own scale)
        self._layers: dict[str, LoRALinear | LoRASwitchLinear] = {}  # module path -> wrapper

    # --- loading ---------------------------------------------------------------------------
    def check(self, adapter: Adapter) -> dict[str, nn.Module]:
        """Raise a MacllmError if the adapter does not fit this model; else module path -> base layer."""
        fp = adapter.base_fingerprint
        if fp and fp != self.fingerprint:
            raise MacllmError(f"adapter {adapter.name!r} was made for {adapter.base_model or 'another model'} "
                              f"({fp}); the loaded model is {self.base_id or 'different'} ({self.fingerprint})")
        targets: dict[str, nn.Module] = {}
        for module, (a, b) in adapter.weights.items():
            found = find_module(self.model, module)
            layer = found[2] if found else None
            if isinstance(layer, (LoRALinear, LoRASwitchLinear)):
                layer = layer.linear
            experts = layer is not None and is_expert_layer(layer)
            if layer is None or not (experts or isinstance(layer, (nn.Linear, nn.QuantizedLinear))):
                what = "no such layer" if layer is None else f"a {type(layer).__name__}, not a linear layer"
                raise MacllmError(f"adapter {adapter.name!r} targets {module}: {what} in this model")
            if a.ndim != (3 if experts else 2):
                kind = "a mixture-of-experts layer" if experts else "a linear layer"
                raise MacllmError(f"adapter {adapter.name!r} does not fit {module}: it holds {a.ndim}-D LoRA "
                                  f"matrices but the layer is {kind} (made for another base?)")
            if experts and a.shape[0] != layer.weight.shape[0]:
                raise MacllmError(f"adapter {adapter.name!r} does not fit {module}: it has {a.shape[0]} experts, "
                                  f"the layer {layer.weight.shape[0]} (made for another base?)")
            in_dims, out_dims = base_dims(layer)
            if a.shape[-2] != in_dims or b.shape[-1] != out_dims:
                raise MacllmError(f"adapter {adapter.name!r} does not fit {module}: LoRA maps {a.shape[-2]} -> "
                                  f"{b.shape[-1]} but the layer maps {in_dims} -> {out_dims} (made for another base?)")
            targets[module] = layer
        return targets

    def load(self, adapter: Adapter) -> None:
        if adapter.name in self.loaded:
            raise MacllmError(f"an adapter named {adapter.name!r} is already loaded; unload it first")
        if not adapter.weights:
            raise MacllmError(f"adapter {adapter.name!r} holds no LoRA weights")
        targets = self.check(adapter)
        # Cast and materialise before installing, so a failure here leaves the model untouched.
        arrays = {m: (a.astype(compute_dtype(targets[m])), b.astype(compute_dtype(targets[m])))
                  for m, (a, b) in adapter.weights.items()}
        mx.eval(arrays)
        for module, (a, b) in arrays.items():
            self._wrapper(module).add_slot(adapter.name, a, b)
        adapter.weights = arrays
        self.loaded[adapter.name] = adapter

    def _wrapper(self, module: str) -> LoRALinear | LoRASwitchLinear:
        wrapper = self._layers.get(module)
        if wrapper is None:
            parent, key, layer = find_module(self.model, module)
            wrapper = LoRASwitchLinear(layer) if is_expert_layer(layer) else LoRALinear(layer)
            wrapper.train(self.model.training)
            self._set_child(parent, key, wrapper)
            self._layers[module] = wrapper
        return wrapper

    @staticmethod
    def _set_child(parent, key: str, value) -> None:
        if isinstance(parent, list):
            parent[int(key)] = value
        else:
            setattr(parent, key, value)

    def unload(self, name: str) -> bool:
        """Forget an adapter; returns True if it was active (so caches computed with it are stale)."""
        if name not in self.loaded:
            raise MacllmError(f"no adapter named {name!r} is loaded")
        was_active = name in self.active
        if was_active:
            self.activate({n: w for n, w in self.active.items() if n != name})
        del self.loaded[name]
        for module in list(self._layers):
            wrapper = self._layers[module]
            wrapper.remove_slot(name)
            if not wrapper.slot_names:  # back to the bare base layer: "no adapters" costs nothing
                parent, key, _ = find_module(self.model, module)
                self._set_child(parent, key, wrapper.linear)
                del self._layers[module]
        return was_active

    # --- activation ------------------------------------------------------------------------
    def activate(self, scales: dict[str, float]) -> bool:
        """Make exactly these adapters active; returns True if anything the model computes changed."""
        clean = {}
        for name, weight in scales.items():
            if name not in self.loaded:
                raise MacllmError(f"adapter {name!r} is not loaded (loaded: {', '.join(self.loaded) or 'none'})")
            problem = weight_problem(weight)
            if problem:
                raise MacllmError(f"scale for adapter {name!r} {problem}")
            if weight != 0:
                clean[name] = float(weight)
        if clean == self.active:
            return False
        effective = {n: w * self.loaded[n].scale for n, w in clean.items()}
        for wrapper in self._layers.values():
            wrapper.activate(effective)
        mx.eval([a for w in self._layers.values() for a in w.active_arrays])  # blends: stack now, not per token
        self.active = clean
        return True

    def describe(self) -> dict:
        return {"loaded": [{"name": a.name, "rank": a.rank, "scale": a.scale, "modules": len(a.weights),
                            "base_model": a.base_model, "path": str(a.path) if a.path else None}
                           for a in self.loaded.values()],
                "active": dict(self.active)}
