#!/bin/bash
# The benchmarks on a lent GPU machine that has JAX but none of Reverie's other dependencies and no network.
#
#   bash experiments/gpu_check.sh prepare            # here, with pip: wheels for Python 3.12 into .whl/ (about 41 MB)
#   bash experiments/gpu_check.sh run [STEP...]      # there, from the repository root, with .whl carried along
#
# Steps: backbones (issue 3's GPU comparison, about 125 s), agent-step (the whole agent step in float32 and
# bfloat16, about 40 s of compiling a row), loop-4096 (the compiled loop's throughput with 4,096 MJX
# environments), loop-learn (1,024 environments with evaluations: the return against wall time). With no
# STEP, `run` does the ones not measured yet: agent-step loop-4096 loop-learn (about 9 minutes).
# `run` writes each step's output to $OUT (or ./gpu-check); every row is printed as it is measured, so a
# step cut short keeps what it measured. Seen on an H100 (2026-11-27) and an H200 (2026-11-28): JAX 0.11.2
# and Flax 0.12.10 there (Flax 0.12.8 does not import on that JAX), no EGL library (so MUJOCO_GL=disable),
# about 8 s per compilation of a backbone row, 40 s per agent-step row and 49 s for the compiled loop.
# The H200's results are in docs/gpu/2026-11-28-h200/.
set -u
mode=${1:-run}

if [ "$mode" = prepare ]; then
  set -e
  mkdir -p .whl/py
  grep -qx "/.whl/" "$(git rev-parse --git-path info/exclude)" || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
  platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  for p in mujoco mujoco-mjx tyro docstring-parser typeguard gymnasium farama-notifications tensorboardX dm-env dm-tree glfw pyopengl trimesh; do
    version=$(python -m pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
      -d .whl "$p${version:+==$version}"
  done
  # dm-control's wheel is 56 MB, mostly the locomotion and dog assets that the suite's cartpole never reads:
  # carry its pure-Python package without them (the device's upload limit is 64 MiB).
  site=$(python -c "import dm_control, os; print(os.path.dirname(os.path.dirname(dm_control.__file__)))")
  rm -rf .whl/py/dm_control && cp -r "$site/dm_control" .whl/py/
  (cd .whl/py/dm_control && rm -rf locomotion suite/dog_assets mujoco/testing suite/all_domains.png blender manipulation &&
   find . -name __pycache__ -prune -exec rm -rf {} +)
  du -sh .whl
  exit 0
fi

out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MUJOCO_GL=disable
rm -rf /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/py:$PWD
nvidia-smi -L
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
step() {  # step SECONDS NAME COMMAND...: one benchmark, its output (rows included) to $out/NAME.md
  local seconds=$1 name=$2; shift 2
  echo "== $name ($(date +%T), at most $seconds s)"
  timeout -k 15 "$seconds" "$@" > "$out/$name.md" 2>&1; echo "== $name: exit $?"; grep -a "measured\|^|\|eval at" "$out/$name.md" | tail -40
}
steps=${*:2}
steps=${steps:-agent-step loop-4096 loop-learn}
for name in $steps; do
  case $name in
    backbones)
      step 150 backbones-t256 python3 -m experiments.benchmark_worldmodel --lengths 256 --scans parallel --frames 16384
      step 120 backbones-t1024 python3 -m experiments.benchmark_worldmodel --lengths 1024 --scans parallel --frames 16384 \
        --kinds ssm gru ;;
    agent-step)
      step 120 agent-step python3 -m experiments.benchmark_parallel --devices --dtypes float32 bfloat16 --starts --patches \
        --posteriors --batch 64 ;;
    loop-4096)
      step 120 loop-4096 python3 -m experiments.train --task mjx/cartpole-swingup --run /tmp/loop-4096 --env.envs 4096 \
        --steps 2000000 --prefill 524288 --log-every 65536 --eval-every 0 --save-every 100000000
      cp /tmp/loop-4096/metrics.jsonl "$out/loop-4096.jsonl" 2>/dev/null ;;
    loop-learn)
      step 300 loop-learn python3 -m experiments.train --task mjx/cartpole-swingup --run /tmp/loop-learn --env.envs 1024 \
        --steps 4000000 --prefill 131072 --log-every 65536 --eval-every 262144 --save-every 100000000
      cp /tmp/loop-learn/metrics.jsonl "$out/loop-learn.jsonl" 2>/dev/null ;;
    *) echo "unknown step $name (backbones, agent-step, loop-4096, loop-learn)"; exit 2 ;;
  esac
done
