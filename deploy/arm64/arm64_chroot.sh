#!/bin/sh
# Run COMMAND inside an arm64 root filesystem, as deploy/README.md's device steps would run on a Pi.
# Usage: sh deploy/arm64/arm64_chroot.sh ROOT CPUINFO COMMAND [ARG...]   (as root; called by chroot.py)
#
# The mounts live in a private mount namespace of their own, so they vanish when COMMAND ends, even
# when it is killed: nothing is left mounted on the host. CPUINFO is bind-mounted over the chroot's
# /proc/cpuinfo because LiteRT's CPU detection would otherwise read the host's x86 one and crash.
set -eu
if [ "$#" -lt 3 ]; then
    echo "arm64_chroot.sh: usage: arm64_chroot.sh ROOT CPUINFO COMMAND [ARG...]" >&2
    exit 2
fi
exec unshare --mount --propagation private sh -eu -c '
    root=$1 cpuinfo=$2
    shift 2
    mount -t proc proc "$root/proc"
    mount --bind "$cpuinfo" "$root/proc/cpuinfo"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" "$@"
' arm64_chroot "$@"
