//! A request's usage, recorded once whatever way it ends: against the key's tokens per minute
//! (the admission's hold settled to what was generated) and in the usage table.

use std::sync::Arc;

use crate::limits::Admitted;
use crate::wire::Endpoint;
use crate::AppState;

/// Records a request's usage exactly once: at its end, or — when the client went away first —
/// when it is dropped, with the tokens generated until then.
pub(crate) struct UsageGuard {
    app: Arc<AppState>,
    key_id: String,
    endpoint: Endpoint,
    prompt_tokens: usize,
    generated: Vec<usize>,
    recorded: bool,
    admitted: Admitted,
}

impl UsageGuard {
    pub(crate) fn new(
        app: Arc<AppState>,
        key_id: &str,
        endpoint: Endpoint,
        prompt_tokens: usize,
        n: usize,
        admitted: Admitted,
    ) -> Self {
        Self { app, key_id: key_id.into(), endpoint, prompt_tokens, generated: vec![0; n], recorded: false, admitted }
    }

    pub fn generated(&mut self, index: usize, tokens: usize) {
        if let Some(g) = self.generated.get_mut(index) {
            *g = (*g).max(tokens);
        }
    }

    pub(crate) async fn complete(&mut self, generated: usize) {
        self.recorded = true;
        self.app.limiter.settle(&self.key_id, &self.admitted, generated as u64);
        let db = &self.app.db;
        if let Err(e) = db
            .record_usage(&self.key_id, self.endpoint.as_str(), self.prompt_tokens as u64, generated as u64, "ok")
            .await
        {
            tracing::error!("recording usage: {e}");
        }
    }
}

impl Drop for UsageGuard {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let generated: usize = self.generated.iter().sum();
        self.app.limiter.settle(&self.key_id, &self.admitted, generated as u64);
        let (app, key_id, endpoint, prompt) =
            (self.app.clone(), self.key_id.clone(), self.endpoint, self.prompt_tokens);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) =
                    app.db.record_usage(&key_id, endpoint.as_str(), prompt as u64, generated as u64, "aborted").await
                {
                    tracing::error!("recording usage of an aborted request: {e}");
                }
            });
        }
    }
}
