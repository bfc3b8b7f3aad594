#!/usr/bin/env bash
# The reference on a GPU (issue 17), in one command on a lent CUDA machine: every step is guarded (one failing
# leaves the others' output), logged to $OUT/log.txt, and packed into $OUT/results.tar.gz after each step.
#
#   bash benchmarks/gpu_reference.sh                 # on the GPU machine, from the repository root
#   DEVICE=cpu DRY=1 OUT=/tmp/o bash benchmarks/gpu_reference.sh   # the same commands at tiny sizes on a CPU
#
# Steps, most important first (STEPS="..." runs a subset, in this order):
#   env         versions, nvidia-smi; carried wheels (.whl/*.whl) installed into $SITE, put on PYTHONPATH
#   prepare     python -m pipelines.stages.prepare (synthetic, CPU-side); its manifest and train-pixel hashes
#               checked against baselines/default/baseline.json (the CPU reference's data)
#   baseline    python -m pipelines.stages.baseline record --runs 3 --envelope --out baselines/default-cuda/baseline.json
#               with params.yaml + device.type $DEVICE, tracking off: fp32, deterministic, the device's envelope
#               variants (cait/portbugs.py ENVELOPE_VARIANTS: threads, fused_attention, nondeterministic,
#               matmul_transposed, weights_ulp x3 keys), each under the fp32 and the tf32 precision policy
#   candidate   one train run on $DEVICE judged against the CPU baseline (reports/default-cuda-run/verdict.json)
#               and against the new GPU baseline (vs-cuda-baseline/verdict.json there: run-to-run repeatability)
#               (each judged pair also localized from the layer fingerprints where both sides have them)
#   cpu_vs_gpu  the CPU curve of the profile (.gpukit/cpu-run/{curve.csv,train.json}, copied from a CPU chain's
#               reports/default/) judged against the new GPU baseline (reports/cpu-vs-cuda/verdict.json)
#   bench       python benchmarks/bench_trainer.py: trainer / bare timm loop, cait_S24_224 at 224 px, batch 64,
#               bf16 AMP, loader processes 0 and $BENCH_WORKERS (bench/*.json)
#   nightly     the commands of .github/workflows/nightly.yml's acceptance job for device $DEVICE (checkout and the
#               networked install skipped: see the log), then the summary job's, on the job's artifact files
#
# Environment: DEVICE (cuda), DRY (0; 1: tiny sizes), PYTHON (python3), WHEELS (.whl), SITE (/tmp/site),
# OUT (./gpu-out), BUDGET_S (480: steps are cut to end within it), CPU_RUN (.gpukit/cpu-run), BENCH_STEPS (40),
# BENCH_WORKERS (8). The kit copy in .gpukit/ (with overlay/) also lays this branch's changed files over an
# unchanged tree first, so it runs on a checkout that does not have them yet.
#
# Back on a CPU machine, the CPU chain's own run (reports/default, after `make repro`) against the returned GPU
# baseline: STEPS=cpu_vs_gpu DEVICE=cpu PYTHON=python CPU_RUN=reports/default bash benchmarks/gpu_reference.sh
#
# Making the kit for a checkout that is sent to the machine (here, not there):
#   bash benchmarks/gpu_reference.sh --kit /path/to/checkout [CPU_CHAIN_DIR]
# writes CHECKOUT/.gpukit/: this script, overlay/ + overlay.sha256 (the files this branch changed since its
# merge base with main) and cpu-run/ (curve.csv, train.json, fingerprints.npz of CPU_CHAIN_DIR, default
# CHECKOUT/reports/default).
# Then: bash .gpukit/gpu_reference.sh there (carry .whl and .gpukit).
set -u
if [[ ${1:-} == --kit ]]; then
  src=$(cd "$(dirname "$0")/.." && pwd); dest=${2:?--kit needs the checkout}; chain=${3:-$dest/reports/default}
  base=$(git -C "$src" merge-base HEAD main) || exit 2
  rm -rf "$dest/.gpukit" && mkdir -p "$dest/.gpukit/overlay" "$dest/.gpukit/cpu-run" || exit 2
  cp "$src/benchmarks/gpu_reference.sh" "$dest/.gpukit/"
  for path in $(git -C "$src" diff --name-only "$base" HEAD -- cait pipelines benchmarks); do
    [[ $path == benchmarks/gpu_reference.sh ]] && continue
    mkdir -p "$dest/.gpukit/overlay/$(dirname "$path")" && cp "$src/$path" "$dest/.gpukit/overlay/$path"
    echo "$(git -C "$src" show "$base:$path" 2>/dev/null | sha256sum | cut -d' ' -f1) $(sha256sum < "$src/$path" \
      | cut -d' ' -f1) $path" >> "$dest/.gpukit/overlay.sha256"
  done
  cp "$chain/curve.csv" "$chain/train.json" "$dest/.gpukit/cpu-run/" || echo "kit: no CPU chain run in $chain"
  cp "$chain/fingerprints.npz" "$dest/.gpukit/cpu-run/" 2>/dev/null || echo "kit: no layer fingerprints in $chain"
  echo "kit: $dest/.gpukit:"; (cd "$dest/.gpukit" && find . -type f | sort && cat overlay.sha256)
  exit 0
fi
START=$SECONDS
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT" || exit 2
DEVICE=${DEVICE:-cuda}
DRY=${DRY:-0}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-$ROOT/gpu-out}
BUDGET_S=${BUDGET_S:-480}
CPU_RUN=${CPU_RUN:-.gpukit/cpu-run}
BENCH_STEPS=${BENCH_STEPS:-40}
BENCH_WORKERS=${BENCH_WORKERS:-8}
STEPS=${STEPS:-env prepare baseline candidate cpu_vs_gpu bench nightly}
RESERVE=15  # seconds kept for the last packing
export PYTHONUNBUFFERED=1 CAIT_QUIET=${CAIT_QUIET:-}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpukit.XXXXXX)
RES=$WORK/results
mkdir -p "$RES"/{env,params,bench,nightly}
exec > >(tee -a "$OUT/log.txt") 2>&1
export DEVICE
echo "gpu_reference: $(date -u +%FT%TZ) root $ROOT device $DEVICE dry $DRY budget ${BUDGET_S}s steps: $STEPS"

wants() { [[ " $STEPS " == *" $1 "* ]]; }
left() { echo $(( BUDGET_S - (SECONDS - START) - RESERVE )); }

# run NAME CAP CMD...: the command under a timeout of min(CAP, time left); its status and duration in steps.tsv
run() {
  local name=$1 cap=$2; shift 2
  local t; t=$(left); (( t > cap )) && t=$cap
  if (( t < 10 )); then
    echo "=== [$name] SKIPPED: out of time (${t}s left)"; printf '%s\tskipped\t0\n' "$name" >> "$RES/steps.tsv"; return 124
  fi
  echo "=== [$name] $(date -u +%T) (limit ${t}s): $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$t" "$@"
  local rc=$?
  echo "=== [$name] exit $rc in $((SECONDS - t0)) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$RES/steps.tsv"
  return $rc
}

pack() {
  local d
  for d in baselines/default-cuda reports/default-cuda-run reports/cpu-vs-cuda; do
    [[ -d $d ]] && mkdir -p "$RES/$(dirname "$d")" && cp -r "$d" "$RES/$(dirname "$d")/"
  done
  tar -czf "$OUT/results.tar.gz.tmp" -C "$WORK" results && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

# params.yaml with dotted keys set (values read as YAML): mkparams OUT key=value ...
mkparams() {
  "$PY" - "$@" <<'EOF'
import sys, yaml
out, *pairs = sys.argv[1:]
params = yaml.safe_load(open("params.yaml"))
for pair in pairs:
    key, value = pair.split("=", 1)
    *path, last = key.split(".")
    node = params
    for k in path:
        node = node[k]
    node[last] = yaml.safe_load(value)
open(out, "w").write(yaml.safe_dump(params, sort_keys=False))
EOF
}

TINY=()
if [[ $DRY == 1 ]]; then  # tests/conftest.py's TINY profile
  TINY=(data.synthetic.train_per_class=16 data.synthetic.val_per_class=4 data.synthetic.pattern.num_classes=4
        data.synthetic.pattern.image_size=32 model.img_size=32 train.steps=6 train.batch_size=8 train.warmup_steps=2
        compare.min_steps=3 device.threads=1)  # one thread: two spin against each other on a busy 2-core machine
fi

# ---- env ---------------------------------------------------------------------------------------------------
if [[ -f .gpukit/overlay.sha256 ]]; then  # this branch's changed files, laid only over unchanged originals
  while read -r base new path; do
    cur=$(sha256sum "$path" 2>/dev/null | cut -d' ' -f1)
    if [[ $cur == "$new" ]]; then echo "overlay: $path already this kit's"
    elif [[ $cur == "$base" || -z $cur ]]; then cp ".gpukit/overlay/$path" "$path" && echo "overlay: $path laid"
    else echo "overlay: WARNING $path differs from both the kit's base and its version: left as it is"; fi
  done < .gpukit/overlay.sha256
fi
if wants env; then
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    run wheels 180 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    export PATH=$SITE/bin:$PATH
  fi
  {
    date -u +%FT%TZ; uname -a; command -v "$PY"; "$PY" -V
    nvidia-smi 2>&1 | head -20
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  } > "$RES/env/machine.txt" 2>&1
  cat "$RES/env/machine.txt"
  run versions 120 "$PY" - <<'EOF' 2>&1 | tee "$RES/env/versions.txt"
import importlib, platform
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
for name in ("timm", "numpy", "PIL", "pydantic", "yaml", "scipy", "matplotlib", "pyarrow", "mlflow", "sqlalchemy",
             "dvc", "pygit2", "dulwich"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} {module.__file__}")
    except Exception as exc:
        print(f"{name} NOT IMPORTABLE: {exc.__class__.__name__}: {exc}")
from cait.devices import describe_device, resolve_device
import os
print(describe_device(resolve_device(os.environ.get("DEVICE", "cuda"))))
EOF
  pack
fi

P_REF=$RES/params/reference.yaml      # the GPU reference: params.yaml on $DEVICE, tracking off
P_X=$RES/params/vs-cpu-baseline.yaml  # the same, judged against the CPU baseline
mkparams "$P_REF" "device.type=$DEVICE" tracking.enabled=false compare.baseline=baselines/default-cuda/baseline.json \
  localize.baseline_fingerprints=baselines/default-cuda/fingerprints.npz \
  "${TINY[@]}" || echo "params: could not write $P_REF"
mkparams "$P_X" "device.type=$DEVICE" tracking.enabled=false compare.baseline=baselines/default/baseline.json \
  "${TINY[@]}" || echo "params: could not write $P_X"

# ---- prepare -----------------------------------------------------------------------------------------------
if wants prepare; then
  run prepare 120 "$PY" -m pipelines.stages.prepare --params "$P_REF"
  "$PY" - <<'EOF' 2>&1 | tee "$RES/env/data_check.txt"
import json
manifest = json.load(open("data/prepared/manifest.json"))
meta = json.load(open("data/prepared/shards/meta.json"))
cpu = json.load(open("baselines/default/baseline.json"))["provenance"]
same = manifest["hash"] == cpu["data_manifest_hash"] and meta["splits"]["train"]["pixels_sha256"] == cpu["data_pixels_hash"]
print(f"data: manifest {manifest['hash'][:12]} (CPU baseline {cpu['data_manifest_hash'][:12]}), train pixels "
      f"{meta['splits']['train']['pixels_sha256'][:12]} (CPU baseline {cpu['data_pixels_hash'][:12]}): "
      + ("SAME data as the CPU reference" if same else "DIFFERENT data from the CPU reference"))
EOF
  pack
fi

# ---- baseline ----------------------------------------------------------------------------------------------
if wants baseline; then
  mkdir -p baselines/default-cuda
  # fp32 and tf32 policies (default_policies on cuda): 3 seeds + 8 fp32 variants + tf32's reference and 8 variants,
  # ~20 runs of ~20 s on an H200
  run baseline 540 "$PY" -m pipelines.stages.baseline --params "$P_REF" record --runs 3 --envelope --policies fp32,tf32 \
    --out baselines/default-cuda/baseline.json
  [[ -f baselines/default-cuda/baseline.json ]] && "$PY" -m pipelines.stages.baseline --params "$P_REF" show
  pack
fi

# judge NAME PARAMS FOLDER: the chain's reports/default/{curve.csv,train.json} against PARAMS's compare.baseline;
# the run's files, verdict and report land in FOLDER
judge() {
  local name=$1 params=$2 folder=$3
  mkdir -p "$folder"
  cp reports/default/curve.csv reports/default/train.json "$folder/" || return 2
  run "$name" 90 "$PY" -m pipelines.stages.compare --params "$params" --out "$folder/verdict.json"
  [[ -f $folder/verdict.json ]] && run "$name-report" 60 "$PY" -m pipelines.stages.report --params "$params" \
    --verdict "$folder/verdict.json"
  [[ -f $folder/verdict.json ]] && "$PY" -m pipelines.stages.summary "$folder"
  # which layer parts first, from the layer fingerprints of the run and of the baseline (beside its file)
  local prints; prints=$(dirname "$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['compare']['baseline'])" "$params")")/fingerprints.npz
  if [[ -f reports/default/fingerprints.npz && -f $prints ]]; then
    cp reports/default/fingerprints.npz "$folder/"
    run "$name-localize" 60 "$PY" -m pipelines.stages.localize --params "$params" --candidate "$folder/fingerprints.npz" \
      --baseline "$prints" --out "$folder/localize.json"
  else
    echo "=== [$name-localize] SKIPPED: no reports/default/fingerprints.npz or no $prints"
  fi
}

# ---- candidate: the GPU curve against the CPU baseline -----------------------------------------------------
if wants candidate; then
  rm -rf reports/default-cuda-run
  if run candidate-train 120 "$PY" -m pipelines.stages.train --params "$P_X"; then
    judge vs-cpu-baseline "$P_X" reports/default-cuda-run
    if [[ -f baselines/default-cuda/baseline.json ]]; then
      judge vs-cuda-baseline "$P_REF" reports/default-cuda-run/vs-cuda-baseline
    fi
  fi
  pack
fi

# ---- cpu_vs_gpu: the CPU curve against the GPU baseline ----------------------------------------------------
if wants cpu_vs_gpu; then
  if [[ -f $CPU_RUN/curve.csv && -f $CPU_RUN/train.json && -f baselines/default-cuda/baseline.json ]]; then
    mkdir -p reports/default
    if [[ $(realpath "$CPU_RUN") != $(realpath reports/default) ]]; then
      rm -f reports/default/fingerprints.npz  # the GPU run's: never localized as the CPU's
      cp "$CPU_RUN/curve.csv" "$CPU_RUN/train.json" reports/default/
      [[ -f $CPU_RUN/fingerprints.npz ]] && cp "$CPU_RUN/fingerprints.npz" reports/default/
    fi
    judge cpu-vs-cuda "$P_REF" reports/cpu-vs-cuda
  else
    echo "=== [cpu-vs-cuda] SKIPPED: needs $CPU_RUN/{curve.csv,train.json} and baselines/default-cuda/baseline.json"
  fi
  pack
fi

# ---- bench: trainer / bare timm loop, cait_S24_224, 224 px, batch 64, bf16 --------------------------------
if wants bench; then
  if [[ $DRY == 1 ]]; then
    SIZE=(--img-size 32 --batch-size 4 --steps 2 --warmup 1 --rounds 1 --images 16); BENCH_WORKERS=2
  else
    SIZE=(--steps "$BENCH_STEPS" --warmup 5 --rounds 3 --images 512)
  fi
  TRACK=true
  "$PY" -c "import mlflow, sqlalchemy, alembic" 2>/dev/null || { TRACK=false; echo "bench: mlflow not importable: tracking off"; }
  for workers in 0 "$BENCH_WORKERS"; do
    mkparams "$RES/params/bench-w$workers.yaml" "device.type=$DEVICE" model.name=cait_S24_224 model.img_size=null \
      train.batch_size=64 train.amp=bf16 device.deterministic=false "train.num_workers=$workers" "tracking.enabled=$TRACK"
    run "bench-w$workers" 150 "$PY" benchmarks/bench_trainer.py --params "$RES/params/bench-w$workers.yaml" "${SIZE[@]}" \
      --json "$RES/bench/trainer-s24-224-b64-bf16-w$workers.json"
    pack
  done
fi

# ---- nightly: .github/workflows/nightly.yml, job `acceptance` (device $DEVICE, profile default), then `summary`
if wants nightly; then
  # the job's env (the MLFLOW_TRACKING_URI secret unset: empty); DVC_NO_ANALYTICS: no network here to send to
  export PROFILE=default CAIT_EXECUTION_ID=nightly-device-check-1 MLFLOW_TRACKING_URI= DVC_NO_ANALYTICS=1
  echo "nightly: step 'uses: actions/checkout@v4' skipped (the tree is here); upload/download-artifact emulated by copies"
  # 'Set up the environment': the job's command, with pip kept off the network (none here) and on the wheels
  PIP_NO_INDEX=1 PIP_FIND_LINKS=$(cd "$WHEELS" 2>/dev/null && pwd) run nightly-setup 90 make setup PYTHON="${CAIT_PYTHON:-$PY}"
  echo "nightly: whatever 'make setup' did, the steps below run with $PY (+ the carried wheels) as the venv's python"
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" > "$WORK/bin/python"; chmod +x "$WORK/bin/python"
  export PATH=$WORK/bin:$PATH
  DVC=(dvc); command -v dvc > /dev/null || DVC=("$PY" -m dvc)
  # a checkout holds none of the chain's outputs: the earlier steps' (already packed) go
  find "reports/${PROFILE}" -mindepth 1 ! -name .gitignore -exec rm -rf {} + 2>/dev/null
  if [[ ! -d .git ]]; then  # the tree came without git: one commit of it, as a checkout would be
    printf '/.whl/\n/.gpukit/\n/gpu-out/\n' > "$WORK/exclude"
    if command -v git > /dev/null; then
      git init -q && cat "$WORK/exclude" >> .git/info/exclude && git add -A \
        && git -c user.name=gpukit -c user.email=gpukit@localhost commit -qm "device tree" && echo "nightly: git repo made"
    else
      EXCLUDE=$WORK/exclude "$PY" - <<'EOF'
import os
from dulwich import porcelain
repo = porcelain.init(".")
open(".git/info/exclude", "a").write(open(os.environ["EXCLUDE"]).read())
porcelain.add(repo)
porcelain.commit(repo, message=b"device tree", author=b"gpukit <gpukit@localhost>", committer=b"gpukit <gpukit@localhost>")
print("nightly: git repo made with dulwich (no git command)")
EOF
    fi
  fi
  EXTRA=()
  for kv in "${TINY[@]}"; do EXTRA+=(-S "$kv"); done
  # 'Run the chain up to the report'
  run nightly-chain 240 "${DVC[@]}" exp run report \
    -S "profile=${PROFILE}" \
    -S "device.type=${DEVICE}" \
    -S "compare.baseline=baselines/${PROFILE}/baseline.json" \
    -S "tracking.spool_dir=${RUNNER_TOOL_CACHE:-$HOME}/cait-mlflow-spool" "${EXTRA[@]}"
  # 'Gate'
  run nightly-gate 60 python -m pipelines.stages.gate
  # 'Verdict summary' ($GITHUB_STEP_SUMMARY is a file here)
  python -m pipelines.stages.summary "reports/${PROFILE}" --format markdown >> "$RES/nightly/step_summary.md" || true
  # 'Upload report and JUnit XML' -> the summary job's 'download-artifact' into nightly/
  mkdir -p "nightly/nightly-${PROFILE}-${DEVICE}"
  for f in report.html junit.xml verdict.json train.json overlay.png curve.csv; do
    cp "reports/${PROFILE}/$f" "nightly/nightly-${PROFILE}-${DEVICE}/" 2>/dev/null || echo "nightly: warning: no reports/${PROFILE}/$f"
  done
  # job 'summary': 'One table for the night'
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 -m pipelines.stages.summary nightly --format markdown >> "$RES/nightly/step_summary.md"
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 -m pipelines.stages.summary nightly
  cp -r "nightly/nightly-${PROFILE}-${DEVICE}" "$RES/nightly/"
  "${DVC[@]}" exp show --no-pager > "$RES/nightly/exp_show.txt" 2>&1 || true
  pack
fi

# ---- closing summary (also at the end of the tool's output tail) -------------------------------------------
{
  echo "gpu_reference: done in $((SECONDS - START)) s; steps (name, exit status, seconds):"
  cat "$RES/steps.tsv" 2>/dev/null
  cat "$RES/env/data_check.txt" 2>/dev/null
  for v in reports/default-cuda-run/verdict.json reports/default-cuda-run/vs-cuda-baseline/verdict.json \
           reports/cpu-vs-cuda/verdict.json "reports/${PROFILE:-default}/verdict.json"; do
    [[ -f $v ]] && "$PY" - "$v" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: {v.get('status', '?').upper()}; " + "; ".join(str(r) for r in v.get("reasons", []))[:600])
EOF
  done
  for b in "$RES"/bench/*.json; do
    [[ -f $b ]] && "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].rsplit('/',1)[1], \
'ratio %.3f trainer %.1f img/s bare %.1f img/s' % (r['ratio'], r['images_per_s'], r['bare_images_per_s']))" "$b"
  done
} 2>&1 | tee "$RES/summary.txt"
cp "$RES/summary.txt" "$OUT/summary.txt"
pack
echo "gpu_reference: files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
