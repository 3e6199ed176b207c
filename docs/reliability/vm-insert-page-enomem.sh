# Guest script of the vm_insert_page() ENOMEM experiment (RELIABILITY.md, "Known kernel
# bugs"). Needs a lab kernel with CONFIG_FAULT_INJECTION, CONFIG_FAIL_PAGE_ALLOC and
# CONFIG_FAULT_INJECTION_DEBUG_FS, the suite's guest helpers as /root/lib.sh and
# map_fail.c built static as /root/map_fail.
. /root/lib.sh
P=$(bdf chk-prov)
echo "POOL_START $(available $P)"
F=/sys/kernel/debug/fail_page_alloc
# Fail page allocations only in tasks that ask for it (/proc/self/make-it-fail), sleeping
# allocations included; print the stack of each injected failure.
echo 100 > $F/probability; echo Y > $F/task-filter
echo N > $F/ignore-gfp-wait; echo N > $F/ignore-gfp-highmem; echo 0 > $F/min-order; echo 2 > $F/verbose
# space N lets the first N pages be allocated before the one failure (times 1).
for space in 0 1 2 3; do
  echo 1 > $F/times; echo $space > $F/space
  /root/map_fail /sys/bus/pci/devices/$P/p2pmem/allocate 12582912
  echo "POOL_AFTER_space$space $(available $P)"
done
dmesg | grep -A12 "FAULT_INJECTION: forcing a failure" | grep -E "p2pmem_alloc_mmap|vm_insert_page" | cut -c16- | sort | uniq -c
timed_unbind UNBIND $P
rebind chk-prov $P
echo "POOL_END $(available $P)"
