//! `runbook-worker token`.

use std::process::ExitCode;

use super::Context;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The resource to get a token for.
    #[arg(long, default_value = "https://outlook.office365.com")]
    pub resource: String,
    /// Also print the token itself.
    #[arg(long)]
    pub raw: bool,
}

pub async fn run(_ctx: Context, _args: TokenArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("token: not built yet")
}
