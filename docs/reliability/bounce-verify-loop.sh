# The copy::mixed steps in a loop, to catch a rare stall of a bounce copy with --verify
# (seen on Linux 7.2 under load). Guest script for the `mixed` topology; run from the host as
#
#   P2PDMA_LAB_RELEASE=7.2 p2pdma lab run --quiet -t mixed --timeout 1800 \
#     --file lib.sh:/root/lib.sh --file bounce-verify-loop.sh:/root/loop.sh \
#     -- "N=200 sh /root/loop.sh"
#
# where lib.sh holds the lab tests' `ns`, `md5`, `fill` and `one_line` helpers
# (crates/p2pdma-cli/tests/lab/harness.rs, GUEST_LIB). Prints one ITER line per round
# (round, guest uptime, the three exit statuses, the guest's md5 of both ranges), the error
# of any copy that failed, and, for a p2pdma process alive for 15 s or more, its command
# line, its io_uring's fdinfo (SQ/CQ heads and tails), its kernel stack, its threads, the
# block layer's in-flight counts and I/O statistics.
. /root/lib.sh
S=$(ns root0); D=$(ns sw0); S2=$(ns sw1); D2=$(ns nocmb0)
IO_TIMEOUT=${IO_TIMEOUT:-30}

watch() {
  while :; do
    sleep 5
    for d in /proc/[0-9]*; do
      [ "$(cat $d/comm 2>/dev/null)" = p2pdma ] || continue
      pid=${d#/proc/}
      n=$(cat /tmp/seen.$pid 2>/dev/null || echo 0)
      echo $((n + 1)) > /tmp/seen.$pid
      [ "$n" -eq 2 ] || continue
      echo "STUCK pid $pid: $(tr '\0' ' ' < $d/cmdline)"
      for fd in $d/fd/*; do
        case "$(readlink $fd)" in *io_uring*) cat $d/fdinfo/${fd##*/};; esac
      done
      cat $d/stack 2>/dev/null
      echo "THREADS $(ls $d/task | tr '\n' ' ')"
      for b in /sys/block/nvme*; do
        echo "BLOCK $b inflight $(cat $b/inflight) stat $(cat $b/stat)"
      done
    done
  done
}
watch &
watcher=$!

i=0
while [ $i -lt ${N:-60} ]; do
  fill $S 0 4194304
  p2pdma copy $S $D --length 4M --json > /tmp/never.json 2>/tmp/never.err; never=$?
  p2pdma copy $S $D --length 4M --bounce auto --verify --json --io-timeout $IO_TIMEOUT \
    > /tmp/auto.json 2>/tmp/auto.err; auto=$?
  a=$(md5 $S 0 4194304); b=$(md5 $D 0 4194304)
  p2pdma copy $S2 $D2 --length 4M --bounce auto --verify --json --io-timeout $IO_TIMEOUT \
    > /tmp/auto2.json 2>/tmp/auto2.err; auto2=$?
  echo "ITER $i $(cut -d' ' -f1 /proc/uptime) $never $auto $auto2 $a $b"
  [ "$a" = "$b" ] || echo "MISMATCH $i"
  [ $auto = 0 ] || echo "AUTOERR $i $(one_line /tmp/auto.err)"
  [ $auto2 = 0 ] || echo "AUTO2ERR $i $(one_line /tmp/auto2.err)"
  i=$((i + 1))
done
kill $watcher
echo DONE
