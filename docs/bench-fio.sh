# New measurements: `p2pdma bench` (see BENCHMARKS.md, "bench"); this script stays because
# the figures of the Copy section were made with it.
# fio against p2pdma in one lab boot: the devices' own read and write throughput as fio
# measures it, then p2pdma's bounce and P2P copies of the same size and request shape
# (1 MiB, 4 in flight, O_DIRECT, io_uring). Run on the host:
#   p2pdma lab run --topologies docs/bench-copy.toml -t bench-copy --with-fio \
#     --file docs/bench-fio.sh -- sh /root/bench-fio.sh
set -eu
ROUNDS=${ROUNDS:-3}
LEN_MIB=${LEN_MIB:-96}
dev() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
A=$(dev sw0); B=$(dev sw1)
dd if=/dev/urandom of=$A bs=1M count=$LEN_MIB oflag=direct 2>/dev/null
fio_bw() {
  fio --name=$1 --filename=$2 --rw=$1 --bs=1M --iodepth=4 --ioengine=io_uring --direct=1 \
      --size=${LEN_MIB}M --output-format=terse --terse-version=3 |
    awk -F';' -v rw=$1 '{ kib = (rw == "read") ? $7 : $48; printf "%.1f", kib / 1024 }'
}
copy_bw() {
  p2pdma copy $A $B --length ${LEN_MIB}M --chunk-size 1M --queue-depth 4 --json "$@" |
    sed -n 's/.*"throughput_bytes_per_sec":\([0-9.]*\).*/\1/p' | awk '{ printf "%.1f", $1 / 1048576 }'
}
echo "MiB/s, $LEN_MIB MiB per run: fio-read (sw0) fio-write (sw1) p2pdma-bounce p2pdma-p2p"
i=1
while [ $i -le $ROUNDS ]; do
  echo "round $i fio-read $(fio_bw read $A) fio-write $(fio_bw write $B) bounce $(copy_bw --bounce always) p2p $(copy_bw)"
  i=$((i + 1))
done
