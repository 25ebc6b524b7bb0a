#!/usr/bin/env bash
# GPU recipe of the benchmark (issue 6, item 7): the paper's MNIST run (20 epochs) and ResNet20 on
# CIFAR-10, every method, on one GPU, into the same raw-result files as the CPU suites
# (benchmarks/results/gpu_mnist_*.csv, gpu_cifar10_*.csv), then the report.
#
#   scripts/gpu_benchmark.sh                     # on the GPU machine, from the repository root
#   SMOKE=1 METHODS='[sgd,prodigy]' scripts/gpu_benchmark.sh   # the same on the CPU, tiny limits
#   (RESULTS, RUNS_DIR and REPORT move the result files, the runs' folders and the report; the
#   smoke run of tests/test_bench.py puts all three in a temporary folder.)
#
# Data that travels (at most 64 MiB): MNIST's four .gz files (11.6 MB) in data/MNIST/raw or
# $LIPSCHITZ_SHARED_DATA/MNIST/raw. CIFAR-10's binary tarball is 139 MB and does not travel: the
# CIFAR-10 part runs only where data/cifar-10-batches-bin/ or $CIFAR_ARCHIVE exists, else it says so.
# Device time: each run is capped at RUN_MAX_TIME (Lightning max_time) and no run starts after
# BUDGET_MNIST / BUDGET_CIFAR seconds; the suites resume, so calling the script again continues.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
RESULTS=${RESULTS:-benchmarks/results}
BUDGET_MNIST=${BUDGET_MNIST:-240}
BUDGET_CIFAR=${BUDGET_CIFAR:-240}
RUN_MAX_TIME=${RUN_MAX_TIME:-00:00:00:25}
METHODS=${METHODS:-}
CIFAR_ARCHIVE=${CIFAR_ARCHIVE:-${LIPSCHITZ_SHARED_DATA:-../shared/data}/cifar-10-binary.tar.xz}
export PYTHONPATH=${PYTHONPATH:-$PWD}

extra=()
if [[ "${SMOKE:-0}" == 1 ]]; then
  # CPU, eight batches per epoch, two epochs (the LR finder sweeps 14 steps): checks the recipe end to end in about a minute per method.
  extra=('"trainer.accelerator=cpu"' '"trainer.limit_train_batches=8"' '"trainer.limit_val_batches=1"'
         '"trainer.limit_test_batches=1"' '"dataset.num_workers=0"' '"++callbacks.lr_find_cosine.num_training_steps=14"')
  EPOCHS=${EPOCHS:-2}
fi
join() { local IFS=,; echo "[$*]"; }
common=(results_dir="$RESULTS" run_max_time="$RUN_MAX_TIME")
# CIFAR_EXTRA: overrides for the CIFAR-10 runs only, comma-separated (the smoke test reads generated
# files, so it passes dataset.verify_checksums=false; real files are md5-checked).
extra_cifar=("${extra[@]}")
if [[ -n "${CIFAR_EXTRA:-}" ]]; then IFS=, read -ra more <<< "$CIFAR_EXTRA"; for o in "${more[@]}"; do extra_cifar+=("\"$o\""); done; fi
[[ -n "${RUNS_DIR:-}" ]] && common+=(runs_dir="$RUNS_DIR")
[[ -n "$METHODS" ]] && common+=(only="$METHODS")
[[ -n "${EPOCHS:-}" ]] && common+=(epochs="$EPOCHS")

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: $(nproc) CPU cores"

echo "== MNIST (20 epochs, every method, capped at $RUN_MAX_TIME per run, $BUDGET_MNIST s budget)"
"$PY" -m lipschitz_lightning.bench suite=gpu_mnist time_budget_s="$BUDGET_MNIST" "${common[@]}" "extra=$(join "${extra[@]}")"

DATA_DIR=${LIPSCHITZ_DATA:-data}  # the suites' data_dir
if [[ -d "$DATA_DIR/cifar-10-batches-bin" || -e "$CIFAR_ARCHIVE" ]]; then
  archive=null
  [[ -e "$CIFAR_ARCHIVE" ]] && archive="$CIFAR_ARCHIVE"
  echo "== CIFAR-10 (ResNet20, every method, capped at $RUN_MAX_TIME per run, $BUDGET_CIFAR s budget)"
  "$PY" -m lipschitz_lightning.bench suite=gpu_cifar10 cifar_archive="$archive" time_budget_s="$BUDGET_CIFAR" "${common[@]}" \
    "extra=$(join "${extra_cifar[@]}")"
else
  echo "== CIFAR-10 not run: neither $DATA_DIR/cifar-10-batches-bin/ nor $CIFAR_ARCHIVE is on this machine (139 MB: over the 64 MiB that travel)"
fi

if "$PY" -c "import matplotlib" 2>/dev/null; then
  "$PY" -m lipschitz_lightning.bench.report results_dir="$RESULTS" out="${REPORT:-docs/benchmarks.md}"
fi
# On the device machine, hand the raw results back.
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT/results" && cp "$RESULTS"/gpu_*.csv "$OUT/results/" 2>/dev/null || true
fi
