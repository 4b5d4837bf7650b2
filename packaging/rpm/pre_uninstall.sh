# holdfast rpm %preun: on removal (not on upgrade), stop and disable it, then
# put the host back as the originals journal says it was. rpm has no purge:
# erasing the package is the removal, and %preun is the last moment the
# binary is there (packaging/README.md, "Removal").
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now holdfast.service holdfast.socket >/dev/null 2>&1 || :
    fi
    if [ -e /var/lib/holdfast/originals.json ]; then
        /usr/bin/holdfast rollback --lock-wait 30s ||
            echo "holdfast: the rollback left something (above); what it did not restore stays in /var/lib/holdfast/originals.json" >&2
    fi
fi
