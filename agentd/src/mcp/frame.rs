//! The transports' framing around the SDK: on stdio, a bounded line reader that passes only
//! screened messages ([`super::screen`]) to the SDK and answers the rest itself, with one
//! writer task owning stdout so the SDK's lines and ours never interleave; on HTTP, a
//! middleware that does the same screening on each POST body before the SDK's Streamable
//! HTTP service sees it.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::screen::{self, MAX_MESSAGE, Verdict};

/// One line read by [`read_line`].
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A whole line (without its `\n`).
    Whole(Vec<u8>),
    /// A line over [`MAX_MESSAGE`]: discarded as it came, never buffered; its length so far.
    Oversized(usize),
    Eof,
}

/// Reads one `\n`-terminated line, never buffering more than [`MAX_MESSAGE`] + 1 bytes of it.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut over = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            // A last line without its newline still counts.
            return Ok(match (over, line.is_empty()) {
                (0, true) => Line::Eof,
                (0, false) => Line::Whole(line),
                (n, _) => Line::Oversized(n),
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if over > 0 || line.len() + chunk.len() > MAX_MESSAGE {
            over = over.max(line.len()) + chunk.len();
            line = Vec::new();
        } else {
            line.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if over > 0 {
                Line::Oversized(over)
            } else {
                Line::Whole(line)
            });
        }
    }
}

/// Reads the client's messages from `input`: screened ones go on to the SDK (`sdk`, one per
/// line), refused ones are answered on `out`. Returns at end of input (closing `sdk`, so the
/// SDK ends the session).
pub async fn pump_in<R, W>(input: R, mut sdk: W, out: mpsc::Sender<Vec<u8>>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(64 << 10, input);
    loop {
        let answer = match read_line(&mut r).await {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::Oversized(n)) => screen::oversized(n),
            Ok(Line::Whole(mut l)) => match screen::screen(&l) {
                Verdict::Skip => continue,
                Verdict::Reject(a) => a,
                Verdict::Pass => {
                    l.push(b'\n');
                    if sdk.write_all(&l).await.is_err() || sdk.flush().await.is_err() {
                        break;
                    }
                    continue;
                }
            },
        };
        if out.send(answer.into_bytes()).await.is_err() {
            break;
        }
    }
    let _ = sdk.shutdown().await;
}

/// Forwards the SDK's output lines to `out`.
pub async fn pump_sdk_out<R: AsyncRead + Unpin>(sdk: R, out: mpsc::Sender<Vec<u8>>) {
    let mut r = BufReader::new(sdk);
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if out.send(line).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Owns the client's output: writes each message as one line.
pub async fn write_out<W: AsyncWrite + Unpin>(mut w: W, mut lines: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut l) = lines.recv().await {
        l.push(b'\n');
        if w.write_all(&l).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

/// HTTP middleware: a POST body over [`MAX_MESSAGE`] or failing [`screen::screen`] gets a
/// JSON-RPC error (HTTP 413 or 400, `application/json`) and never reaches the SDK.
pub async fn guard_http(req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let too_big = e.is::<http_body_util::LengthLimitError>();
            let (status, msg) = if too_big {
                (
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    screen::oversized(MAX_MESSAGE + 1),
                )
            } else {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    screen::error_response(
                        serde_json::Value::Null,
                        screen::INVALID_REQUEST,
                        &format!("reading the request body: {e}"),
                    ),
                )
            };
            return json_answer(status, msg);
        }
    };
    match screen::screen(&bytes) {
        Verdict::Pass => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Verdict::Skip => json_answer(
            axum::http::StatusCode::BAD_REQUEST,
            screen::error_response(
                serde_json::Value::Null,
                screen::INVALID_REQUEST,
                "empty request body: send one JSON-RPC message",
            ),
        ),
        Verdict::Reject(msg) => json_answer(axum::http::StatusCode::BAD_REQUEST, msg),
    }
}

fn json_answer(status: axum::http::StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn lines(input: &[u8]) -> Vec<Line> {
        let mut r = BufReader::with_capacity(1024, input);
        let mut v = Vec::new();
        loop {
            let l = read_line(&mut r).await.unwrap();
            if l == Line::Eof {
                return v;
            }
            v.push(l);
        }
    }

    #[tokio::test]
    async fn lines_are_bounded_and_the_next_line_survives_an_oversized_one() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_MESSAGE + 10));
        input.extend_from_slice(b"\n{\"b\":2}");
        let got = lines(&input).await;
        assert_eq!(
            got,
            vec![
                Line::Whole(b"{\"a\":1}".to_vec()),
                Line::Oversized(MAX_MESSAGE + 10),
                Line::Whole(b"{\"b\":2}".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn refused_messages_are_answered_and_good_ones_reach_the_sdk() {
        let input = b"not json\n\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n[1]\n";
        let (tx, mut rx) = mpsc::channel(8);
        let mut sdk = Vec::new();
        pump_in(&input[..], &mut sdk, tx).await;
        assert_eq!(
            String::from_utf8(sdk).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n"
        );
        let mut answers = Vec::new();
        while let Ok(a) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
            answers.push(v["error"]["code"].as_i64().unwrap());
        }
        assert_eq!(answers, vec![screen::PARSE_ERROR, screen::INVALID_REQUEST]);
    }
}
