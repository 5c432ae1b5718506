//! JSON tensor `data`, flat or nested to any depth, read straight into one typed buffer: a serde
//! visitor pushes each scalar as it is parsed, so a request costs its elements and nothing more
//! (no `serde_json::Value` tree, which took 20-30x the body for nested arrays). serde_json's
//! recursion limit (128 levels) bounds the nesting.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    let mut de = serde_json::Deserializer::from_str(raw);
    let values = read(&mut de, expected.min(raw.len() / 2 + 1)).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    values
}

/// Reads one JSON value (nested arrays of scalars) from `de` into elements of `T`, with room
/// for `capacity`. A value that is valid JSON but not a valid `T` (a string for INT32, 300 for
/// INT8, an object, null) is the inner `Err`, naming the element: the rest of the value is
/// still read, so the document around it stays readable. The outer `Err` is malformed JSON.
pub fn read<'de, T: Element, D: Deserializer<'de>>(de: D, capacity: usize) -> Result<Result<Vec<T>, String>, D::Error> {
    let mut out = Vec::with_capacity(capacity);
    let mut error = None;
    Flatten { out: &mut out, error: &mut error }.deserialize(de)?;
    Ok(match error {
        Some(e) => Err(e),
        None => Ok(out),
    })
}

/// Appends every scalar below one JSON value to the buffer; after the first invalid one, only
/// reads on.
struct Flatten<'a, T> {
    out: &'a mut Vec<T>,
    error: &'a mut Option<String>,
}

impl<T: Element> Flatten<'_, T> {
    fn push(self, scalar: Scalar<'_>) {
        if self.error.is_some() {
            return;
        }
        match T::from_scalar(scalar) {
            Some(v) => self.out.push(v),
            None => self.refuse(format!("{scalar} is not a valid {} value", T::DATATYPE)),
        }
    }

    fn refuse(self, what: String) {
        if self.error.is_none() {
            *self.error = Some(format!("element {}: {what}", self.out.len()));
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
        while seq.next_element_seed(Flatten { out: &mut *self.out, error: &mut *self.error })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.refuse(format!("an object is not a valid {} value", T::DATATYPE));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.refuse(format!("null is not a valid {} value", T::DATATYPE));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::I64(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Scalar::U64(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::F64(v));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(v));
        Ok(())
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
        assert_eq!(err, "element 1: \"a\" is not a valid INT32 value");
        assert!(parse::<i8>("[300]").unwrap_err().contains("300 is not a valid INT8 value"));
        assert!(parse::<i64>("[1.5]").unwrap_err().contains("1.5 is not a valid INT64 value"));
        assert!(parse::<bool>("[1]").is_err());
        assert_eq!(parse::<f32>("[1, {\"x\": 2}]").unwrap_err(), "element 1: an object is not a valid FP32 value");
        assert_eq!(parse::<f32>("[[1], null]").unwrap_err(), "element 1: null is not a valid FP32 value");
        assert!(parse::<f32>("[1] trailing").is_err());
        assert!(parse::<f32>("[1, 2").unwrap_err().contains("EOF"), "malformed JSON is still an error");
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse::<f32>(&deep).unwrap_err().contains("recursion limit"), "nesting is bounded");
    }
}
