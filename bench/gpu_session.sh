#!/usr/bin/env bash
# One lease of a GPU machine, as one prepared script (docs/gpu.md, "Running
# the GPU tests and benchmarks"). Every stage has its own time limit and the
# whole run a deadline (BUDGET seconds), so a slow stage costs its own time
# and no more; the training stage takes what is left.
#
#   BUDGET=330 bench/gpu_session.sh STAGE...
#
# Stages, in the order given:
#   build        the C++ coder, in place (always needed first on a bare machine)
#   tests        tests/test_gpu.py (the kernels compiled) and the kernel test files (their
#                interpreter-only tests skip there)
#   diag         bench/diag_lattice_conv.py: the compiled lattice conv at every step, mirror bypassed
#   benches      bench_lattice_conv.py and bench_entropy_tail.py (script mode, without torch.compile)
#   pytest-bench the same through pytest-benchmark, torch.compile included
#   e2e          the shipped model on CUDA: eval --mode dataset of $DATA/eval/heldout64, then of
#                $DATA/eval/dataset1000 under gpu_profile.py (images/s, GPU utilisation, memory)
#   codec-bench  bench_codec.py, cifar10 config, 1 and 2 lane groups side by side
#   corpus       training crops and patches cut from $DATA/photos (evaluation photos held out)
#   smoke        40 iterations of the INS fine-tune (needs corpus)
#   train        the INS fine-tune (needs corpus), for TRAIN_S seconds (default: until the deadline)
#   sig-qp       the qp list of the corpus for the SIG fine-tune (generate-finetune, by INIT's nets)
#   train-sig    the SIG fine-tune at those qps (needs corpus and sig-qp), until the deadline
#   export       one model file, $OUT/trained.safetensors: the SIG net of train-sig's best
#                export and the INS net of train's (INIT's net where a run left none)
#   py:FILE      run a Python file (a one-off diagnosis)
#
# Inputs: DATA (default .dev): DATA/photos (tools/fetch_corpus_photos.sh) and
# DATA/eval (tools/make_eval_sets.sh). INIT (default the shipped model): the
# model the fine-tunes start from, e.g. a CPU run's export carried in .dev.
# CORPUS (default /tmp/corpus): where `corpus` cuts the training set. Outputs
# go to OUT (default /tmp/gpu_out), at most 8 files, since the device tool
# brings back no more: session.log (every stage's log, in order, the training
# logs included), kernels.jsonl, codec.jsonl, profile_dataset1000.json,
# pytest_bench.json and trained.safetensors (the runs themselves live in
# /tmp/gpu_train and /tmp/gpu_sig). PY (default python3: the machine's, with
# torch, triton, cupy).
set -u
BUDGET=${BUDGET:-330}
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.dev}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
INIT=${INIT:-aribbps/pretrained/default.safetensors}
CORPUS=${CORPUS:-/tmp/corpus}
LOGS=/tmp/gpu_logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 OUT DATA PY DEVICE INIT CORPUS PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
t0=$(date +%s)

# stage NAME LIMIT CMD...: run CMD with LIMIT seconds, less if the deadline is nearer; its log goes to
# LOGS/NAME.log and is appended to OUT/session.log
stage() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - t0)))
    if ((left < 10 || limit <= 0)); then  # timeout 0 would mean no limit at all
        echo "== $name: skipped (deadline)" | tee -a "$OUT/session.log"
        return 0
    fi
    ((limit > left)) && limit=$left
    local s=$(date +%s)
    local log="$LOGS/$name.log"
    timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    local rc=$?
    local line="== $name: rc=$rc in $(($(date +%s) - s)) s (limit $limit)"
    { echo "$line"; grep -v "UserWarning\|check_worker_number" "$log"; } >>"$OUT/session.log"
    echo "$line"
    grep -v "UserWarning\|check_worker_number\|^W[0-9]" "$log" | tail -n 25
    return 0
}

# Training data cut on the machine from the photos: factor-2 crops of 64, 128
# and 256 pixels and box-downsampled 32x32/64x64 patches of the training photos
# (the evaluation photos held out, as in docs/corpus.md), linked into one folder.
make_corpus() {
    local H="Blinds FreshFlower EveningGlow ColdRipple" c=$1
    mkdir -p "$c/mix"
    local b="$PY -m aribbps.data build-corpus $DATA/photos --holdout $H --splits train -q"
    $b --crops 64 --per-photo 400 --seed 5 --out "$c/c64" &
    $b --crops 128 --per-photo 100 --seed 21 --out "$c/c128" &
    $b --crops 256 --per-photo 40 --seed 22 --out "$c/c256" &
    $b --size 32 --per-photo 600 --seed 31 --out "$c/p32" &
    $b --size 64 --per-photo 300 --seed 32 --out "$c/p64" &
    wait
    $PY - "$c" c64 c128 c256 p32 p64 <<'EOF'
import sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
for part in sys.argv[2:]:
    files = sorted((root / part / "train").glob("*.png"))
    for f in files:
        (root / "mix" / f"{part}_{f.name}").symlink_to(f)
    print(f"{part}: {len(files)} images")
EOF
}

train_ins() {  # SAVE_DIR ITERS [extra options]
    local save=$1 iters=$2
    shift 2
    $PY -m aribbps.train --mode ins --config medium-split3-s2 --init "$INIT" \
        --dataset_type filedataset --data_dir "$CORPUS/mix" --batch-pixels "${BATCH_PIXELS:-131072}" \
        --batch_size 16 --valid_num 300 --valid-select hash --hflip --lr "${LR:-5e-5}" --decay_rate 1.0 \
        --ema "${EMA:-0.999}" --workers "${WORKERS:-8}" --device "$DEVICE" --num_iters "$iters" --seed 41 \
        --save_dir "$save" "$@"
}

# The SIG net's fine-tune codes each image's latents at the qp the codec gives
# it, so it needs the corpus's qp list first (made by INIT's nets, as the codec
# would; docs/default_model.md, stage 5).
sig_qp() {
    $PY -m aribbps.train generate-finetune --data_dir "$CORPUS/mix" --model "$INIT" --data_dst /tmp/gpu_sig \
        --qp_path qp.json --batch_size 64 --device "$DEVICE" -q
}

train_sig() {  # SAVE_DIR ITERS [extra options]
    local save=$1 iters=$2
    shift 2
    $PY -m aribbps.train --mode finetune --config medium-split3-s2 --init "$INIT" \
        --dataset_type filedataset --data_dir "$CORPUS/mix" --qp_path /tmp/gpu_sig/qp.json \
        --batch-pixels "${BATCH_PIXELS:-131072}" --batch_size 8 --valid_num 300 --valid-select hash \
        --lr "${SIG_LR:-5e-5}" --decay_rate 1.0 --ema "${EMA:-0.999}" --workers "${WORKERS:-8}" \
        --device "$DEVICE" --num_iters "$iters" --seed 42 --save_dir "$save" "$@"
}

export_model() {  # the SIG net of the SIG run, the INS net of the INS run; INIT's where a run left no export
    local sig=/tmp/gpu_sig_train/best_finetune.safetensors ins=/tmp/gpu_train/best_ins.safetensors
    [[ -f $sig ]] || sig=$INIT
    [[ -f $ins ]] || ins=$INIT
    echo "SIG net from $sig, INS net from $ins"
    $PY -m aribbps.train combine --sig "$sig" --ins "$ins" -o "$OUT/trained.safetensors"
}

e2e() {  # heldout64 first: it also fills Triton's kernel cache, so the profiled run is warm
    $PY -m aribbps eval "$DATA/eval/heldout64" --mode dataset --device "$DEVICE" --json &&
    $PY bench/gpu_profile.py --json "$OUT/profile_dataset1000.json" -- \
        $PY -m aribbps eval "$DATA/eval/dataset1000" --mode dataset --device "$DEVICE" --json
}
export -f make_corpus train_ins sig_qp train_sig export_model e2e

{ nvidia-smi; $PY -c "import torch, triton, cupy; print('torch', torch.__version__, 'triton', triton.__version__,
'cupy', cupy.__version__, torch.cuda.get_device_name())"; } >"$LOGS/env.log" 2>&1
cat "$LOGS/env.log" >>"$OUT/session.log"
tail -n 1 "$LOGS/env.log"
for name in "$@"; do
    case $name in
    build) stage build 90 $PY setup.py -q build_ext --inplace ;;
    tests) stage tests 150 $PY -m pytest -q -p no:cacheprovider -n 8 --timeout 120 tests/test_gpu.py \
        tests/test_lattice_conv.py tests/test_entropy_tail.py tests/test_bitplanes_cupy.py ;;
    diag) stage diag 60 $PY bench/diag_lattice_conv.py ;;
    benches)
        stage bench_lattice_conv 45 $PY bench/bench_lattice_conv.py --no-compile --results "$OUT/kernels.jsonl"
        stage bench_entropy_tail 45 $PY bench/bench_entropy_tail.py --no-compile --results "$OUT/kernels.jsonl" ;;
    pytest-bench) stage pytest_bench 90 $PY -m pytest -q -p no:cacheprovider bench/bench_lattice_conv.py \
        bench/bench_entropy_tail.py --benchmark-only --benchmark-json "$OUT/pytest_bench.json" ;;
    e2e) stage e2e 120 e2e ;;
    codec-bench) stage codec_bench 60 $PY bench/bench_codec.py --configs cifar10 --sizes 32 --images 2048 \
        --lanes 256 --mode dataset --device "$DEVICE" --lane-groups 1 2 --out "$OUT/codec.jsonl" ;;
    corpus) stage corpus 60 make_corpus "$CORPUS" ;;
    smoke) stage smoke 60 train_ins /tmp/smoke 40 --log_interval 10 --valid_interval 40 --valid_num 32 ;;
    train) stage train "${TRAIN_S:-$((BUDGET - ($(date +%s) - t0) - 10))}" train_ins /tmp/gpu_train 1000000 \
        --log_interval 50 --valid_interval "${VALID_INTERVAL:-500}" ;;
    sig-qp) stage sig_qp 120 sig_qp ;;
    train-sig) stage train_sig $((BUDGET - ($(date +%s) - t0) - 40)) train_sig /tmp/gpu_sig_train 1000000 \
        --log_interval 50 --valid_interval "${VALID_INTERVAL:-500}" ;;
    export) stage export 30 export_model ;;
    py:*) stage "$(basename "${name#py:}" .py)" 90 $PY "${name#py:}" ;;
    *) echo "unknown stage $name" >&2; exit 2 ;;
    esac
done
echo "total $(($(date +%s) - t0)) s"
