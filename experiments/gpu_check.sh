#!/bin/bash
# The benchmarks on a lent GPU machine that has JAX but none of Reverie's other dependencies and no network.
#
#   bash experiments/gpu_check.sh prepare   # here, with pip: wheels for Python 3.12 into .whl/ (about 45 MB)
#   bash experiments/gpu_check.sh run       # there, from the repository root, with .whl carried along
#
# `run` writes each benchmark's output to $OUT (or ./gpu-check); every row is printed as it is measured,
# so a run cut short keeps what it measured. Order: the backbones (issue 3's GPU comparison), then the
# whole agent step, then the compiled loop with many environments. Seen on an H100 (2026-11-27): JAX 0.11.2
# and Flax 0.12.10 there (Flax 0.12.8 does not import on that JAX), no EGL library (so MUJOCO_GL=disable),
# and about 8 s per compilation of a backbone benchmark row.
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
  timeout -k 15 "$seconds" "$@" > "$out/$name.md" 2>&1; echo "== $name: exit $?"; grep -a "measured\|^|" "$out/$name.md" | tail -40
}
step 150 backbones-t256 python3 -m experiments.benchmark_worldmodel --lengths 256 --scans parallel --frames 16384
step 120 backbones-t1024 python3 -m experiments.benchmark_worldmodel --lengths 1024 --scans parallel --frames 16384 --kinds ssm gru
step 120 agent-step python3 -m experiments.benchmark_parallel --devices 1 --dtypes float32 bfloat16 --starts --patches --posteriors --batch 64
step 120 compiled-loop python3 -m experiments.train --task mjx/cartpole-swingup --run /tmp/gpu-loop --env.envs 1024 \
  --steps 2000000 --prefill 131072 --log-every 65536 --eval-every 0 --save-every 100000000
cp /tmp/gpu-loop/metrics.jsonl "$out/compiled-loop-metrics.jsonl" 2>/dev/null
