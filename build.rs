//! Records the git commit the binary is built from, for `--version`. A build without git
//! (a source archive, the image's build stage without `.git`) takes it from
//! `RUNBOOK_WORKER_GIT_COMMIT`, else says `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RUNBOOK_WORKER_GIT_COMMIT");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a commit),
    // and packed refs. Paths come from git, so worktrees work too.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    let commit = std::env::var("RUNBOOK_WORKER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            Some(if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RUNBOOK_WORKER_GIT_COMMIT={commit}");
}
