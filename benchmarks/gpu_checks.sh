#!/usr/bin/env bash
# The accelerator checks of the library in one run of a few minutes, on a machine with a CUDA
# device (PyTorch and, for the CuPy tests, CuPy installed):
#
#     bash benchmarks/gpu_checks.sh OUTDIR
#
# 1. the tests that need a CUDA device (the CuPy backend and the PyTorch layers and optimizer
#    on CUDA), which skip elsewhere;
# 2. benchmarks/gpu_step_cost.py: the matrix integrators' steps on CuPy arrays against the
#    device's floor (n = 2^20, 2^22; r = 16, 32; float64 and float32), and their agreement
#    with the NumPy steps;
# 3. benchmarks/torch_gpu_step.py: one training step, dense against DLRT, at widths 4096 and
#    8192, rank 64, after the cProfile of two DLRT steps (where the time goes);
# 4. one epoch of LeNet5 on Fashion-MNIST on the device, dense against DLRT (tau = 0.1), at the
#    batch size and learning rate of the DLRT paper's LeNet5 runs (128, 0.05).
#
# Logs and JSON results go to OUTDIR. The library is imported from this working tree (nothing
# is built or installed). For a machine without network access, WHEELS may name a directory
# of wheels to install first (the core dependencies it lacks, such as array-api-compat), and
# FASHION_MNIST_DIR a copy of the Fashion-MNIST IDX files (default: the Debian package's).
# Each part has its own time limit (at which it is interrupted, so that its log ends with the
# traceback of where it was); the exit status is that of the first part that failed.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_checks.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
pythonpath=$root
if [ -n "${WHEELS:-}" ]; then
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
        "$WHEELS"/*.whl || exit 1
    pythonpath=$pythonpath:$site
fi
export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}
status=0
part() {  # part NAME SECONDS COMMAND...: run, log to OUTDIR/NAME.log, keep the first failure
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    # SIGINT first: Python stops with a traceback that shows where the time went
    timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit status $rc"
    if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ]; then status=$rc; fi
}
"$py" - <<'EOF' 2>&1 | tee "$out/devices.log"
import platform

import numpy
import scipy
import torch

print("python", platform.python_version(), "numpy", numpy.__version__, "scipy", scipy.__version__)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i))
try:
    import cupy
except ImportError:
    print("no CuPy")
else:
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
EOF
part cuda_tests 180 "$py" -m pytest -q -p no:cacheprovider -k "cupy or cuda" -rs tests
part gpu_step_cost 150 "$py" benchmarks/gpu_step_cost.py --n 1048576 4194304 --r 16 32 \
    --repeats 3 --out "$out/gpu_step_cost.json"
part torch_gpu_step 90 "$py" benchmarks/torch_gpu_step.py --device cuda --widths 4096 8192 \
    --rank 64 --profile --out "$out/torch_gpu_step.json"
data=()
if [ -n "${FASHION_MNIST_DIR:-}" ]; then data=(--data-dir "$FASHION_MNIST_DIR"); fi
part lenet5_epoch 120 "$py" benchmarks/lenet5_fashion_mnist.py --device cuda ${data[@]+"${data[@]}"} \
    --n-train 60000 --n-test 10000 --epochs 1 --batch-size 128 --lr 0.05 --taus 0.1 --no-tdlrt \
    --out "$out/lenet5_epoch.json"
exit "$status"
