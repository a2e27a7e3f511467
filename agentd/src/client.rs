//! The API client `agentctl` uses: HTTP/1.1 over the daemon's Unix socket (hyper), JSON
//! bodies typed by [`crate::api`]. A missing or refusing socket becomes
//! [`ClientError::NoDaemon`], whose message says how to start the daemon.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

/// Client errors, each naming the socket or the request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agentd daemon is listening on {socket} ({source}).\n\
         Start one with `sudo agentd serve` (add `--socket {socket}` for a non-default path), \
         or pass the daemon's socket with `agentctl --socket PATH`."
    )]
    NoDaemon {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on {socket}: the socket is mode 0660; ask for membership in its \
         group, or run as root"
    )]
    Denied { socket: PathBuf },
    #[error("{method} {path}: {detail}")]
    Http {
        method: Method,
        path: String,
        detail: String,
    },
    /// The daemon answered with an error status.
    #[error("agentd refused ({status}): {reason}")]
    Api { status: StatusCode, reason: String },
}

/// A client for one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; decodes a 2xx body as `T`, anything else as [`ClientError::Api`].
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let http = |detail: String| ClientError::Http {
            method: method.clone(),
            path: path.to_string(),
            detail,
        };
        let stream = match tokio::net::UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(ClientError::Denied {
                    socket: self.socket.clone(),
                });
            }
            Err(source) => {
                return Err(ClientError::NoDaemon {
                    socket: self.socket.clone(),
                    source,
                });
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| http(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "agentd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        let data = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let reason = serde_json::from_slice::<ErrorBody>(&data)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&data).into_owned());
            return Err(ClientError::Api { status, reason });
        }
        serde_json::from_slice(&data).map_err(|e| http(format!("bad answer: {e}")))
    }

    /// GET.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// POST with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// DELETE.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::DELETE, path, None).await
    }
}
