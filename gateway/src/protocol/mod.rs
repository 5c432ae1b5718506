//! Open Inference Protocol v2 types and codecs: datatypes, typed tensors, JSON and binary
//! request/response bodies. Nothing here knows about models.

pub mod codec;
pub mod error;
mod input_json;
pub mod json_data;
pub mod tensor;

pub use codec::{EncodedResponse, InferRequest, RequestedOutput, ResponseHeader, decode_request, encode_response};
pub use error::ProtocolError;
pub use flywheel_runtime::DataType;
pub use tensor::{Element, Tensor, TensorData};
