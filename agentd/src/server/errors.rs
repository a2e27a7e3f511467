//! Every error answer of the API carries an [`ErrorBody`] (`{"error": "…"}`), including the
//! ones axum produces before a handler runs: a body that is not JSON, has the wrong shape or
//! no content type (plain-text rejections, 400/415/422), an unknown route (404) or method
//! (405, empty bodies). Clients then need one error path, and `docs/api.yaml` can promise it.
//! Body problems are all "bad input" to a client, so 415 and 422 become 400 with axum's reason.

use axum::Json;
use axum::body::to_bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;

/// A rejection's text is short; a larger body is cut rather than buffered.
const MAX_REASON: usize = 16 * 1024;

/// `map_response` layer: rewrites a non-JSON error answer into an [`ErrorBody`].
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = to_bytes(body, MAX_REASON).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let (status, error) = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
            (StatusCode::BAD_REQUEST, text)
        }
        StatusCode::NOT_FOUND if text.is_empty() => {
            (status, "no such route (see docs/api.yaml)".to_string())
        }
        StatusCode::METHOD_NOT_ALLOWED if text.is_empty() => (
            status,
            "method not allowed on this route (see docs/api.yaml)".to_string(),
        ),
        _ if text.is_empty() => (
            status,
            status.canonical_reason().unwrap_or("error").to_string(),
        ),
        _ => (status, text),
    };
    // Keep headers such as `Allow` (405); the body's own length and type are replaced.
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut res = (status, Json(ErrorBody { error })).into_response();
    for (name, value) in parts.headers.iter() {
        res.headers_mut().entry(name).or_insert(value.clone());
    }
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

    use axum::body::Body;
    use axum::http::HeaderValue;

    use super::*;

    async fn rewritten(status: StatusCode, ctype: Option<&str>, body: &str) -> (Response, String) {
        let mut res = Response::new(Body::from(body.to_string()));
        *res.status_mut() = status;
        if let Some(c) = ctype {
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
        }
        let res = json_errors(res).await;
        let (parts, body) = res.into_parts();
        let text = String::from_utf8(to_bytes(body, 1 << 20).await.unwrap().to_vec()).unwrap();
        (Response::from_parts(parts, Body::empty()), text)
    }

    fn error_of(text: &str) -> String {
        serde_json::from_str::<ErrorBody>(text).unwrap().error
    }

    #[tokio::test]
    async fn plain_text_rejections_become_400_error_bodies_with_the_reason() {
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ] {
            let (res, text) = rewritten(status, Some("text/plain"), "missing field `argv`").await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            assert_eq!(error_of(&text), "missing field `argv`");
        }
    }

    #[tokio::test]
    async fn empty_404_and_405_get_a_reason_and_keep_their_headers() {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let res = json_errors(res).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET,HEAD");
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        assert!(error_of(std::str::from_utf8(&body).unwrap()).contains("method not allowed"));
        let (res, text) = rewritten(StatusCode::NOT_FOUND, None, "").await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(error_of(&text).contains("no such route"));
    }

    #[tokio::test]
    async fn json_errors_and_successes_pass_untouched() {
        let (res, text) = rewritten(
            StatusCode::FORBIDDEN,
            Some("application/json"),
            "{\"error\":\"x\"}",
        )
        .await;
        assert_eq!(
            (res.status(), text.as_str()),
            (StatusCode::FORBIDDEN, "{\"error\":\"x\"}")
        );
        let (res, text) = rewritten(StatusCode::OK, Some("text/plain"), "fine").await;
        assert_eq!((res.status(), text.as_str()), (StatusCode::OK, "fine"));
    }
}
