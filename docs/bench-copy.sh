# New measurements: `p2pdma bench` (see BENCHMARKS.md, "bench"); this script stays because
# the figures of the Copy section were made with it.
# Copy throughput against the devices' own read-only and write-only throughput, in one
# boot, plus P2P against the host bounce buffer. Runs inside the lab guest:
#   p2pdma lab run --topologies docs/bench-copy.toml -t bench-copy \
#     --file docs/bench-copy.sh -- sh /root/bench-copy.sh
#
# Everything is measured with p2pdma's own io_uring engine and the same shape (1 MiB
# chunks, 4 in flight, O_DIRECT): the devices' raw throughput is `--only read` /
# `--only write` through host memory (fio needs SysV shared memory, which the lab
# kernel lacks). Rounds interleave the measurements so drift in the host's load hits
# all of them alike.
set -u
ROUNDS=${ROUNDS:-5}
LEN_MIB=${LEN_MIB:-192}
LEN=$((LEN_MIB * 1048576))
dev() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
A=$(dev sw0); B=$(dev sw1)
dd if=/dev/urandom of=$A bs=1M count=$LEN_MIB 2>/dev/null

# MiB/s from p2pdma's JSON: bytes / seconds, first submission to last completion.
run() {
  p2pdma copy $A $B --length $LEN --chunk-size 1M --queue-depth 4 --json "$@" 2>/dev/null |
    sed -n 's/.*"throughput_bytes_per_sec":\([0-9.]*\).*/\1/p' |
    awk '{ printf "%.1f", $1 / 1048576 }'
}

echo "kernel $(uname -r), $(nproc) CPUs, $LEN_MIB MiB per run, $ROUNDS rounds, sw0 -> sw1"
i=1
while [ $i -le $ROUNDS ]; do
  echo "round $i" \
    "read $(run --bounce always --only read)" \
    "write $(run --bounce always --only write)" \
    "bounce $(run --bounce always)" \
    "p2p $(run)" \
    "p2p-read $(run --only read)" \
    "p2p-write $(run --only write)"
  i=$((i + 1))
done | tee /tmp/rounds.txt

dd if=/dev/urandom of=$A bs=1M count=$LEN_MIB 2>/dev/null
p2pdma copy $A $B --length $LEN --verify --json 2>/dev/null |
  sed -n 's/.*"mode":"\([a-z0-9]*\)".*"verified":\([a-z]*\).*/last copy: mode \1, verified \2/p'

# min / median / max per column (median of an odd count).
for col in read write bounce p2p p2p-read p2p-write; do
  awk -v c=$col '{ for (i = 1; i <= NF; i++) if ($i == c) print $(i + 1) }' /tmp/rounds.txt |
    sort -n | awk -v c=$col '{ v[NR] = $1 } END {
      printf "%-9s min %7.1f  median %7.1f  max %7.1f MiB/s\n", c, v[1], v[int((NR + 1) / 2)], v[NR] }'
done | tee /tmp/summary.txt
awk '{ m[$1] = $5 } END {
  low = m["read"] < m["write"] ? m["read"] : m["write"]
  printf "p2p    / min(read, write) = %.2f (medians; target >= 0.90)\n", m["p2p"] / low
  printf "bounce / min(read, write) = %.2f (medians)\n", m["bounce"] / low
  printf "p2p    / bounce           = %.2f (medians)\n", m["p2p"] / m["bounce"]
  # If the two halves cannot overlap (QEMU runs both controllers in one thread), a copy
  # can at best take the sum of the times of the halves: 1 / (1/R + 1/W).
  printf "bounce / serial(read, write)         = %.2f (medians)\n", m["bounce"] * (1 / m["read"] + 1 / m["write"])
  printf "p2p    / serial(p2p-read, p2p-write) = %.2f (medians)\n", m["p2p"] * (1 / m["p2p-read"] + 1 / m["p2p-write"])
}' /tmp/summary.txt
