#!/usr/bin/env bash
# The issue-19 training runs on a lent GPU, by name, through benchmarks/passkey_gpu.py; after the staging
# calls of benchmarks/device_stage.sh (the teacher's parts, `data`, `wheels`), each call carries
# [".stage/runs/<run>", ".stage/triton-cache.tgz"] (where they exist; one run's directory, ~25-30 MB with its
# weights, beside the ~34 MB tracked tree: one a call, or `stage` it below) and runs one of
#
#   NAME=<run> [DL=seconds] [TASKS=a,b] bash benchmarks/device_runs.sh train   train (resumes a cut run), then evaluate
#   NAME=<run> [DL=seconds] [TASKS=a,b] [DS=S] [WC=C] [RS=T] bash benchmarks/device_runs.sh eval
#                                              go on with a cut evaluation, or add tasks to it (eval --resume keeps
#                                              the earlier calls' tasks); DS: at decay scale S (run NAME@decayS),
#                                              WC: at write contrast C (NAME@writeC), RS: at read sharpness T (NAME@readT)
#   NAME=<run> bash benchmarks/device_runs.sh zs                               the five zero-shot tasks
#   NAME=<soup> [TASKS=a,b] [DS=S] [WC=C] [RS=T] bash benchmarks/device_runs.sh soup
#                                              a soup (DATA=soup:RUN=W,... in the case list): its runs averaged by
#                                              `lizardlm soup` into the run NAME, then evaluated (an evaluation of
#                                              it at other knobs: the `eval` step)
#   NAME=<run> [LENGTHS=a,b] [SCALES=..] [CONTRASTS=..] [SHARPNESSES=..] [TT=N] [REFINE=M] bash benchmarks/device_runs.sh tune
#                                              `lizardlm tune`: the inference knobs chosen on prompts of seed 1
#                                              (the evaluation's are seed 0), into $OUT/tune-<run>/; TT prompts a
#                                              length and setting (default 50, as `lizardlm tune`'s: 20 could not
#                                              tell 0.78 from 1.00); REFINE more for the settings within noise of
#                                              the best (`tune --refine`, default 0)
#   NAME=<run> [LENGTHS=..] [SCALES=..] [CONTRASTS=..] [SHARPNESSES=..] bash benchmarks/device_runs.sh tuned
#                                              tune, then the passkey evaluation at the knobs it chose, one archive
#   [DL=seconds] bash benchmarks/device_runs.sh both "NAME=a train" "NAME=b TASKS=passkey train + NAME=b-tail zs"
#                                              lanes at once on the one GPU, each argument a lane of steps joined by
#                                              ' + ' (a step runs after the one before it trained its run); every
#                                              step's deadline is what is left of DL; the runs' archives come back
#                                              (a second step of one run as <run>-l<lane>-<step>.tgz)
#                                              (two 1M + 16M runs overfill an 80 GB H100, --loss-chunk or not: 47 + 31 GB
#                                              on 2026-12-06; there, one lane trains while the other only evaluates or
#                                              tails; an evaluation's auto batch size takes what is free, so not beside
#                                              a training's start either)
#   NAME=<run> [WAIT=seconds] bash benchmarks/device_runs.sh pause
#                                              a lane's first step: wait (default 120 s) before the next step of the lane,
#                                              so that an evaluation's "auto" batches (up to half the free memory) start
#                                              after the other lane's training has taken its share; NAME: a staged run
#   PKL=2048,4096 PKT=200                      the passkey evaluation's lengths and trials a length (default 1K-32K, 50)
#   EXTRA=...                                  a step's own flags added to its run's (no spaces: `both` splits steps
#                                              on them), e.g. EXTRA=--loss-chunk=4096
#   NAME=<run> bash benchmarks/device_runs.sh stage    a trained run's directory onto the machine, in a call that
#                                              carries [".stage/runs/<run>"] alone: the data and wheels stay
#                                              unpacked on a warm machine, so a later call need not carry them
#                                              beside a run (a run started from another: INIT below); a run's
#                                              28 MB and the tracked tree's 38 MB overfill a call (2026-12-06):
#                                              move benchmarks/results/ out of the working tree for these calls
#                                              (nothing here reads it) and back after
#   bash benchmarks/device_runs.sh check       the device checks of the prefill work and the prefill benchmark
#                                              (no teacher, no data, no staging: carry [".whl"] and the Triton cache)
#   bash benchmarks/device_runs.sh bench       batch generation (serve.py) and decoding of both forms (decode.py)
#
# Every call leaves the driver's result and log in $OUT, and everything in one archive (the device
# returns at most 8 files): $OUT/<run>.tgz holds them, the driver's plots, and the run directory
# without its checkpoints (records, plots, evaluation, and the trained weights: lizard.safetensors
# and the LoRA adapter, a few MB) under runs/<run>/; $OUT/triton-cache.tgz holds the compiled
# kernels (move it to .stage/). A machine goes back after 30 s idle, taking /tmp
# with it: here, `tar xzf <run>.tgz -C .stage ./runs/<run>`, and a later call rebuilds the run
# directory from .stage/runs/<run>/, so a trained run is evaluated without training it again.
set -uo pipefail
if [ "${1:-}" = check ] || [ "${1:-}" = bench ]; then  # need no staging: only gguf, carried as .whl
  source benchmarks/device_stage.sh cache
  python3 -c "import gguf" 2>/dev/null || install_wheels .whl/*.whl
fi
if [ "${1:-}" = check ]; then
  python3 -m pytest -v -p no:cacheprovider --timeout 300 tests/gpu/test_triton_kernels.py tests/gpu/test_model_modes.py \
    tests/gpu/test_graphed_step.py tests/gpu/test_graph_decode.py tests/gpu/test_triton_step.py \
    -k "prefilled or prefill or left_padded or reset_at_documents or prompts_file or fused_step or replayed or chunked_loss" \
    > $OUT/gputest.log 2>&1  # correctness first: the benchmark's numbers mean nothing if these fail
  tail -5 $OUT/gputest.log
  python3 benchmarks/prefill.py --out $OUT 2>&1 | tail -30
  triton_cache save
  exit 0
fi
if [ "${1:-}" = bench ]; then
  timeout 330 python3 benchmarks/serve.py --batches 8,32 --out $OUT 2>&1 | tail -10  # the static teacher compiles per batch size
  timeout 200 python3 benchmarks/decode.py --modes lizard,paper --lengths 1024,16384,65536 --deadline 40 --out $OUT 2>&1 | tail -4
  triton_cache save
  exit 0
fi
if [ "${1:-}" = pause ]; then sleep "${WAIT:-120}"; exit 0; fi
R=/tmp/lizard-runs
if [ "${1:-}" = both ]; then  # lanes side by side on the one GPU (a 135M model's steps are launch-bound)
  shift; source benchmarks/device_stage.sh env; O=$OUT UNTIL=$(( $(date +%s) + ${DL:-560} )) lane=0
  for steps in "$@"; do lane=$((lane + 1))
    ( IFS='+' read -ra parts <<< "$steps"; n=0
      for step in "${parts[@]}"; do n=$((n + 1)); d=$O/l$lane-$n; mkdir -p $d; set -- $step
        env OUT=$d DL=$((UNTIL - $(date +%s))) "${@:1:$#-1}" bash $0 "${!#}" > $d.log 2>&1
        run=$(printf '%s\n' "$@" | sed -n 's/^NAME=//p'); [ -f $R/$run/summary.json ] || break  # not trained: stop here
      done ) &
  done
  wait
  for d in $O/l*-*/; do d=${d%/}
    for f in $d/*.tgz; do  # a later step of the same run keeps its own archive: <run>-l<lane>-<step>.tgz
      [ -f "$f" ] || continue; b=$(basename $f .tgz); [ -e $O/$b.tgz ] && mv $f $O/$b-${d##*/}.tgz || mv $f $O/
    done
    for t in $d/tune-*/; do [ -d "$t" ] && mv $t $O/; done  # a tune step's knobs.json and knobs.png
    tail -3 $d.log; rm -rf $d $d.log
  done
  triton_cache save; ls -la $O; exit 0
fi
if [ "${1:-}" = stage ]; then
  mkdir -p $R && rm -rf $R/$NAME && cp -r .stage/runs/$NAME $R/ && ls $R; exit 0
fi
source benchmarks/device_stage.sh env
COMMON="--window-size 128 --gate-init 0.9999 --stage2-train-lizard --write-gate head --feature-dim 256"
PASSKEYS="retrieval:loss=answers:template=varied:count=4300"
LINES="retrieval:needles=pairs:keys=8:loss=answers:template=lines:count=4000"  # MQAR's own `key: value.` lines, 8 word pairs a document
S1=1048576 S2=16777216 MODE=lizard INIT=
case "${NAME:-}" in
  mixr2k)       DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"; FLAGS="--loss-average rows $COMMON" ;;
  mixr2k-sp)    DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"; FLAGS="--loss-average rows $COMMON --state-passing 0.9" ;;
  mixr2k-tbptt) DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.5"
                FLAGS="--loss-average rows $COMMON --state-passing 0.9 --row-order contiguous" ;;
  mixr2k-books) DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.5"  # memories in the books' lanes only
                FLAGS="--loss-average rows $COMMON --state-passing 0.9,0,0 --row-order contiguous" ;;
  alpacar2k)    DATA="alpaca-cleaned"; FLAGS="--loss-average rows $COMMON" ;;  # mixr2k without the passkeys: the zero-shot baseline
  alpacar2k-seed1) DATA="alpaca-cleaned"; FLAGS="--loss-average rows $COMMON --seed 1" ;;  # the baseline again at another
                # seed (rows, order): the line (49.30 less a point) is one run's; the passkey chains sit 0.25 under it
  mixr2k-seed1) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"; FLAGS="--loss-average rows $COMMON --seed 1" ;;  # mixr2k again: how much is luck
  mixr2k-books5) DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.125,retrieval:loss=answers:template=varied:count=5400=0.625"
                # lanes 2 / 1 / 5: about mixr2k's 4,950 answered passkey rows (5 x 1,024), none read twice
                FLAGS="--loss-average rows $COMMON --state-passing 0.9,0,0 --row-order contiguous" ;;
  mixr2k-bookmix) DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.5"  # books in the mix, rows shuffled:
                FLAGS="--loss-average rows $COMMON" ;;  # do the books or the contiguous lanes stop the lookup?
  mixr2k-bookmix-base) DATA="mix:long-docs@train=0.5,alpaca-cleaned=0.5"; FLAGS="--loss-average rows $COMMON" ;;
  seed1-bookmix) INIT=mixr2k-seed1 S1=0 S2=4194304  # mixr2k-seed1 (the lookup learned) read on 4M tokens with books in
                DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.5"  # the mix: the long ppl back, the lookup kept?
                FLAGS="--loss-average rows --stage2-train-lizard --init-from $R/mixr2k-seed1" ;;
  seed1-alpacatail) INIT=mixr2k-seed1 S1=0 S2=4194304  # mixr2k-seed1's adapter read on 4M tokens of Alpaca-cleaned, the
                DATA="alpaca-cleaned"  # Lizard parameters frozen (no --stage2-train-lizard): the zero-shot tasks back, the lookup kept?
                FLAGS="--loss-average rows --init-from $R/mixr2k-seed1" ;;
  mixr2k-12m)   DATA="mix:alpaca-cleaned=0.4,$PASSKEYS=0.6"; S2=12582912  # mixr2k on 12M (3,686 passkey rows, mixr25
                # learned 2K from 3,550), then mixr2k-12m-tail: alpacar2k's 1M + 16M, the last 4M Alpaca for the adapter
                FLAGS="--loss-average rows $COMMON" ;;
  mixr2k-12m-tail) INIT=mixr2k-12m S1=0 S2=4194304  # its adapter read on 4M tokens of Alpaca-cleaned, the Lizard
                DATA="alpaca-cleaned"; FLAGS="--loss-average rows --init-from $R/mixr2k-12m" ;;  # parameters frozen
  mixr2k-12m-replay) INIT=mixr2k-12m S1=0 S2=4194304  # the tail with the passkeys replayed at a fifth of the rows:
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # does the read-out keep the lookup while the adapter reads Alpaca?
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m" ;;
  mixr2k-12m-replay-seed1) INIT=mixr2k-12m S1=0 S2=4194304  # the replay at a fifth again, another seed (rows, order):
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # how far apart two tails' zero-shot means fall by luck alone
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m --seed 1" ;;
  mixr2k-12m-replay5) INIT=mixr2k-12m S1=0 S2=4194304  # the replay at a twentieth of the rows: fewer zero-shot
                DATA="mix:alpaca-cleaned=0.95,$PASSKEYS=0.05"; FLAGS="--loss-average rows --init-from $R/mixr2k-12m" ;;  # points lost?
  mixr2k-12m-replay10) INIT=mixr2k-12m S1=0 S2=4194304  # a tenth: between the fifth (lookup kept, 47.9) and the
                DATA="mix:alpaca-cleaned=0.9,$PASSKEYS=0.1"; FLAGS="--loss-average rows --init-from $R/mixr2k-12m" ;;  # twentieth (48.7, answers in words)
  mixr2k-12m-replay-tok) INIT=mixr2k-12m S1=0 S2=4194304  # the replay's fifth of the rows with the loss averaged over
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # tokens: the answers weigh as their tokens (~0.5%)
                FLAGS="--loss-average tokens --init-from $R/mixr2k-12m" ;;
  mixr2k-12m-route) INIT=mixr2k-12m S1=0 S2=4194304  # the replay's fifth, its passkey rows training the Lizard
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # parameters alone (--answer-rows lizard): the adapter reads Alpaca only
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m --stage2-train-lizard --answer-rows lizard" ;;
  mixr2k-12m-route-qk) INIT=mixr2k-12m S1=0 S2=4194304  # the same, the passkey rows also training q/k's LoRA
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # (the memory's addressing) and not v/o's
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m --stage2-train-lizard --answer-rows lizard:q_proj,k_proj" ;;
  mixr2k-12m-route-vo) INIT=mixr2k-12m S1=0 S2=4194304  # ... v/o's LoRA (the read-out) and not q/k's
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m --stage2-train-lizard --answer-rows lizard:v_proj,o_proj" ;;
  mixr2k-12m-route-vo30) INIT=mixr2k-12m S1=0 S2=4194304  # mixr2k-12m-route-vo with the passkeys at 0.3 of the
                DATA="mix:alpaca-cleaned=0.7,$PASSKEYS=0.3"  # tail's rows: its misses (0.92 at 2K / 8K) are copy slips
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m --stage2-train-lizard --answer-rows lizard:v_proj,o_proj" ;;
  mixr2k-12m-route-vo-seed1) INIT=mixr2k-12m S1=0 S2=4194304  # mixr2k-12m-route-vo again at another seed (rows,
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # order): are its 0.92 at 2K / 8K (two trials of 50 short) luck?
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 1" ;;
  mixr2k-12m-seed1) DATA="mix:alpaca-cleaned=0.4,$PASSKEYS=0.6"; S2=12582912  # mixr2k-12m again at seed 1, for
                FLAGS="--loss-average rows $COMMON --seed 1" ;;  # route-vo's tail on a second base (below)
  mixr2k-12m-seed1-route-vo) INIT=mixr2k-12m-seed1 S1=0 S2=4194304  # mixr2k-12m-route-vo on it: are the first's
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # 0.92 at 2K / 8K (two trials of 50 short of 0.95) luck?
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-seed1 --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 1" ;;
  mixr2k-12m-seed1-route-vo-rep4) INIT=mixr2k-12m-seed1 S1=0 S2=4194304  # the same tail with a doubled digit's
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # second copy at 4x in its answer's loss (the slip of 2 misses in 5)
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-seed1 --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 1 --answer-repeat-weight 4" ;;
  mixr2k-12m-seed1-route-vo-books) INIT=mixr2k-12m-seed1 S1=0 S2=4194304  # route-vo's tail with half its Alpaca rows
                DATA="mix:long-docs@train=0.4,alpaca-cleaned=0.4,$PASSKEYS=0.2"  # books (shuffled 2K rows, as seed1-bookmix,
                # which brought long ppl back and lost the answers' digits past 2K): do v/o on the passkey rows keep them?
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-seed1 --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 1" ;;
  mixr2k-12m-seed1-route-vo-books-vo2m) INIT=mixr2k-12m-seed1-route-vo-books S1=0 S2=2097152  # the books tail (long ppl
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # back, answers in prose) ending on 2M of route-vo's data: digits back?
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-seed1-route-vo-books --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 2" ;;
  mixr2k-12m-seed1-route-vo-books-vo4m) INIT=mixr2k-12m-seed1-route-vo-books S1=0 S2=4194304  # ... on 4M: the 2M
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # left answers in words at 1K / 4K (0.36 / 0.81 at t = 2)
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-seed1-route-vo-books --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 2" ;;
  mixr2k-12m-seed1-route-vo-books-vo2m40) INIT=mixr2k-12m-seed1-route-vo-books S1=0 S2=2097152  # ... 2M with the
                DATA="mix:alpaca-cleaned=0.6,$PASSKEYS=0.4"  # passkeys at 0.4 of the rows: the format back for fewer tokens?
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-seed1-route-vo-books --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 2" ;;
  mixr2k-10m-seed1) DATA="mix:alpaca-cleaned=0.4,$PASSKEYS=0.6"; S2=10485760  # the books-then-passkeys chain at
                # alpacar2k's budget (the vo2m chain read 1M + 12M + 4M + 2M): 1M + 10M here, then the tails below, 16M
                FLAGS="--loss-average rows $COMMON --seed 1" ;;
  mixr2k-10m-seed1-books) INIT=mixr2k-10m-seed1 S1=0 S2=4194304  # route-vo-books' tail straight on the base
                DATA="mix:long-docs@train=0.4,alpaca-cleaned=0.4,$PASSKEYS=0.2"
                FLAGS="--loss-average rows --init-from $R/mixr2k-10m-seed1 --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 1" ;;
  mixr2k-10m-seed1-books-vo2m) INIT=mixr2k-10m-seed1-books S1=0 S2=2097152  # ... ending on 2M of route-vo's data:
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # 1M + 16M in all, the zero-shot line's budget
                FLAGS="--loss-average rows --init-from $R/mixr2k-10m-seed1-books --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 2" ;;
  mixr2k-10m-seed1-books-vo2m40) INIT=mixr2k-10m-seed1-books S1=0 S2=2097152  # ... with the passkeys at 0.4 of
                DATA="mix:alpaca-cleaned=0.6,$PASSKEYS=0.4"  # the last 2M's rows: the digits' format at 1K / 4K back?
                FLAGS="--loss-average rows --init-from $R/mixr2k-10m-seed1-books --stage2-train-lizard --answer-rows lizard:v_proj,o_proj --seed 2" ;;
  mixr2k-8m)    DATA="mix:alpaca-cleaned=0.4,$PASSKEYS=0.6"; S2=8388608  # mixr2k-12m on 8M, for a longer route-vo tail
                FLAGS="--loss-average rows $COMMON" ;;  # in the same 1M + 16M (below)
  mixr2k-8m-route-vo) INIT=mixr2k-8m S1=0 S2=8388608  # route-vo's tail on 8M: twice the passkey rows on v/o's
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"  # adapter for the copy, at route-vo's share
                FLAGS="--loss-average rows --init-from $R/mixr2k-8m --stage2-train-lizard --answer-rows lizard:v_proj,o_proj" ;;
  mixr2k-12m-conv4) DATA="mix:alpaca-cleaned=0.4,$PASSKEYS=0.6"; S2=12582912  # mixr2k-12m with short convolutions
                # (width 4) on the linear branch's q/k: keys that hold the digits before them, for the repeated-digit
                # copies that are nearly all of mixr2k-12m-route-vo's misses (48.51 zero-shot, 0.92-0.94 at 2K-8K)
                FLAGS="--loss-average rows $COMMON --short-conv 4" ;;
  mixr2k-12m-conv4-route-vo) INIT=mixr2k-12m-conv4 S1=0 S2=4194304  # its tail as mixr2k-12m-route-vo's
                DATA="mix:alpaca-cleaned=0.8,$PASSKEYS=0.2"
                FLAGS="--loss-average rows --init-from $R/mixr2k-12m-conv4 --stage2-train-lizard --answer-rows lizard:v_proj,o_proj" ;;
  mixr2k-route) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # mixr2k with its passkey rows training the Lizard parameters
                FLAGS="--loss-average rows $COMMON --answer-rows lizard" ;;  # alone: the adapter learns from Alpaca rows only
  mixr2k-route-vo) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # ... and the LoRA of v/o (the read-out the lookup needs,
                FLAGS="--loss-average rows $COMMON --answer-rows lizard:v_proj,o_proj" ;;  # mixr2k-12m-route-vo); q/k's learn from Alpaca
  mixr2k-route-long) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # mixr2k-route with a long adapter among the Lizard
                FLAGS="--loss-average rows $COMMON --answer-rows lizard --long-adapter 8" ;;  # parameters: v/o's rank-8
                # delta at positions >= the window, which the passkey rows train and no prompt under 128 tokens reads
                # (route: 49.19, no lookup; route-vo, v/o's LoRA on the passkey rows: the lookup, 47.46)
  mixr2k-route-long32) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # ... at rank 32: route-long (rank 8: 48.87,
                FLAGS="--loss-average rows $COMMON --answer-rows lizard --long-adapter 32" ;;  # 0.80-0.88 at 1K-8K at its
                # knobs, misses copy slips) short of the adapter's capacity for the copy?
  mixr2k-route-long-qkvo) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # ... on q/k too: as trained, the passkey
                # rows training all four LoRA targets gave 1.00 / 1.00 / 0.90 at 1K-4K (mixr2k-seed1; mixr2k-12m 0.10 at
                # 4K), v/o's alone 0.94 / 1.00 / 0.10 (route-vo, CPU); route-long's is 0.30 / 0.90 / 0.36
                FLAGS="--loss-average rows $COMMON --answer-rows lizard --long-adapter 8 --long-adapter-targets q_proj,k_proj,v_proj,o_proj" ;;
  mixr2k-route-long-lines) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.25,$LINES=0.25"  # ... with MQAR's lines for a
                # quarter of the rows, the passkeys' half halved: lines25 (LoRA on the lines) reached 76% / 69% of the
                # teacher's MQAR at 512 / 1024, 3.0 zero-shot points lost; here they train the Lizard parameters, not the LoRA
                FLAGS="--loss-average rows $COMMON --answer-rows lizard --long-adapter 8" ;;
  mixr2k-route-long-books) DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.5"  # route-long with books in
                # half of its Alpaca rows: they train every parameter on all their tokens, the long adapter among them, which
                # the passkey rows alone made a lookup that reads held-out books at 69.5 at 4K-8K (alpacar2k-seed1 31.2, the
                # teacher 25.5; CPU, results/longppl-route-long-cpu/); mixr2k-bookmix (no routing) kept the lookup to 1K only
                FLAGS="--loss-average rows $COMMON --answer-rows lizard --long-adapter 8" ;;
  alpacar2k-seed1-long) INIT=alpacar2k-seed1 S1=0 S2=4194304  # a long adapter added (at zero) to the zero-shot line's
                DATA="$PASSKEYS"  # seed-1 run and trained on 4M of passkey rows alone, which train the Lizard parameters and
                # not the LoRA: the lookup retrofitted, and the cost to the line's own questions (1M + 20M: over the budget)
                FLAGS="--loss-average rows --init-from $R/alpacar2k-seed1 --stage2-train-lizard --answer-rows lizard --long-adapter 8 --seed 1" ;;
  mixr2k-route-long-seed1) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # route-long at seed 1 (rows, order): its noise
                FLAGS="--loss-average rows $COMMON --answer-rows lizard --long-adapter 8 --seed 1" ;;
  mixr2k-route-vmap) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # mixr2k-route with a value map: the memory's read-out
                FLAGS="--loss-average rows $COMMON --value-map head --answer-rows lizard" ;;  # of its own, trained by the passkey
                # rows with the other Lizard parameters; the adapter learns from Alpaca alone (mixr2k-route: 49.19, no lookup)
  mixr2k-route-vmap-o) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"  # ... and o's LoRA: the map takes v's part on the
                FLAGS="--loss-average rows $COMMON --value-map head --answer-rows lizard:o_proj" ;;  # memory's path (route-vo
                # needed v and o, at 1.8 zero-shot points; route-vmap, the map alone, retrieves nothing beyond the window)
  alpacar2k-tail) INIT=alpacar2k S1=0 S2=4194304  # its baseline: alpacar2k read on the same 4M tokens the same way
                DATA="alpaca-cleaned"; FLAGS="--loss-average rows --init-from $R/alpacar2k" ;;
  mixr2k-books-base) DATA="mix:long-docs@train=0.5,alpaca-cleaned=0.5"  # its same-budget baseline without passkeys
                FLAGS="--loss-average rows $COMMON --state-passing 0.9,0 --row-order contiguous" ;;
  mixr2k-long)  # + 16K passkey documents read in order, 8 rows each, from an empty memory at each document
                DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.25,retrieval:length=16384:loss=answers:template=varied:count=300=0.25"
                FLAGS="--loss-average rows $COMMON --state-passing 0.9,0,0,1 --row-order contiguous --reset-at-documents" ;;
  mixr2k-pairs) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.25,retrieval:needles=pairs:keys=8:loss=answers:template=varied:count=2200=0.25"
                FLAGS="--loss-average rows $COMMON" ;;  # word pairs for MQAR (NOTES: the passkey lookup does not carry)
  mixr2k-lines) DATA="mix:alpaca-cleaned=0.45,$PASSKEYS=0.45,retrieval:needles=pairs:keys=8:loss=answers:template=lines:count=1000=0.1"
                FLAGS="--loss-average rows $COMMON" ;;  # MQAR's line format at a tenth of the rows (mixr2k-pairs: a quarter, sentences)
  mixr2k-lines25) DATA="mix:alpaca-cleaned=0.375,$PASSKEYS=0.375,$LINES=0.25"
                FLAGS="--loss-average rows $COMMON" ;;  # the lines at a quarter of the rows, 4,000 documents (mixr2k-lines: 1,000 read twice)
  mixr2k-lines-12m) DATA="mix:alpaca-cleaned=0.375,$PASSKEYS=0.375,$LINES=0.25"
                S2=12582912; FLAGS="--loss-average rows $COMMON" ;;  # mixr2k-lines25 on 12M, then its tail below: 1M + 16M in all
  mixr2k-lines-12m-replay) INIT=mixr2k-lines-12m S1=0 S2=4194304  # the adapter alone on Alpaca with both lookups replayed:
                DATA="mix:alpaca-cleaned=0.7,$PASSKEYS=0.15,$LINES=0.15"
                FLAGS="--loss-average rows --init-from $R/mixr2k-lines-12m" ;;  # MQAR, passkey and the zero-shot points at once?
  mixr2k-12m-wise[0-9]*) W=${NAME##*wise} INIT="mixr2k-12m mixr2k-12m-tail"  # WiSE-FT: mixr2k-12m averaged with its
                DATA="soup:mixr2k-12m=$((100 - W)),mixr2k-12m-tail=$W"; FLAGS="" ;;  # Alpaca tail (W% of it): 1M + 16M read
  mixr2k-12m-r5wise[0-9]*) W=${NAME##*wise} INIT="mixr2k-12m mixr2k-12m-replay5"  # the same with the tail that replayed
                DATA="soup:mixr2k-12m=$((100 - W)),mixr2k-12m-replay5=$W"; FLAGS="" ;;  # passkeys at a twentieth (48.7)
  mixr2k-lolcats) DATA="mix:alpaca-cleaned=0.5,$PASSKEYS=0.5"; MODE=lolcats  # LoLCATs beside: no gate, its own feature map
                FLAGS="--loss-average rows --window-size 128 --stage2-train-lizard" ;;
  mixr2k-long-lolcats) DATA="mix:long-docs@train=0.25,alpaca-cleaned=0.25,$PASSKEYS=0.25,retrieval:length=16384:loss=answers:template=varied:count=300=0.25"
                MODE=lolcats FLAGS="--loss-average rows --window-size 128 --stage2-train-lizard --state-passing 0.9,0,0,1 --row-order contiguous --reset-at-documents" ;;
  books)        DATA="long-docs@train"; S2=4194304; FLAGS="$COMMON" ;;
  books-tbptt)  DATA="long-docs@train"; S2=4194304; FLAGS="$COMMON --state-passing 0.9 --row-order contiguous" ;;
  *) echo "device_runs.sh: unknown NAME=${NAME:-} (see the case list in this file)" >&2; exit 2 ;;
esac
FLAGS="$FLAGS ${EXTRA:-}"
mkdir -p $R
for run in $NAME $INIT; do  # a run trained on an earlier machine, or the runs this one starts from (or averages)
  if [ ! -d $R/$run ] && [ -f .stage/runs/$run/summary.json ]; then
    mkdir -p $R/$run && cp -r .stage/runs/$run/. $R/$run/
  fi
done

save() {
  local pack=/tmp/pack-$NAME
  rm -rf $pack && mkdir -p $pack/runs
  mv $OUT/* $pack/ 2>/dev/null
  [ -d $R/$NAME ] && (cd $R && tar cf - --exclude=checkpoints $NAME) | tar xf - -C $pack/runs
  cp $pack/passkey-*.json $pack/passkey-*.log $OUT/ 2>/dev/null
  tar czf $OUT/$NAME.tgz -C $pack .
  ls -la $OUT
}

tune() {  # lizardlm tune on prompts of seed 1 into $OUT/tune-$NAME/
  python3 -m lizardlm tune --model $R/$NAME --lengths ${LENGTHS:-16384,32768} --device cuda --no-progress \
    --decay-scales ${SCALES:-1,0.5,0.25,0.125} --write-contrasts ${CONTRASTS:-1,2,3} --read-sharpnesses ${SHARPNESSES:-1,2} \
    --trials ${TT:-50} --refine ${REFINE:-0} --out $OUT/tune-$NAME 2>&1 | tail -30
}

drive() {
  python3 benchmarks/passkey_gpu.py --out $OUT --runs $R --name $NAME --mode $MODE --data "$DATA" \
    --stage1-tokens $S1 --stage2-tokens $S2 --seq-len 2048 --flags "$FLAGS" --deadline ${DL:-560} \
    ${TASKS:+--tasks $TASKS} ${DS:+--decay-scale $DS} ${WC:+--write-contrast $WC} ${RS:+--read-sharpness $RS} \
    ${PKL:+--passkey-lengths $PKL} ${PKT:+--passkey-trials $PKT} "$@"
}

case "${1:-}" in
  train) drive; save; triton_cache save ;;
  eval)  drive --eval-only; save; triton_cache save ;;
  zs)    drive --eval-only --tasks piqa,arc_easy,arc_challenge,hellaswag,winogrande; save; triton_cache save ;;
  tune)  tune; triton_cache save ;;
  tuned) tune  # then the evaluation's passkey at the knobs chosen (run NAME@decayS@writeC@readT), in one archive
         read -r DS WC RS < <(python3 -c "import json; b = json.load(open('$OUT/tune-$NAME/knobs.json'))['best']
print('%g %g %g' % (b['decay_scale'], b['write_contrast'], b['read_sharpness']))") || exit 1
         TASKS=passkey drive --eval-only; save; triton_cache save ;;  # (passkey_gpu leaves a knob at 1 unnamed)
  soup)  # DATA=soup:RUN=W,...: those runs averaged into the run NAME (lizardlm soup), then evaluated as a trained run
         [[ $DATA == soup:* ]] || { echo "device_runs.sh: NAME=$NAME is not a soup (DATA=soup:RUN=W,...)" >&2; exit 2; }
         IFS=',' read -ra parts <<< "${DATA#soup:}"; runs=(); weights=()
         for p in "${parts[@]}"; do runs+=("$R/${p%=*}"); weights+=("${p#*=}"); done
         rm -rf $R/$NAME && python3 -m lizardlm soup "${runs[@]}" --weights "$(IFS=,; echo "${weights[*]}")" --out $R/$NAME || exit 1
         drive --eval-only; save; triton_cache save ;;
  *) echo "usage: NAME=<run> bash benchmarks/device_runs.sh train|eval|zs|tune|tuned|soup" >&2; exit 2 ;;
esac
