//! Which value of a model's answer is "the score" that labelled quality, shadow agreement,
//! uncertain sampling and drift on predictions read, and what it means: a classifier's
//! probability compared at a decision threshold, or a regressor's value (no threshold).
//!
//! By default the positive-class column of a probabilities-shaped output (`[batch, 2]`, e.g.
//! skl2onnx's `probabilities`) is the score; otherwise column 0 of the first output. A model's
//! `[models.<name>.score]` names the output, the column, the threshold and the task.

use serde::{Deserialize, Serialize};

use super::TensorSpec;
use crate::protocol::{DataType, Tensor};

/// `[models.<name>.score]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Output name (default: a `[batch, 2]` float output, else the first output).
    pub output: Option<String>,
    /// Column of that output (default: 1 for a `[batch, 2]` output, else 0).
    pub column: Option<usize>,
    /// Decision threshold of a classifier's score (default 0.5).
    pub threshold: Option<f64>,
    #[serde(default)]
    pub task: Task,
}

/// What the score is.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A probability of the positive class, compared at the threshold.
    #[default]
    Classifier,
    /// A value without a threshold: agreement, mistakes and AUC do not apply.
    Regressor,
}

impl ScoreConfig {
    /// Checks the values; `at` is the config path of the section.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(t) = self.threshold.filter(|t| !(t.is_finite() && *t > 0.0 && *t < 1.0)) {
            return Err(format!("{at}.threshold must be in (0, 1), given {t}"));
        }
        if let Some(c) = self.column.filter(|c| *c > 4096) {
            return Err(format!("{at}.column must be at most 4096, given {c}"));
        }
        Ok(())
    }
}

/// The score of one model version, resolved against its outputs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScoreSpec {
    pub output: String,
    #[serde(skip)]
    pub index: usize,
    pub column: usize,
    pub threshold: f64,
    pub task: Task,
    /// Whether the config chose it or the default rule did.
    pub chosen_by: &'static str,
}

impl ScoreSpec {
    /// Resolves `config` (or the default rule) against a version's `outputs`; an output the
    /// model does not have, or a column beyond its fixed width, is an error naming both.
    pub fn resolve(config: Option<&ScoreConfig>, outputs: &[TensorSpec], at: &str) -> Result<Self, String> {
        let default = ScoreConfig::default();
        let config = config.unwrap_or(&default);
        let two_columns = |o: &TensorSpec| {
            matches!(o.datatype, DataType::Fp32 | DataType::Fp64) && o.shape.len() == 2 && o.shape[1] == 2
        };
        let (index, default_column) = match &config.output {
            Some(name) => {
                let index = outputs.iter().position(|o| &o.name == name).ok_or_else(|| {
                    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                    format!("{at}.output = {name:?}: the model's outputs are {names:?}")
                })?;
                (index, usize::from(two_columns(&outputs[index])))
            }
            None => match outputs.iter().position(two_columns) {
                Some(index) => (index, 1),
                None => (0, 0),
            },
        };
        let column = config.column.unwrap_or(default_column);
        if let Some(width) = outputs.get(index).and_then(|o| o.shape.get(1)).filter(|w| **w > 0)
            && column as i64 >= *width
        {
            return Err(format!("{at}.column = {column}: output {:?} has {width} columns", outputs[index].name));
        }
        let configured = config.output.is_some() || config.column.is_some();
        Ok(Self {
            output: outputs.get(index).map(|o| o.name.clone()).unwrap_or_default(),
            index,
            column,
            threshold: config.threshold.unwrap_or(0.5),
            task: config.task,
            chosen_by: if configured { "config" } else { "default" },
        })
    }

    /// One score per row of an answer (`outputs` in the model's order); `None` when the output
    /// is missing, not numeric, or narrower than the column.
    pub fn scores(&self, outputs: &[Tensor]) -> Option<Vec<f64>> {
        let tensor = outputs.get(self.index)?;
        let len = tensor.data.len();
        let rows = tensor.shape.first().map_or(1, |r| (*r).max(1) as usize);
        let width = len / rows;
        if self.column >= width || len != rows * width {
            return None;
        }
        // Only the score column is read (not the whole output converted first).
        crate::with_data!(&tensor.data, v => {
            v.iter().skip(self.column).step_by(width).map(crate::protocol::Element::as_f64).collect()
        })
    }

    /// Whether the score is a classifier's probability (thresholds apply).
    pub fn is_classifier(&self) -> bool {
        self.task == Task::Classifier
    }
}

impl Default for ScoreSpec {
    fn default() -> Self {
        Self {
            output: String::new(),
            index: 0,
            column: 0,
            threshold: 0.5,
            task: Task::Classifier,
            chosen_by: "default",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorData;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
    }

    #[test]
    fn a_scikit_learn_classifier_is_scored_on_the_positive_class_probability() {
        // skl2onnx without ZipMap: label [N] int64, probabilities [N, 2] float.
        let outputs = [spec("label", DataType::Int64, &[-1]), spec("probabilities", DataType::Fp32, &[-1, 2])];
        let score = ScoreSpec::resolve(None, &outputs, "models.m.score").unwrap();
        assert_eq!(
            (score.output.as_str(), score.index, score.column, score.chosen_by),
            ("probabilities", 1, 1, "default")
        );
        let answer = [
            Tensor { name: "label".into(), shape: vec![2], data: TensorData::Int64(vec![1, 0]) },
            Tensor {
                name: "probabilities".into(),
                shape: vec![2, 2],
                data: TensorData::Fp32(vec![0.2, 0.8, 0.9, 0.1]),
            },
        ];
        let scores = score.scores(&answer).unwrap();
        assert!((scores[0] - 0.8).abs() < 1e-6 && (scores[1] - 0.1).abs() < 1e-6, "{scores:?}");
    }

    #[test]
    fn a_single_output_is_column_zero_and_the_config_can_name_another() {
        let outputs = [spec("output", DataType::Fp32, &[-1, 1])];
        let score = ScoreSpec::resolve(None, &outputs, "models.m.score").unwrap();
        assert_eq!((score.index, score.column), (0, 0));
        let answer = [Tensor { name: "output".into(), shape: vec![3, 1], data: TensorData::Fp32(vec![0.1, 0.2, 0.3]) }];
        assert_eq!(score.scores(&answer).map(|s| s.len()), Some(3), "one score per row");
        let text = [Tensor { name: "output".into(), shape: vec![1, 1], data: TensorData::Bytes(vec![b"x".to_vec()]) }];
        assert_eq!(score.scores(&text), None, "text is no score");
        let ragged = [Tensor { name: "output".into(), shape: vec![2, 1], data: TensorData::Fp32(vec![0.1, 0.2, 0.3]) }];
        assert_eq!(score.scores(&ragged), None, "values that are not rows x width");
        let bad = ScoreConfig { output: Some("proba".into()), ..ScoreConfig::default() };
        let err = ScoreSpec::resolve(Some(&bad), &outputs, "models.m.score").unwrap_err();
        assert_eq!(err, "models.m.score.output = \"proba\": the model's outputs are [\"output\"]");
        let wide = ScoreConfig { column: Some(1), ..ScoreConfig::default() };
        assert!(ScoreSpec::resolve(Some(&wide), &outputs, "models.m.score").unwrap_err().contains("has 1 columns"));
        let regressor = ScoreConfig { task: Task::Regressor, threshold: Some(0.7), ..ScoreConfig::default() };
        let score = ScoreSpec::resolve(Some(&regressor), &outputs, "x").unwrap();
        assert!(!score.is_classifier());
        assert!(ScoreConfig { threshold: Some(1.5), ..ScoreConfig::default() }.validate("models.m.score").is_err());
    }
}
