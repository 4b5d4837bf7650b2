#!/bin/bash
# cgroup v2 slices through systemd (issue: controllers and per-service
# slices): creation, a service moved into the slice, a foreign runtime
# override, a raw cgroupfs write, the memory.max refusal, controllers.
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

cg=/sys/fs/cgroup/go.slice/go-app.slice
pol=$E2E_TMP/cgroup.yaml
write_policy() {
    cat >"$pol" <<YAML
version: 1
mode: enforce
services:
  e2e-app.service: {slice: go-app}
cgroup:
  controllers: [cpu, memory, pids, io]
  slices:
    go-app: {memory.max: $1, cpu.max: "100000 1000000", pids.max: 512}
YAML
}
write_policy 100M

if ! systemctl cat e2e-app.service >/dev/null 2>&1; then
    printf '[Service]\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/e2e-app.service
    systemctl daemon-reload
    systemctl start e2e-app.service
fi

expect_exit "apply creates the slice and moves the service" "0" \
    holdfast apply --policy "$pol" --restart-services
expect_match "the service runs in go-app.slice" '/go.slice/go-app.slice/e2e-app.service$' \
    "$(systemctl show -P ControlGroup e2e-app.service)"
expect_eq "memory.max" 104857600 "$(cat $cg/memory.max)"
expect_eq "cpu.max" "100000 1000000" "$(cat $cg/cpu.max)"
expect_eq "pids.max" 512 "$(cat $cg/pids.max)"
expect_exit "check is compliant" "0" holdfast check --policy "$pol"
for c in cpu memory pids io; do
    expect_match "controller $c enabled at the root" "(^| )$c( |$)" "$(cat /sys/fs/cgroup/cgroup.subtree_control)"
    expect_match "controller $c enabled in go.slice" "(^| )$c( |$)" "$(cat /sys/fs/cgroup/go.slice/cgroup.subtree_control)"
done

# Someone else changes the slice through systemd.
systemctl set-property --runtime go-app.slice MemoryMax=200M
capture holdfast check --policy "$pol"
expect_eq "a foreign runtime override is drift" 2 "$last_status"
expect_match "the report names the slice and both values" 'go-app.slice memory.max +104857600 +209715200' "$last_output"
expect_exit "apply restores it" "0" holdfast apply --policy "$pol"
expect_eq "memory.max restored through systemd" 104857600 "$(cat $cg/memory.max)"
expect_eq "systemd agrees" 104857600 "$(systemctl show -P MemoryMax go-app.slice)"

# Someone writes the cgroup file directly.
echo 300M >$cg/memory.max
capture holdfast check --policy "$pol" --format json
expect_match "a raw write is contested" '"key": "go-app.slice memory.max",[^}]*"state": "contested"' \
    "$(printf '%s' "$last_output" | tr -d '\n')"
expect_exit "apply corrects it" "0" holdfast apply --policy "$pol"
expect_eq "memory.max corrected" 104857600 "$(cat $cg/memory.max)"
systemctl daemon-reload
expect_eq "after a daemon-reload nothing reverts" 104857600 "$(cat $cg/memory.max)"
expect_exit "still compliant after the reload" "0" holdfast check --policy "$pol"

# Lowering memory.max below what the slice uses is refused; nothing is killed.
write_policy 1G
expect_exit "raise memory.max to 1G" "0" holdfast apply --policy "$pol"
# tmpfs pages are charged to the cgroup of the process that wrote them.
systemd-run --quiet --unit=e2e-hog --slice=go-app.slice \
    /bin/sh -c 'dd if=/dev/zero of=/dev/shm/e2e-hog bs=1M count=160 status=none; sleep infinity'
check "the hog uses more than 100M" wait_until 60 sh -c "[ \$(cat $cg/memory.current) -gt 120000000 ]"
write_policy 100M
capture holdfast apply --policy "$pol"
expect_eq "apply refuses (exit 2)" 2 "$last_status"
expect_match "refused with both numbers" 'refused: memory.max 104857600 is below memory.current [0-9]+' "$last_output"
expect_eq "memory.max left at 1G" 1073741824 "$(cat $cg/memory.max)"
check "nothing was killed" systemctl is-active --quiet e2e-hog.service
systemctl stop e2e-hog.service
rm -f /dev/shm/e2e-hog
