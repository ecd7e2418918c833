#!/usr/bin/env bash
# One GPU lease for two runs side by side on one GPU (each is bound by Python overhead at this model's size,
# so they overlap rather than queue):
#   lengthdrop: LengthDrop from the shipped model (fresh tokens only, question kept), its token scorers
#               trained again on the result, then the frontier search on CUDA started from the shipped one;
#   pruned:     Prune Once for All, 80% in 1x4 blocks on the cubic schedule with prediction-layer
#               distillation from the dense shipped model, then training on with the masks fixed.
# Each run has a deadline; a run cut off there is exported from its newest checkpoint instead, so a lease
# always returns a model. Results go to $WORK/lengthdrop-out and $WORK/pruned-out: fp16 weights in parts of
# 15 MiB (the device tool returns at most 16 MiB a file and 64 MiB a call, so each folder is fetched by its
# own call) and a tar of the logs. Join the parts with `cat model.safetensors.part-* > model.safetensors`.
#
#   bash experiments/h200_lease.sh TRAIN.json.gz        (on the GPU machine, defaults below)
#   LIMIT=300 LD_STEPS=3 ... bash experiments/h200_lease.sh TRAIN.json.gz   (a tiny end-to-end run on a CPU)
set -uo pipefail

DATA=${1:?usage: h200_lease.sh TRAIN.json.gz}
WORK=${WORK:-/tmp/lease}
MODEL=${MODEL:-src/dynamic_tinybert/models/dynamic-minilm-l6-squad}
DEVICE=${DEVICE:-cuda}
LIMIT_ARGS=${LIMIT:+--limit $LIMIT}
# LengthDrop (issue 30): the recipe of the shipped model's LengthDrop run, its learning rate now decayed to 0
LD_STEPS=${LD_STEPS:-1400}
LD_SECONDS=${LD_SECONDS:-290}
SCORER_STEPS=${SCORER_STEPS:-1500}
SCORER_SECONDS=${SCORER_SECONDS:-75}
SEARCH_SECONDS=${SEARCH_SECONDS:-50}
# pruning (issue 31): sparsity reached at 40% of the steps, then the masks stay fixed
PRUNE_STEPS=${PRUNE_STEPS:-7000}
PRUNE_END=${PRUNE_END:-2800}
PRUNE_EVERY=${PRUNE_EVERY:-100}
PRUNE_SECONDS=${PRUNE_SECONDS:-465}
SAVE_EVERY=${SAVE_EVERY:-300}

export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
DTB=(python3 -m dynamic_tinybert.cli)  # a command, not a function, so that `timeout` can run it
mkdir -p "$WORK"
START=$SECONDS
stamp() { echo "[$((SECONDS - START)) s] $*"; }

# The finished model, else the newest checkpoint of a run that was cut off.
newest() {
    if [ -f "$1/model/config.json" ]; then echo "$1/model"; return; fi
    find "$1/checkpoints" -maxdepth 1 -name 'step-*' 2>/dev/null | sort -t- -k2 -n | tail -1
}

# Split release $1's weights into $2 beside the logs of runs $3...
ship() {
    local release=$1 out=$2
    shift 2
    mkdir -p "$out"
    split -b 15M -d "$release/model.safetensors" "$out/model.safetensors.part-"
    # the runs' own files (metrics, settings, the search log and frontier), not their checkpoints
    tar czf "$out/logs.tar.gz" "$release/config.json" $(find "$@" -maxdepth 1 -type f) 2>/dev/null
    sha256sum "$release/model.safetensors"
}

lengthdrop() {
    local run=$WORK/lengthdrop
    stamp "lengthdrop: $LD_STEPS steps"
    timeout -k 15 "$LD_SECONDS" "${DTB[@]}" train finetune --model "$MODEL" --data "$DATA" \
        --answerable-only $LIMIT_ARGS --output "$run" --max-steps "$LD_STEPS" --batch-size 32 --lr 2e-5 \
        --warmup-ratio 0.05 --seed 4 --length-drop --length-drop-ratio-bound 0.25 --layer-drop 0 \
        --protect-question --length-drop-fresh-only --save-every "$SAVE_EVERY" --log-every 50 \
        > "$WORK/lengthdrop.log" 2>&1
    stamp "lengthdrop exited $?"
    local trained
    trained=$(newest "$run")
    [ -n "$trained" ] || { stamp "lengthdrop left no checkpoint"; return 1; }
    "${DTB[@]}" export --model "$trained" --output "$WORK/lengthdrop-raw" --fp16 || return 1
    stamp "scorers: $SCORER_STEPS steps on $trained"
    timeout -k 15 "$SCORER_SECONDS" "${DTB[@]}" train scorers --model "$WORK/lengthdrop-raw" \
        --data "$DATA" --answerable-only $LIMIT_ARGS --output "$WORK/scorers" --max-steps "$SCORER_STEPS" \
        --batch-size 32 --lr 1e-3 --warmup-ratio 0.1 --seed 42 --precision fp32 --save-every "$SAVE_EVERY" \
        --log-every 50 > "$WORK/scorers.log" 2>&1
    stamp "scorers exited $?"
    local scored
    scored=$(newest "$WORK/scorers")
    scored=${scored:-$WORK/lengthdrop-raw}
    "${DTB[@]}" export --model "$scored" --output "$WORK/lengthdrop-release" --fp16 || return 1
    stamp "search: $SEARCH_SECONDS s"
    "${DTB[@]}" search --device "$DEVICE" --model "$WORK/lengthdrop-release" --data "$DATA" --answerable-only \
        --protect-question --time-limit "$SEARCH_SECONDS" --max-points 8 --latency-questions 8 --resume \
        --start-from "$MODEL/pareto.json" --output "$WORK/search" > "$WORK/search.log" 2>&1
    stamp "search exited $?"
    cp "$WORK/search/pareto.json" "$WORK/lengthdrop-release/" 2>/dev/null
    ship "$WORK/lengthdrop-release" "$WORK/lengthdrop-out" \
        "$run" "$WORK/scorers" "$WORK/search" "$WORK/lengthdrop.log" "$WORK/scorers.log" "$WORK/search.log"
    cp "$WORK/lengthdrop-release/pareto.json" "$WORK/lengthdrop-out/" 2>/dev/null
    stamp "lengthdrop done"
}

pruned() {
    local run=$WORK/pruned
    stamp "pruned: $PRUNE_STEPS steps, 80% 1x4 by step $PRUNE_END"
    timeout -k 15 "$PRUNE_SECONDS" "${DTB[@]}" train distill --stage pd --teacher "$MODEL" \
        --student "$MODEL" --data "$DATA" --answerable-only $LIMIT_ARGS --output "$run" --prune-to 0.8 \
        --prune-pattern 1x4 --prune-start 0 --prune-end "$PRUNE_END" --prune-every "$PRUNE_EVERY" \
        --max-steps "$PRUNE_STEPS" --epochs 20 --batch-size 32 --lr 1e-4 --warmup-ratio 0.05 --seed 0 \
        --save-every "$SAVE_EVERY" --log-every 50 > "$WORK/pruned.log" 2>&1
    stamp "pruned exited $?"
    local trained
    trained=$(newest "$run")
    [ -n "$trained" ] || { stamp "pruned left no checkpoint"; return 1; }
    "${DTB[@]}" export --model "$trained" --output "$WORK/pruned-release" --fp16 || return 1
    ship "$WORK/pruned-release" "$WORK/pruned-out" "$run" "$WORK/pruned.log"
    stamp "pruned done"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
pruned &
lengthdrop &
wait
stamp "all done"
ls -la "$WORK"/*-out 2>/dev/null
