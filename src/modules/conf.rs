//! modprobe.d configuration, read as modprobe (kmod) reads it. Pure; the
//! caller reads the files.
//!
//! - Files: `*.conf` in /etc/modprobe.d, /run/modprobe.d,
//!   /usr/local/lib/modprobe.d, /usr/lib/modprobe.d and /lib/modprobe.d; a
//!   file masks files of the same name in later directories, and the rest
//!   are read sorted by name (the order sysctl.d has, see
//!   [`crate::sysctl::conf::boot_order`]).
//! - Lines: `#` starts a comment line, a trailing `\` joins the next line;
//!   module names in commands are taken with `-` as `_`.
//! - `install MODULE COMMAND…`: `modprobe MODULE` runs COMMAND instead of
//!   loading the module. Only the first `install` line of a module counts
//!   (kmod takes the first, as module-init-tools did), so a file that
//!   sorts earlier wins.
//! - `blacklist MODULE`: the module is not loaded through its aliases (a
//!   device that appears); `modprobe MODULE` by name still loads it, which
//!   is why a disabled module needs both lines (and why compliance content
//!   checks both).

use std::path::{Path, PathBuf};

use super::ModuleName;

/// One line of a modprobe.d file that concerns disabling a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub file: PathBuf,
    /// The line the command starts on.
    pub line: u32,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `install MODULE COMMAND…`: the module name (with `_`) and the
    /// command, its words joined by one space.
    Install { module: String, run: String },
    /// `blacklist MODULE`.
    Blacklist { module: String },
}

impl Command {
    fn module(&self) -> &str {
        match self {
            Command::Install { module, .. } | Command::Blacklist { module } => module,
        }
    }
}

/// Parses one file; other commands (`alias`, `options`, `softdep`, …) and
/// lines modprobe would reject are skipped.
pub fn parse(file: &Path, text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((idx, first)) = lines.next() {
        let mut logical = first.to_string();
        while logical.ends_with('\\') {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next),
                None => break,
            }
        }
        let mut words = logical.split_whitespace();
        let (Some(verb), Some(module)) = (words.next(), words.next()) else {
            continue;
        };
        if verb.starts_with('#') {
            continue;
        }
        let module = module.replace('-', "_");
        let command = match verb {
            "install" => {
                let run: Vec<&str> = words.collect();
                if run.is_empty() {
                    continue;
                }
                Command::Install {
                    module,
                    run: run.join(" "),
                }
            }
            "blacklist" => Command::Blacklist { module },
            _ => continue,
        };
        out.push(Line {
            file: file.to_path_buf(),
            line: u32::try_from(idx + 1).unwrap_or(u32::MAX),
            command,
        });
    }
    out
}

/// What modprobe does with one module, given every line in reading order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decided<'a> {
    /// The `install` line modprobe runs instead of loading the module.
    pub install: Option<&'a Line>,
    /// A `blacklist` line of the module (the first).
    pub blacklist: Option<&'a Line>,
}

impl Decided<'_> {
    /// Whether `modprobe NAME` fails or does nothing: the module's install
    /// command is `false` or `true`.
    pub fn install_refuses(&self) -> bool {
        self.install.is_some_and(|l| match &l.command {
            Command::Install { run, .. } => is_refusal(run),
            Command::Blacklist { .. } => false,
        })
    }
}

/// Decides `module` over `lines` (in reading order).
pub fn decide<'a>(lines: &'a [Line], module: &ModuleName) -> Decided<'a> {
    let mut decided = Decided::default();
    for l in lines
        .iter()
        .filter(|l| l.command.module() == module.as_str())
    {
        match l.command {
            Command::Install { .. } if decided.install.is_none() => decided.install = Some(l),
            Command::Blacklist { .. } if decided.blacklist.is_none() => {
                decided.blacklist = Some(l);
            }
            _ => {}
        }
    }
    decided
}

/// An install command that loads nothing: `/bin/false` (modprobe fails, what
/// CIS asks for) or `/bin/true` (modprobe succeeds silently, the older
/// advice), wherever the binary lives.
fn is_refusal(run: &str) -> bool {
    let program = run.split_whitespace().next().unwrap_or("");
    let name = program.rsplit('/').next().unwrap_or(program);
    matches!(name, "false" | "true")
}

/// The lines holdfast's file holds for the modules it disables.
pub fn render(modules: &[&ModuleName]) -> String {
    let mut out = String::from(
        "# Managed by holdfast: the kernel modules its policy disables. Do not edit:\n\
         # holdfast rewrites this file. `install NAME /bin/false` makes `modprobe NAME`\n\
         # fail (modprobe runs the first install line of a module, and this file sorts\n\
         # first); `blacklist NAME` keeps the module from loading through its aliases.\n",
    );
    for m in modules {
        out.push_str(&format!("install {m} /bin/false\nblacklist {m}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(files: &[(&str, &str)]) -> Vec<Line> {
        files
            .iter()
            .flat_map(|(name, text)| parse(Path::new(name), text))
            .collect()
    }

    fn name(s: &str) -> ModuleName {
        ModuleName::parse(s).unwrap()
    }

    #[test]
    fn parses_install_and_blacklist_with_continuations_and_dashes() {
        let got = parse(
            Path::new("/etc/modprobe.d/a.conf"),
            "# install cramfs /bin/false\n\
             install usb-storage /bin/false\n\
             blacklist   usb_storage\n\
             options usb_storage delay_use=1\n\
             install hfs \\\n  /bin/true\n\
             install udf\n",
        );
        let summary: Vec<(u32, String)> = got
            .iter()
            .map(|l| (l.line, format!("{:?}", l.command)))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    2,
                    "Install { module: \"usb_storage\", run: \"/bin/false\" }".to_string()
                ),
                (3, "Blacklist { module: \"usb_storage\" }".to_string()),
                (
                    5,
                    "Install { module: \"hfs\", run: \"/bin/true\" }".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_first_install_line_wins_and_a_blacklist_anywhere_counts() {
        let all = lines(&[
            (
                "/etc/modprobe.d/00-holdfast.conf",
                "install cramfs /bin/false\n",
            ),
            (
                "/usr/lib/modprobe.d/50-site.conf",
                "install cramfs /sbin/modprobe --ignore-install cramfs\nblacklist cramfs\ninstall jffs2 /sbin/modprobe --ignore-install jffs2\n",
            ),
            ("/etc/modprobe.d/90-late.conf", "install jffs2 /bin/false\n"),
        ]);
        let cramfs = decide(&all, &name("cramfs"));
        assert!(cramfs.install_refuses());
        assert_eq!(cramfs.blacklist.map(|l| l.line), Some(2));
        let jffs2 = decide(&all, &name("jffs2"));
        assert!(!jffs2.install_refuses(), "an earlier file's install wins");
        assert_eq!(
            jffs2.install.map(|l| l.file.display().to_string()),
            Some("/usr/lib/modprobe.d/50-site.conf".into())
        );
        assert_eq!(decide(&all, &name("hfs")), Decided::default());
    }

    #[test]
    fn true_and_false_anywhere_refuse_and_other_commands_do_not() {
        assert!(is_refusal("/bin/false"));
        assert!(is_refusal("/usr/bin/true"));
        assert!(is_refusal("false"));
        assert!(!is_refusal("/sbin/modprobe --ignore-install cramfs"));
        assert!(!is_refusal("/bin/falsely"));
    }

    #[test]
    fn renders_both_lines_per_module_after_the_mark() {
        let (a, b) = (name("cramfs"), name("usb-storage"));
        let text = render(&[&a, &b]);
        assert!(text.starts_with(crate::item::OWN_UNIT_FILE_MARK));
        assert!(text.ends_with(
            "install cramfs /bin/false\nblacklist cramfs\ninstall usb-storage /bin/false\nblacklist usb-storage\n"
        ));
        let back = parse(Path::new("/x.conf"), &text);
        assert!(decide(&back, &b).install_refuses());
        assert!(decide(&back, &b).blacklist.is_some());
    }
}
