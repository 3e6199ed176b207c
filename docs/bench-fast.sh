# fio against p2pdma copies in topology `fast`, one boot: fio read (fast0) and write (fast1),
# then copies of the same size and request shape through the RAM provider, through fast1's
# CMB (the automatic choice), through host memory (--bounce always), and through RAM with
# --verify. Run on the host:
#   p2pdma lab run -t fast --with-fio --file docs/bench-fast.sh -- sh /root/bench-fast.sh
set -eu
LEN_MIB=${LEN_MIB:-64}
dev() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
ram() { for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1110 ] && basename $d; done; }
A=$(dev fast0); B=$(dev fast1); R=$(ram)
# Both ranges written once first: the namespaces are sparse files on the host, and the
# first write to a block allocates it there.
dd if=/dev/urandom of=$A bs=1M count=$LEN_MIB oflag=direct 2>/dev/null
dd if=/dev/urandom of=$B bs=1M count=$LEN_MIB oflag=direct 2>/dev/null
fio_bw() {
  fio --name=$1 --filename=$2 --rw=$1 --bs=1M --iodepth=4 --ioengine=io_uring --direct=1 \
      --size=${LEN_MIB}M --output-format=terse --terse-version=3 |
    awk -F';' -v rw=$1 '{ kib = (rw == "read") ? $7 : $48; printf "%.1f", kib / 1024 }'
}
copy_bw() {
  p2pdma copy $A $B --length ${LEN_MIB}M --chunk-size 1M --queue-depth 4 --json "$@" > /tmp/c.json
  sed -n 's/.*"provider":"\{0,1\}\([^",]*\).*/provider=\1 /p' /tmp/c.json | tr -d '\n'
  sed -n 's/.*"throughput_bytes_per_sec":\([0-9.]*\).*/\1/p' /tmp/c.json | awk '{ printf "%.1f MiB/s", $1 / 1048576 }'
}
echo "MiB/s, $LEN_MIB MiB per run, 1 MiB requests, 4 in flight, O_DIRECT io_uring"
i=1
while [ $i -le ${ROUNDS:-3} ]; do
  echo "round $i fio-read $(fio_bw read $A) fio-write $(fio_bw write $B) | ram $(copy_bw --provider $R) | cmb $(copy_bw) | bounce $(copy_bw --bounce always) | ram+verify $(copy_bw --provider $R --verify)"
  i=$((i + 1))
done
