# holdfast rpm %preun: stop and disable on removal (not on upgrade).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now holdfast.service holdfast.socket >/dev/null 2>&1 || :
fi
