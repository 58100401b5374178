//! Incoming request authentication: every federation request carries an `X-Matrix` header
//! signed by the origin's key; it is verified before the handler runs.

use axum::extract::{FromRequest, Request};
use ruma::OwnedServerName;
use ruma::api::federation::authentication::XMatrix;

use crate::State;
use crate::error::FedError;

/// Federation bodies are bounded well above the largest legitimate transaction.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A verified federation request: who sent it, and its body.
pub struct Signed {
    pub origin: OwnedServerName,
    pub body: axum::body::Bytes,
}

impl FromRequest<State> for Signed {
    type Rejection = FedError;

    async fn from_request(req: Request, state: &State) -> Result<Self, FedError> {
        let (parts, body) = req.into_parts();
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| FedError::unauthorized("Missing X-Matrix Authorization header"))?;
        let x_matrix = XMatrix::try_from(header)
            .map_err(|e| FedError::unauthorized(format!("Bad X-Matrix header: {e}")))?;
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            FedError::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "Request too large",
            )
        })?;
        let fed = &state.federation;
        let keys = fed
            .key_cache
            .key_map_with(
                &fed.client,
                &fed.keys,
                &x_matrix.origin,
                x_matrix.key.as_str(),
            )
            .await?;
        let request = http::Request::from_parts(parts, bytes);
        x_matrix
            .verify_request(&request, &fed.keys.server_name, &keys)
            .map_err(|e| FedError::unauthorized(format!("Request signature: {e}")))?;
        Ok(Signed {
            origin: x_matrix.origin,
            body: request.into_body(),
        })
    }
}
