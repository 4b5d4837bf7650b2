//! Where the policy comes from: explicit `--policy` paths, else the policy
//! directory under the host root, else the baseline compiled into the
//! binary. This is the I/O side of `policy`.

use std::path::{Path, PathBuf};

use crate::host::{self, HostRoot, IoError};
use crate::policy::{Policy, PolicyErrors};

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
}

/// The policy files, read, in merge order.
#[derive(Debug, Clone)]
pub struct PolicyFiles {
    /// `(name shown in reports, text)`.
    pub files: Vec<(String, String)>,
}

impl PolicyFiles {
    pub fn parse(&self) -> Result<Policy, PolicyErrors> {
        Policy::from_files(self.files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }
}

/// Reads the policy files. `explicit` are `--policy` arguments (files or
/// directories, in the order given); when empty, the host's policy
/// directory is used, and when that has no files, the bundled baseline.
pub fn read(host: &HostRoot, explicit: &[PathBuf]) -> Result<PolicyFiles, LoadError> {
    let mut files = Vec::new();
    if explicit.is_empty() {
        let dir = host.policy_dir();
        for path in yaml_files(&dir)? {
            files.push(read_one(&path)?);
        }
        if files.is_empty() {
            files.push((BUNDLED_NAME.to_string(), BUNDLED_BASELINE.to_string()));
        }
        return Ok(PolicyFiles { files });
    }
    for path in explicit {
        if path.is_dir() {
            let found = yaml_files(path)?;
            if found.is_empty() {
                return Err(LoadError::EmptyDir(path.clone()));
            }
            for p in found {
                files.push(read_one(&p)?);
            }
        } else {
            files.push(read_one(path)?);
        }
    }
    Ok(PolicyFiles { files })
}

/// Reads and validates the policy.
pub fn load(host: &HostRoot, explicit: &[PathBuf]) -> Result<Policy, LoadError> {
    Ok(read(host, explicit)?.parse()?)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    let mut files = host::list_files(dir, ".yaml")?;
    files.extend(host::list_files(dir, ".yml")?);
    files.sort();
    Ok(files)
}

fn read_one(path: &Path) -> Result<(String, String), IoError> {
    let text = host::read_to_string(path)?;
    Ok((path.display().to_string(), text))
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
}
