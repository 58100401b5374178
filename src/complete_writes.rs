//! Requests that may write (every method but `GET`, `HEAD` and `OPTIONS`) run to completion
//! even when their client hangs up. hyper drops the handler of a connection that closed; a write
//! dropped between its commit and what follows it (waking the users it concerns, nudging the
//! federation senders, sending a receipt on to other servers) would be durable yet unannounced,
//! and one dropped midway (a remote join between `send_join` and taking the room in) half done.
//! A client that lost the answer learns the outcome by asking again: a retried send with the
//! same transaction id gets the one event. Reads stop with their client: a long poll nobody
//! waits for is not worth finishing.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub async fn run_writes_to_completion(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "a request's task failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({
                    "errcode": "M_UNKNOWN",
                    "error": "Internal server error",
                })),
            )
                .into_response()
        }
    }
}
