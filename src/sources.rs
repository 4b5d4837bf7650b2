//! Where the policy comes from: explicit `--policy` paths, else the policy
//! directory under the host root, else the baseline compiled into the
//! binary. This is the I/O side of `policy`.

use std::path::{Path, PathBuf};

use crate::host::{self, HostRoot, IoError};
use crate::policy::{Policy, PolicyError, PolicyErrors, Source};

/// The shipped baseline, compiled in so a fresh host can be checked with no
/// files installed.
pub const BUNDLED_BASELINE: &str = include_str!("../policies/baseline.yaml");
/// The name reports show for the bundled baseline.
pub const BUNDLED_NAME: &str = "policies/baseline.yaml (bundled)";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{}: no policy files (*.yaml, *.yml) in this directory", .0.display())]
    EmptyDir(PathBuf),
    #[error("{0}")]
    Invalid(#[from] PolicyErrors),
    #[error(
        "`{0}`: the daemon reads only *.yaml and *.yml files from its policy directory; \
         a file of this name would be ignored"
    )]
    NotPolicyName(String),
}

/// The largest policy file accepted. A policy is a few kilobytes; this is
/// far above any real one and keeps memory bounded whatever is pushed.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The largest policy accepted, all files together.
pub const MAX_POLICY_BYTES: u64 = 4 * 1024 * 1024;

/// The policy files, read, in merge order.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    /// `(name shown in reports, text)`.
    pub files: Vec<(String, String)>,
    /// Files that could not be taken as text (too large, not UTF-8), with
    /// their location; any makes the policy invalid.
    pub refused: Vec<PolicyError>,
}

impl PolicyFiles {
    pub fn parse(&self) -> Result<Policy, PolicyErrors> {
        let parsed = Policy::from_files(self.files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
        if self.refused.is_empty() {
            return parsed;
        }
        let mut errors = self.refused.clone();
        if let Err(PolicyErrors(more)) = parsed {
            errors.extend(more);
        }
        Err(PolicyErrors(errors))
    }
}

/// Reads the policy files. `explicit` are `--policy` arguments (files or
/// directories, in the order given); when empty, the host's policy
/// directory is used, and when that has no files, the bundled baseline.
/// Sizes are capped ([`MAX_FILE_BYTES`], [`MAX_POLICY_BYTES`]) before
/// anything is read into memory.
pub fn read(host: &HostRoot, explicit: &[PathBuf]) -> Result<PolicyFiles, LoadError> {
    let mut reader = Reader::default();
    if explicit.is_empty() {
        let dir = host.policy_dir();
        reader.check_dir(&dir);
        for path in yaml_files(&dir)? {
            reader.read_one(&path)?;
        }
        if reader.files.files.is_empty() && reader.files.refused.is_empty() {
            reader
                .files
                .files
                .push((BUNDLED_NAME.to_string(), BUNDLED_BASELINE.to_string()));
        }
        return Ok(reader.files);
    }
    for path in explicit {
        if path.is_dir() {
            reader.check_dir(path);
            let found = yaml_files(path)?;
            if found.is_empty() {
                return Err(LoadError::EmptyDir(path.clone()));
            }
            for p in found {
                reader.read_one(&p)?;
            }
        } else {
            reader.read_one(path)?;
        }
    }
    Ok(reader.files)
}

/// A candidate policy file and the name it is to have in the policy
/// directory (config management validates a temp file before moving it
/// into place under its real name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub name: String,
}

impl Candidate {
    /// A candidate that keeps its own file name.
    pub fn named_as_is(path: &Path) -> Candidate {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Candidate {
            path: path.to_path_buf(),
            name,
        }
    }
}

/// The policy files `dir` would hold once the candidates are in it: each
/// candidate replaces the file of the same name or joins the others, and
/// the result is in the daemon's merge order (by file name). Validating
/// this, rather than each candidate alone, catches files that are valid
/// apart but not together (`memory.high` in one, `memory.max` in another).
/// Reports name a candidate by its own path.
pub fn read_with_candidates(
    dir: &Path,
    candidates: &[Candidate],
) -> Result<PolicyFiles, LoadError> {
    let mut by_name = std::collections::BTreeMap::new();
    for path in yaml_files(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        by_name.insert(name, path);
    }
    for c in candidates {
        let hidden = c.name.starts_with('.');
        // Lowercase only, as documented: `A.YAML` is not a policy file.
        #[expect(
            clippy::case_sensitive_file_extension_comparisons,
            reason = "lowercase only"
        )]
        let yaml = c.name.ends_with(".yaml") || c.name.ends_with(".yml");
        if hidden || !yaml || c.name.contains('/') {
            return Err(LoadError::NotPolicyName(c.name.clone()));
        }
        by_name.insert(c.name.clone(), c.path.clone());
    }
    // The directory's own files are judged as the daemon would judge them;
    // a candidate is not there yet, so only its content counts.
    let mut reader = Reader::default();
    reader.check_dir(dir);
    for (name, path) in &by_name {
        if candidates.iter().any(|c| &c.name == name) {
            let file = std::fs::File::open(path).map_err(|e| IoError::new("read", path, e))?;
            reader.read_content(path, file)?;
        } else {
            reader.read_one(path)?;
        }
    }
    Ok(reader.files)
}

/// Reads and validates the policy.
pub fn load(host: &HostRoot, explicit: &[PathBuf]) -> Result<Policy, LoadError> {
    Ok(read(host, explicit)?.parse()?)
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    let mut files = host::list_files(dir, ".yaml")?;
    files.extend(host::list_files(dir, ".yml")?);
    files.sort();
    Ok(files)
}

/// Why a policy source (a file, the directory holding it) may not be
/// trusted, if it may not. Like sshd's StrictModes: it must be owned by root
/// (or by the user running holdfast, for a policy a user checks on a fake
/// root) and writable by nobody else, or anyone who can write it can rewrite
/// the host's hardening. Pure.
pub fn untrusted(owner: u32, mode: u32, me: u32) -> Option<String> {
    if owner != 0 && owner != me {
        return Some(format!("owned by uid {owner}, not by root"));
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and others",
        (true, false) => "its group",
        (false, true) => "others",
        (false, false) => return None,
    };
    Some(format!("writable by {who} (mode {:04o})", mode & 0o7777))
}

/// Why the directory that holds a policy file given by path may not be
/// trusted, if it may not: as [`untrusted`], except that a sticky
/// directory (`/tmp`, mode 1777) owned by root (or the caller) is trusted
/// with others' write permission, since no one but a file's owner may then
/// rename, replace or remove it (what the kernel's `protected_regular`
/// builds on). The file itself is judged on its own. A policy *directory*
/// never is trusted that way: anyone could add a file to it. Pure.
pub fn untrusted_holder(owner: u32, mode: u32, me: u32) -> Option<String> {
    let sticky = mode & 0o1000 != 0;
    if sticky && (owner == 0 || owner == me) {
        return None;
    }
    untrusted(owner, mode, me)
}

const TRUST_HINT: &str = "policy sources (files, their directories, a link's target) must be owned by root and writable only by it: chown root: PATH; chmod go-w PATH";

#[derive(Default)]
struct Reader {
    files: PolicyFiles,
    total: u64,
    /// Directories already judged (canonical paths), so a bad directory is
    /// reported once, not once per file in it.
    judged_dirs: Vec<PathBuf>,
}

impl Reader {
    /// Records `problem` with `path` as a refused source.
    fn distrust(&mut self, path: &Path, what: &str, problem: &str) {
        let (shown, _) = crate::policy::scan::file_name(&path.display().to_string());
        self.files.refused.push(
            PolicyError::new(
                Source {
                    file: shown,
                    line: 1,
                    column: 1,
                },
                format!("{what} is not trusted: {problem}"),
            )
            .with_hint(TRUST_HINT),
        );
    }

    /// Checks a directory policy files are read from (following a link to
    /// it). A directory that does not exist holds nothing to distrust.
    fn check_dir(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(real) = std::fs::canonicalize(dir) {
            self.judged_dirs.push(real);
        }
        if let Ok(meta) = std::fs::metadata(dir)
            && let Some(problem) = untrusted(meta.uid(), meta.mode(), euid())
        {
            self.distrust(dir, "the policy directory", &problem);
        }
    }

    /// Reads one policy file if it is trusted (see [`untrusted`]).
    fn read_one(&mut self, path: &Path) -> Result<(), IoError> {
        let file = std::fs::File::open(path).map_err(|e| IoError::new("read", path, e))?;
        {
            use std::os::unix::fs::MetadataExt;
            // The file as opened (a link's target), then the directory that
            // really holds it: whoever can write either controls the file.
            let meta = file.metadata().map_err(|e| IoError::new("stat", path, e))?;
            if let Some(problem) = untrusted(meta.uid(), meta.mode(), euid()) {
                self.distrust(path, "the policy file", &problem);
                return Ok(());
            }
            let real = std::fs::canonicalize(path).map_err(|e| IoError::new("resolve", path, e))?;
            if let Some(dir) = real.parent()
                && !self.judged_dirs.iter().any(|d| d == dir)
                && let Ok(meta) = std::fs::metadata(dir)
                && let Some(problem) = untrusted_holder(meta.uid(), meta.mode(), euid())
            {
                self.distrust(
                    path,
                    &format!("the directory {} holding the policy file", dir.display()),
                    &problem,
                );
                return Ok(());
            }
        }
        self.read_content(path, file)
    }

    /// Reads an opened policy file's text, within the size caps, refusing
    /// bytes that are not UTF-8 with their location.
    fn read_content(&mut self, path: &Path, file: std::fs::File) -> Result<(), IoError> {
        use std::io::Read;
        let name = path.display().to_string();
        let (shown, _) = crate::policy::scan::file_name(&name);
        let refuse = |message: String, hint: &str| {
            PolicyError::new(
                Source {
                    file: shown.clone(),
                    line: 1,
                    column: 1,
                },
                message,
            )
            .with_hint(hint)
        };
        // One byte over the cap tells "too large" without reading more.
        let left = MAX_FILE_BYTES.min(MAX_POLICY_BYTES.saturating_sub(self.total));
        let mut bytes = Vec::new();
        file.take(left + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| IoError::new("read", path, e))?;
        if bytes.len() as u64 > left {
            let message = if left < MAX_FILE_BYTES {
                format!(
                    "the policy is larger than {} KiB, all files together; this file is where it crosses",
                    MAX_POLICY_BYTES / 1024
                )
            } else {
                format!("the file is larger than {} KiB", MAX_FILE_BYTES / 1024)
            };
            self.files.refused.push(refuse(
                message,
                "policies are small; split a generated one, or check what wrote this file",
            ));
            self.total = MAX_POLICY_BYTES;
            return Ok(());
        }
        self.total += bytes.len() as u64;
        match String::from_utf8(bytes) {
            Ok(text) => self.files.files.push((name, text)),
            Err(e) => {
                if let Err(located) = crate::policy::scan::utf8(&shown, e.as_bytes()) {
                    self.files.refused.push(located);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn bundled_baseline_is_valid() {
        let policy = Policy::from_files([(BUNDLED_NAME, BUNDLED_BASELINE)]).unwrap();
        assert_eq!(policy.default_mode(), crate::policy::Mode::Audit);
        assert!(!policy.sysctls.is_empty());
    }

    #[test]
    fn default_is_policy_dir_then_bundled() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let files = read(&host, &[]).unwrap();
        assert_eq!(files.files[0].0, BUNDLED_NAME);

        let pd = dir.path().join("etc/holdfast/policy.d");
        fs::create_dir_all(&pd).unwrap();
        fs::write(pd.join("20-b.yml"), "version: 1\n").unwrap();
        fs::write(pd.join("10-a.yaml"), "version: 1\n").unwrap();
        fs::write(pd.join("notes.txt"), "not a policy").unwrap();
        let names: Vec<String> = read(&host, &[])
            .unwrap()
            .files
            .into_iter()
            .map(|(n, _)| {
                Path::new(&n)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["10-a.yaml", "20-b.yml"]);
    }

    #[test]
    fn candidates_replace_files_of_the_same_name_in_merge_order() {
        let dir = tempfile::tempdir().unwrap();
        let pd = dir.path().join("policy.d");
        fs::create_dir_all(&pd).unwrap();
        fs::write(pd.join("10-a.yaml"), "version: 1\n# old a\n").unwrap();
        fs::write(pd.join("30-c.yaml"), "version: 1\n# c\n").unwrap();
        let new_a = dir.path().join("tmp-upload-1");
        fs::write(&new_a, "version: 1\n# new a\n").unwrap();
        let new_b = dir.path().join("20-b.yaml");
        fs::write(&new_b, "version: 1\n# b\n").unwrap();
        let read = read_with_candidates(
            &pd,
            &[
                Candidate {
                    path: new_a.clone(),
                    name: "10-a.yaml".into(),
                },
                Candidate::named_as_is(&new_b),
            ],
        )
        .unwrap();
        let texts: Vec<&str> = read.files.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "version: 1\n# new a\n",
                "version: 1\n# b\n",
                "version: 1\n# c\n"
            ]
        );
        assert_eq!(read.files[0].0, new_a.display().to_string());

        // A name the daemon would ignore is refused, not validated.
        for name in ["site.conf", ".hidden.yaml", "sub/x.yaml"] {
            let err = read_with_candidates(
                &pd,
                &[Candidate {
                    path: new_a.clone(),
                    name: name.into(),
                }],
            )
            .unwrap_err();
            assert!(matches!(err, LoadError::NotPolicyName(_)), "{name}: {err}");
        }
        // A directory that does not exist yet holds nothing.
        let fresh =
            read_with_candidates(&dir.path().join("none"), &[Candidate::named_as_is(&new_b)]);
        assert_eq!(fresh.unwrap().files.len(), 1);
    }

    #[test]
    fn explicit_empty_dir_and_missing_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        assert!(matches!(
            read(&host, &[dir.path().to_path_buf()]),
            Err(LoadError::EmptyDir(_))
        ));
        let err = read(&host, &[dir.path().join("missing.yaml")]).unwrap_err();
        assert!(err.to_string().contains("missing.yaml"), "{err}");
    }

    #[test]
    fn sources_must_be_owned_by_root_or_the_caller_and_writable_by_no_one_else() {
        assert_eq!(untrusted(0, 0o100644, 0), None);
        assert_eq!(untrusted(0, 0o040755, 1000), None);
        assert_eq!(untrusted(1000, 0o100600, 1000), None);
        assert_eq!(
            untrusted(65534, 0o100644, 0).as_deref(),
            Some("owned by uid 65534, not by root")
        );
        assert_eq!(
            untrusted(0, 0o100646, 0).as_deref(),
            Some("writable by others (mode 0646)")
        );
        assert_eq!(
            untrusted(0, 0o040775, 0).as_deref(),
            Some("writable by its group (mode 0775)")
        );
        assert_eq!(
            untrusted(0, 0o041777, 0).as_deref(),
            Some("writable by its group and others (mode 1777)")
        );
    }

    /// `/tmp` may hold a policy file given by path (root's file there can be
    /// replaced by no one else), but is no policy directory, and a sticky
    /// directory owned by someone else is not trusted either.
    #[test]
    fn a_sticky_root_directory_may_hold_a_policy_file() {
        assert_eq!(untrusted_holder(0, 0o041777, 0), None);
        assert_eq!(untrusted_holder(1000, 0o041777, 1000), None);
        assert_eq!(
            untrusted_holder(1000, 0o041777, 0).as_deref(),
            Some("owned by uid 1000, not by root")
        );
        assert_eq!(
            untrusted_holder(0, 0o040777, 0).as_deref(),
            Some("writable by its group and others (mode 0777)")
        );
        assert!(
            untrusted(0, 0o041777, 0).is_some(),
            "not as a policy directory"
        );
    }
}
