#!/bin/busybox sh
# p2pdma lab guest init.
# Serial ports: ttyS0 kernel console (the host keeps it as serial.log), ttyS1 the command's
# stdout, ttyS2 its stderr, ttyS3 the control channel to the host (@@ lines).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mkdir -p /proc /sys /dev /tmp /run /mnt /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for tty in ttyS1 ttyS2 ttyS3; do stty -F /dev/$tty raw -echo 2>/dev/null; done
exec 3>/dev/ttyS3
. /lab/env

# A distribution kernel (`--flavour stock`) has NVMe, ext4, vfio-pci and the lab's RAM
# provider as modules: /lab/modules lists them in dependency order, with parameters.
# The kernel applies `module.param=value` from its command line only to built-in code;
# for a loadable module modprobe does it, and insmod does not, so do it here: the command
# line's settings come last and win (`nvme.sgl_threshold=0`, a topology's
# `nvme_core.multipath=Y`), as they would on a built kernel.
if [ -s /lab/modules ]; then
    while read -r module parameters; do
        name=${module##*/}
        name=${name%.ko}
        for word in $(cat /proc/cmdline); do
            case "$word" in
                "$name".*=*) parameters="$parameters ${word#"$name".}" ;;
            esac
        done
        insmod "$module" $parameters || echo "@@warning insmod $module $parameters failed" >&3
    done < /lab/modules
fi

# nvme-pci probes controllers asynchronously: wait until every namespace the topology
# declares has its block device, so commands never race the driver.
waited=0
while [ "$(ls -d /sys/block/nvme* 2>/dev/null | wc -l)" -lt "$P2PDMA_LAB_NAMESPACES" ]; do
    if [ "$waited" -ge 300 ]; then
        echo "@@warning only $(ls -d /sys/block/nvme* 2>/dev/null | wc -l) of $P2PDMA_LAB_NAMESPACES NVMe namespaces appeared within 30 s" >&3
        break
    fi
    sleep 0.1
    waited=$((waited + 1))
done
echo "@@booted $(cut -d' ' -f1 /proc/uptime)" >&3

cd /root
# The command writes into pipes, not the serial ttys, so it behaves as under CI or a
# redirect (no progress bars, no terminal escapes) and stdout and stderr stay apart.
mkfifo /run/stdout /run/stderr
cat /run/stdout >/dev/ttyS1 &
out_pid=$!
cat /run/stderr >/dev/ttyS2 &
err_pid=$!
/bin/sh /lab/cmd.sh </dev/null >/run/stdout 2>/run/stderr
status=$?
wait $out_pid $err_pid
echo "@@status $status" >&3
while read -r path; do
    [ -n "$path" ] || continue
    if [ -e "$path" ]; then
        echo "@@fetch-begin $path" >&3
        tar -C / -cf - "${path#/}" | base64 >&3
        echo "@@fetch-end" >&3
    else
        echo "@@fetch-missing $path" >&3
    fi
done < /lab/fetch
echo "@@done" >&3
sync
poweroff -f
