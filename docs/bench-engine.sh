#!/bin/bash
# The copy engine against fio on the host (real kernel, real files), in one run:
#   P2PDMA=target/x86_64-unknown-linux-gnu/release/p2pdma DIR=/work/bench-engine \
#     bash docs/bench-engine.sh
#
# For each shape (bs x iodepth) and round, in alternating order:
# - fio's copy-equivalent: a read job on SRC and a write job on DST at once, same bs,
#   iodepth, ioengine=io_uring, direct=1, same size. Wall = the longer job's runtime;
#   CPU = the jobs' usr+sys (fio's own getrusage figures, % of each job's runtime).
# - `p2pdma copy SRC DST --bounce always --json`: wall = the engine's `seconds` (first
#   submission to last completion), CPU = its `cpu_seconds` (user+sys of the process
#   over the same window, io_uring workers included).
# - with VERIFY=1 (default): fio reading both ranges at once (two read jobs) against the
#   `verify_seconds` of `p2pdma copy --verify` (bs 1M, iodepth 4 only).
# Prints every round, then min / median / max of the ratios p2pdma / fio per shape.
# Nothing is timed against a threshold; the files are removed at the end (KEEP=1 keeps them).
set -eu
P2PDMA=${P2PDMA:-p2pdma}
DIR=${DIR:-/work/bench-engine}
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-5}
SHAPES=${SHAPES:-"64k:4 64k:16 1M:4 1M:16 4M:4 4M:16"}
VERIFY=${VERIFY:-1}
LEN=$((SIZE_MIB * 1048576))
SRC=$DIR/src
DST=$DIR/dst
OUT=$(mktemp -d)
mkdir -p "$DIR"
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" -ne "$LEN" ]; then
  dd if=/dev/urandom of="$SRC" bs=1M count="$SIZE_MIB" oflag=direct status=none
fi
# A fully written destination of the same size: both tools overwrite allocated blocks.
if [ ! -f "$DST" ] || [ "$(stat -c %s "$DST")" -ne "$LEN" ]; then
  dd if=/dev/zero of="$DST" bs=1M count="$SIZE_MIB" oflag=direct status=none
fi

fio_job() { # name file rw bs depth
  echo "--name=$1 --filename=$2 --rw=$3 --bs=$4 --iodepth=$5 --ioengine=io_uring --direct=1 --size=$LEN"
}
# "wall_s cpu_s" from fio's JSON: longest job runtime, sum of the jobs' CPU seconds.
fio_figures() {
  jq -r '[.jobs[] | {rt: ((.read.runtime + .write.runtime) / 1000),
                     cpu: ((.usr_cpu + .sys_cpu) / 100 * (.read.runtime + .write.runtime) / 1000)}]
         | "\(map(.rt) | max) \(map(.cpu) | add)"' "$1"
}
fio_copy() { # bs depth
  # shellcheck disable=SC2046
  fio $(fio_job r "$SRC" read "$1" "$2") $(fio_job w "$DST" write "$1" "$2") \
    --output-format=json --output="$OUT/fio.json" >/dev/null 2>&1
  fio_figures "$OUT/fio.json"
}
fio_read_both() { # bs depth
  # shellcheck disable=SC2046
  fio $(fio_job a "$SRC" read "$1" "$2") $(fio_job b "$DST" read "$1" "$2") \
    --output-format=json --output="$OUT/fio.json" >/dev/null 2>&1
  fio_figures "$OUT/fio.json"
}
p2pdma_copy() { # bs depth [--verify]
  "$P2PDMA" copy "$SRC" "$DST" --bounce always --length "$LEN" --chunk-size "$1" \
    --queue-depth "$2" --json ${3:-} >"$OUT/p.json"
  jq -r '"\(.seconds) \(.cpu_seconds) \(.verify_seconds // 0)"' "$OUT/p.json"
}

echo "$(date -u '+%F %H:%M UTC'), kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SIZE_MIB MiB per run, $ROUNDS rounds, files in $DIR ($(df --output=fstype "$DIR" | tail -1))"
: >"$OUT/rounds"
for r in $(seq "$ROUNDS"); do
  for shape in $SHAPES; do
    bs=${shape%:*}
    qd=${shape#*:}
    if [ $((r % 2)) -eq 1 ]; then
      f=$(fio_copy "$bs" "$qd")
      p=$(p2pdma_copy "$bs" "$qd")
    else
      p=$(p2pdma_copy "$bs" "$qd")
      f=$(fio_copy "$bs" "$qd")
    fi
    set -- $f $p
    printf 'round %s %-7s fio %.3f s %.3f cpu-s  p2pdma %.3f s %.3f cpu-s  ratio-wall %.3f ratio-cpu %.3f\n' \
      "$r" "$shape" "$1" "$2" "$3" "$4" "$(echo "$3 / $1" | bc -l)" "$(echo "$4 / $2" | bc -l)" |
      tee -a "$OUT/rounds"
  done
  if [ "$VERIFY" = 1 ]; then
    if [ $((r % 2)) -eq 1 ]; then
      f=$(fio_read_both 1M 4)
      p=$(p2pdma_copy 1M 4 --verify)
    else
      p=$(p2pdma_copy 1M 4 --verify)
      f=$(fio_read_both 1M 4)
    fi
    set -- $f $p
    printf 'round %s %-7s fio-read-both %.3f s  p2pdma-verify %.3f s  ratio-verify %.3f\n' \
      "$r" verify "$1" "$5" "$(echo "$5 / $1" | bc -l)" | tee -a "$OUT/rounds"
  fi
done

echo "ratios p2pdma / fio: min median max (targets: wall <= 1.0, cpu <= 0.5, verify <= 1.2)"
for shape in $SHAPES verify; do
  for col in ratio-wall ratio-cpu ratio-verify; do
    v=$(awk -v s="$shape" -v c="$col" '$3 == s { for (i = 4; i < NF; i++) if ($i == c) print $(i + 1) }' \
      "$OUT/rounds" | sort -n)
    [ -n "$v" ] || continue
    echo "$v" | awk -v s="$shape" -v c="$col" '{ v[NR] = $1 } END {
      printf "%-7s %-12s %.2f %.2f %.2f\n", s, c, v[1], v[int((NR + 1) / 2)], v[NR] }'
  done
done
rm -rf "$OUT"
[ "${KEEP:-0}" = 1 ] || rm -f "$SRC" "$DST"
