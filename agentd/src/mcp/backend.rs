//! What the MCP server needs from the daemon, as a trait: the real one speaks the API through
//! [`crate::client::Client`] (so `agentctl mcp` has exactly the rights of its user on the
//! daemon's socket); host tests use a fake.

use std::future::Future;

use hyper::Method;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::{CallRequest, StreamEvent};
use crate::attach::sess;
use crate::client::{Client, ClientError};

/// One session of the daemon.
pub trait Backend: Send + Sync + 'static {
    /// `GET /v1/sessions/{id}{suffix}` as JSON (suffix "" = the session).
    fn get(&self, suffix: &str) -> impl Future<Output = Result<Value, ClientError>> + Send;
    /// `POST /v1/sessions/{id}{suffix}` with a JSON body.
    fn post(
        &self,
        suffix: &str,
        body: Value,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    /// A streamed call (`POST …/calls?stream=true`): each event is sent on `events` as it
    /// arrives; returns when the stream ends.
    fn run(
        &self,
        req: CallRequest,
        events: mpsc::UnboundedSender<StreamEvent>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// The daemon over its socket.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub client: Client,
    pub session: String,
}

impl Backend for Daemon {
    async fn get(&self, suffix: &str) -> Result<Value, ClientError> {
        self.client
            .get(&format!("{}{suffix}", sess(&self.session)))
            .await
    }

    async fn post(&self, suffix: &str, body: Value) -> Result<Value, ClientError> {
        self.client
            .post(&format!("{}{suffix}", sess(&self.session)), &body)
            .await
    }

    async fn run(
        &self,
        req: CallRequest,
        events: mpsc::UnboundedSender<StreamEvent>,
    ) -> Result<(), ClientError> {
        let path = format!("{}/calls?stream=true", sess(&self.session));
        self.client
            .stream(Method::POST, &path, Some(&req), |ev| {
                let _ = events.send(ev);
            })
            .await
    }
}
