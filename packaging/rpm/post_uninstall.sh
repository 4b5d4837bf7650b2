# holdfast rpm %postun: reload systemd's view after the unit files are gone.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
