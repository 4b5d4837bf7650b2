# holdfast rpm %post: create the directories its unit may write, then enable
# and start it as %systemd_post would under an "enable" preset.
mkdir -p /etc/holdfast/policy.d /etc/sysctl.d /etc/security/limits.d /etc/systemd/system /etc/systemd/system.conf.d
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now holdfast.socket holdfast.service >/dev/null 2>&1 || :
    else
        systemctl try-restart holdfast.service >/dev/null 2>&1 || :
    fi
fi
