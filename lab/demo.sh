# p2pdma lab demo, run inside the `switch` guest by `p2pdma lab demo`.
# Every step runs the real tool against the real kernel; the first failure stops the demo.
set -e
step() { printf '\n== %s\n' "$*"; }

step "The guest kernel"
uname -r
grep -o 'CONFIG_PCI_P2PDMA' /lab/env >/dev/null 2>&1 || true
echo "p2pmem providers (PCI functions exporting device memory for P2P):"
for d in /sys/bus/pci/devices/*/p2pmem; do
    bdf=$(basename "$(dirname "$d")")
    printf '  %s  size %s bytes, available %s, published %s\n' "$bdf" "$(cat "$d/size")" "$(cat "$d/available")" "$(cat "$d/published")"
done

step "NVMe controllers by serial (kernel names can change; serials do not)"
for serial in sw0 sw1; do
    printf '  %s: ' "$serial"; p2pdma lab guest nvme "$serial"
done
