//! Errors from decoding a request body.

/// A request body that cannot be decoded; always the client's fault (400).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed request JSON: {0}")]
    MalformedJson(String),
    #[error("Inference-Header-Content-Length {given} exceeds the body's {body} bytes")]
    HeaderLength { given: usize, body: usize },
    #[error("{0}")]
    Invalid(String),
}

impl ProtocolError {
    /// Stable machine name, used as a metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProtocolError::MalformedJson(_) => "malformed_json",
            ProtocolError::HeaderLength { .. } => "bad_header_length",
            ProtocolError::Invalid(_) => "invalid_request",
        }
    }
}
