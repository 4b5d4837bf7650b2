#!/bin/bash
# The guest is what the suite promises: systemd 247 to 257 as PID 1 (Debian
# 11 to 13), a pure
# cgroup v2 hierarchy with the controllers holdfast manages, transient units
# in slices with limits, a writable /proc/sys, PAM sessions through logind,
# no network but loopback, and a holdfast binary that runs.
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

# --- systemd -------------------------------------------------------------------
expect_eq "PID 1 is systemd" systemd "$(cat /proc/1/comm)"
note "Debian $E2E_DEBIAN ($(cat /etc/debian_version)), systemd $E2E_SYSTEMD, kernel $(uname -r)"
check "systemd is a generation the suite knows (247 to 257)" \
    test "${E2E_SYSTEMD:-0}" -ge 247 -a "${E2E_SYSTEMD:-0}" -le 257

state=$(systemctl is-system-running 2>/dev/null)
expect_match "the boot finished (running or degraded)" '^(running|degraded)$' "$state"
if [ "$state" = degraded ]; then
    note "failed units:"
    systemctl list-units --failed --no-legend --plain | sed 's/^/#   /'
fi

# --- cgroup v2 -----------------------------------------------------------------
expect_eq "/sys/fs/cgroup is cgroup2" cgroup2fs "$(stat -fc %T /sys/fs/cgroup)"
expect_eq "no cgroup v1 hierarchy is mounted" "" "$(awk '$3 == "cgroup" { print $2 }' /proc/mounts)"
controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
for controller in cpu memory pids io; do
    expect_match "controller $controller is available" "(^| )$controller( |$)" "$controllers"
done

check "systemd-run --wait in a slice with MemoryMax" \
    systemd-run --quiet --wait --slice=e2e-probe.slice -p MemoryMax=100M true

# The limit really lands in the kernel, under the unit's own cgroup.
# shellcheck disable=SC2016 # expanded by the shell inside the unit
script='cat "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"'
capture systemd-run --quiet --wait --pipe --slice=e2e-probe.slice -p MemoryMax=100M sh -c "$script"
expect_eq "a transient unit's memory.max is 100M" 104857600 "$last_output"
# shellcheck disable=SC2016 # expanded by the shell inside the unit
capture systemd-run --quiet --wait --pipe --slice=e2e-probe.slice -p TasksMax=64 -p CPUQuota=50% \
    sh -c 'dir=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat "$dir/pids.max" "$dir/cpu.max"'
expect_eq "a transient unit's pids.max and cpu.max" $'64\n50000 100000' "$last_output"

# --- kernel settings ---------------------------------------------------------------
old=$(cat /proc/sys/vm/swappiness)
new=$((old == 17 ? 18 : 17))
if echo "$new" >/proc/sys/vm/swappiness 2>/dev/null; then
    expect_eq "/proc/sys is writable" "$new" "$(cat /proc/sys/vm/swappiness)"
    echo "$old" >/proc/sys/vm/swappiness
else
    fail "/proc/sys is writable" "writing vm.swappiness failed"
fi

# --- PAM sessions ----------------------------------------------------------------
user=e2e-probe
check "useradd a throwaway user" useradd --create-home --shell /bin/bash "$user"
capture su -l "$user" -c 'id -un; pwd'
expect_eq "su -l opens a login shell for the user" "$user"$'\n'"/home/$user" "$last_output"
capture su -l "$user" -c 'cat /proc/self/cgroup'
expect_match "su -l session is registered with logind (session scope)" \
    "user\.slice/user-$(id -u "$user")\.slice/session-[^/]+\.scope" "$last_output"
# The session leaves the user's systemd manager behind; logind ends it.
no_processes_of_user() { ! pgrep -u "$user" >/dev/null; }
check "loginctl terminate-user" loginctl terminate-user "$user"
check "the user's processes end" wait_until 30 no_processes_of_user
check "userdel the throwaway user" userdel --remove "$user"

# --- network ---------------------------------------------------------------------
expect_eq "the only network interface is loopback" lo "$(ip -o link show | awk -F': ' '{ print $2 }' | paste -sd' ')"

# --- holdfast ----------------------------------------------------------------------
check "holdfast --version runs" holdfast --version
expect_match "holdfast --version names holdfast" '^holdfast ' "$last_output"
expect_exit "holdfast check exits 0 or 2, never 1" "0 2" holdfast check
note "holdfast check exited $last_status; its report:"
printf '%s\n' "$last_output" | head -n 40 | sed 's/^/#   /'
