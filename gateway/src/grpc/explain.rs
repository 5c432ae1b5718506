//! Explanations over gRPC: the protocol has no explain RPC, so a `ModelInfer` request (unary or
//! streamed) asks with the request parameter `explain` (bool `true`, or the string `"true"`).
//! The answer is the usual inference response plus two string parameters holding the JSON that
//! HTTP's `/explain` answers under the same names: `explained` (output, column, method,
//! background rows, evaluations, error, time) and `explanations` (per row of the first input:
//! base value, prediction, attributions, top reason codes). Same budget and shedding as HTTP:
//! a full budget or a serving backlog is UNAVAILABLE, a model that cannot be explained
//! INVALID_ARGUMENT, each with HTTP's message.
//!
//! ```python
//! result = client.infer("fraud", inputs, parameters={"explain": True})
//! rows = json.loads(result.get_response().parameters["explanations"].string_param)
//! ```

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::pb;
use super::pb::infer_parameter::ParameterChoice;
use crate::explain::{ExplainSettings, ExplainTarget};
use crate::model::table::BudgetPermit;
use crate::protocol::Tensor;
use crate::rollout::Reloader;
use crate::server::explain::{Job, acquire, after_answer};
use crate::server::{ApiError, AppState};

/// The request parameter that asks for explanations.
pub const PARAMETER: &str = "explain";

/// Whether `request` asks for explanations; a value other than a bool or "true"/"false" is
/// refused, naming it.
pub fn asked(request: &pb::ModelInferRequest) -> Result<bool, ApiError> {
    let Some(choice) = request.parameters.get(PARAMETER).and_then(|p| p.parameter_choice.as_ref()) else {
        return Ok(false);
    };
    match choice {
        ParameterChoice::BoolParam(on) => Ok(*on),
        ParameterChoice::StringParam(s) if s == "true" || s == "false" => Ok(s == "true"),
        other => Err(ApiError::BadRequest(format!(
            "request parameter '{PARAMETER}' must be a bool (or \"true\"/\"false\"), given {other:?}"
        ))),
    }
}

/// An explanation under way: the budget unit taken before any work and the first input kept
/// as it is decoded.
pub struct Explaining {
    slot: BudgetPermit,
    settings: ExplainSettings,
    reloader: Arc<Reloader>,
    pub first_input: Arc<Mutex<Option<Tensor>>>,
}

impl Explaining {
    /// Takes a unit of the explanation budget, or says it is full.
    pub fn start(state: &AppState) -> Result<Self, ApiError> {
        let reloader = Arc::clone(state.reloader.as_ref().ok_or_else(|| ApiError::NotReady("no reloader".into()))?);
        let settings = reloader.config.load().explain.clone();
        Ok(Self { slot: acquire(state, &settings)?, settings, reloader, first_input: Arc::default() })
    }

    /// Explains the answered request (`target` answered it, `backlogged` as it did) and adds the
    /// two parameters to `response`.
    pub async fn finish(
        self,
        state: &AppState,
        (target, backlogged): (ExplainTarget, bool),
        mut response: pb::ModelInferResponse,
    ) -> Result<pb::ModelInferResponse, ApiError> {
        let input = self.first_input.lock().unwrap_or_else(|p| p.into_inner()).take();
        let job = Job { reloader: self.reloader, target, backlogged, input, settings: self.settings, slot: self.slot };
        let (explained, explanations) = after_answer(state, job).await?;
        for (name, value) in [("explained", explained), ("explanations", explanations)] {
            response.parameters.insert(name.to_owned(), string_parameter(&value));
        }
        Ok(response)
    }
}

fn string_parameter(value: &Value) -> pb::InferParameter {
    pb::InferParameter { parameter_choice: Some(ParameterChoice::StringParam(value.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(choice: Option<ParameterChoice>) -> pb::ModelInferRequest {
        let mut r = pb::ModelInferRequest::default();
        if let Some(c) = choice {
            r.parameters.insert(PARAMETER.into(), pb::InferParameter { parameter_choice: Some(c) });
        }
        r
    }

    #[test]
    fn explain_is_asked_by_a_bool_or_its_string_and_anything_else_is_refused_by_name() {
        assert!(!asked(&request(None)).unwrap());
        assert!(asked(&request(Some(ParameterChoice::BoolParam(true)))).unwrap());
        assert!(!asked(&request(Some(ParameterChoice::BoolParam(false)))).unwrap());
        assert!(asked(&request(Some(ParameterChoice::StringParam("true".into())))).unwrap());
        let refused = asked(&request(Some(ParameterChoice::Int64Param(1)))).unwrap_err().to_string();
        assert!(refused.contains("'explain' must be a bool") && refused.contains("Int64Param(1)"), "{refused}");
        assert!(asked(&request(Some(ParameterChoice::StringParam("yes".into())))).is_err());
    }
}
