# p2pdma lab demo, run inside the `fast` guest by `p2pdma lab demo`.
# Every step runs the real tool against the real kernel, and every figure it prints is
# measured in this run; the first failure stops the demo with a non-zero status, so a step
# can never be skipped silently.
set -e
step() { printf '\n== %s\n$ %s\n' "$1" "$2"; }

a_bdf=$(p2pdma lab guest nvme fast0 | cut -d' ' -f1)
b_bdf=$(p2pdma lab guest nvme fast1 | cut -d' ' -f1)
a_ns=$(p2pdma lab guest nvme fast0 | cut -d' ' -f3)
b_ns=$(p2pdma lab guest nvme fast1 | cut -d' ' -f3)
ram=""
for d in /sys/bus/pci/drivers/p2pdma_ram/0000:*; do [ -e "$d" ] && ram=$(basename "$d"); done
[ -n "$ram" ] || { echo "no RAM provider bound to p2pdma_ram: is this the fast topology on a lab kernel?"; exit 1; }

step "1. The PCI tree the kernel sees: two NVMe controllers (each with a 16 MiB CMB) and a 256 MiB RAM provider behind one switch" "p2pdma topo"
p2pdma topo

step "2. Who can do P2P with whom (rows: provider memory, columns: the device doing DMA)" "p2pdma topo --matrix"
p2pdma topo --matrix

step "3. Why: the kernel's own rule, applied to the RAM provider and fast0" "p2pdma topo --explain $ram $a_bdf"
p2pdma topo --explain "$ram" "$a_bdf"
echo "(The slowest link is what that link would carry on hardware; QEMU does not pace emulated links.)"

step "4. Put 64 MiB of random data on fast0's namespace (ordinary O_DIRECT write)" "dd if=/dev/urandom of=$a_ns bs=1M count=64 oflag=direct"
dd if=/dev/urandom of="$a_ns" bs=1M count=64 oflag=direct 2>&1 | tail -1

step "5. Speed: fast0 -> fast1 through the RAM provider's p2pmem (p2p) and through host memory (host), run by run, with fio doing the same beside it" \
    "p2pdma bench --workload copy --src $a_ns --dst $b_ns --provider $ram --bs 1M --iodepth 4 --size 64M --repeat 3 --fio"
p2pdma bench --workload copy --src "$a_ns" --dst "$b_ns" --provider "$ram" \
    --bs 1M --iodepth 4 --size 64M --repeat 3 --fio
echo "(p2p rows: the NVMe controllers DMA into and out of the provider's BAR; no byte crosses host RAM."
echo " 'read alone' and 'write alone' are each device's own ceiling in this guest; QEMU under TCG sets them.)"

step "6. Copy it P2P through the RAM provider, then verify (xxh3-128 of both ranges)" "p2pdma copy $a_ns $b_ns --length 64M --provider $ram --verify"
p2pdma copy "$a_ns" "$b_ns" --length 64M --provider "$ram" --verify

step "7. Check independently (busybox md5sum through host memory)" "md5sum of both ranges"
src_sum=$(dd if="$a_ns" bs=1M count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
dst_sum=$(dd if="$b_ns" bs=1M count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
echo "source      $src_sum"
echo "destination $dst_sum"
[ "$src_sum" = "$dst_sum" ] || { echo "MISMATCH"; exit 1; }

step "8. The same copy through an NVMe CMB (fast1's own), which is what real hardware offers" "p2pdma copy $a_ns $b_ns --length 16M --provider $b_bdf --verify"
p2pdma copy "$a_ns" "$b_ns" --length 16M --provider "$b_bdf" --verify
echo "(Slow here, and only here: QEMU emulates a CMB as MMIO served 8 bytes per callback, so another"
echo " device's DMA into it crawls. On hardware a CMB moves data at the link's speed; the RAM provider"
echo " above is the lab's stand-in for that.)"

step "9. Tear-down: unbind the RAM provider while a process has its memory mapped" "p2pdma mem test $ram --unbind-after-map"
p2pdma mem test "$ram" --unbind-after-map

printf '\nThe demo ran every step for real in a %s guest.\n' "$(uname -r)"
