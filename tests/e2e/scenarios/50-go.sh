#!/bin/bash
# The Go service baseline on a real Go service (tests/e2e/go): the same
# program built hardened and with the toolchain's defaults (cgo), both run
# under systemd in go-svc.slice, which nests in go.slice. go.slice has the
# tighter cpu.max, so `gomaxprocs: auto` must follow the whole slice path;
# after `apply --restart-services` the Go runtime itself reports that
# GOMAXPROCS. `check` is compliant for the hardened build and reports every
# build flag of the default one as drift; `audit` has the build findings for
# the default build only, and the GOMAXPROCS finding for a Go service in the
# same slice without GOMAXPROCS. Needs both builds in $E2E_FILES
# (tests/e2e/go/build.sh, then HOLDFAST_E2E_FILES=.../hardened:.../default).
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

for b in hardened default; do
    if [ ! -x "$E2E_FILES/$b" ]; then
        fail "the $b Go build" "no $b in \$E2E_FILES (tests/e2e/go/build.sh OUT; HOLDFAST_E2E_FILES=OUT/hardened:OUT/default)"
        exit 0
    fi
    install -m 0755 "$E2E_FILES/$b" "/usr/local/bin/goservice-$b"
done
id e2e-gosvc >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin e2e-gosvc
unit() { # NAME BINARY PORT [EXTRA]
    printf '[Service]\nExecStart=/usr/local/bin/goservice-%s -listen 127.0.0.1:%s\nUser=e2e-gosvc\n%b' "$2" "$3" "${4:-}" \
        >"/etc/systemd/system/$1.service"
}
unit go-hardened hardened 18081
unit go-default default 18082
systemctl daemon-reload
systemctl start go-hardened.service go-default.service

pol=$E2E_TMP/go.yaml
cat >"$pol" <<'YAML'
version: 1
mode: enforce
services:
  go-hardened.service:
    slice: go-svc
    go_runtime: {gomaxprocs: auto, godebug: "madvdontneed=1", gotraceback: single}
    go_build: {pie: true, stripped: true, trimpath: true, cgo: false, min_version: "1.22"}
  go-default.service:
    slice: go-svc
    go_runtime: {gomaxprocs: auto, godebug: "madvdontneed=1", gotraceback: single}
    go_build: {pie: true, stripped: true, trimpath: true, cgo: false, min_version: "1.22"}
cgroup:
  slices:
    go: {cpu.max: "100000 100000"}
    go-svc: {cpu.max: "200000 100000"}
YAML

runtime_of() { curl -fsS --max-time 5 "http://127.0.0.1:$1/runtime"; }
check "the hardened build answers" wait_until 10 runtime_of 18081
check "the default build answers" wait_until 10 runtime_of 18082
capture runtime_of 18081
expect_match "before apply the runtime uses every CPU" "GOMAXPROCS=$(nproc)" "$last_output"

expect_exit "apply --restart-services (the default build stays drift)" "2" \
    holdfast apply --policy "$pol" --restart-services
expect_eq "go.slice cpu.max" "100000 100000" "$(cat /sys/fs/cgroup/go.slice/cpu.max)"
for port in 18081 18082; do
    check "service on $port answers after the restart" wait_until 10 runtime_of $port
    capture runtime_of $port
    note "$port: $(printf '%s' "$last_output" | tr '\n' ' ')"
    # go.slice allows 1 CPU, go-svc.slice 2: the tightest on the path wins.
    expect_match "$port: the Go runtime's GOMAXPROCS is the path's quota" '(^|[[:space:]])GOMAXPROCS=1([[:space:]]|$)' "$last_output"
    expect_match "$port: NumCPU is the guest's" "NumCPU=$(nproc)" "$last_output"
    expect_match "$port: GODEBUG" 'GODEBUG=madvdontneed=1' "$last_output"
    expect_match "$port: GOTRACEBACK" 'GOTRACEBACK=single' "$last_output"
done

json=$E2E_TMP/check.json
capture sh -c "holdfast check --policy '$pol' --format json >'$json'"
expect_eq "check exits 2 (drift)" 2 "$last_status"
state_of() { jq -r --arg k "$1" '.items[] | select(.key == $k) | .state' "$json"; }
for e in pie stripped trimpath cgo min_version; do
    expect_eq "hardened go_build.$e" compliant "$(state_of "go-hardened.service go_build.$e")"
done
for e in pie stripped trimpath cgo; do
    expect_eq "default go_build.$e" drifted "$(state_of "go-default.service go_build.$e")"
done
# Both builds come from the same toolchain.
expect_eq "default go_build.min_version (same Go 1.22)" compliant "$(state_of "go-default.service go_build.min_version")"
details=$(jq -r '.items[] | select(.key | startswith("go-default.service go_build")) | .detail[]' "$json")
expect_match "the detail names the binary and -trimpath" 'built without -trimpath \(go1\.22\.[0-9]+, CGO_ENABLED=1, -buildmode=exe\)' "$details"
expect_match "the detail names -buildmode=pie" 'rebuild with -buildmode=pie' "$details"
expect_match "the detail names -s -w" "rebuild with -ldflags='-s -w'" "$details"
expect_match "the detail names CGO_ENABLED=0" 'rebuild with CGO_ENABLED=0' "$details"
check "no go_build item has an action" test "$(jq '[.items[] | select(.kind == "go-build") | select(.action != null)] | length' "$json")" = 0

# A Go service in the same slice that holdfast does not manage: no
# GOMAXPROCS, so Go 1.22 picks every CPU, more than go.slice allows.
unit go-bare default 18083 'Slice=go-svc.slice\n'
systemctl daemon-reload
systemctl start go-bare.service
check "the unmanaged Go service answers" wait_until 10 runtime_of 18083
sarif=$E2E_TMP/audit.sarif
capture sh -c "holdfast audit --format sarif >'$sarif'"
expect_eq "audit exits 2 on findings" 2 "$last_status"
results_for() { jq -r --arg u "$1" '.runs[0].results[] | select(.locations[0].logicalLocations[0].name == $u) | .ruleId' "$sarif" | sort -u | tr '\n' ' '; }
default_rules=$(results_for go-default.service)
for rule in HF006 HF007 HF008 HF009; do
    expect_match "default build: $rule" "$rule" "$default_rules"
done
hardened_rules=$(results_for go-hardened.service)
note "hardened build findings: $hardened_rules"
if printf '%s' "$hardened_rules" | grep -qE 'HF00[6-9]|HF011'; then
    fail "the hardened build has no build or GOMAXPROCS findings" "$hardened_rules"
else
    pass "the hardened build has no build or GOMAXPROCS findings"
fi
expect_match "the unmanaged service's GOMAXPROCS is a finding" 'HF011' "$(results_for go-bare.service)"
capture jq -r '.runs[0].results[] | select(.ruleId == "HF011") | .message.text' "$sarif"
expect_match "HF011 names the path's quota" 'CPU limit is 1 \(cpu\.max 100000 100000 of /go\.slice\)' "$last_output"

systemctl stop go-bare.service go-hardened.service go-default.service
