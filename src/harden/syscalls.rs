//! The system calls `holdfast serve` may make once it has started: its
//! seccomp allow-list. This is the one file to review when it changes.
//!
//! How it was measured: `strace -f` of `holdfast serve` under systemd 252 in
//! the VM suite's guest, with a policy covering every kind of setting (sysctls
//! including the overcommit gate, limits, service limits, slices, posture),
//! through its whole life: start-up, status/metrics/healthz requests over TCP
//! and the Unix socket (and a refused POST), an external sysctl write, a
//! limits.d change, a good and a bad policy push, a foreign runtime property
//! on a slice, SIGHUP, SIGTERM. When it was measured holdfast still ran
//! `systemctl` (children inherit the filter); it now talks D-Bus itself
//! (sockets, sendmsg/recvmsg, epoll, eventfd and threads, all listed), and
//! the VM suite's daemon scenarios run under the filter. Entries marked
//! *margin* were not seen in that run but sit
//! on paths it did not take (errors, thread exit, allocator behaviour);
//! each says why.
//!
//! Everything else fails with EPERM rather than killing the daemon: a call
//! missed here degrades one operation, visibly, instead of stopping
//! enforcement.

macro_rules! syscalls {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        /// `(name, number)` of every allowed system call.
        pub const ALLOWED: &[(&str, libc::c_long)] = &[
            $($(#[$attr])* (stringify!($name), paste_sys!($name)),)*
        ];
    };
}

macro_rules! paste_sys {
    (fchmod) => {
        libc::SYS_fchmod
    };
    (fchown) => {
        libc::SYS_fchown
    };
    (getcwd) => {
        libc::SYS_getcwd
    };
    (mkdirat) => {
        libc::SYS_mkdirat
    };
    (openat2) => {
        libc::SYS_openat2
    };
    (readlinkat) => {
        libc::SYS_readlinkat
    };
    (renameat) => {
        libc::SYS_renameat
    };
    (renameat2) => {
        libc::SYS_renameat2
    };
    (tgkill) => {
        libc::SYS_tgkill
    };
    (unlinkat) => {
        libc::SYS_unlinkat
    };
    (accept4) => {
        libc::SYS_accept4
    };
    (access) => {
        libc::SYS_access
    };
    (arch_prctl) => {
        libc::SYS_arch_prctl
    };
    (bind) => {
        libc::SYS_bind
    };
    (brk) => {
        libc::SYS_brk
    };
    (chmod) => {
        libc::SYS_chmod
    };
    (clock_nanosleep) => {
        libc::SYS_clock_nanosleep
    };
    (clone) => {
        libc::SYS_clone
    };
    (clone3) => {
        libc::SYS_clone3
    };
    (close) => {
        libc::SYS_close
    };
    (connect) => {
        libc::SYS_connect
    };
    (dup) => {
        libc::SYS_dup
    };
    (dup2) => {
        libc::SYS_dup2
    };
    (delete_module) => {
        libc::SYS_delete_module
    };
    (dup3) => {
        libc::SYS_dup3
    };
    (epoll_create1) => {
        libc::SYS_epoll_create1
    };
    (epoll_ctl) => {
        libc::SYS_epoll_ctl
    };
    (epoll_pwait) => {
        libc::SYS_epoll_pwait
    };
    (epoll_wait) => {
        libc::SYS_epoll_wait
    };
    (eventfd2) => {
        libc::SYS_eventfd2
    };
    (execve) => {
        libc::SYS_execve
    };
    (exit) => {
        libc::SYS_exit
    };
    (exit_group) => {
        libc::SYS_exit_group
    };
    (faccessat2) => {
        libc::SYS_faccessat2
    };
    (fcntl) => {
        libc::SYS_fcntl
    };
    (fdatasync) => {
        libc::SYS_fdatasync
    };
    (fstat) => {
        libc::SYS_fstat
    };
    (fsync) => {
        libc::SYS_fsync
    };
    (futex) => {
        libc::SYS_futex
    };
    (getdents64) => {
        libc::SYS_getdents64
    };
    (geteuid) => {
        libc::SYS_geteuid
    };
    (getpid) => {
        libc::SYS_getpid
    };
    (getrandom) => {
        libc::SYS_getrandom
    };
    (getsockname) => {
        libc::SYS_getsockname
    };
    (getsockopt) => {
        libc::SYS_getsockopt
    };
    (gettid) => {
        libc::SYS_gettid
    };
    (getuid) => {
        libc::SYS_getuid
    };
    (inotify_add_watch) => {
        libc::SYS_inotify_add_watch
    };
    (inotify_init1) => {
        libc::SYS_inotify_init1
    };
    (inotify_rm_watch) => {
        libc::SYS_inotify_rm_watch
    };
    (ioctl) => {
        libc::SYS_ioctl
    };
    (listen) => {
        libc::SYS_listen
    };
    (lseek) => {
        libc::SYS_lseek
    };
    (madvise) => {
        libc::SYS_madvise
    };
    (mkdir) => {
        libc::SYS_mkdir
    };
    (mmap) => {
        libc::SYS_mmap
    };
    (mprotect) => {
        libc::SYS_mprotect
    };
    (mremap) => {
        libc::SYS_mremap
    };
    (munmap) => {
        libc::SYS_munmap
    };
    (nanosleep) => {
        libc::SYS_nanosleep
    };
    (newfstatat) => {
        libc::SYS_newfstatat
    };
    (openat) => {
        libc::SYS_openat
    };
    (pipe2) => {
        libc::SYS_pipe2
    };
    (poll) => {
        libc::SYS_poll
    };
    (ppoll) => {
        libc::SYS_ppoll
    };
    (prctl) => {
        libc::SYS_prctl
    };
    (pread64) => {
        libc::SYS_pread64
    };
    (prlimit64) => {
        libc::SYS_prlimit64
    };
    (read) => {
        libc::SYS_read
    };
    (readlink) => {
        libc::SYS_readlink
    };
    (recvfrom) => {
        libc::SYS_recvfrom
    };
    (recvmsg) => {
        libc::SYS_recvmsg
    };
    (rename) => {
        libc::SYS_rename
    };
    (restart_syscall) => {
        libc::SYS_restart_syscall
    };
    (rseq) => {
        libc::SYS_rseq
    };
    (rt_sigaction) => {
        libc::SYS_rt_sigaction
    };
    (rt_sigprocmask) => {
        libc::SYS_rt_sigprocmask
    };
    (rt_sigreturn) => {
        libc::SYS_rt_sigreturn
    };
    (sched_getaffinity) => {
        libc::SYS_sched_getaffinity
    };
    (sched_yield) => {
        libc::SYS_sched_yield
    };
    (sendmsg) => {
        libc::SYS_sendmsg
    };
    (sendto) => {
        libc::SYS_sendto
    };
    (set_robust_list) => {
        libc::SYS_set_robust_list
    };
    (set_tid_address) => {
        libc::SYS_set_tid_address
    };
    (setsockopt) => {
        libc::SYS_setsockopt
    };
    (shutdown) => {
        libc::SYS_shutdown
    };
    (sigaltstack) => {
        libc::SYS_sigaltstack
    };
    (socket) => {
        libc::SYS_socket
    };
    (socketpair) => {
        libc::SYS_socketpair
    };
    (lstat) => {
        libc::SYS_lstat
    };
    (stat) => {
        libc::SYS_stat
    };
    (timerfd_create) => {
        libc::SYS_timerfd_create
    };
    (timerfd_settime) => {
        libc::SYS_timerfd_settime
    };
    (statfs) => {
        libc::SYS_statfs
    };
    (statx) => {
        libc::SYS_statx
    };
    (unlink) => {
        libc::SYS_unlink
    };
    (wait4) => {
        libc::SYS_wait4
    };
    (write) => {
        libc::SYS_write
    };
    (writev) => {
        libc::SYS_writev
    };
}

syscalls! {
    // Seen in the measured run.
    accept4, access, arch_prctl, bind, brk, chmod, clone3, close, connect, dup2,
    epoll_create1, epoll_ctl, epoll_wait, eventfd2, execve, exit_group,
    faccessat2, fcntl, fsync, futex, getdents64, geteuid, getpid, getrandom,
    getsockname, getsockopt, gettid, inotify_add_watch, inotify_init1, ioctl,
    listen, mkdir, mmap, mprotect, munmap, newfstatat, openat, pipe2, poll,
    ppoll, prctl, pread64, prlimit64, read, recvfrom, recvmsg, rename,
    restart_syscall, rseq, rt_sigaction, rt_sigprocmask, rt_sigreturn,
    sched_getaffinity, sendmsg, sendto, set_robust_list, set_tid_address,
    setsockopt, shutdown, sigaltstack, socket, socketpair, statfs, statx,
    wait4, write, writev,
    // Margin: a worker thread that ends (tokio's blocking pool) calls exit.
    exit,
    // Margin: the allocator returns and resizes memory.
    madvise, mremap,
    // Margin: sleeps and yields in the runtime and in retry waits.
    clock_nanosleep, nanosleep, sched_yield,
    // Margin: removing a file holdfast owns (a policy that no longer
    // enforces sysctls or limits), or a temp file after a failed write.
    unlink,
    // Margin: fsync's cheaper sibling, lseek and fstat on older libc paths.
    fdatasync, lseek, fstat,
    // Margin: process spawning falls back to clone, and dup/dup3 around it.
    clone, dup, dup3,
    // Margin: a watch removed when a watched file disappears.
    inotify_rm_watch,
    // Margin: epoll_pwait on libc versions that prefer it; getuid and
    // readlink in systemctl's error paths.
    epoll_pwait, getuid, readlink,
    // Writes that cannot leave the host root (host::HostRoot::write_atomic,
    // write_kernel_file, create_kernel_dir, remove_file): openat2 with
    // RESOLVE_IN_ROOT/RESOLVE_BENEATH, then mkdirat, renameat (renameat2 on
    // libc versions that implement one with the other), unlinkat, and the
    // explicit mode and owner of every file holdfast creates. Where openat2
    // is missing (ENOSYS: an older kernel, or a seccomp filter that does
    // not know it) the same resolution walks the path with openat and
    // readlinkat.
    openat2, readlinkat, mkdirat, renameat, renameat2, unlinkat, fchmod, fchown,
    // A policy module with `unload: true` (host::HostRoot::unload_module).
    // Loading stays refused: init_module and finit_module are not listed.
    delete_module,
    // Older generations' libc: glibc 2.31 (Debian 11) implements realpath()
    // (under std::fs::canonicalize, the policy sources) with lstat, and
    // stat() with stat, where 2.36 calls newfstatat.
    lstat, stat,
    // The D-Bus client's poller (polling, under zbus) times its waits with
    // a timerfd when it can have one; refused, it fell back to epoll
    // timeouts, at the cost of an EPERM at every start.
    timerfd_create, timerfd_settime,
    // The abort path: a panic aborts (release profile), and abort() raises
    // SIGABRT with tgkill (after rt_sigprocmask, getpid, gettid, which are
    // above); without it the process died of SIGSEGV instead. getcwd for
    // the panic message's backtrace paths.
    tgkill, getcwd,
}
