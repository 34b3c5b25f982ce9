#!/usr/bin/env bash
# The GPU checks of napari-miner in one run, for a lent CUDA machine that has torch, numpy,
# scikit-image and pytest but not napari (zarr, dask and trimesh may come as wheels in .whl/).
# CHECKS picks what runs (default: all of them, in this order):
#   tests      core/fitting/API/volume/store tests, the CUDA ones included
#   images     benchmarks/fit_images.py on the GPU (IMAGES, default: astronaut camera retina)
#   volumes    benchmarks/fit_volumes.py (VOLUME_SIZE, default 512)
#   decode     benchmarks/decode_throughput.py
#   gigapixel  benchmarks/fit_gigapixel.py: GIGAPIXEL_SIZES (default 32768) with 6 steps as on
#              CPU, then the largest size with GIGAPIXEL_STEPS steps (default 50)
# Writes logs and JSON to $OUT (or ./gpu-out).
set -uo pipefail
OUT="${OUT:-gpu-out}"
CHECKS="${CHECKS-tests images volumes decode gigapixel}"  # set but empty: none
IMAGES="${IMAGES:-astronaut camera retina}"
VOLUME_SIZE="${VOLUME_SIZE:-512}"
GIGAPIXEL_SIZES="${GIGAPIXEL_SIZES:-32768}"
GIGAPIXEL_STEPS="${GIGAPIXEL_STEPS:-50}"
GIGAPIXEL_BUDGET="${GIGAPIXEL_BUDGET:-24GiB}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
wants() { [[ " $CHECKS " == *" $1 "* ]]; }
if wants tests; then
    python3 -m pytest -q -p no:cacheprovider -rs tests/core tests/fitting tests/test_api.py \
        tests/test_volumes.py tests/io/test_store.py tests/io/test_mesh.py tests/io/test_lazy.py \
        --ignore tests/fitting/test_distributed.py 2>&1 | tee "$OUT/pytest.log" | tail -8
fi
if wants images; then
    python3 benchmarks/fit_images.py --device cuda --images $IMAGES --json "$OUT/fit_images_cuda.json" 2>&1 | tee "$OUT/fit_images_cuda.log" | grep -v "^    level"
fi
if wants volumes; then
    python3 benchmarks/fit_volumes.py --device cuda --size "$VOLUME_SIZE" --json "$OUT/fit_volumes_cuda.json" 2>&1 | tee "$OUT/fit_volumes_cuda.log"
fi
if wants decode; then
    python3 benchmarks/decode_throughput.py --device cuda 2>&1 | tee "$OUT/decode_cuda.log" | tail -12
    # issue 13: a 4096² model whose blocks are mostly active (the 1 GP/s target)
    python3 benchmarks/decode_throughput.py --device cuda --image astronaut --max-steps 40 \
        --tile 8 --repeats 3 2>&1 | tee "$OUT/decode_cuda_4096.log" | tail -26
fi
if wants gigapixel; then
    work=/tmp/napari-miner-gigapixel
    python3 benchmarks/fit_gigapixel.py --device cuda --sizes $GIGAPIXEL_SIZES --steps 6 \
        --check-every 3 --memory-budget "$GIGAPIXEL_BUDGET" --work "$work" --keep \
        --output "$OUT/gigapixel_cuda_6steps.json" 2>&1 | tee "$OUT/gigapixel_cuda.log"
    largest="${GIGAPIXEL_SIZES##* }"
    python3 benchmarks/fit_gigapixel.py --device cuda --sizes "$largest" --steps "$GIGAPIXEL_STEPS" \
        --check-every 25 --memory-budget "$GIGAPIXEL_BUDGET" --work "$work" \
        --output "$OUT/gigapixel_cuda_${GIGAPIXEL_STEPS}steps.json" 2>&1 | tee -a "$OUT/gigapixel_cuda.log"
fi
