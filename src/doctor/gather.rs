//! The I/O of `doctor`: asks each module what it sees and records it as [`Facts`]. Never
//! fails: whatever goes wrong is a fact for [`super::evaluate`] to judge.
//!
//! Order matters only where one step needs another's result: the token comes first (the
//! Exchange call and the coordination credential use the same provider), the local checks
//! need nothing. The provider's background work is shut down before returning.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret as _;

use super::facts::{
    AuthorsGroup, CallFacts, CoordinationFacts, Facts, IdentityFacts, LoosePermission,
    RunbookFacts, RunbookSummary, StateFacts, TokenFacts,
};
use super::{DoctorOptions, HARMLESS_CMDLET};
use crate::app::{ComponentError, Components};
use crate::coordination::{CoordinationKind, CoordinationSettings, redact_url};
use crate::duration::HumanDuration;
use crate::exchange::Parameters;
use crate::identity::TokenSource as _;
use crate::runbook::{PolicySettings, RunbooksSettings, is_runbook_file, load_folder};

/// Looks at everything the checks need, through the parts `components` builds (the same
/// identity, Exchange client and coordination store the worker would use).
pub async fn gather(components: &Components, options: &DoctorOptions) -> Facts {
    let settings = components.settings();
    let exchange_settings = components.exchange_settings();
    let resource = exchange_settings.cloud.resource();
    let mut runbooks = gather_runbooks(&settings.runbooks, &settings.policy);
    let state = gather_state(&settings.state.dir);

    let (identity, exchange_call) = match components.token_provider() {
        Err(error) => (IdentityFacts::Unresolved { error }, CallFacts::NotAttempted),
        Ok(provider) => {
            let token = provider.token(&resource).await.map(|token| TokenFacts {
                claims: token.claims(),
                expires_on: token.expires_on,
            });
            let call = if token.is_ok() {
                harmless_call(components, options).await
            } else {
                CallFacts::NotAttempted
            };
            let identity = IdentityFacts::Resolved {
                source: provider.describe().clone(),
                token,
            };
            (identity, call)
        }
    };
    let coordination = gather_coordination(components).await;
    let graph_token_roles = match components.token_provider() {
        Ok(provider) if !runbooks.graph_roles.is_empty() => {
            let graph = crate::graph::resource(exchange_settings.cloud);
            Some(
                provider
                    .token(&graph)
                    .await
                    .map(|t| t.claims().map(|c| c.roles).unwrap_or_default())
                    .map_err(|e| e.to_string()),
            )
        }
        _ => None,
    };
    runbooks.graph_roles.sort_by(|a, b| a.role.cmp(&b.role));

    Facts {
        identity,
        exchange_resource: resource,
        exchange_organization: exchange_settings
            .organization
            .clone()
            .filter(|o| !o.trim().is_empty()),
        exchange_call,
        runbooks,
        graph_token_roles,
        policy: settings.policy.clone(),
        state,
        coordination,
    }
}

/// One read every role Exchange accepts may run, with the configured client but a short
/// timeout and few retries: the operator is waiting.
async fn harmless_call(components: &Components, options: &DoctorOptions) -> CallFacts {
    let cmdlet = HARMLESS_CMDLET.to_string();
    let client = match components.exchange_client(|settings| {
        settings.max_retries = settings.max_retries.min(options.call_retries);
        settings.timeout = HumanDuration::from(settings.timeout.get().min(options.call_timeout));
    }) {
        Ok(client) => client,
        Err(ComponentError::Exchange(error)) => return CallFacts::Failed { cmdlet, error },
        // The token was just had from the same provider, so nothing else can fail here.
        Err(_) => return CallFacts::NotAttempted,
    };
    match client.invoke_all(HARMLESS_CMDLET, Parameters::new()).await {
        Ok(output) => {
            let organization = output.records.first().and_then(|record| {
                ["Name", "Identity", "DisplayName"]
                    .iter()
                    .find_map(|key| record.get(*key).and_then(|v| v.as_str()))
                    .map(str::to_string)
            });
            CallFacts::Answered {
                cmdlet,
                organization,
                warnings: output.warnings,
            }
        }
        Err(error) => CallFacts::Failed { cmdlet, error },
    }
}

async fn gather_coordination(components: &Components) -> CoordinationFacts {
    let settings = &components.settings().coordination;
    if settings.kind == CoordinationKind::Local {
        return CoordinationFacts::Local;
    }
    let target = describe_target(settings);
    let coordinator = match components.coordinator() {
        Ok(coordinator) => coordinator,
        Err(error) => {
            return CoordinationFacts::Unreachable {
                target,
                error: error.to_string(),
            };
        }
    };
    match coordinator.probe().await {
        Ok(()) => CoordinationFacts::Reachable { target },
        Err(error) => CoordinationFacts::Unreachable {
            target,
            error: error.to_string(),
        },
    }
}

/// The container, without any SAS.
fn describe_target(settings: &CoordinationSettings) -> String {
    if let Some(url) = &settings.container_url {
        return format!("container {}", redact_url(url.as_str()));
    }
    if let Some(url) = &settings.sas_url {
        return format!(
            "container {} (coordination.sas_url)",
            redact_url(url.expose_secret())
        );
    }
    if let Some(path) = &settings.sas_url_file {
        return format!(
            "the container in {} (coordination.sas_url_file)",
            path.display()
        );
    }
    "coordination storage".to_string()
}

fn gather_runbooks(settings: &RunbooksSettings, policy: &PolicySettings) -> RunbookFacts {
    let dir = settings.dir.as_path();
    let authors = settings.authors_group.as_deref().map(|name| {
        let gid = group_id(name);
        (
            AuthorsGroup {
                name: name.to_string(),
                exists: gid.is_some(),
            },
            gid,
        )
    });
    let mut facts = RunbookFacts {
        dir: dir.to_path_buf(),
        authors_group: authors.as_ref().map(|(group, _)| group.clone()),
        ..RunbookFacts::default()
    };
    let authors_gid = authors.and_then(|(_, gid)| gid);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            facts.unreadable = Some(e.to_string());
            return facts;
        }
    };
    let files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_runbook_file(path) && path.is_file())
        .collect();
    facts.files = files.len();

    let (catalog, errors) = load_folder(dir, policy);
    facts.errors = errors;
    facts.graph_roles = crate::runbook::permissions::required_permissions(
        catalog.iter().map(|r| r.as_ref()),
        false,
    )
    .graph;
    facts.runbooks = catalog
        .iter()
        .map(|runbook| {
            let writes: BTreeSet<&str> = runbook
                .steps
                .iter()
                // Graph writes need Graph app roles (the graph-roles check), not an
                // Exchange role.
                .filter(|step| !step.is_read() && step.graph.is_none())
                .map(|step| step.cmdlet.as_str())
                .collect();
            RunbookSummary {
                name: runbook.name.clone(),
                writes: writes.into_iter().map(str::to_string).collect(),
            }
        })
        .collect();

    let mut paths = vec![dir.to_path_buf()];
    paths.extend(files);
    paths.sort();
    facts.loose_permissions = paths
        .into_iter()
        .filter_map(|path| loose_permission(path, authors_gid))
        .collect();
    facts
}

/// `path`, when others may write it, or a group other than the authors' (`authors_gid`).
#[cfg(unix)]
fn loose_permission(path: PathBuf, authors_gid: Option<u32>) -> Option<LoosePermission> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let metadata = std::fs::metadata(&path).ok()?;
    let mode = metadata.permissions().mode() & 0o7777;
    let others_write = mode & 0o002 != 0;
    let group_write = mode & 0o020 != 0;
    let authors_write = group_write && Some(metadata.gid()) == authors_gid;
    if !others_write && (!group_write || authors_write) {
        return None;
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(metadata.gid()))
        .ok()
        .flatten()
        .map(|g| g.name);
    Some(LoosePermission { path, group, mode })
}

/// Without Unix modes there is nothing to read; the ACLs are the platform's business.
#[cfg(not(unix))]
fn loose_permission(_path: PathBuf, _authors_gid: Option<u32>) -> Option<LoosePermission> {
    None
}

/// The id of the Unix group `name`, when this machine has one.
#[cfg(unix)]
fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(not(unix))]
fn group_id(_name: &str) -> Option<u32> {
    None
}

fn gather_state(dir: &Path) -> StateFacts {
    if dir.is_dir() {
        return match probe_write(dir) {
            Ok(()) => StateFacts::Writable {
                dir: dir.to_path_buf(),
            },
            Err(reason) => StateFacts::NotWritable {
                dir: dir.to_path_buf(),
                reason,
            },
        };
    }
    if dir.exists() {
        return StateFacts::NotWritable {
            dir: dir.to_path_buf(),
            reason: "it exists but is not a folder".to_string(),
        };
    }
    // The history store creates a missing folder: what matters is the nearest existing one.
    let under = dir
        .ancestors()
        .skip(1)
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if !under.is_dir() {
        return StateFacts::NotWritable {
            dir: dir.to_path_buf(),
            reason: format!("{} is not a folder", under.display()),
        };
    }
    match probe_write(&under) {
        Ok(()) => StateFacts::WillBeCreated {
            dir: dir.to_path_buf(),
            under,
        },
        Err(reason) => StateFacts::NotWritable {
            dir: dir.to_path_buf(),
            reason: format!(
                "it does not exist and cannot be created in {}: {reason}",
                under.display()
            ),
        },
    }
}

/// Creates a file in `dir`, writes to it and removes it again.
fn probe_write(dir: &Path) -> Result<(), String> {
    let path = dir.join(format!(".doctor-{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(b"runbook-worker doctor\n")?;
            file.sync_all()
        });
    let removed = std::fs::remove_file(&path);
    match (written, removed) {
        (Err(e), _) => Err(format!("cannot create a file in it: {e}")),
        (Ok(()), Err(e)) => Err(format!(
            "created {} but cannot remove it: {e}",
            path.display()
        )),
        (Ok(()), Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_state_folder_is_judged_by_the_folder_it_would_be_created_in() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/state");
        assert_eq!(
            gather_state(&missing),
            StateFacts::WillBeCreated {
                dir: missing.clone(),
                under: dir.path().to_path_buf()
            }
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            gather_state(&file),
            StateFacts::NotWritable { .. }
        ));
        assert!(matches!(
            gather_state(&file.join("state")),
            StateFacts::NotWritable { .. }
        ));
        assert_eq!(
            gather_state(dir.path()),
            StateFacts::Writable {
                dir: dir.path().to_path_buf()
            }
        );
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
