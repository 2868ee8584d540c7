#!/usr/bin/env bash
# On the device machine, after every part staged by scripts/gpu_stage.sh has been carried there: put the
# onnxruntime-gpu wheel together, install it ahead of the image's CPU-only onnxruntime, make the CUDA 13 /
# cuDNN 9 libraries of the image's nvidia-* packages loadable, and run the GPU check (fp16 on CUDA,
# batch 1..512, JSON to $OUT/gpu_check.json). Exit status: the check's (2: CUDA provider not active).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stage=.devcarry
out=${OUT:-/tmp}
name=$(cat "$stage/wheel/NAME")
cat "$stage"/wheel/part-* > "/tmp/$name"
(cd /tmp && sha256sum -c "$OLDPWD/$stage/wheel/SHA256SUMS") || { echo "wheel parts missing or corrupt"; exit 3; }
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "/tmp/$name" "$stage"/deps/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD"
libs=$("$python" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
"$python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, "from", o.__file__, o.get_available_providers())'
"$python" -m models.cli check --device cuda --max-batch 512 --home "$stage/home" --reference "$stage/reference.npz" \
  > "$out/gpu_check.json"
rc=$?
cat "$out/gpu_check.json"
exit $rc
