//! `runbook-worker token`: gets a token from the configured identity and shows what an
//! operator needs to debug permissions (source, identity, tenant, audience, expiry, app
//! roles, directory roles by name), decoded from the JWT without verifying it. The token
//! itself is printed only with `--raw`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::anyhow;
use chrono::Utc;
use serde::Serialize;

use runbook_worker::identity::claims::{self, EXCHANGE_MANAGE_AS_APP, EXCHANGE_MANAGE_AS_APP_ID};
use runbook_worker::identity::{ProviderDescription, SourceKind, TokenClaims, TokenSource};

use super::{Context, Output, TargetArgs};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The resource to get a token for.
    #[arg(long, default_value = "https://outlook.office365.com")]
    pub resource: String,
    /// Also print the token itself.
    #[arg(long)]
    pub raw: bool,
    /// Output format.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(ctx: Context, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let components = ctx.components(args.target).await?;
    // Identity errors are printed by their own message: it already says what to configure,
    // and the SDK's cause chain would only repeat it with a troubleshooting link.
    let provider = components.token_provider().map_err(|e| anyhow!("{e}"))?;
    let fetched = provider.token(&args.resource).await;
    components.shutdown().await;
    let description = provider.describe().clone();
    let token = fetched.map_err(|e| {
        anyhow!("{e}").context(format!(
            "no token for {} from the {} source",
            args.resource, description.source
        ))
    })?;

    let claims = token.claims();
    let report = Report::new(
        &description,
        &args.resource,
        claims.as_ref(),
        token.expires_on,
        args.raw.then(|| token.expose()),
    );
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Human => report.human(),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Report<'a> {
    source: SourceKind,
    reason: &'a str,
    identity: &'a str,
    endpoint: &'a str,
    resource: &'a str,
    tenant: Option<String>,
    audience: Option<String>,
    app_id: Option<String>,
    object_id: Option<String>,
    expires_on: String,
    roles: Vec<String>,
    directory_roles: Vec<DirectoryRoleReport>,
    hints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

#[derive(Serialize)]
struct DirectoryRoleReport {
    id: String,
    name: Option<&'static str>,
}

impl<'a> Report<'a> {
    fn new(
        description: &'a ProviderDescription,
        resource: &'a str,
        claims: Option<&TokenClaims>,
        expires_on: chrono::DateTime<Utc>,
        token: Option<&'a str>,
    ) -> Self {
        let expires_on = claims
            .and_then(TokenClaims::expires_at)
            .unwrap_or(expires_on);
        Self {
            source: description.source,
            reason: &description.reason,
            identity: &description.identity,
            endpoint: &description.endpoint,
            resource,
            tenant: claims.and_then(|c| c.tid.clone()),
            audience: claims.and_then(|c| c.aud.clone()),
            app_id: claims.and_then(|c| c.client_id().map(str::to_string)),
            object_id: claims.and_then(|c| c.oid.clone()),
            expires_on: expires_on.to_rfc3339(),
            roles: claims.map(|c| c.roles.clone()).unwrap_or_default(),
            directory_roles: claims
                .map(|c| {
                    c.directory_roles()
                        .into_iter()
                        .map(|(id, name)| DirectoryRoleReport { id, name })
                        .collect()
                })
                .unwrap_or_default(),
            hints: hints(resource, claims),
            token,
        }
    }

    fn human(&self) -> String {
        let none = || "(none)".to_string();
        let expires = chrono::DateTime::parse_from_rfc3339(&self.expires_on)
            .map(|at| {
                let left = (at.with_timezone(&Utc) - Utc::now())
                    .to_std()
                    .map(|d| {
                        let minutes = std::time::Duration::from_secs(d.as_secs() / 60 * 60);
                        format!("in {}", humantime::format_duration(minutes))
                    })
                    .unwrap_or_else(|_| "expired".to_string());
                format!("{} ({left})", self.expires_on)
            })
            .unwrap_or_else(|_| self.expires_on.clone());
        let mut lines = vec![
            ("source", format!("{} ({})", self.source, self.reason)),
            ("endpoint", self.endpoint.to_string()),
            ("identity", self.identity.to_string()),
            ("resource", self.resource.to_string()),
            ("tenant", self.tenant.clone().unwrap_or_else(none)),
            ("audience", self.audience.clone().unwrap_or_else(none)),
            ("app id", self.app_id.clone().unwrap_or_else(none)),
            ("object id", self.object_id.clone().unwrap_or_else(none)),
            ("expires", expires),
            (
                "roles",
                if self.roles.is_empty() {
                    none()
                } else {
                    self.roles.join(", ")
                },
            ),
        ];
        if self.directory_roles.is_empty() {
            lines.push(("wids", none()));
        }
        for (i, role) in self.directory_roles.iter().enumerate() {
            let name = role.name.unwrap_or("(not an Exchange-relevant role)");
            lines.push((
                if i == 0 { "wids" } else { "" },
                format!("{} {name}", role.id),
            ));
        }
        for hint in &self.hints {
            lines.push(("hint", hint.clone()));
        }
        if let Some(token) = self.token {
            lines.push(("token", token.to_string()));
        }
        lines
            .into_iter()
            .map(|(label, value)| format!("{label:<10} {value}\n"))
            .collect()
    }
}

/// Exchange Online's resource in each cloud.
fn is_exchange_resource(resource: &str) -> bool {
    let host = url::Url::parse(resource)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    host.starts_with("outlook.") || host == "partner.outlook.cn" || host == "webmail.apps.mil"
}

/// What looks wrong for Exchange, in words an operator can act on.
fn hints(resource: &str, claims: Option<&TokenClaims>) -> Vec<String> {
    let Some(claims) = claims else {
        return vec!["the token is not a JWT, so there are no claims to show".to_string()];
    };
    let mut out = Vec::new();
    if !is_exchange_resource(resource) {
        return out;
    }
    if !claims.has_role(EXCHANGE_MANAGE_AS_APP) {
        out.push(format!(
            "no {EXCHANGE_MANAGE_AS_APP} app role: grant app role {EXCHANGE_MANAGE_AS_APP_ID} of Office 365 Exchange Online to this identity's service principal (a new grant can take hours to appear in tokens)"
        ));
    }
    let exchange_role = claims
        .wids
        .iter()
        .filter_map(|w| claims::directory_role(w))
        .any(|r| r.exchange_read);
    if !exchange_role {
        out.push(
            "no Exchange-relevant Entra role in wids: assign Exchange Administrator (or Exchange Recipient Administrator, Global Reader for read-only runbooks) to this identity's service principal".to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(roles: &[&str], wids: &[&str]) -> TokenClaims {
        TokenClaims {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            wids: wids.iter().map(|w| w.to_string()).collect(),
            ..TokenClaims::default()
        }
    }

    #[test]
    fn hints_name_the_missing_exchange_permissions() {
        let exchange = "https://outlook.office365.com";
        let admin = "29232cdf-9323-42fd-ade2-1d097af3e4de";
        let cases = [
            (exchange, claims(&[EXCHANGE_MANAGE_AS_APP], &[admin]), 0),
            (exchange, claims(&[], &[admin]), 1),
            (exchange, claims(&[EXCHANGE_MANAGE_AS_APP], &[]), 1),
            (exchange, claims(&[], &[]), 2),
            ("https://storage.azure.com", claims(&[], &[]), 0),
        ];
        for (resource, claims, expected) in cases {
            assert_eq!(hints(resource, Some(&claims)).len(), expected, "{claims:?}");
        }
        assert_eq!(hints(exchange, None).len(), 1);
    }
}
