//! External programs some tests need (nginx and openssl for the deployment, promtool for the
//! metrics): where they are, or a loud skip when they are absent, or a failure when CI requires
//! them. Included with `#[path]` by the tests that use it, so the others do not compile it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// `name` as the shell would find it on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program a test needs: found at the path in env `override_var` when that is set, else on
/// PATH.
pub struct Tool {
    pub name: &'static str,
    pub override_var: Option<&'static str>,
}

impl Tool {
    pub const fn on_path(name: &'static str) -> Tool {
        Tool {
            name,
            override_var: None,
        }
    }

    fn find(&self) -> Option<PathBuf> {
        match self.override_var.and_then(std::env::var_os) {
            Some(p) => Some(PathBuf::from(p)).filter(|p| is_executable(p)),
            None => on_path(self.name),
        }
    }
}

/// The paths of `tools`, in order, when all are there. When one is missing: panics if env
/// `require_var` is `1` (CI installs them and sets it), else prints a loud SKIPPED line and
/// returns None, so the test passes without checking anything.
pub fn require(
    test: &str,
    tools: &[Tool],
    require_var: &str,
    install_hint: &str,
) -> Option<Vec<PathBuf>> {
    let found: Vec<Option<PathBuf>> = tools.iter().map(Tool::find).collect();
    if found.iter().all(Option::is_some) {
        return Some(found.into_iter().flatten().collect());
    }
    let missing: Vec<String> = tools
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(t, _)| match t.override_var {
            Some(var) => format!("{} (on PATH or at ${var})", t.name),
            None => t.name.to_string(),
        })
        .collect();
    let missing = missing.join(" and ");
    if std::env::var(require_var).as_deref() == Ok("1") {
        panic!("{test}: {missing} missing and {require_var}=1: {install_hint}");
    }
    // Straight to the stderr handle, not eprintln!, which the test harness captures (and shows
    // only for failing tests): a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {missing} not installed ({install_hint})"
    );
    None
}
