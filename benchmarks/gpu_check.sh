#!/usr/bin/env bash
# The GPU checks of napari-miner in one run, for a lent CUDA machine that has torch, numpy,
# scikit-image and pytest but not napari (zarr and trimesh may come as wheels in .whl/):
# the core/API/volume/store tests including the CUDA ones, then the image, volume and decode
# benchmarks on the GPU. Writes logs and JSON to $OUT (or ./gpu-out).
set -uo pipefail
OUT="${OUT:-gpu-out}"
VOLUME_SIZE="${VOLUME_SIZE:-512}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/core tests/test_api.py tests/test_volumes.py \
    tests/io/test_store.py tests/io/test_mesh.py tests/io/test_lazy.py 2>&1 | tee "$OUT/pytest.log" | tail -4
python3 benchmarks/fit_images.py --device cuda --json "$OUT/fit_images_cuda.json" 2>&1 | tee "$OUT/fit_images_cuda.log" | grep -v "^    level"
python3 benchmarks/fit_volumes.py --device cuda --size "$VOLUME_SIZE" --json "$OUT/fit_volumes_cuda.json" 2>&1 | tee "$OUT/fit_volumes_cuda.log"
python3 benchmarks/decode_throughput.py --device cuda 2>&1 | tee "$OUT/decode_cuda.log" | tail -12
