#!/usr/bin/env bash
# mmdebstrap customize hook: turns the freshly installed root filesystem
# ("$1") into the test guest. Runs on the host, as root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${1:?usage: customize.sh ROOT}

echo holdfast-e2e >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tholdfast-e2e\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf '/dev/vda\t/\text4\trw,relatime\t0\t1\n' >"$root/etc/fstab"

# A fixed machine id: with an empty one every boot of the clean snapshot
# would be a first boot (systemd-firstboot, presets), which costs time.
od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"
echo >>"$root/etc/machine-id"

# The journal stays in memory: the disk is a throwaway snapshot anyway.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/90-holdfast-e2e.conf"

# Boot straight to multi-user.target.
ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"

# Mask what only costs boot time here: consoles nobody logs in on, periodic
# maintenance, and generators that find nothing to do in this guest (they
# also run on every daemon-reload).
for unit in getty@tty1.service serial-getty@ttyS0.service e2scrub_reap.service \
    e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer fstrim.timer \
    dpkg-db-backup.timer man-db.timer; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done
mkdir -p "$root/etc/systemd/system-generators"
for generator in systemd-cryptsetup-generator systemd-gpt-auto-generator \
    systemd-sysv-generator systemd-rc-local-generator systemd-getty-generator \
    systemd-veritysetup-generator systemd-integritysetup-generator \
    systemd-bless-boot-generator systemd-hibernate-resume-generator \
    systemd-system-update-generator; do
    ln -sfn /dev/null "$root/etc/systemd/system-generators/$generator"
done

# The test unit and its entry point.
install -D -m 0755 "$here/guest/entry" "$root/usr/local/lib/holdfast-e2e/entry"
install -D -m 0644 "$here/guest/holdfast-e2e.service" "$root/etc/systemd/system/holdfast-e2e.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/mnt/e2e/in" "$root/mnt/e2e/out"
ln -sfn ../holdfast-e2e.service "$root/etc/systemd/system/multi-user.target.wants/holdfast-e2e.service"
