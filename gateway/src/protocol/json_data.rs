//! JSON tensor `data`, flat or nested to any depth, read straight into one typed buffer: a serde
//! visitor pushes each scalar as it is parsed, so a request costs its elements and nothing more
//! (no `serde_json::Value` tree, which took 20-30x the body for nested arrays). serde_json's
//! recursion limit (128 levels) bounds the nesting.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use super::tensor::Element;

/// One JSON scalar as the parser saw it.
#[derive(Clone, Copy, Debug)]
pub enum Scalar<'a> {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Str(&'a str),
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::I64(v) => write!(f, "{v}"),
            Scalar::U64(v) => write!(f, "{v}"),
            Scalar::F64(v) => write!(f, "{v}"),
            Scalar::Bool(v) => write!(f, "{v}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Parses `raw` (a JSON array, nested or flat) into elements of `T`, in row-major order.
pub fn parse<T: Element>(raw: &str) -> Result<Vec<T>, String> {
    parse_expecting(raw, 0)
}

/// [`parse`] into a buffer sized for `expected` elements (the shape's count; bounded by what
/// `raw` can hold, so a lying shape allocates nothing extra).
pub fn parse_expecting<T: Element>(raw: &str, expected: usize) -> Result<Vec<T>, String> {
    // Every element takes at least one character and a separator.
    let mut out = Vec::with_capacity(expected.min(raw.len() / 2 + 1));
    let mut de = serde_json::Deserializer::from_str(raw);
    Flatten(&mut out).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Appends every scalar below one JSON value to the buffer.
struct Flatten<'a, T>(&'a mut Vec<T>);

impl<T: Element> Flatten<'_, T> {
    fn push<E: de::Error>(self, scalar: Scalar<'_>) -> Result<(), E> {
        match T::from_scalar(scalar) {
            Some(v) => {
                self.0.push(v);
                Ok(())
            }
            None => Err(E::custom(format!("{scalar} is not a valid {} value", T::DATATYPE))),
        }
    }
}

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values (nested arrays allowed)", T::DATATYPE)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Scalar::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::F64(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_depth_reads_into_one_buffer_in_row_major_order() {
        assert_eq!(
            parse::<f32>("[[[1, 2], [3, 4]], [[5, 6.5], [7, 8]]]").unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 7.0, 8.0]
        );
        assert_eq!(parse::<i64>("[-3, 4]").unwrap(), vec![-3, 4]);
        assert_eq!(parse::<u64>("[18446744073709551615]").unwrap(), vec![u64::MAX]);
        assert_eq!(parse::<Vec<u8>>(r#"[["a\n"], ["b"]]"#).unwrap(), vec![b"a\n".to_vec(), b"b".to_vec()]);
        assert_eq!(parse::<bool>("[[true], [false]]").unwrap(), vec![true, false]);
        assert!(parse::<f32>("[]").unwrap().is_empty());
    }

    #[test]
    fn a_wrong_element_is_named_with_its_datatype_and_position() {
        let err = parse::<i32>(r#"[[1, "a"]]"#).unwrap_err();
        assert!(err.contains("\"a\" is not a valid INT32 value") && err.contains("column"), "{err}");
        assert!(parse::<i8>("[300]").unwrap_err().contains("300 is not a valid INT8 value"));
        assert!(parse::<i64>("[1.5]").unwrap_err().contains("1.5 is not a valid INT64 value"));
        assert!(parse::<bool>("[1]").is_err());
        assert!(parse::<f32>("[1, {\"x\": 2}]").unwrap_err().contains("expected an array of FP32 values"));
        assert!(parse::<f32>("[1] trailing").is_err());
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse::<f32>(&deep).unwrap_err().contains("recursion limit"), "nesting is bounded");
    }
}
