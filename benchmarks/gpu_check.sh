#!/usr/bin/env bash
# The GPU checks of napari-miner in one run (for a lent CUDA machine that has torch, numpy,
# scikit-image and pytest but not napari): the CUDA tests of the core and API, then the image
# benchmark on the GPU. Writes logs and JSON to $OUT (or ./gpu-out).
set -uo pipefail
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/core/test_pyramid.py tests/core/test_blocks.py tests/core/test_mlp_bank.py tests/core/test_adam.py tests/core/test_layout.py tests/core/test_trainer.py tests/core/test_model.py tests/test_api.py 2>&1 | tee "$OUT/pytest.log" | tail -5
python3 benchmarks/fit_images.py --device cuda --json "$OUT/fit_images_cuda.json" 2>&1 | tee "$OUT/fit_images_cuda.log"
