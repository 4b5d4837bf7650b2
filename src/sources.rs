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
    #[error(
        "`{0}`: the daemon reads only *.yaml and *.yml files from its policy directory; \
         a file of this name would be ignored"
    )]
    NotPolicyName(String),
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
        let yaml = c.name.ends_with(".yaml") || c.name.ends_with(".yml");
        if hidden || !yaml || c.name.contains('/') {
            return Err(LoadError::NotPolicyName(c.name.clone()));
        }
        by_name.insert(c.name.clone(), c.path.clone());
    }
    let files = by_name
        .values()
        .map(|p| read_one(p))
        .collect::<Result<Vec<_>, _>>()?;
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
}
