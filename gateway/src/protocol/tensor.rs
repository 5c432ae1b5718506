//! Typed tensor data and the per-element-type codecs (JSON, little-endian binary) behind it.
//!
//! Every element type implements [`Element`]; [`TensorData`] holds one `Vec` of them and
//! `with_data!` dispatches a generic function over whichever variant is present, so each codec
//! is written once.

use super::json_data::Scalar;
use flywheel_runtime::DataType;

/// A named tensor: protocol name, shape (all dimensions known), and data in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Tensor elements, one variant per supported datatype (FP16 is not supported yet).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    /// BYTES: each element an arbitrary byte string.
    Bytes(Vec<Vec<u8>>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of whichever variant `$data` holds.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::protocol::TensorData::Bool($v) => $body,
            $crate::protocol::TensorData::Uint8($v) => $body,
            $crate::protocol::TensorData::Uint16($v) => $body,
            $crate::protocol::TensorData::Uint32($v) => $body,
            $crate::protocol::TensorData::Uint64($v) => $body,
            $crate::protocol::TensorData::Int8($v) => $body,
            $crate::protocol::TensorData::Int16($v) => $body,
            $crate::protocol::TensorData::Int32($v) => $body,
            $crate::protocol::TensorData::Int64($v) => $body,
            $crate::protocol::TensorData::Fp32($v) => $body,
            $crate::protocol::TensorData::Fp64($v) => $body,
            $crate::protocol::TensorData::Bytes($v) => $body,
        }
    };
}

/// Runs `$body` with type alias `$t` set to the element type of datatype `$dt`
/// (`$unsupported` for FP16).
macro_rules! with_element_type {
    ($dt:expr, $t:ident => $body:expr, $unsupported:expr) => {
        match $dt {
            DataType::Bool => {
                type $t = bool;
                $body
            }
            DataType::Uint8 => {
                type $t = u8;
                $body
            }
            DataType::Uint16 => {
                type $t = u16;
                $body
            }
            DataType::Uint32 => {
                type $t = u32;
                $body
            }
            DataType::Uint64 => {
                type $t = u64;
                $body
            }
            DataType::Int8 => {
                type $t = i8;
                $body
            }
            DataType::Int16 => {
                type $t = i16;
                $body
            }
            DataType::Int32 => {
                type $t = i32;
                $body
            }
            DataType::Int64 => {
                type $t = i64;
                $body
            }
            DataType::Fp32 => {
                type $t = f32;
                $body
            }
            DataType::Fp64 => {
                type $t = f64;
                $body
            }
            DataType::Bytes => {
                type $t = Vec<u8>;
                $body
            }
            DataType::Fp16 => $unsupported,
        }
    };
}

/// One element type: how it is wrapped, and how it reads and writes JSON and binary data.
pub trait Element: Sized + Clone + Default + Send + 'static {
    const DATATYPE: DataType;
    fn wrap(values: Vec<Self>) -> TensorData;
    fn slice(data: &TensorData) -> Option<&[Self]>;
    /// Converts one JSON scalar; `None` when it is not a value of this type.
    fn from_scalar(scalar: Scalar<'_>) -> Option<Self>;
    fn write_json(values: &[Self], out: &mut Vec<u8>);
    /// Decodes Triton's binary representation; `None` when `bytes` is not a whole number of elements.
    fn decode_binary(bytes: &[u8]) -> Option<Vec<Self>>;
    fn encode_binary(values: &[Self], out: &mut Vec<u8>);
    /// The value as a number, for comparing answers (BYTES has none).
    fn as_f64(&self) -> Option<f64>;
}

macro_rules! numeric_element {
    ($t:ty, $variant:ident, $dt:ident, $conv:expr) => {
        impl Element for $t {
            const DATATYPE: DataType = DataType::$dt;
            fn wrap(values: Vec<Self>) -> TensorData {
                TensorData::$variant(values)
            }
            fn slice(data: &TensorData) -> Option<&[Self]> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn from_scalar(scalar: Scalar<'_>) -> Option<Self> {
                $conv(scalar)
            }
            fn write_json(values: &[Self], out: &mut Vec<u8>) {
                write_json_array(values, out)
            }
            fn decode_binary(bytes: &[u8]) -> Option<Vec<Self>> {
                const N: usize = std::mem::size_of::<$t>();
                if !bytes.len().is_multiple_of(N) {
                    return None;
                }
                // chunks_exact yields exactly N bytes, so the array conversion cannot fail.
                Some(bytes.chunks_exact(N).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; N]))).collect())
            }
            fn encode_binary(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(values.len() * std::mem::size_of::<$t>());
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            fn as_f64(&self) -> Option<f64> {
                // Comparing answers tolerates the rounding of 64-bit integers.
                Some(*self as f64)
            }
        }
    };
}

fn int_value<T: TryFrom<i64> + TryFrom<u64>>(scalar: Scalar<'_>) -> Option<T> {
    match scalar {
        Scalar::I64(i) => T::try_from(i).ok(),
        Scalar::U64(u) => T::try_from(u).ok(),
        _ => None,
    }
}

fn float_value(scalar: Scalar<'_>) -> Option<f64> {
    match scalar {
        Scalar::F64(f) => Some(f),
        Scalar::I64(i) => Some(i as f64),
        Scalar::U64(u) => Some(u as f64),
        _ => None,
    }
}

numeric_element!(u8, Uint8, Uint8, int_value::<u8>);
numeric_element!(u16, Uint16, Uint16, int_value::<u16>);
numeric_element!(u32, Uint32, Uint32, int_value::<u32>);
numeric_element!(u64, Uint64, Uint64, int_value::<u64>);
numeric_element!(i8, Int8, Int8, int_value::<i8>);
numeric_element!(i16, Int16, Int16, int_value::<i16>);
numeric_element!(i32, Int32, Int32, int_value::<i32>);
numeric_element!(i64, Int64, Int64, int_value::<i64>);
// JSON numbers are f64; narrowing to f32 is the protocol's intent for FP32 tensors.
numeric_element!(f32, Fp32, Fp32, |s| float_value(s).map(|f| f as f32));
numeric_element!(f64, Fp64, Fp64, float_value);

impl Element for bool {
    const DATATYPE: DataType = DataType::Bool;
    fn wrap(values: Vec<Self>) -> TensorData {
        TensorData::Bool(values)
    }
    fn slice(data: &TensorData) -> Option<&[Self]> {
        match data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }
    fn from_scalar(scalar: Scalar<'_>) -> Option<Self> {
        match scalar {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }
    }
    fn write_json(values: &[Self], out: &mut Vec<u8>) {
        write_json_array(values, out)
    }
    fn decode_binary(bytes: &[u8]) -> Option<Vec<Self>> {
        Some(bytes.iter().map(|b| *b != 0).collect())
    }
    fn encode_binary(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|b| u8::from(*b)));
    }
    fn as_f64(&self) -> Option<f64> {
        Some(f64::from(u8::from(*self)))
    }
}

impl Element for Vec<u8> {
    const DATATYPE: DataType = DataType::Bytes;
    fn wrap(values: Vec<Self>) -> TensorData {
        TensorData::Bytes(values)
    }
    fn slice(data: &TensorData) -> Option<&[Self]> {
        match data {
            TensorData::Bytes(v) => Some(v),
            _ => None,
        }
    }
    fn from_scalar(scalar: Scalar<'_>) -> Option<Self> {
        match scalar {
            Scalar::Str(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
    fn write_json(values: &[Self], out: &mut Vec<u8>) {
        let strings: Vec<_> = values.iter().map(|b| String::from_utf8_lossy(b)).collect();
        write_json_array(&strings, out)
    }
    /// Each element is a 4-byte little-endian length followed by that many bytes.
    fn decode_binary(mut bytes: &[u8]) -> Option<Vec<Self>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len, rest) = bytes.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            if rest.len() < len {
                return None;
            }
            out.push(rest[..len].to_vec());
            bytes = &rest[len..];
        }
        Some(out)
    }
    fn encode_binary(values: &[Self], out: &mut Vec<u8>) {
        for v in values {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    fn as_f64(&self) -> Option<f64> {
        None
    }
}

fn write_json_array<T: serde::Serialize>(values: &[T], out: &mut Vec<u8>) {
    // Serialising numbers, bools and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(out, values);
}

impl TensorData {
    /// The protocol datatype of these elements.
    pub fn datatype(&self) -> DataType {
        fn dt<T: Element>(_: &[T]) -> DataType {
            T::DATATYPE
        }
        with_data!(self, v => dt(v))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Concatenates same-typed parts; `None` if a part has another datatype.
    pub fn concat(parts: &[&TensorData]) -> Option<TensorData> {
        fn go<T: Element>(_like: &[T], parts: &[&TensorData]) -> Option<TensorData> {
            let total = parts.iter().map(|p| p.len()).sum();
            let mut out = Vec::with_capacity(total);
            for part in parts {
                out.extend_from_slice(T::slice(part)?);
            }
            Some(T::wrap(out))
        }
        let first = parts.first()?;
        with_data!(first, v => go(v, parts))
    }

    /// Splits into consecutive pieces of `lengths` elements (which must sum to `len()`).
    pub fn split(&self, lengths: &[usize]) -> Vec<TensorData> {
        fn go<T: Element>(values: &[T], lengths: &[usize]) -> Vec<TensorData> {
            let mut start = 0;
            lengths
                .iter()
                .map(|n| {
                    let end = (start + n).min(values.len());
                    let piece = T::wrap(values[start.min(end)..end].to_vec());
                    start = end;
                    piece
                })
                .collect()
        }
        with_data!(self, v => go(v, lengths))
    }

    /// Decodes JSON `data` (flat or nested row-major arrays) as `datatype`.
    pub fn from_json(datatype: DataType, raw: &str) -> Result<TensorData, String> {
        Self::from_json_expecting(datatype, raw, 0)
    }

    /// [`TensorData::from_json`] into a buffer sized for the `expected` elements of its shape.
    pub fn from_json_expecting(datatype: DataType, raw: &str, expected: usize) -> Result<TensorData, String> {
        fn go<T: Element>(raw: &str, expected: usize) -> Result<TensorData, String> {
            super::json_data::parse_expecting::<T>(raw, expected).map(T::wrap)
        }
        with_element_type!(datatype, T => go::<T>(raw, expected), Err(unsupported(datatype)))
    }

    /// Reads a JSON `data` value of `datatype` from `de` with room for `capacity` elements:
    /// the inner `Err` is a value that is valid JSON but not valid `datatype` (or a datatype
    /// without a JSON form), its JSON read past so the document around it stays readable.
    pub fn read_json<'de, D: serde::Deserializer<'de>>(
        datatype: DataType,
        de: D,
        capacity: usize,
    ) -> Result<Result<TensorData, String>, D::Error> {
        fn go<'de, T: Element, D: serde::Deserializer<'de>>(
            de: D,
            capacity: usize,
        ) -> Result<Result<TensorData, String>, D::Error> {
            Ok(super::json_data::read::<T, D>(de, capacity)?.map(T::wrap))
        }
        with_element_type!(datatype, T => go::<T, D>(de, capacity), {
            serde::Deserializer::deserialize_ignored_any(de, serde::de::IgnoredAny)?;
            Ok(Err(unsupported(datatype)))
        })
    }

    /// `len` default elements (zeros, false, empty strings) of `datatype`; `None` for FP16.
    pub fn zeros(datatype: DataType, len: usize) -> Option<TensorData> {
        fn go<T: Element>(len: usize) -> Option<TensorData> {
            Some(T::wrap(vec![T::default(); len]))
        }
        with_element_type!(datatype, T => go::<T>(len), None)
    }

    /// Decodes Triton binary tensor data as `datatype`.
    pub fn from_binary(datatype: DataType, bytes: &[u8]) -> Result<TensorData, String> {
        fn go<T: Element>(bytes: &[u8]) -> Result<TensorData, String> {
            T::decode_binary(bytes)
                .map(T::wrap)
                .ok_or_else(|| format!("{} bytes are not a whole number of {} elements", bytes.len(), T::DATATYPE))
        }
        with_element_type!(datatype, T => go::<T>(bytes), Err(unsupported(datatype)))
    }

    /// The elements as numbers, `None` for BYTES.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        with_data!(self, v => v.iter().map(Element::as_f64).collect())
    }

    /// Appends the JSON array of these elements.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        with_data!(self, v => Element::write_json(v, out))
    }

    /// Appends Triton's binary representation of these elements.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        with_data!(self, v => Element::encode_binary(v, out))
    }
}

fn unsupported(datatype: DataType) -> String {
    format!("datatype {datatype} is not supported by this gateway")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_flat_and_nested_decode_the_same() {
        let flat = TensorData::from_json(DataType::Fp32, "[1, 2.5, 3, 4]").unwrap();
        let nested = TensorData::from_json(DataType::Fp32, "[[1, 2.5], [3, 4]]").unwrap();
        assert_eq!(flat, TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(flat, nested);
    }

    #[test]
    fn json_rejects_wrong_types_and_out_of_range_ints() {
        assert!(TensorData::from_json(DataType::Int32, r#"["a"]"#).is_err());
        assert!(TensorData::from_json(DataType::Int8, "[[300]]").is_err());
        assert!(TensorData::from_json(DataType::Bool, "[[1]]").is_err());
        assert!(TensorData::from_json(DataType::Fp16, "[1]").is_err());
    }

    #[test]
    fn bytes_binary_is_length_prefixed() {
        let data = TensorData::Bytes(vec![b"ab".to_vec(), b"".to_vec(), b"xyz".to_vec()]);
        let mut out = Vec::new();
        data.write_binary(&mut out);
        assert_eq!(&out[..6], &[2, 0, 0, 0, b'a', b'b']);
        assert_eq!(TensorData::from_binary(DataType::Bytes, &out).unwrap(), data);
        assert!(TensorData::from_binary(DataType::Bytes, &[5, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn binary_length_must_be_whole_elements() {
        assert!(TensorData::from_binary(DataType::Fp32, &[0, 0, 0]).is_err());
        let d = TensorData::from_binary(DataType::Int64, &7i64.to_le_bytes()).unwrap();
        assert_eq!(d, TensorData::Int64(vec![7]));
    }

    proptest! {
        #[test]
        fn concat_then_split_is_identity(parts in prop::collection::vec(prop::collection::vec(any::<i32>(), 0..20), 1..8)) {
            let datas: Vec<TensorData> = parts.iter().cloned().map(TensorData::Int32).collect();
            let refs: Vec<&TensorData> = datas.iter().collect();
            let joined = TensorData::concat(&refs).unwrap();
            let lengths: Vec<usize> = parts.iter().map(Vec::len).collect();
            prop_assert_eq!(joined.split(&lengths), datas);
        }

        #[test]
        fn fp32_binary_round_trips(values in prop::collection::vec(any::<f32>().prop_filter("not nan", |f| !f.is_nan()), 0..64)) {
            let data = TensorData::Fp32(values);
            let mut out = Vec::new();
            data.write_binary(&mut out);
            prop_assert_eq!(TensorData::from_binary(DataType::Fp32, &out).unwrap(), data);
        }
    }
}
