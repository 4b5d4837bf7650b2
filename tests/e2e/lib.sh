# shellcheck shell=bash
# Helpers for the scenarios of the end-to-end suite. Runs inside the guest,
# as root; each scenario is its own bash process that sources this file:
#
#   . "$E2E_SUITE/lib.sh"
#   check "the slice exists" systemctl cat go-app.slice
#   expect_eq "memory.max" 104857600 "$(cat /sys/fs/cgroup/go-app.slice/memory.max)"
#
# Every check prints "ok - NAME" or "FAIL - NAME: details" and appends one
# line to $E2E_RESULTS, which the host counts. A failed check does not stop
# the scenario (no `set -e`): later checks still run and report.
#
# Environment (set by guest-run.sh):
#   E2E_SUITE     the suite on the read-only share (lib.sh, scenarios/, fixtures/)
#   E2E_FILES     extra files the host passed in with HOLDFAST_E2E_FILES
#   E2E_TMP       an empty scratch directory for this scenario (also its cwd)
#   E2E_SCENARIO  this scenario's name
#   E2E_RESULTS   the result lines
# holdfast itself is at /usr/local/bin/holdfast.

: "${E2E_RESULTS:?lib.sh runs inside the e2e guest: start the suite with tests/e2e/run}"
E2E_SCENARIO=${E2E_SCENARIO:-$(basename "$0" .sh)}

# Output of the last command run by check, check_fails or expect_exit
# (stdout and stderr together), and its exit status.
last_output=
last_status=0

# note MESSAGE: a comment line in the log; counts nothing.
note() {
    printf '# %s\n' "$*"
}

# pass NAME / fail NAME DETAILS: record a result by hand, for checks that
# need more than one command to decide.
pass() {
    printf 'ok - %s\n' "$1"
    printf 'ok\t%s: %s\n' "$E2E_SCENARIO" "$1" >>"$E2E_RESULTS"
}

fail() {
    local name=$1
    shift
    printf 'FAIL - %s: %s\n' "$name" "$*"
    printf 'FAIL\t%s: %s: %s\n' "$E2E_SCENARIO" "$name" "$*" >>"$E2E_RESULTS"
}

# skip NAME WHY: a check this guest cannot make, because the generation it
# runs lacks what judges it (a scanner Debian does not package there, say).
# Counted apart, never as a pass.
skip() {
    printf 'skip - %s: %s\n' "$1" "$2"
    printf 'SKIP\t%s: %s: %s\n' "$E2E_SCENARIO" "$1" "$2" >>"$E2E_RESULTS"
}

# The guest's Debian release and systemd version, for the checks whose
# expectation differs between generations.
E2E_DEBIAN=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
E2E_SYSTEMD=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')
export E2E_DEBIAN E2E_SYSTEMD

# have_openscap: whether this guest has the scanner and ComplianceAsCode's
# content (Debian packages them from bookworm on).
have_openscap() {
    command -v oscap >/dev/null && [ -e /usr/share/xml/scap/ssg/content/ssg-ubuntu2204-xccdf.xml ]
}

# capture CMD...: runs CMD, keeping its output and status in last_output and
# last_status; counts nothing. For checks on what a command printed.
capture() {
    last_status=0
    last_output=$("$@" 2>&1) || last_status=$?
}

# Shows the last command's output under a failure, indented, at most 30 lines.
_show_output() {
    [ -n "$last_output" ] || return 0
    printf '%s\n' "$last_output" | tail -n 30 | sed 's/^/#     /'
}

# check NAME CMD...: passes when CMD exits 0. Like capture, it waits for
# CMD's output to close: start daemons with systemd-run or systemctl, not '&'.
check() {
    local name=$1
    shift
    capture "$@"
    if [ "$last_status" -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "'$*' exited with status $last_status"
        _show_output
    fi
}

# check_fails NAME CMD...: passes when CMD exits non-zero.
check_fails() {
    local name=$1
    shift
    capture "$@"
    if [ "$last_status" -ne 0 ]; then
        pass "$name"
    else
        fail "$name" "'$*' succeeded, expected a failure"
        _show_output
    fi
}

# expect_exit NAME "CODE..." CMD...: passes when CMD's exit status is one of
# the space-separated CODEs, e.g. expect_exit "check" "0 2" holdfast check.
expect_exit() {
    local name=$1 codes=$2 code
    shift 2
    capture "$@"
    for code in $codes; do
        if [ "$last_status" -eq "$code" ]; then
            pass "$name"
            return 0
        fi
    done
    fail "$name" "'$*' exited with status $last_status, expected one of: $codes"
    _show_output
}

# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1" "expected '$2', got '$3'"
    fi
}

# expect_match NAME REGEX ACTUAL: passes when ACTUAL matches the extended
# regular expression (bash's =~) anywhere.
expect_match() {
    if [[ $3 =~ $2 ]]; then
        pass "$1"
    else
        fail "$1" "'$3' does not match /$2/"
    fi
}

# wait_until SECONDS CMD...: retries CMD every 0.2 s until it exits 0 or the
# time is up; returns CMD's last status. Counts nothing: wrap it in a check,
# e.g. check "service is active" wait_until 10 systemctl is-active -q foo.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# ComplianceAsCode's Ubuntu 22.04 content, the closest to Debian, copied
# into DIR without its platform checks (they would mark every rule
# notapplicable on Debian); the other files of the content linked beside it.
# Usage: ssg_ubuntu_content SSG_DIR DIR; evaluate DIR/ssg-ubuntu2204-xccdf.xml.
ssg_ubuntu_content() {
    local ssg=$1 dir=$2 f
    mkdir -p "$dir"
    grep -v '<xccdf-1.2:platform idref=' "$ssg/ssg-ubuntu2204-xccdf.xml" >"$dir/ssg-ubuntu2204-xccdf.xml"
    for f in "$ssg"/ssg-ubuntu2204-*; do
        case $f in *-xccdf.xml) ;; *) ln -sf "$f" "$dir/" ;; esac
    done
}

# `systemd-analyze verify` of units as systemd loads them (with their
# drop-ins): passes when it exits 0 and prints nothing.
verify_units() {
    local name=$1
    shift
    capture systemd-analyze verify "$@"
    if [ "$last_status" -eq 0 ] && [ -z "$last_output" ]; then
        pass "$name"
    else
        fail "$name" "status $last_status: $last_output"
    fi
}
