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
        // A header that does not parse (an origin like `host:http`) is a malformed request,
        // 400 as in Synapse; only a well-formed one that fails to verify is 401.
        let malformed =
            |msg: String| FedError::new(http::StatusCode::BAD_REQUEST, "M_UNAUTHORIZED", msg);
        let x_matrix = XMatrix::try_from(header)
            .map_err(|e| malformed(format!("Malformed X-Matrix header: {e}")))?;
        if !crate::discovery::dialable(x_matrix.origin.as_str()) {
            return Err(malformed("The origin is not a server name".into()));
        }
        // The origin's key first: a stranger claiming a server that cannot vouch for it is
        // turned away before its body is read.
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
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            FedError::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "Request too large",
            )
        })?;
        let request = http::Request::from_parts(parts, bytes);
        if let Err(e) = x_matrix.verify_request(&request, &fed.keys.server_name, &keys) {
            // A body that is not canonical JSON (a float, an integer past 2^53) cannot be
            // signed: that is a bad request, not a bad signature.
            let body = request.body();
            if !body.is_empty() && serde_json::from_slice::<ruma::CanonicalJsonValue>(body).is_err()
            {
                return Err(FedError::bad_json(
                    "The body is not canonical JSON (integers must lie within ±(2^53 - 1), no floats)",
                ));
            }
            return Err(FedError::unauthorized(format!("Request signature: {e}")));
        }
        Ok(Signed {
            origin: x_matrix.origin,
            body: request.into_body(),
        })
    }
}
