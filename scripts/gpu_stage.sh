#!/usr/bin/env bash
# Stage what the GPU check needs on the device machine into .devcarry/ (git-ignored), in pieces that fit the
# device tool's 64 MiB per call. The device image's Python (3.12) has the CPU-only onnxruntime, no pydantic
# and no way to fetch, so this stages: the onnxruntime-gpu wheel for that Python, split in 60 MiB parts;
# the small wheels models.cli needs besides the image's packages (pydantic, orjson); a model folder holding
# only the fp16 artefact, its manifest and tokenizer (there is no room for the weights package); and fp32
# reference embeddings. Then run scripts/gpu_check_device.sh there; docs/models.md ("The GPU check")
# lists the device calls.
set -euo pipefail
cd "$(dirname "$0")/.."
py_version=${GPU_PYTHON_VERSION:-3.12}  # the device image's python3
stage=.devcarry
rm -rf "$stage"
mkdir -p "$stage/download" "$stage/wheel"
version=$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 -d "$stage/download" "onnxruntime-gpu==$version"
wheel=$(ls "$stage/download"/*.whl)
basename "$wheel" > "$stage/wheel/NAME"
(cd "$stage/download" && sha256sum "$(basename "$wheel")") > "$stage/wheel/SHA256SUMS"
split -b 60M -d "$wheel" "$stage/wheel/part-"
rm -rf "$stage/download"
# models.cli imports streams.errors, whose schemas need pydantic and orjson: the image has neither.
mkdir -p "$stage/deps"
pins=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "orjson")))
PY
)
# shellcheck disable=SC2086 # one argument per pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$stage/deps" $pins
.venv/bin/aifleet models build --variant fp16 --home "$stage/home" > /dev/null
.venv/bin/aifleet models reference --out "$stage/reference.npz"
echo "staged in $stage:"
(cd "$stage" && find . -type f -printf '%10s  %p\n' | sort -k2)
