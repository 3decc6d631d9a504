//! The executor behind the scheduler's [`JobRunner`], and the identity health `/readyz`
//! reports, learnt from the token requests jobs make.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, HistoryEvents, TokenSources};
use crate::history::JobHistory;
use crate::http::IdentityReadiness;
use crate::identity::{AccessToken, IdentityError, TokenProviders, TokenSource};
use crate::runbook::IdentityOverride;
use crate::scheduler::{JobRunner, JobSpec, RunEnd};

/// Runs jobs on the executor, with their streams in the history.
pub(crate) struct ExecutorRunner {
    pub executor: Arc<Executor>,
    pub history: JobHistory,
}

#[async_trait]
impl JobRunner for ExecutorRunner {
    async fn run(&self, job: JobSpec, cancel: CancellationToken) -> RunEnd {
        let events = HistoryEvents::new(self.history.clone(), job.id.clone());
        let id = job.id.clone();
        let outcome = self.executor.run(job, &events, cancel).await;
        // Before the scheduler records the end: a job shown finished lists its reports.
        if let Err(e) = self.history.store_reports(&id, &outcome.reports).await {
            tracing::error!(job_id = %id, error = %e.chain(), "cannot store the job's reports with it; they stay under state.dir");
        }
        let history_outcome = outcome.to_history();
        RunEnd {
            outcome: history_outcome,
            // `finish` writes the entries the sink still buffers, then finds the job already
            // finished by the scheduler and changes nothing else.
            flush: Some(Box::pin(async move {
                let _ = events.finish(&outcome).await;
            })),
        }
    }
}

/// What the worker knows about its identity: nothing yet, a token was had, or the last
/// request for one failed.
#[derive(Debug, Default)]
pub(crate) struct IdentityHealth {
    state: Mutex<Option<Result<(), String>>>,
}

impl IdentityHealth {
    fn record(&self, result: &Result<AccessToken, IdentityError>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    }

    pub(crate) fn readiness(&self) -> IdentityReadiness {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            None => IdentityReadiness::NotYetNeeded,
            Some(Ok(())) => IdentityReadiness::Ok,
            Some(Err(reason)) => IdentityReadiness::Failing(reason.clone()),
        }
    }
}

/// The token providers, with the worker's own identity reporting to [`IdentityHealth`].
pub(crate) struct ReportingTokens {
    pub providers: Arc<TokenProviders>,
    pub health: Arc<IdentityHealth>,
}

#[async_trait]
impl TokenSources for ReportingTokens {
    fn for_identity(
        &self,
        identity: Option<&IdentityOverride>,
    ) -> Result<Arc<dyn TokenSource>, IdentityError> {
        let inner = TokenSources::for_identity(&*self.providers, identity)?;
        // A runbook's own identity says nothing about the worker's.
        let health = identity.is_none().then(|| self.health.clone());
        Ok(Arc::new(ReportingSource { inner, health }))
    }

    async fn shutdown(&self) {
        TokenSources::shutdown(&*self.providers).await;
    }
}

struct ReportingSource {
    inner: Arc<dyn TokenSource>,
    health: Option<Arc<IdentityHealth>>,
}

#[async_trait]
impl TokenSource for ReportingSource {
    async fn token(&self, resource: &str) -> Result<AccessToken, IdentityError> {
        let result = self.inner.token(resource).await;
        if let Some(health) = &self.health {
            health.record(&result);
        }
        result
    }

    async fn refresh(
        &self,
        resource: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, IdentityError> {
        let result = self.inner.refresh(resource, claims).await;
        if let Some(health) = &self.health {
            health.record(&result);
        }
        result
    }
}
