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

use crate::api::{ErrorBody, StreamEvent};

/// Client errors, each naming the socket or the request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agentd daemon is listening on {socket} ({source}).\n\
         Start one with `sudo agentd serve` (add `--socket {socket}` for a non-default path) \
         or `sudo systemctl start agentd.socket`, or pass the daemon's socket with \
         `agentctl --socket PATH`; `sudo agentctl run …` runs a daemon inside agentctl for \
         that one session."
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

fn api_error(status: StatusCode, data: &[u8]) -> ClientError {
    let reason = serde_json::from_slice::<ErrorBody>(data)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(data).into_owned());
    ClientError::Api { status, reason }
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
        let resp = self.send_json(&method, path, body, http).await?;
        decode(resp, &http).await
    }

    /// Sends `body` (if any) as JSON on a new connection; returns the answer's head and body.
    async fn send_json<B: Serialize>(
        &self,
        method: &Method,
        path: &str,
        body: Option<&B>,
        http: impl Fn(String) -> ClientError,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| http(e.to_string()))?,
            None => Vec::new(),
        };
        let mut sender = self.connect::<Full<Bytes>>(&http).await?;
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "agentd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| http(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))
    }

    /// Opens one HTTP/1.1 connection to the daemon.
    async fn connect<B>(
        &self,
        http: &impl Fn(String) -> ClientError,
    ) -> Result<hyper::client::conn::http1::SendRequest<B>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends a request whose answer is an NDJSON stream ([`StreamEvent`] lines); calls
    /// `on` with each event as it arrives. An error status is [`ClientError::Api`].
    pub async fn stream<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mut on: impl FnMut(StreamEvent),
    ) -> Result<(), ClientError> {
        let http = |detail: String| ClientError::Http {
            method: method.clone(),
            path: path.to_string(),
            detail,
        };
        let resp = self.send_json(&method, path, body, http).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let data = body
                .collect()
                .await
                .map_err(|e| http(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &data));
        }
        let mut line = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for &b in data.iter() {
                if b != b'\n' {
                    line.push(b);
                    continue;
                }
                let ev = serde_json::from_slice::<StreamEvent>(&line)
                    .map_err(|e| http(format!("bad stream line: {e}")))?;
                line.clear();
                on(ev);
            }
        }
        Ok(())
    }

    /// `POST path` with a body that is whatever arrives on `chunks` until it closes (the
    /// agent's stdin); decodes the answer as `T`.
    pub async fn feed<T: DeserializeOwned>(
        &self,
        path: &str,
        mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
    ) -> Result<T, ClientError> {
        let http = |detail: String| ClientError::Http {
            method: Method::POST,
            path: path.to_string(),
            detail,
        };
        type Chan = http_body_util::channel::Channel<Bytes, std::convert::Infallible>;
        let mut sender = self.connect::<Chan>(&http).await?;
        let (mut tx, body) = Chan::new(4);
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "agentd")
            .header("content-type", "application/octet-stream")
            .body(body)
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(async move {
            while let Some(c) = chunks.recv().await {
                if tx.send_data(c).await.is_err() {
                    return;
                }
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        decode(resp, &http).await
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

/// A whole answer: a 2xx body decoded as `T`, anything else as [`ClientError::Api`].
async fn decode<T: DeserializeOwned>(
    resp: hyper::Response<hyper::body::Incoming>,
    http: &impl Fn(String) -> ClientError,
) -> Result<T, ClientError> {
    let status = resp.status();
    let data = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(api_error(status, &data));
    }
    serde_json::from_slice(&data).map_err(|e| http(format!("bad answer: {e}")))
}
