# build-darkhorse.sh: sourced by the scripts that run darkhorse (demo, benchmarks): installs what
# is missing, configures build/ (RelWithDebInfo) and builds the darkhorse executable, quietly,
# showing the log when a step fails; sets `bin` to the executable's absolute path, lets mpirun
# run as root (containers, CI: Open MPI refuses unless told) and defines ensure_model.
#   . scripts/build-darkhorse.sh NAME     (NAME prefixes the progress line and the log files)
_dh_name=${1:-build}
scripts/setup.sh
mkdir -p build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >"build/$_dh_name-cmake.log" 2>&1 ||
  { cat "build/$_dh_name-cmake.log"; exit 1; }
echo "$_dh_name: building darkhorse (log: build/$_dh_name-build.log)" >&2
cmake --build build -j 2 --target darkhorse >"build/$_dh_name-build.log" 2>&1 ||
  { tail -40 "build/$_dh_name-build.log"; exit 1; }
bin=$(pwd)/build/cli/darkhorse
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# ensure_model PRESET DIR: generate a PRESET checkpoint (random weights) in DIR unless one is there
ensure_model() {
  [ -f "$2/model.safetensors" ] && return 0
  echo "$_dh_name: creating a $1 checkpoint in $2" >&2
  mkdir -p "$(dirname "$2")"
  "$bin" init-model --preset "$1" --out "$2"
}

# ensure_quantized SRC DIR WEIGHTS: a copy of checkpoint SRC stored in WEIGHTS (darkhorse quantize)
# in DIR, made again when SRC is newer. Loading it gives the same bits as --weights WEIGHTS on SRC,
# without quantizing at every load (q4k's conversion of genesis-5b takes about 90 s).
ensure_quantized() {
  [ -f "$2/model.safetensors" ] && [ "$2/model.safetensors" -nt "$1/model.safetensors" ] && return 0
  echo "$_dh_name: storing $1 in $3 in $2 (once)" >&2
  "$bin" quantize --model "$1" --out "$2" --weights "$3"
}
