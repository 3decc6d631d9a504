//! Helpers for the deployment tests: a tolerant Dockerfile parser, a systemd unit reader, and
//! fake command-line tools (`az`, `docker`) that record how they were called and answer from
//! a table, so shell scripts can be run for real without Azure or a container engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A repository file's text.
pub fn read_repo_file(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One Dockerfile instruction with continuation lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Upper-cased keyword: `FROM`, `RUN`, …
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined with a space.
    pub args: String,
    /// 1-based line of the keyword.
    pub line: usize,
}

/// Parses a Dockerfile the way the builder does for what the tests need: comment lines
/// (including parser directives) are dropped, a trailing backslash continues the instruction
/// on the next line, and comment lines inside a continuation are skipped. Heredocs are not
/// supported (the Dockerfile uses none).
pub fn parse_dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (trimmed, false),
        };
        let (line, mut joined) = current.take().unwrap_or((index + 1, String::new()));
        if !joined.is_empty() && !body.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body);
        if continues {
            current = Some((line, joined));
        } else if !joined.is_empty() {
            out.push(split_instruction(line, &joined));
        }
    }
    if let Some((line, joined)) = current {
        out.push(split_instruction(line, &joined));
    }
    out
}

fn split_instruction(line: usize, text: &str) -> Instruction {
    let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    Instruction {
        keyword: keyword.to_ascii_uppercase(),
        args: args.trim().to_string(),
        line,
    }
}

/// The instructions grouped by build stage; each group starts with its `FROM` (instructions
/// before the first `FROM`, global `ARG`s, are dropped).
pub fn stages(instructions: &[Instruction]) -> Vec<Vec<Instruction>> {
    let mut out: Vec<Vec<Instruction>> = Vec::new();
    for instruction in instructions {
        if instruction.keyword == "FROM" {
            out.push(vec![instruction.clone()]);
        } else if let Some(stage) = out.last_mut() {
            stage.push(instruction.clone());
        }
    }
    out
}

/// `KEY=value` pairs of an `ENV` or `ARG` instruction (values may be double-quoted); the
/// legacy `ENV KEY value` form gives one pair.
pub fn key_values(args: &str) -> Vec<(String, String)> {
    if !args.contains('=') {
        let (key, value) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        return vec![(key.to_string(), value.trim().to_string())];
    }
    let mut out = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=' && !c.is_whitespace())
            .collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
        } else {
            while let Some(c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((key, value));
    }
    out
}

/// `(section, key, value)` of every assignment in a systemd unit file, in order.
pub fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((
                section.clone(),
                key.trim().to_string(),
                value.trim().to_string(),
            ));
        }
    }
    out
}

/// A settings map built from `NAME=value` environment pairs.
pub fn env_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HashMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The fake tool's source. It appends its argv (fields separated by U+001F) to
/// `$FAKE_TOOL_LOG`, then answers from `$FAKE_TOOL_ANSWERS`: lines of
/// `KEY<TAB>STATUS<TAB>OUTPUT` where OUTPUT uses `\n`/`\t` escapes. The call's key is
/// `rest METHOD URL` for `az rest`, else its arguments joined by spaces; the first answer
/// whose KEY is a prefix of it wins. A call without an answer fails loudly.
const FAKE_TOOL: &str = r#"#!/usr/bin/env bash
set -u
{
    sep=""
    for arg in "$@"; do
        printf '%s%s' "$sep" "$arg"
        sep=$'\x1f'
    done
    printf '\n'
} >>"$FAKE_TOOL_LOG"
key="$*"
if [[ "${1:-}" == rest ]]; then
    method="" url=""
    args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
            --method) method=${args[i + 1]} ;;
            --url) url=${args[i + 1]} ;;
        esac
    done
    key="rest $method $url"
fi
while IFS= read -r line; do
    answer_key=${line%%$'\t'*}
    rest=${line#*$'\t'}
    status=${rest%%$'\t'*}
    output=${rest#*$'\t'}
    if [[ "$key" == "$answer_key"* ]]; then
        printf '%b' "$output"
        exit "$status"
    fi
done <"$FAKE_TOOL_ANSWERS"
echo "fake $(basename "$0"): no canned answer for: $key" >&2
exit 97
"#;

/// A fake command-line tool on a private PATH directory.
pub struct FakeTool {
    dir: tempfile::TempDir,
    answers: Vec<(String, i32, String)>,
}

impl FakeTool {
    /// A fake `name` (`az`, `docker`) in a fresh directory.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let tool = bin.join(name);
        std::fs::write(&tool, FAKE_TOOL).expect("write fake tool");
        make_executable(&tool);
        std::fs::write(dir.path().join("calls.log"), "").expect("log");
        Self {
            dir,
            answers: Vec::new(),
        }
    }

    /// Answers calls whose key starts with `key` with `output` and exit `status`.
    pub fn answer(&mut self, key: &str, status: i32, output: &str) -> &mut Self {
        self.answers
            .push((key.to_string(), status, output.to_string()));
        self
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Runs `script` with bash, the fake first on a PATH that otherwise has only the system
    /// directories, and `env` added.
    pub fn run(&self, script: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let answers: String = self
            .answers
            .iter()
            .map(|(key, status, output)| format!("{key}\t{status}\t{}\n", escape(output)))
            .collect();
        let answers_path = self.dir.path().join("answers.tsv");
        std::fs::write(&answers_path, answers).expect("write answers");
        let path = format!("{}:/usr/bin:/bin", self.bin_dir().display());
        run_bash(
            script,
            args,
            &[
                ("PATH", path.as_str()),
                ("FAKE_TOOL_LOG", &self.log_path().display().to_string()),
                ("FAKE_TOOL_ANSWERS", &answers_path.display().to_string()),
            ],
            env,
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// Every call so far, each as its argument list.
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.log_path())
            .expect("read calls")
            .lines()
            .map(|line| line.split('\u{1f}').map(str::to_string).collect())
            .collect()
    }
}

fn escape(output: &str) -> String {
    output
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path).expect("stat").permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).expect("chmod");
}

/// The bash this test run uses (by absolute path, so a script can run with a PATH that
/// holds nothing).
pub fn bash() -> PathBuf {
    ["/bin/bash", "/usr/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("bash in /bin or /usr/bin")
}

/// Runs `bash script args` with a clean environment: `base` then `env`.
pub fn run_bash(
    script: &Path,
    args: &[&str],
    base: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(bash());
    cmd.arg(script).args(args).env_clear();
    for (k, v) in base.iter().chain(env) {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash")
}

/// Path of an installed program, looked up on the test process's PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
