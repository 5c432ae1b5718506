//! Merging requests into one batch along the first dimension and splitting outputs back.

use crate::protocol::{Tensor, TensorData};

/// Concatenates input `index` of every job; the result's first dimension is the sum of rows.
pub fn merge_input(parts: &[&Tensor]) -> Result<Tensor, String> {
    let first = parts.first().ok_or("empty batch")?;
    if parts.len() == 1 {
        return Ok((*first).clone());
    }
    let data: Vec<&TensorData> = parts.iter().map(|t| &t.data).collect();
    let data =
        TensorData::concat(&data).ok_or_else(|| format!("input '{}' mixes datatypes within a batch", first.name))?;
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|t| t.shape[0]).sum();
    Ok(Tensor { name: first.name.clone(), shape, data })
}

/// Splits one batch output into pieces of `rows[i]` rows each (one piece: the output itself).
pub fn split_output(output: Tensor, rows: &[usize]) -> Result<Vec<Tensor>, String> {
    let total: usize = rows.iter().sum();
    let first_dim = output.shape.first().copied().unwrap_or(0);
    if first_dim != total as i64 {
        return Err(format!(
            "output '{}' has first dimension {first_dim} for a batch of {total} rows; it cannot be split per request",
            output.name
        ));
    }
    if rows.len() == 1 {
        return Ok(vec![output]);
    }
    let per_row = output.data.len().checked_div(total).unwrap_or(0);
    let lengths: Vec<usize> = rows.iter().map(|r| r * per_row).collect();
    Ok(output
        .data
        .split(&lengths)
        .into_iter()
        .zip(rows)
        .map(|(data, r)| {
            let mut shape = output.shape.clone();
            shape[0] = *r as i64;
            Tensor { name: output.name.clone(), shape, data }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows_tensor(start: usize, rows: usize, width: usize) -> Tensor {
        let data = (start * width..(start + rows) * width).map(|v| v as f32).collect();
        Tensor { name: "x".into(), shape: vec![rows as i64, width as i64], data: TensorData::Fp32(data) }
    }

    proptest! {
        #[test]
        fn merge_then_split_gives_back_each_request(rows in prop::collection::vec(1usize..6, 1..10), width in 1usize..5) {
            let mut start = 0;
            let parts: Vec<Tensor> = rows.iter().map(|r| { let t = rows_tensor(start, *r, width); start += r; t }).collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let merged = merge_input(&refs).unwrap();
            prop_assert_eq!(merged.shape[0] as usize, rows.iter().sum::<usize>());
            prop_assert_eq!(&merged, &rows_tensor(0, start, width));
            prop_assert_eq!(split_output(merged, &rows).unwrap(), parts);
        }
    }

    #[test]
    fn output_without_batch_dimension_is_an_error() {
        let out = Tensor { name: "y".into(), shape: vec![1], data: TensorData::Fp32(vec![0.0]) };
        let err = split_output(out, &[2, 1]).unwrap_err();
        assert!(err.contains("'y' has first dimension 1 for a batch of 3"), "{err}");
    }
}
