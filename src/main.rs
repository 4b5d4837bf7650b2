//! The `holdfast` command line. Errors become exit code 1 here, at the edge;
//! everything below returns typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use std::time::Duration;

use holdfast::daemon::listen::{self, ListenAddr};
use holdfast::daemon::schedule::TrackerConfig;
use holdfast::daemon::status::StatusJson;
use holdfast::daemon::{self, ServeOptions, client};
use holdfast::engine::{self, ApplyOptions, Pass};
use holdfast::host::HostRoot;
use holdfast::item;
use holdfast::journal::store as journal_store;
use holdfast::journal::{Journal, Selector};
use holdfast::policy::DEFAULT_OVERCOMMIT_HEADROOM_PERCENT;
use holdfast::policy::{Policy, PolicyErrors};
use holdfast::posture::Severity;
use holdfast::report::{self, TextStyle};
use holdfast::rollback::RollbackOptions;
use holdfast::sources::{self, LoadError};

use holdfast::report::{EXIT_COMPLIANT, EXIT_DRIFT, EXIT_ERROR, EXIT_REJECTED};

/// How long `holdfast status` waits for the daemon.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `holdfast apply` or `rollback` waits for a running daemon's
/// answer: its turn, then the pass (restarts included).
const ASK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Parser, Debug)]
#[command(
    name = "holdfast",
    version,
    about = "Keep a Linux host converged on a declarative hardening policy",
    long_about = "holdfast reads a desired-state policy (YAML) and checks or converges the host on it: \
sysctls in /proc/sys (persisted to /etc/sysctl.d so they hold across boots), session limits \
(pam_limits, /etc/security/limits.d) and systemd services' LimitNOFILE (drop-ins, verified on \
the running processes), and cgroup v2 slices (through systemd, or in its own subtree).\n\n\
Exit codes: 0 = compliant, 1 = error (bad policy, I/O), 2 = drift found (check, plan, status) or left after apply, \
3 = the daemon rejected the newest policy push (status).",
    after_help = "Policy sources: --policy PATH (file or directory of *.yaml, repeatable); by default \
/etc/holdfast/policy.d/*.yaml under --root, else the bundled baseline (audit mode)."
)]
struct Cli {
    /// The host root: every host path (/proc, /sys, /etc, /run) is taken under it.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    root: PathBuf,

    /// A policy file or directory of *.yaml files; repeatable, merged in order.
    #[arg(long, global = true, value_name = "PATH")]
    policy: Vec<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compare the host with the policy and report drift. Never writes.
    Check,
    /// Show what `apply` would change, with safety verdicts. Never writes.
    Plan,
    /// Run one reconcile pass: correct drift of settings in enforce mode,
    /// persist enforced sysctls, verify by reading back. When `holdfast
    /// serve` runs on this root, it runs the pass (with the policy it reads)
    /// and this prints its report.
    #[command(
        after_help = "With a daemon running (its socket under the root, /run/holdfast/holdfast.sock), apply asks it: the daemon reads its policy again, runs one full pass that ignores its backoff, ends a pause a rollback left, and answers with this report and exit code. Only root may ask; --policy is refused then (push the policy to the daemon's directory instead)."
    )]
    Apply {
        /// Also restart services whose running processes still have old
        /// limits (never done without this flag).
        #[arg(long)]
        restart_services: bool,
        /// How long to wait for another holdfast writing to this host
        /// (another apply; a daemon without its Unix socket) before giving
        /// up with exit 1 (at most 1h).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = lock_wait_arg)]
        lock_wait: Duration,
    },
    /// Put back what the originals journal says the host had before holdfast
    /// first changed it: runtime sysctls, holdfast's files (restored, or
    /// removed when there was none), then one daemon-reload, runtime unit
    /// properties and holdfast's own cgroups. Services that still run with
    /// holdfast's drop-in settings are reported restart-required. Restored
    /// entries leave the journal. Exits 0 when everything selected is back,
    /// 2 when something is left (or, with --dry-run, when there is
    /// something to roll back), 1 on error.
    #[command(
        after_help = "With a daemon running (its socket under the root, /run/holdfast/holdfast.sock), rollback asks it: the daemon rolls back, then reports what it rolled back as drift and leaves it alone (across its restarts too) until the policy changes or `holdfast apply` asks for enforcement again. Only root may ask."
    )]
    Rollback {
        /// What to roll back: item kinds (sysctl, limits-file, unit-file,
        /// cgroup, ...) or keys (net.ipv4.ip_forward,
        /// /etc/sysctl.d/99-zz-holdfast.conf). Default: everything.
        #[arg(value_name = "SELECTOR")]
        selectors: Vec<String>,
        /// Show what would be restored; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also restart services whose drop-in was restored or removed and
        /// that still run (never done without this flag).
        #[arg(long)]
        restart_services: bool,
        /// How long to wait for another holdfast writing to this host before
        /// giving up with exit 1 (at most 1h).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = lock_wait_arg)]
        lock_wait: Duration,
    },
    /// Audit the security posture of every running service (managed or
    /// not): no_new_privs, seccomp, capabilities, root. Needs systemd.
    /// Exits 2 when a finding at or above --fail-on exists.
    Audit {
        /// The lowest severity that makes the exit code 2.
        #[arg(long, value_enum, default_value_t = Level::Medium)]
        fail_on: Level,
    },
    /// Generate the man page or shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// Validate policy files without looking at the host: the --policy
    /// paths, then FILEs; with neither, what `check` would load. With
    /// --policy-dir, validate candidate files merged with the files already
    /// in that directory, each replacing the file of the same name: what the
    /// daemon would load once they are pushed.
    Validate {
        /// Policy files or directories to validate together (merged in order,
        /// after any --policy paths); with --policy-dir, candidate files.
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The policy directory the candidates are going into
        /// (e.g. /etc/holdfast/policy.d).
        #[arg(long, value_name = "DIR")]
        policy_dir: Option<PathBuf>,
        /// The name the (single) candidate will have in --policy-dir, when
        /// its own name differs (config management validates a temp file).
        #[arg(long = "as", value_name = "NAME", requires = "policy_dir")]
        as_name: Option<String>,
    },
    /// Run the daemon: reconcile on every change (inotify), on policy pushes
    /// and every --rescan, and serve the status API (GET /status, /healthz,
    /// /metrics). SIGHUP reloads the policy; SIGTERM stops after the pass in
    /// flight.
    #[command(
        after_help = "Listens by default on 127.0.0.1:80, [::1]:80 and the Unix socket \
/run/holdfast/holdfast.sock (under --root), or on the sockets systemd passes (LISTEN_FDS). \
An address that cannot be bound is reported; reconciling goes on."
    )]
    Serve(ServeArgs),
    /// Ask the running daemon for its status and print it; exit 0 when
    /// compliant, 2 when not, 3 while the newest policy push is rejected,
    /// 1 when the daemon cannot be reached (or has not finished its first
    /// pass).
    Status {
        /// The daemon's address: a Unix socket path or IP:PORT
        /// [default: /run/holdfast/holdfast.sock under --root].
        #[arg(long, value_name = "ADDR")]
        connect: Option<String>,
        /// Show only items in these states (repeatable or comma-separated).
        #[arg(long, value_name = "STATE")]
        state: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Where the status API listens: IP:PORT (loopback unless --allow-remote)
    /// or a Unix socket path; repeatable. Replaces the defaults.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Allow --listen on non-loopback addresses (the API has no authentication).
    #[arg(long)]
    allow_remote: bool,
    /// A name clients may use to reach the API over TCP (the Host header),
    /// besides localhost, loopback addresses and the listener's own address;
    /// repeatable. Other Host values get 421 (DNS rebinding protection).
    #[arg(long, value_name = "NAME", value_parser = api_host_arg)]
    api_host: Vec<String>,
    /// Do not install the seccomp allow-list (no_new_privs and the
    /// capability drop still happen). For diagnosing a system call the list
    /// lacks; see the book's "Service security posture" (docs/src/posture.md).
    #[arg(long)]
    no_seccomp: bool,
    /// Full rescan interval (re-reads everything, re-arms watches): 60s, 5m, 500ms;
    /// 100ms to 24h.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = rescan_arg)]
    rescan: Duration,
    /// How long the policy directory must be quiet before a push is loaded
    /// (at most 1m).
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = debounce_arg)]
    debounce: Duration,
    /// Corrections within --contested-window that mark a setting contested
    /// (corrections are then backed off); 0 turns detection off.
    #[arg(long, value_name = "N", default_value_t = 5)]
    contested_after: u32,
    /// The window of --contested-after (1s to 24h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = window_arg)]
    contested_window: Duration,
    /// How long to wait for another holdfast writing to this host (an
    /// `apply` in progress) before giving up with exit 1 (at most 1h).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = lock_wait_arg)]
    lock_wait: Duration,
    /// Export every setting's state in /metrics (eight series per setting).
    /// By default only settings that drift get a series of their own.
    #[arg(long)]
    metrics_per_setting: bool,
}

#[derive(Subcommand, Debug)]
enum Generate {
    /// The man page (roff) on standard output; with --dir, holdfast(1) and
    /// one page per subcommand (holdfast-check(1), ...) into DIR. The date
    /// is SOURCE_DATE_EPOCH's when set (reproducible builds), else today.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Shell completions on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    /// SARIF 2.1.0 (audit only).
    Sarif,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Low,
    Medium,
    High,
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, which config management would read as
    // drift: usage errors are errors (1) here.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_COMPLIANT
            });
        }
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<u8> {
    let host = HostRoot::new(&cli.root);
    if cli.format == Format::Sarif && !matches!(cli.command, Command::Audit { .. }) {
        anyhow::bail!("--format sarif is for `holdfast audit`; use text or json here");
    }
    match &cli.command {
        Command::Generate { what } => generate(what),
        Command::Audit { fail_on } => audit(&host, cli.format, *fail_on),
        Command::Validate {
            files,
            policy_dir,
            as_name,
        } => {
            let read = match policy_dir {
                None => {
                    let paths: Vec<PathBuf> = cli.policy.iter().chain(files).cloned().collect();
                    sources::read(&host, &paths)
                }
                Some(dir) => {
                    sources::read_with_candidates(dir, &candidates(files, as_name.as_deref())?)
                }
            };
            Ok(validate(
                &read.context("cannot read the policy")?,
                cli.format,
            ))
        }
        Command::Check => pass(cli, &host, "check", TextStyle::Check, &engine::plan),
        Command::Plan => pass(cli, &host, "plan", TextStyle::Plan, &engine::plan),
        Command::Apply {
            restart_services,
            lock_wait,
        } => {
            let flags = [("restart_services", *restart_services)];
            if let Some(code) = through_daemon(cli, &host, "apply", &flags, &[])? {
                return Ok(code);
            }
            let options = ApplyOptions {
                restart_services: *restart_services,
            };
            let run = |host: &HostRoot, policy: &Policy| {
                engine::apply_in(&engine::Context::for_host(host), policy, options)
            };
            if !cli.root.is_dir() {
                anyhow::bail!("--root {}: not a directory", cli.root.display());
            }
            // One writer per host: held until the report is printed.
            let _lock = host.lock_writers("apply", *lock_wait)?;
            pass(cli, &host, "apply", TextStyle::Apply, &run)
        }
        Command::Rollback {
            selectors,
            dry_run,
            restart_services,
            lock_wait,
        } => {
            let flags = [
                ("dry_run", *dry_run),
                ("restart_services", *restart_services),
            ];
            if let Some(code) = through_daemon(cli, &host, "rollback", &flags, selectors)? {
                return Ok(code);
            }
            rollback(
                cli,
                &host,
                RollbackOptions {
                    dry_run: *dry_run,
                    restart_services: *restart_services,
                    selectors: selectors.iter().map(|s| Selector::parse(s)).collect(),
                    overcommit_headroom_percent: DEFAULT_OVERCOMMIT_HEADROOM_PERCENT,
                },
                *lock_wait,
            )
        }
        Command::Serve(args) => serve(cli, host, args),
        Command::Status { connect, state } => status(&host, connect.as_deref(), state, cli.format),
    }
}

/// A host name for `--api-host`: letters, digits, `-` and `.` only.
fn api_host_arg(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{}` is not a host name",
            holdfast::host::escape_control(s)
        ))
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn rescan_arg(s: &str) -> Result<Duration, String> {
    daemon::state::bounded_duration(s, Duration::from_millis(100), DAY)
}

fn debounce_arg(s: &str) -> Result<Duration, String> {
    daemon::state::bounded_duration(s, MS, Duration::from_secs(60))
}

fn window_arg(s: &str) -> Result<Duration, String> {
    daemon::state::bounded_duration(s, Duration::from_secs(1), DAY)
}

fn lock_wait_arg(s: &str) -> Result<Duration, String> {
    daemon::state::bounded_duration(s, MS, HOUR)
}

fn serve(cli: &Cli, host: HostRoot, args: &ServeArgs) -> anyhow::Result<u8> {
    init_logging();
    if !cli.root.is_dir() {
        anyhow::bail!("--root {}: not a directory", cli.root.display());
    }
    let listen = args
        .listen
        .iter()
        .map(|a| ListenAddr::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .context("--listen")?;
    // One writer per host, for the daemon's whole life.
    let _lock = host.lock_writers("serve", args.lock_wait)?;
    let mut trackers = TrackerConfig::default();
    trackers.contest.after = args.contested_after;
    trackers.contest.window = args.contested_window;
    daemon::serve(&ServeOptions {
        host,
        policy_paths: cli.policy.clone(),
        listen,
        allow_remote: args.allow_remote,
        seccomp: !args.no_seccomp,
        api_hosts: args.api_host.clone(),
        metrics_per_setting: args.metrics_per_setting,
        rescan: args.rescan,
        debounce: args.debounce,
        trackers,
    })?;
    Ok(EXIT_COMPLIANT)
}

/// Logs go to the journal when stderr is connected to it (a systemd
/// unit), else to stderr. `HOLDFAST_LOG` sets the filter (default `info`).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("HOLDFAST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(journald)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn status(
    host: &HostRoot,
    connect: Option<&str>,
    states: &[String],
    format: Format,
) -> anyhow::Result<u8> {
    let addr = match connect {
        Some(a) => ListenAddr::parse(a).context("--connect")?,
        None => ListenAddr::Unix(host.path(listen::DEFAULT_SOCKET)),
    };
    let mut target = String::from("/status?format=json");
    for s in states {
        target.push_str("&state=");
        target.extend(form_urlencoded::byte_serialize(s.as_bytes()));
    }
    let response = client::get(&addr, &target, "application/json", STATUS_TIMEOUT)?;
    let body = String::from_utf8_lossy(&response.body);
    if response.status != 200 {
        anyhow::bail!(
            "{addr}: HTTP {}: {}",
            response.status,
            holdfast::host::escape_control(body.trim_end())
        );
    }
    let doc: StatusJson = serde_json::from_str(&body)
        .with_context(|| format!("{addr}: the status is not the JSON this version reads"))?;
    match format {
        Format::Json | Format::Sarif => print!("{body}"),
        Format::Text => print!("{}", daemon::status::to_text(&doc)),
    }
    if doc.last_pass.is_none() {
        // Neither compliant nor drifted: not known yet.
        eprintln!("holdfast: {addr}: the daemon is starting and has not finished its first pass");
        return Ok(EXIT_ERROR);
    }
    Ok(if doc.policy.last_error.is_some() {
        EXIT_REJECTED
    } else if doc.compliant {
        EXIT_COMPLIANT
    } else {
        EXIT_DRIFT
    })
}

/// When a daemon serves this root's Unix socket, `apply` and `rollback` ask
/// it to run the pass (it holds the writer lock for its whole life) and
/// print its answer: the same report and exit code as in-process. `None`:
/// no daemon listens there; the command runs here.
fn through_daemon(
    cli: &Cli,
    host: &HostRoot,
    command: &str,
    flags: &[(&str, bool)],
    selectors: &[String],
) -> anyhow::Result<Option<u8>> {
    let path = host.path(listen::DEFAULT_SOCKET);
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
            "holdfast {command}: a holdfast daemon may run on this host, and only root may ask it \
             to write ({}: {e}); nothing was changed. Run it as root (sudo holdfast {command})",
            path.display()
        ),
        // Nothing listens there: no daemon, or one without its Unix socket.
        Err(_) => return Ok(None),
    }
    if !cli.policy.is_empty() {
        anyhow::bail!(
            "a holdfast daemon runs on this host ({}) and enforces the policy it reads itself: \
             push the policy to its directory and run `holdfast {command}` without --policy \
             (the daemon then applies it), or stop the daemon (systemctl stop holdfast) first",
            path.display()
        );
    }
    let format = match cli.format {
        Format::Text => "text",
        Format::Json | Format::Sarif => "json",
    };
    let mut target = format!("/v1/{command}?format={format}");
    for (name, on) in flags {
        if *on {
            target.push_str(&format!("&{name}=1"));
        }
    }
    for s in selectors {
        target.push_str("&select=");
        target.extend(form_urlencoded::byte_serialize(s.as_bytes()));
    }
    let addr = ListenAddr::Unix(path);
    let response = client::post(&addr, &target, ASK_TIMEOUT)?;
    let body = String::from_utf8_lossy(&response.body);
    if response.status != 200 {
        eprint!("{}", holdfast::host::escape_control(&body));
        return Ok(Some(EXIT_ERROR));
    }
    let exit = response
        .header("x-holdfast-exit")
        .and_then(|v| v.parse::<u8>().ok())
        .with_context(|| format!("{addr}: the daemon's answer has no exit code"))?;
    let split = response
        .header("x-holdfast-stdout-bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| body.is_char_boundary(n))
        .unwrap_or(body.len());
    let (stdout, stderr) = body.split_at(split);
    print!("{stdout}");
    eprint!("{stderr}");
    Ok(Some(exit))
}

fn pass(
    cli: &Cli,
    host: &HostRoot,
    command: &str,
    style: TextStyle,
    run: &dyn Fn(&HostRoot, &Policy) -> Pass,
) -> anyhow::Result<u8> {
    if !cli.root.is_dir() {
        anyhow::bail!("--root {}: not a directory", cli.root.display());
    }
    let policy = match sources::load(host, &cli.policy) {
        Ok(p) => p,
        Err(LoadError::Invalid(errors)) => return Ok(report_invalid(&errors)),
        Err(e) => return Err(e).context("cannot load the policy"),
    };
    let mut result = run(host, &policy);
    match cli.format {
        Format::Json | Format::Sarif => {
            // Each item's original, read after the pass (an apply may have
            // just recorded it). An unreadable journal is a warning here.
            let originals = journal_store::load(host).unwrap_or_else(|e| {
                result.warnings.push(format!("originals journal: {e}"));
                Journal::default()
            });
            println!(
                "{}",
                report::to_json(
                    command,
                    &cli.root.display().to_string(),
                    &policy,
                    &result,
                    &originals
                )
            );
        }
        Format::Text => print!("{}", report::to_text(&policy, &result, style)),
    }
    Ok(if item::all_compliant(&result.items) {
        EXIT_COMPLIANT
    } else {
        EXIT_DRIFT
    })
}

fn rollback(
    cli: &Cli,
    host: &HostRoot,
    mut options: RollbackOptions,
    lock_wait: Duration,
) -> anyhow::Result<u8> {
    if !cli.root.is_dir() {
        anyhow::bail!("--root {}: not a directory", cli.root.display());
    }
    // The policy's overcommit headroom, when the policy loads; rollback
    // itself needs no policy.
    if let Ok(policy) = sources::load(host, &cli.policy) {
        options.overcommit_headroom_percent = policy.safety.overcommit_headroom_percent();
    }
    // One writer per host. A dry run writes nothing and takes no lock.
    let _lock = if options.dry_run {
        None
    } else {
        Some(host.lock_writers("rollback", lock_wait).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nrollback runs only while no other holdfast writes: a running `holdfast serve` \
                 would enforce the policy again. Switch the policy to audit mode, stop the daemon \
                 (systemctl stop holdfast), run `holdfast rollback`, then start the daemon again"
            )
        })?)
    };
    let report = holdfast::rollback::run(&engine::Context::for_host(host), &options)?;
    match cli.format {
        Format::Json | Format::Sarif => println!(
            "{}",
            report::rollback_json(&cli.root.display().to_string(), &report)
        ),
        Format::Text => print!("{}", report::rollback_text(&report)),
    }
    Ok(if report.complete() {
        EXIT_COMPLIANT
    } else {
        EXIT_DRIFT
    })
}

fn generate(what: &Generate) -> anyhow::Result<u8> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    match what {
        Generate::Man { dir: None } => {
            let page = man_page(&clap_mangen::Man::new(cmd).date(man_date()))?;
            std::io::Write::write_all(&mut out, page.as_bytes())
                .context("cannot write the man page")?;
        }
        Generate::Man { dir: Some(dir) } => man_pages(cmd, dir)?,
        Generate::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "holdfast", &mut out);
        }
    }
    Ok(EXIT_COMPLIANT)
}

/// holdfast(1) and a page for every subcommand that is not hidden, into
/// `dir`, each named after its command (holdfast-check.1, ...).
fn man_pages(cmd: clap::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    fn write(cmd: clap::Command, dir: &std::path::Path, date: &str) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            write(sub, dir, date)?;
        }
        let man = clap_mangen::Man::new(cmd).date(date);
        let path = dir.join(man.get_filename());
        std::fs::write(&path, man_page(&man)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write(cmd, dir, &man_date())
}

/// A page as clap_mangen renders it, made clean for `mandoc -Tlint`: the
/// line break it puts around a blank line (before a list of possible
/// values) is one paragraph break, and no line ends in blanks.
fn man_page(man: &clap_mangen::Man) -> anyhow::Result<String> {
    let mut raw = Vec::new();
    man.render(&mut raw).context("cannot render the man page")?;
    let text = String::from_utf8_lossy(&raw).replace("\n.br\n\n.br\n", "\n.sp\n");
    let mut page: String = text
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    page.push('\n');
    Ok(page)
}

/// The man pages' date (`YYYY-MM-DD`): SOURCE_DATE_EPOCH's, else today's.
fn man_date() -> String {
    let at = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or_else(std::time::SystemTime::now, |secs| {
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        });
    let mut day = daemon::state::rfc3339(at);
    day.truncate(10);
    day
}

fn audit(host: &HostRoot, format: Format, fail_on: Level) -> anyhow::Result<u8> {
    let ctx = engine::Context::for_host(host);
    let Some(client) = ctx.systemd else {
        anyhow::bail!(
            "audit reads systemd's running services: systemd is not PID 1 here (or --root is not /)"
        );
    };
    let result = holdfast::audit::run(host, client).context("cannot list the running services")?;
    match format {
        Format::Text => print!("{}", result.to_text()),
        Format::Json => println!("{}", result.to_json()),
        Format::Sarif => println!(
            "{}",
            serde_json::to_string_pretty(&result.to_sarif()).unwrap_or_default()
        ),
    }
    let level = match fail_on {
        Level::Low => Severity::Low,
        Level::Medium => Severity::Medium,
        Level::High => Severity::High,
    };
    Ok(if result.fails(level) {
        EXIT_DRIFT
    } else {
        EXIT_COMPLIANT
    })
}

fn report_invalid(errors: &PolicyErrors) -> u8 {
    eprintln!("{errors}");
    eprintln!(
        "holdfast: policy rejected ({} error{}); nothing was applied",
        errors.0.len(),
        if errors.0.len() == 1 { "" } else { "s" }
    );
    EXIT_ERROR
}

/// `validate --policy-dir`'s candidates: each under its own name, or the
/// single one under `--as NAME`.
fn candidates(files: &[PathBuf], as_name: Option<&str>) -> anyhow::Result<Vec<sources::Candidate>> {
    match (as_name, files) {
        (Some(name), [path]) => Ok(vec![sources::Candidate {
            path: path.clone(),
            name: name.to_string(),
        }]),
        (Some(_), _) => anyhow::bail!(
            "--as names a single candidate, but {} files were given",
            files.len()
        ),
        (None, _) => Ok(files
            .iter()
            .map(|p| sources::Candidate::named_as_is(p))
            .collect()),
    }
}

fn validate(read: &sources::PolicyFiles, format: Format) -> u8 {
    let names: Vec<String> = read.files.iter().map(|(n, _)| n.clone()).collect();
    let errors = match read.parse() {
        Ok(_) => Vec::new(),
        Err(PolicyErrors(errors)) => errors,
    };
    match format {
        Format::Json | Format::Sarif => {
            println!("{}", report::validation_json(names.clone(), &errors));
        }
        Format::Text if errors.is_empty() => println!("valid: {}", names.join(", ")),
        Format::Text => {
            for e in &errors {
                eprintln!("{e}");
            }
        }
    }
    if errors.is_empty() {
        EXIT_COMPLIANT
    } else {
        EXIT_ERROR
    }
}
