# p2pdma lab demo, run inside the `switch` guest by `p2pdma lab demo`.
# Every step runs the real tool against the real kernel; the first failure stops the demo
# with a non-zero status, so a step can never be skipped silently.
set -e
step() { printf '\n== %s\n$ %s\n' "$1" "$2"; }

a_bdf=$(p2pdma lab guest nvme sw0 | cut -d' ' -f1)
b_bdf=$(p2pdma lab guest nvme sw1 | cut -d' ' -f1)
a_ns=$(p2pdma lab guest nvme sw0 | cut -d' ' -f3)
b_ns=$(p2pdma lab guest nvme sw1 | cut -d' ' -f3)

step "1. The PCI tree the kernel sees: two NVMe controllers with CMBs behind one switch" "p2pdma topo"
p2pdma topo

step "2. Who can do P2P with whom (rows: provider memory, columns: the device doing DMA)" "p2pdma topo --matrix"
p2pdma topo --matrix

step "3. Why: the kernel's own rule, applied to sw1's CMB and sw0" "p2pdma topo --explain $b_bdf $a_bdf"
p2pdma topo --explain "$b_bdf" "$a_bdf"

step "4. Put 16 MiB of random data on sw0's namespace (ordinary O_DIRECT write)" "dd if=/dev/urandom of=$a_ns bs=1M count=16 oflag=direct"
dd if=/dev/urandom of="$a_ns" bs=1M count=16 oflag=direct 2>&1 | tail -1

step "5. Plan a copy sw0 -> sw1 through device memory (touches nothing)" "p2pdma copy $a_ns $b_ns --length 16M --dry-run"
p2pdma copy "$a_ns" "$b_ns" --length 16M --dry-run

step "6. Copy it P2P: NVMe reads land in a CMB, NVMe writes take them from there; then verify" "p2pdma copy $a_ns $b_ns --length 16M --verify"
p2pdma copy "$a_ns" "$b_ns" --length 16M --verify

step "7. Check independently (busybox md5sum through host memory)" "md5sum of both ranges"
src_sum=$(dd if="$a_ns" bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
dst_sum=$(dd if="$b_ns" bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
echo "source      $src_sum"
echo "destination $dst_sum"
[ "$src_sum" = "$dst_sum" ] || { echo "MISMATCH"; exit 1; }

step "8. Tear-down: unbind sw1 while a process has its device memory mapped" "p2pdma mem test $b_bdf --unbind-after-map"
p2pdma mem test "$b_bdf" --unbind-after-map

printf '\nThe demo ran every step for real in a %s guest.\n' "$(uname -r)"
