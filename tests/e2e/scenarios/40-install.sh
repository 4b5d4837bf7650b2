#!/bin/bash
# Ship it (issue: packages and an install test on a real systemd host): the
# .deb installed with apt, the unit active, `curl localhost/status`, the
# baseline in audit mode changing nothing, an enforce push converging the
# host, external drift corrected, an invalid push rejected, reload and
# restart, reinstalls, an upgrade while the daemon runs, and removal. Needs the .deb in $E2E_FILES (tests/e2e/run with
# HOLDFAST_E2E_FILES=path/to/holdfast_*.deb; .ci/run does this).
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

deb=
for candidate in "$E2E_FILES"/holdfast_*.deb; do
    if [ -e "$candidate" ]; then deb=$candidate; break; fi
done
if [ -z "$deb" ]; then
    fail "a .deb to install" "no holdfast_*.deb in \$E2E_FILES (set HOLDFAST_E2E_FILES)"
    exit 0
fi
hf=/usr/bin/holdfast
status_json() { curl -sf --max-time 5 http://localhost/status; }
# When the daemon does not answer in time: where its threads wait, systemd's
# jobs, the daemon's own words.
dump_daemon() {
    local pid t
    pid=$(systemctl show -P MainPID holdfast.service)
    for t in /proc/"$pid"/task/*; do
        note "thread $(cat "$t/comm" 2>/dev/null): syscall $(cut -d' ' -f1 "$t/syscall" 2>/dev/null), wchan $(cat "$t/wchan" 2>/dev/null)"
    done
    systemctl list-jobs --no-pager | sed 's/^/#     /'
    journalctl -u holdfast.service --no-pager -n 30 -o short-precise | grep -v ' corrected$' | sed 's/^/#     /'
}
json_field() { jq -r "$1" 2>/dev/null; }

# Whether the host had these before the package: purge must leave nothing
# of its own behind (piuparts' check).
had_conf_d=$([ -d /etc/systemd/system.conf.d ] && echo yes || echo no)
had_pkg_d=$([ -d /etc/systemd/system/e2e-pkg.service.d ] && echo yes || echo no)
# Earlier scenarios left their own files: start from a host holdfast never
# touched (an originals journal left by 35-daemon, when 37-rollback did not
# run in between, would make the rollback below restore that scenario's
# values).
rm -f /etc/security/limits.d/90-holdfast.conf /etc/sysctl.d/99-zz-holdfast.conf \
    /var/lib/holdfast/originals.json /var/lib/holdfast/paused.json
before_oc=$(cat /proc/sys/vm/overcommit_memory)
before_somaxconn=$(cat /proc/sys/net/core/somaxconn)

check "apt-get install ./holdfast_*.deb" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$deb"
check "the unit is active" wait_until 30 systemctl is-active --quiet holdfast.service
check "the socket unit is active" systemctl is-active --quiet holdfast.socket
verify_units "systemd-analyze verify is clean" /lib/systemd/system/holdfast.service /lib/systemd/system/holdfast.socket
# The unit's exposure, as systemd rates it: at most 3.0 (docs/src/security.md,
# "The systemd unit's hardening").
exposure_line=$(systemd-analyze security holdfast.service 2>/dev/null | tail -n 1)
note "systemd-analyze security: $exposure_line"
exposure=$(printf '%s' "$exposure_line" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
check "the unit's exposure is at most 3.0 (it is ${exposure:-unknown})" \
    awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 3.0) }'
check "curl localhost/status answers" wait_until 20 status_json
hf_pid=$(systemctl show -P MainPID holdfast.service)
expect_eq "the running daemon has NoNewPrivs 1" 1 "$(awk '/^NoNewPrivs:/ {print $2}' /proc/"$hf_pid"/status)"
expect_eq "the running daemon has Seccomp 2" 2 "$(awk '/^Seccomp:/ {print $2}' /proc/"$hf_pid"/status)"
note "daemon capabilities: $(awk '/^CapEff:/ {print $2}' /proc/"$hf_pid"/status)"
doc=$(status_json)
expect_eq "the baseline is in force" "/etc/holdfast/policy.d/00-baseline.yaml" "$(printf '%s' "$doc" | json_field '.policy.files[0]')"
expect_eq "in audit mode" audit "$(printf '%s' "$doc" | json_field '.policy.mode')"
expect_eq "audit mode changed nothing (overcommit)" "$before_oc" "$(cat /proc/sys/vm/overcommit_memory)"
check "audit mode wrote no sysctl.d file" test ! -e /etc/sysctl.d/99-zz-holdfast.conf
expect_exit "holdfast status answers over the Unix socket" "0 2" $hf status

# An enforce push, as the Ansible role does it.
printf '[Service]\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/e2e-pkg.service
# A service of another user: the daemon must see its process to verify
# its posture.
printf '[Service]\nUser=nobody\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/e2e-nobody.service
systemctl daemon-reload
systemctl start e2e-pkg.service e2e-nobody.service
cat >/etc/holdfast/policy.d/50-site.yaml <<'YAML'
version: 1
mode: enforce
sysctl:
  net.core.somaxconn: 8192
limits:
  - {domain: "*", item: nofile, soft: 65536, hard: 65536}
services:
  e2e-pkg.service: {slice: pkg-app, limit_nofile: 65536}
  e2e-nobody.service: {no_new_privileges: true}
cgroup:
  slices:
    pkg-app: {memory.max: 200M, pids.max: 256}
YAML
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "the push is applied (somaxconn)" wait_until 20 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 8192 ]'
# The daemon applies a push asynchronously: wait for the persisted file.
check "the sysctl is persisted" wait_until 20 grep -q 'net.core.somaxconn = 8192' /etc/sysctl.d/99-zz-holdfast.conf
check "limits.d written" wait_until 10 test -f /etc/security/limits.d/90-holdfast.conf
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "the slice has its limits" wait_until 20 sh -c '[ "$(cat /sys/fs/cgroup/pkg.slice/pkg-app.slice/memory.max 2>/dev/null)" = 209715200 ]'
check "the service's drop-in" wait_until 10 grep -q 'LimitNOFILE=65536:65536' /etc/systemd/system/e2e-pkg.service.d/90-holdfast.conf
check "the nobody service's drop-in" wait_until 10 grep -q 'NoNewPrivileges=yes' /etc/systemd/system/e2e-nobody.service.d/90-holdfast.conf
check "systemctl restart e2e-nobody" systemctl restart e2e-nobody.service
# The daemon is the host's one writer: `holdfast apply` asks it over its
# Unix socket, and it restarts what needs a restart and verifies the new
# processes. Anyone but root is refused.
pkg_pid_before=$(systemctl show -P MainPID e2e-pkg.service)
capture $hf apply --restart-services
expect_eq "holdfast apply --restart-services, run by the daemon, exits 0" 0 "$last_status"
[ "$last_status" -eq 0 ] || note "apply said: $(printf '%s' "$last_output" | tr '\n' '|')"
expect_match "the daemon ran it (a pass by request)" 'holdfast_passes_total\{trigger="request"\} [1-9]' \
    "$(curl -sf --max-time 5 http://localhost/metrics)"
pkg_pid=$(systemctl show -P MainPID e2e-pkg.service)
check "e2e-pkg was restarted (PID $pkg_pid_before -> $pkg_pid)" test "$pkg_pid" != "$pkg_pid_before"
expect_eq "its new process has LimitNOFILE 65536" 65536 "$(awk '/^Max open files/ {print $4}' /proc/"$pkg_pid"/limits)"
nobody_pid=$(systemctl show -P MainPID e2e-nobody.service)
expect_eq "the nobody service's process has NoNewPrivs 1" 1 "$(awk '/^NoNewPrivs:/ {print $2}' /proc/"$nobody_pid"/status)"
capture setpriv --reuid=65534 --regid=65534 --clear-groups $hf apply
expect_eq "a non-root holdfast apply exits 1" 1 "$last_status"
expect_match "and says only root may ask" 'only root may ask' "$last_output"
# The administrator restarts the service; the daemon hears of it from
# systemd and verifies the new process.
check "systemctl restart moves the service" systemctl restart e2e-pkg.service
check "the daemon finds it compliant after the restart" wait_until 10 bash -o pipefail -c \
    "$hf --format json status | jq -e '.items[] | select(.key == \"e2e-pkg.service LimitNOFILE\") | .state == \"compliant\" or .state == \"corrected\"' >/dev/null"
if [ "$last_status" -ne 0 ]; then
    dump_daemon
    note "items: $($hf --format json status | jq -c '[.items[] | select(.key | startswith("e2e-")) | {key, state, actual, detail}], .daemon.last_pass' 2>&1)"
fi
pid=$(systemctl show -P MainPID e2e-pkg.service)
expect_eq "the service runs with LimitNOFILE 65536" 65536 "$(awk '/^Max open files/ {print $4}' /proc/"$pid"/limits)"
check "the daemon verifies the process of a service running as nobody" wait_until 10 bash -o pipefail -c \
    "$hf --format json status | jq -e '.items[] | select(.key == \"e2e-nobody.service no_new_privileges\") | .state == \"compliant\" or .state == \"corrected\"' >/dev/null"
[ "$last_status" -eq 0 ] ||
    note "item: $($hf --format json status | jq -c '.items[] | select(.key == "e2e-nobody.service no_new_privileges")')"

# External drift, corrected by the daemon.
sysctl -qw net.core.somaxconn=128
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "external drift corrected" wait_until 10 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 8192 ]'
if [ "$last_status" -ne 0 ]; then
    note "daemon log: $(journalctl -u holdfast.service --no-pager -n 40 | tr '\n' '|')"
    note "status item: $(status_json | jq -c '.items[] | select(.key == "net.core.somaxconn")')"
    note "watches: $(status_json | jq -c '.daemon.watches')"
fi
check "status shows the correction" wait_until 10 bash -o pipefail -c \
    "curl -sf http://localhost/status | jq -e '.items[] | select(.key == \"net.core.somaxconn\") | .state == \"corrected\" or .state == \"compliant\"' >/dev/null"

# An invalid push is rejected; the old policy stays in force.
printf 'version: 1\nsysctl:\n  net.core.somaxconn: {mni: 1}\n' >/etc/holdfast/policy.d/60-bad.yaml
check "the rejection is reported with file and line" wait_until 20 bash -o pipefail -c \
    "curl -sf http://localhost/status | jq -e '.policy.last_error.errors[0] | .file == \"/etc/holdfast/policy.d/60-bad.yaml\" and .line == 3' >/dev/null"
sysctl -qw net.core.somaxconn=256
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "the old policy is still enforced" wait_until 10 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 8192 ]'
rm -f /etc/holdfast/policy.d/60-bad.yaml

check "systemctl reload holdfast" systemctl reload holdfast.service
check "still active after reload" wait_until 10 systemctl is-active --quiet holdfast.service
systemctl restart --no-block holdfast.service
check "systemctl restart holdfast: active within 25 s" wait_until 25 systemctl is-active --quiet holdfast.service
if [ "$last_status" -ne 0 ]; then
    # A start that does not finish (seen as a missed watchdog ping): where
    # the daemon's threads wait, systemd's jobs, the daemon's own words.
    dump_daemon
fi
check "active after restart" wait_until 20 systemctl is-active --quiet holdfast.service
sysctl -qw net.core.somaxconn=512
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "converged after restart" wait_until 10 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 8192 ]'

# Kernel modules under the shipped unit. Its modprobe.d file is the
# daemon's to write (ReadWritePaths). `unload: true` is refused by the unit
# (ProtectKernelModules=yes), which the item says; with the drop-in of
# docs/src/kernel-modules.md the daemon unloads the module (a module this kernel has, loaded for the test).
mod=
for m in freevxfs hfsplus udf; do
    if ! grep -q "^$m " /proc/modules && modprobe "$m" 2>/dev/null; then
        mod=$m
        break
    fi
done
if [ -n "$mod" ]; then
    module_item() { status_json | jq -r --arg k "kernel module $mod" '.items[] | select(.key == $k) | "\(.state): \(.detail | join(" | "))"'; }
    module_state_is() { module_item | grep -Eq "^($1): "; }
    printf 'version: 1\nkernel_modules:\n  %s: {unload: true}\n' "$mod" >/etc/holdfast/policy.d/60-modules.yaml
    check "the daemon writes its modprobe.d file" wait_until 20 grep -qx "install $mod /bin/false" /etc/modprobe.d/00-holdfast.conf
    check "under the shipped unit, unloading $mod fails" wait_until 20 module_state_is failed
    expect_match "the item says why: EPERM, ProtectKernelModules=yes" '^failed: .*EPERM.*ProtectKernelModules=yes' "$(module_item)"
    check "$mod is still loaded" grep -q "^$mod " /proc/modules
    mkdir -p /etc/systemd/system/holdfast.service.d
    printf '[Service]\nProtectKernelModules=no\nCapabilityBoundingSet=CAP_SYS_MODULE\nSystemCallFilter=delete_module\n' \
        >/etc/systemd/system/holdfast.service.d/50-unload.conf
    systemctl daemon-reload
    note "systemd-analyze security with the unload drop-in: $(systemd-analyze security holdfast.service 2>/dev/null | tail -n 1)"
    check "systemctl restart holdfast (with the drop-in)" systemctl restart holdfast.service
    check "with the drop-in, the daemon unloads $mod" wait_until 20 sh -c "! grep -q '^$mod ' /proc/modules"
    check "and reports it corrected" wait_until 10 module_state_is 'corrected|compliant'
    [ "$last_status" -eq 0 ] || note "item: $(module_item)"
    rm -f /etc/holdfast/policy.d/60-modules.yaml /etc/systemd/system/holdfast.service.d/50-unload.conf
    rmdir /etc/systemd/system/holdfast.service.d 2>/dev/null || true
    systemctl daemon-reload
    check "systemctl restart holdfast (drop-in removed)" systemctl restart holdfast.service
    check "without kernel_modules, the daemon removes its modprobe.d file" wait_until 20 test ! -e /etc/modprobe.d/00-holdfast.conf
    modprobe -r "$mod" 2>/dev/null || true
else
    note "skip: none of freevxfs, hfsplus, udf loads in this kernel; the kernel modules checks under the unit are skipped"
fi

# Rollback while the daemon runs: the daemon rolls back (restarting what
# ran with its drop-ins) and leaves the host rolled back until an apply.
capture $hf rollback --restart-services
expect_eq "holdfast rollback --restart-services, run by the daemon, exits 0" 0 "$last_status"
[ "$last_status" -eq 0 ] || note "rollback said: $(printf '%s' "$last_output" | tr '\n' '|')"
expect_eq "somaxconn is back" "$before_somaxconn" "$(cat /proc/sys/net/core/somaxconn)"
if [ "$(cat /proc/sys/net/core/somaxconn)" != "$before_somaxconn" ]; then
    note "the journal's somaxconn entry: $(jq -c '.. | objects | select(tostring | test("somaxconn"))' /var/lib/holdfast/originals.json 2>&1 | head -n 3)"
    journalctl -u holdfast.service --no-pager -o cat | grep -iE 'somaxconn|journal|original' | tail -n 15 | sed 's/^/#     /'
fi
check "holdfast's drop-in is gone" test ! -e /etc/systemd/system/e2e-pkg.service.d/90-holdfast.conf
check "the daemon still runs" systemctl is-active --quiet holdfast.service
check "status says enforcement is paused" wait_until 10 bash -o pipefail -c \
    "curl -sf http://localhost/status | jq -e '.paused.scope == []' >/dev/null"
sysctl -qw net.core.somaxconn=$((before_somaxconn + 1))
sleep 3
expect_eq "a drift while paused is left alone" "$((before_somaxconn + 1))" "$(cat /proc/sys/net/core/somaxconn)"
capture $hf apply --restart-services
expect_eq "holdfast apply --restart-services ends the pause (exit 0)" 0 "$last_status"
[ "$last_status" -eq 0 ] || note "apply said: $(printf '%s' "$last_output" | tr '\n' '|')"
expect_eq "somaxconn enforced again" 8192 "$(cat /proc/sys/net/core/somaxconn)"
check "the drop-in is back" test -e /etc/systemd/system/e2e-pkg.service.d/90-holdfast.conf
expect_eq "no pause in the status" null "$(status_json | json_field '.paused')"

# Reinstalling the package restarts the daemon, and leaves the socket
# unit and the service both active: never "Socket service holdfast.service
# already active, refusing" from systemd (the maintainer scripts' restart of
# the two units raced, once in four reinstalls).
since=$(date +%s)
for i in 1 2 3 4 5 6; do
    check "apt-get install --reinstall ($i of 6)" env DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall "$deb"
    check "after reinstall $i: the service is active" wait_until 20 systemctl is-active --quiet holdfast.service
    check "after reinstall $i: the socket is active" systemctl is-active --quiet holdfast.socket
done
refusals=$(journalctl --no-pager --since "@$since" -u holdfast.socket -u holdfast.service | grep -c 'already active, refusing' || true)
expect_eq "no socket start refused across 6 reinstalls" 0 "$refusals"
check "status answers after the reinstalls" wait_until 20 status_json
expect_exit "holdfast status: compliant" "0" $hf status

# An upgrade while the daemon runs: the same build with a higher version
# (the .deb repacked here). The pushed policy and the originals journal
# stay, the daemon restarts under the new package, and a key someone
# changes while the old daemon is gone is corrected by the new one's first
# pass.
up=$E2E_TMP/upgrade
mkdir -p "$up"
dpkg-deb -R "$deb" "$up/pkg"
old_version=$(dpkg-query -W -f '${Version}' holdfast)
new_version=${old_version%-*}-$((${old_version##*-} + 1))
sed -i "s/^Version: .*/Version: $new_version/" "$up/pkg/DEBIAN/control"
dpkg-deb -b "$up/pkg" "$up/holdfast_${new_version}_amd64.deb" >/dev/null
policy_sum=$(cat /etc/holdfast/policy.d/*.yaml | sha256sum)
journal=/var/lib/holdfast/originals.json
check "the originals journal names somaxconn before the upgrade" grep -q net.core.somaxconn "$journal"
old_pid=$(systemctl show -P MainPID holdfast.service)
env DEBIAN_FRONTEND=noninteractive apt-get install -y "$up/holdfast_${new_version}_amd64.deb" >"$up/apt.log" 2>&1 &
apt_pid=$!
# The moment the old daemon is gone, someone changes the key.
while kill -0 "$old_pid" 2>/dev/null && kill -0 "$apt_pid" 2>/dev/null; do sleep 0.01; done
drift_at=$(cut -d' ' -f1 /proc/uptime)
sysctl -qw net.core.somaxconn=1024
apt_status=0
wait "$apt_pid" || apt_status=$?
expect_eq "apt-get install of version $new_version while the daemon runs (exit 0)" 0 "$apt_status"
[ "$apt_status" -eq 0 ] || sed 's/^/#     /' "$up/apt.log" | tail -n 20
check "the upgraded daemon is active" wait_until 20 systemctl is-active --quiet holdfast.service
new_pid=$(systemctl show -P MainPID holdfast.service)
check "it is a new process" test "$new_pid" != "$old_pid"
expect_eq "the package is the new version" "$new_version" "$(dpkg-query -W -f '${Version}' holdfast)"
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "the drifted key is corrected" wait_until 20 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 8192 ]'
fixed_at=$(cut -d' ' -f1 /proc/uptime)
started_at=$(awk -v us="$(systemctl show -P ExecMainStartTimestampMonotonic holdfast.service)" 'BEGIN { printf "%.2f", us / 1e6 }')
note "upgrade: drift window $(awk -v a="$drift_at" -v b="$fixed_at" 'BEGIN { printf "%.2f", b - a }') s (old daemon gone to corrected), of which $(awk -v a="$started_at" -v b="$fixed_at" 'BEGIN { printf "%.2f", b - a }') s after the new daemon started"
check "corrected within 2 s of the new daemon's start" \
    awk -v a="$started_at" -v b="$fixed_at" 'BEGIN { exit !(b - a <= 2.0) }'
expect_eq "the pushed policy is kept" "$policy_sum" "$(cat /etc/holdfast/policy.d/*.yaml | sha256sum)"
check "the originals journal is kept" grep -q net.core.somaxconn "$journal"

check "apt-get remove holdfast" env DEBIAN_FRONTEND=noninteractive apt-get remove -y holdfast
check "the unit is gone" sh -c '! systemctl is-active --quiet holdfast.service'
check "remove keeps the pushed policy" test -e /etc/holdfast/policy.d/50-site.yaml
check "the host still works (systemd running)" sh -c 'systemctl is-system-running | grep -Eq "running|degraded"'
check "a service still starts" systemctl restart e2e-pkg.service
note "somaxconn before the install: $before_somaxconn; after removal: $(cat /proc/sys/net/core/somaxconn)"

# Purge: holdfast's files go, and so do the directories made for them that
# nothing else uses.
check "apt-get purge holdfast" env DEBIAN_FRONTEND=noninteractive apt-get purge -y holdfast
check "purge removed /etc/holdfast" test ! -e /etc/holdfast
check "purge removed the drop-in" test ! -e /etc/systemd/system/e2e-pkg.service.d/90-holdfast.conf
if [ "$had_pkg_d" = no ]; then
    check "purge removed the drop-in directory it left empty" test ! -e /etc/systemd/system/e2e-pkg.service.d
fi
if [ "$had_conf_d" = no ]; then
    check "purge removed /etc/systemd/system.conf.d, which postinst made" test ! -e /etc/systemd/system.conf.d
fi
