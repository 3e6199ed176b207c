# Copy throughput against the devices' own read-only and write-only throughput, in one
# boot, plus P2P against the host bounce buffer. Runs inside the lab guest:
#   p2pdma lab run --topologies docs/bench-copy.toml -t bench-copy --with-fio \
#     --file docs/bench-copy.sh -- sh /root/bench-copy.sh
# Every measurement uses the same shape: 1 MiB requests, 4 in flight, O_DIRECT, io_uring.
# Rounds interleave the four measurements so drift in the host's load hits all of them.
set -u
ROUNDS=${ROUNDS:-5}
LEN_MIB=${LEN_MIB:-192}
LEN=$((LEN_MIB * 1048576))
dev() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
A=$(dev sw0); B=$(dev sw1)
dd if=/dev/urandom of=$A bs=1M count=$LEN_MIB 2>/dev/null

# fio terse v3: field 6 read KiB, 9 read ms; 47 write KiB, 50 write ms.
fio_mib_s() {
  fio --name=$1 --filename=$2 --rw=$1 --bs=1M --iodepth=4 --ioengine=io_uring --direct=1 \
      --size=$LEN --output-format=terse --terse-version=3 2>/dev/null |
    awk -F';' -v rw=$1 '{ if (rw == "read") { kib = $6; ms = $9 } else { kib = $47; ms = $50 }
                          printf "%.1f", kib / 1024 / (ms / 1000) }'
}
# p2pdma's JSON: bytes / seconds, measured from the first submission to the last completion.
copy_mib_s() {
  p2pdma copy $A $B --length $LEN --chunk-size 1M --queue-depth 4 --json "$@" 2>/dev/null |
    sed -n 's/.*"throughput_bytes_per_sec":\([0-9.]*\).*/\1/p' |
    awk '{ printf "%.1f", $1 / 1048576 }'
}

echo "kernel $(uname -r), $(nproc) CPUs, $LEN_MIB MiB per run, $ROUNDS rounds"
i=1
while [ $i -le $ROUNDS ]; do
  echo "round $i read $(fio_mib_s read $A) write $(fio_mib_s write $B) p2p $(copy_mib_s) bounce $(copy_mib_s --bounce always)"
  i=$((i + 1))
done | tee /tmp/rounds.txt

p2pdma copy $A $B --length $LEN --verify --json | sed -n 's/.*"verified":\([a-z]*\).*/last copy verified: \1/p'

# min / median / max per column (busybox sort -n; median of an odd count).
for col in read write p2p bounce; do
  awk -v c=$col '{ for (i = 1; i <= NF; i++) if ($i == c) print $(i + 1) }' /tmp/rounds.txt |
    sort -n | awk -v c=$col '{ v[NR] = $1 } END { printf "%-7s min %7.1f  median %7.1f  max %7.1f MiB/s\n", c, v[1], v[int((NR + 1) / 2)], v[NR] }'
done | tee /tmp/summary.txt
awk '{ m[$1] = $5 } END {
  low = m["read"] < m["write"] ? m["read"] : m["write"]
  printf "p2p / min(read, write) = %.2f (medians; target >= 0.90)\n", m["p2p"] / low
  printf "p2p / bounce           = %.2f (medians)\n", m["p2p"] / m["bounce"]
}' /tmp/summary.txt
