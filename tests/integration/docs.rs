//! The README and docs/ as a newcomer follows them: the runbooks and parameters their
//! examples name exist, and their relative links lead somewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use runbook_worker::runbook::{self, PolicySettings};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a Markdown file holds that these tests check.
#[derive(Default)]
struct Markdown {
    /// Anchors of its headings, as GitHub makes them.
    anchors: BTreeSet<String>,
    /// Link destinations.
    links: Vec<String>,
    /// Shell code blocks (`sh`, `bash` or no language).
    shell: Vec<String>,
    /// TOML code blocks introduced as `runbooks/NAME.toml`: (NAME, text).
    runbooks: Vec<(String, String)>,
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn parse(text: &str) -> Markdown {
    let mut out = Markdown::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    let mut block: Option<(String, String)> = None;
    // The last `runbooks/NAME.toml` named in running text.
    let mut named_runbook: Option<String> = None;
    for event in Parser::new_ext(text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => {
                heading = Some(String::new());
                named_runbook = None;
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let n = seen.entry(base.clone()).or_insert(0);
                out.anchors.insert(if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                });
                *n += 1;
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match kind {
                    CodeBlockKind::Fenced(lang) => lang.to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                block = Some((lang, String::new()));
            }
            Event::End(TagEnd::CodeBlock) => {
                let (lang, body) = block.take().unwrap_or_default();
                match lang.as_str() {
                    "sh" | "bash" | "" => out.shell.push(body),
                    "toml" => {
                        if let Some(name) = named_runbook.take() {
                            out.runbooks.push((name, body));
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                } else if let Some((_, body)) = block.as_mut() {
                    body.push_str(&t);
                } else if let Some(name) = t
                    .strip_prefix("runbooks/")
                    .and_then(|rest| rest.strip_suffix(".toml"))
                {
                    named_runbook = Some(name.to_string());
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) => out.links.push(dest_url.to_string()),
            _ => {}
        }
    }
    out
}

/// What a README command line asks of a runbook: its name and the parameters it passes.
#[derive(Debug)]
struct Use {
    runbook: String,
    params: Vec<String>,
    line: String,
}

/// A word that stands for a name the reader chooses (`NAME`, `{name}`, `$x`, `<id>`) or a
/// path, not a runbook of the folder.
fn is_placeholder(word: &str) -> bool {
    word.is_empty()
        || word.contains(['{', '$', '<', '/', '…'])
        || word.ends_with(".toml")
        || word.chars().all(|c| c.is_ascii_uppercase() || c == '_')
}

/// Runbooks named by `runbook-worker run|next NAME [--param k=v]…`,
/// `runbook-worker validate runbooks/NAME.toml`, `runbook-worker jobs --runbook NAME` and `/api/runbooks/NAME/run` (with the
/// `params` of a `-d` JSON body).
fn uses(shell: &str) -> Vec<Use> {
    let joined = shell.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let line = line.split(" # ").next().unwrap_or(line);
        if let Some(rest) = line.split("runbook-worker ").nth(1) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let mut i = 0;
            // Global flags before the command.
            while i < words.len() && words[i].starts_with('-') {
                i += if words[i] == "--config" { 2 } else { 1 };
            }
            let command = words.get(i).copied().unwrap_or_default();
            let rest = &words[(i + 1).min(words.len())..];
            if command == "validate" {
                for word in rest {
                    if let Some(name) = word
                        .strip_prefix("runbooks/")
                        .and_then(|w| w.strip_suffix(".toml"))
                    {
                        found.push(Use {
                            runbook: name.to_string(),
                            params: Vec::new(),
                            line: line.to_string(),
                        });
                    }
                }
            }
            if command == "jobs" {
                let named = rest.windows(2).find(|w| w[0] == "--runbook").map(|w| w[1]);
                if let Some(name) = named.filter(|n| !is_placeholder(n)) {
                    found.push(Use {
                        runbook: name.to_string(),
                        params: Vec::new(),
                        line: line.to_string(),
                    });
                }
            }
            if matches!(command, "run" | "next") {
                let name = rest.iter().find(|w| !w.starts_with('-')).copied();
                if let Some(name) = name.filter(|n| !is_placeholder(n)) {
                    let params = rest
                        .windows(2)
                        .filter(|w| w[0] == "--param" || w[0] == "-p")
                        .filter_map(|w| {
                            w[1].trim_matches(['\'', '"'])
                                .split_once('=')
                                .map(|(k, _)| k)
                        })
                        .map(str::to_string)
                        .collect();
                    found.push(Use {
                        runbook: name.to_string(),
                        params,
                        line: line.to_string(),
                    });
                }
            }
        }
        for rest in line.split("/api/runbooks/").skip(1) {
            let Some((name, _)) = rest.split_once("/run") else {
                continue;
            };
            if is_placeholder(name) {
                continue;
            }
            let params = line
                .split_once("-d '")
                .and_then(|(_, body)| body.split_once('\''))
                .map(|(body, _)| {
                    let body: serde_json::Value = serde_json::from_str(body)
                        .unwrap_or_else(|e| panic!("a JSON body that is not JSON ({e}): {line}"));
                    body["params"]
                        .as_object()
                        .map(|p| p.keys().cloned().collect())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            found.push(Use {
                runbook: name.to_string(),
                params,
                line: line.to_string(),
            });
        }
    }
    found
}

#[test]
fn every_runbook_and_parameter_the_readme_uses_exists() {
    let readme = parse(&read(&root().join("README.md")));
    let policy = PolicySettings::default();
    let (catalog, errors) = runbook::load_folder(&root().join("runbooks"), &policy);
    assert!(errors.is_empty(), "{errors:?}");
    // Declared parameters of each runbook: the folder's, and those the README itself
    // shows whole as `runbooks/NAME.toml` (loaded as the worker would load them).
    let mut declared: BTreeMap<String, BTreeSet<String>> = catalog
        .iter()
        .map(|r| (r.name.clone(), r.params.keys().cloned().collect()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &readme.runbooks {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let loaded = runbook::load_file(&path, &policy)
            .unwrap_or_else(|e| panic!("the README's runbooks/{name}.toml is invalid: {e:?}"));
        declared.insert(name.clone(), loaded.params.keys().cloned().collect());
    }

    let uses: Vec<Use> = readme.shell.iter().flat_map(|b| uses(b)).collect();
    // The examples this test must see, so that it cannot pass by finding nothing.
    for expected in ["mailboxes-near-quota", "team-calendar-access"] {
        assert!(
            uses.iter().any(|u| u.runbook == expected),
            "{expected} not found in {uses:?}"
        );
    }
    assert!(uses.iter().any(|u| !u.params.is_empty()), "{uses:?}");
    for used in &uses {
        let Some(params) = declared.get(&used.runbook) else {
            panic!(
                "the README runs {:?}, which is not in runbooks/ (it has {:?}): {}",
                used.runbook,
                declared.keys().collect::<Vec<_>>(),
                used.line
            );
        };
        for param in &used.params {
            assert!(
                params.contains(param),
                "the README passes {param:?} to {}, which declares {params:?}: {}",
                used.runbook,
                used.line
            );
        }
    }
}

#[test]
fn a_readme_example_naming_a_missing_runbook_or_parameter_is_found() {
    let found = uses(
        "curl -s -X POST -H \"Authorization: Bearer $TOKEN\" \\\n     -d '{\"params\": {\"days\": 30}}' \\\n     localhost:8080/api/runbooks/archive-old-mailboxes/run\nrunbook-worker --config /etc/x.toml run team-calendar-access --param team=Sales -p 'delegate=a@b' # note\nrunbook-worker run ./drafts/new.toml\nrunbook-worker next NAME_OR_FILE\nrunbook-worker jobs --runbook archive-mailboxes --limit 10\n",
    );
    let seen: Vec<(&str, Vec<&str>)> = found
        .iter()
        .map(|u| {
            (
                u.runbook.as_str(),
                u.params.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("archive-old-mailboxes", vec!["days"]),
            ("team-calendar-access", vec!["team", "delegate"]),
            ("archive-mailboxes", vec![]),
        ]
    );
}

#[test]
fn every_relative_link_in_the_readme_and_docs_leads_to_a_file_and_heading() {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut checked = 0;
    for file in &files {
        let page = parse(&read(file));
        for link in &page.links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            assert!(
                target.exists(),
                "{}: the link {link:?} leads to no file",
                file.display()
            );
            if !anchor.is_empty() {
                let anchors = parse(&read(&target)).anchors;
                assert!(
                    anchors.contains(anchor),
                    "{}: the link {link:?} names no heading of {}",
                    file.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links checked");
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    let page =
        parse("# Calling a cmdlet directly (invoke)\n## `[runbooks]` dir\n## Steps\n## Steps\n");
    let expected: BTreeSet<String> = [
        "calling-a-cmdlet-directly-invoke",
        "runbooks-dir",
        "steps",
        "steps-1",
    ]
    .map(String::from)
    .into();
    assert_eq!(page.anchors, expected);
}
