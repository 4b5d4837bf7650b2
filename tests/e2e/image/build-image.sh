#!/usr/bin/env bash
# Builds the guest image of the end-to-end suite. Called by tests/e2e/run,
# which caches the result keyed by a hash of every file in this directory.
#
#   build-image.sh SUITE OUT_DIR WORK_DIR DEB_CACHE SOURCES_FILE
#
# SUITE         the Debian suite of the guest (bullseye, bookworm, trixie)
# OUT_DIR       receives rootfs.raw, vmlinuz, initrd.img (the distro's) and,
#               when they can be made, vmlinux (PVH entry) and
#               initramfs.cpio (busybox, a handful of modules)
# WORK_DIR      scratch space, best on a tmpfs (slow disks make the tree of
#               a root filesystem expensive to write and to delete)
# DEB_CACHE     downloaded .debs, reused and refreshed by each build
# SOURCES_FILE  one apt source line a line ("deb URI SUITE main"), taken
#               from the host's own apt configuration
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
image_size=2G

die() {
    printf 'build-image: error: %s\n' "$*" >&2
    exit 1
}

[ "$#" -eq 5 ] || die "usage: build-image.sh SUITE OUT_DIR WORK_DIR DEB_CACHE SOURCES_FILE"
suite=$1 out=$2 work=$3 debs=$4 sources=$5
root=$work/root
mkdir -p "$out" "$work" "$debs"
[ ! -e "$root" ] || die "$root already exists"

# A package line may end with the suites it is for, in brackets.
packages=$(sed -e 's/#.*//' "$here/packages.txt" | awk -v suite="$suite" '
    NF == 0 { next }
    match($0, /\[[^]]*\]/) {
        split(substr($0, RSTART + 1, RLENGTH - 2), only, " ")
        keep = 0
        for (i in only) if (only[i] == suite) keep = 1
        if (!keep) next
    }
    { print $1 }' | paste -sd, -)
[ -n "$packages" ] || die "no packages in $here/packages.txt"
mapfile -t mirrors <"$sources"
[ "${#mirrors[@]}" -gt 0 ] || die "no apt sources in $sources"

# --- root filesystem -------------------------------------------------------
# Half the image would be kernel modules for hardware a qemu guest never
# has; leaving them out makes the image smaller and faster to write.
module_excludes=()
for dir in sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet \
    drivers/infiniband drivers/staging drivers/iio drivers/bluetooth drivers/usb \
    drivers/mmc drivers/mtd drivers/isdn drivers/hid drivers/input drivers/hwmon \
    drivers/video drivers/scsi drivers/ata drivers/nfc drivers/platform; do
    module_excludes+=("--dpkgopt=path-exclude=/lib/modules/*/kernel/$dir/*")
done
# The .debs are synced in from the cache before the download and synced out
# to a fresh directory afterwards, so the cache holds exactly what this
# build used.
debs_new=$work/debs.new
mkdir -p "$debs_new"
# shellcheck disable=SC2016 # "$1" is the hooks' argument, the new root
mmdebstrap \
    --variant=minbase \
    --include="$packages" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "${module_excludes[@]}" \
    --skip=download/empty \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
    --setup-hook="sync-in $debs /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives $debs_new" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    --customize-hook="$here/customize.sh \"\$1\"" \
    "$suite" "$root" "${mirrors[@]}"

echo "build-image: root filesystem in ${SECONDS}s"

# Replace the cache's content with what this build used (drops old versions).
find "$debs" -maxdepth 1 -name '*.deb' -delete
find "$debs_new" -maxdepth 1 -name '*.deb' -exec mv -t "$debs" {} +

# --- kernel ----------------------------------------------------------------
mapfile -t kernels < <(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n')
[ "${#kernels[@]}" -eq 1 ] || die "expected one kernel in the image, found: ${kernels[*]:-none}"
kver=${kernels[0]}
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
rm -f "$root/boot/initrd.img-$kver" # the guest boots with it from outside, never from /boot
echo "$kver" >"$out/kernel-version"

# The uncompressed vmlinux boots through qemu's PVH entry and skips the
# bzImage's self-decompression, which is slow under TCG. Debian compresses
# its kernels with xz up to bookworm and with zstd from trixie on: find the
# stream and unpack it.
extract_vmlinux() {
    local offset magic unpack
    for magic in xz zstd; do
        case $magic in
            xz) unpack=(xz -dc --single-stream) ;;
            zstd) unpack=(zstd -dcq) ;;
        esac
        while read -r offset; do
            # The unpacker stops at (or complains about) what follows the
            # stream, and tail gets SIGPIPE: judge by the result.
            tail -c "+$((offset + 1))" "$out/vmlinuz" | "${unpack[@]}" >"$work/vmlinux" 2>/dev/null || true
            if [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                mv "$work/vmlinux" "$out/vmlinux"
                return 0
            fi
        done < <(case $magic in
            xz) LC_ALL=C grep -abo $'\xfd7zXZ' "$out/vmlinuz" ;;
            zstd) LC_ALL=C grep -abo $'\x28\xb5\x2f\xfd' "$out/vmlinuz" ;;
        esac | cut -d: -f1)
    done
    return 1
}
extract_vmlinux || echo "build-image: warning: no xz- or zstd-compressed ELF kernel in vmlinuz; only the distro initrd boot will work" >&2

# --- tiny initramfs ----------------------------------------------------------
# busybox, the modules the root disk needs (with their dependencies, in load
# order) and a 40-line /init. Uncompressed: decompressing is slow under TCG.
ir=$work/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$root/bin/busybox" "$ir/bin/busybox"
for applet in sh mount umount insmod sleep switch_root poweroff; do
    ln -s busybox "$ir/bin/$applet"
done
install -m 0755 "$here/initramfs-init" "$ir/init"
: >"$ir/lib/modules/order"
for module in virtio_pci virtio_blk crc32c_generic ext4; do
    while read -r kind path _; do
        [ "$kind" = insmod ] || continue # "builtin NAME": nothing to load
        name=$(basename "$path")
        grep -qxF "${name%.ko*}.ko" "$ir/lib/modules/order" && continue
        case $name in
            *.ko) cp "$root$path" "$ir/lib/modules/$name" ;;
            *.ko.xz) xz -dc "$root$path" >"$ir/lib/modules/${name%.xz}" ;;
            *.ko.zst) zstd -qdc "$root$path" >"$ir/lib/modules/${name%.zst}" ;;
            *) die "unexpected module file $path" ;;
        esac
        echo "${name%.ko*}.ko" >>"$ir/lib/modules/order"
    done < <(chroot "$root" /sbin/modprobe -S "$kver" --show-depends "$module")
done
(cd "$ir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$out/initramfs.cpio"

# --- disk image --------------------------------------------------------------
# mkfs.ext4 -d copies the tree in: no loop device, no mount.
rm -f "$out/rootfs.raw"
mkfs.ext4 -q -F -L holdfast-e2e -d "$root" "$out/rootfs.raw" "$image_size"
echo "build-image: image for kernel $kver: $(du -h "$out/rootfs.raw" | cut -f1) used of $image_size, ${SECONDS}s in all"
