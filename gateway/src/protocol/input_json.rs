//! One request input as JSON, read in one pass: when `shape` and `datatype` come before `data`
//! (the order every Triton client writes), the values go straight into a typed buffer while
//! the body is parsed; otherwise `data` is kept as raw JSON and read once the object is done.
//! (Keeping it raw always meant scanning every number twice: a sixth of a small request's
//! instructions.)

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::codec::element_count;
use super::tensor::TensorData;
use flywheel_runtime::DataType;

/// Elements reserved up front at most: a shape that lies about its size reserves no more
/// (the buffer grows with the values actually sent).
const MAX_RESERVED: usize = 1 << 16;

/// An input's `data`, as it was read.
pub enum Data<'a> {
    /// Read with the body: the values, or why they are not valid for the datatype.
    Typed(Result<TensorData, String>),
    /// Came before `shape` or `datatype`, or with an unknown datatype: read later.
    Raw(&'a RawValue),
}

/// One entry of the request's `inputs`.
pub struct InputJson<'a> {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub parameters: Map<String, Value>,
    pub data: Option<Data<'a>>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for InputJson<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(InputVisitor(std::marker::PhantomData))
    }
}

struct InputVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for InputVisitor<'a> {
    type Value = InputJson<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an input object with name, shape, datatype and data")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InputJson<'a>, A::Error> {
        let (mut name, mut shape, mut datatype, mut parameters, mut data) = (None, None, None, None, None);
        fn once<T, E: de::Error>(slot: &Option<T>, field: &'static str) -> Result<(), E> {
            if slot.is_some() { Err(E::duplicate_field(field)) } else { Ok(()) }
        }
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Name => {
                    once(&name, "name")?;
                    name = Some(map.next_value::<String>()?);
                }
                Key::Shape => {
                    once(&shape, "shape")?;
                    shape = Some(map.next_value::<Vec<i64>>()?);
                }
                Key::Datatype => {
                    once(&datatype, "datatype")?;
                    datatype = Some(map.next_value::<String>()?);
                }
                Key::Parameters => {
                    once(&parameters, "parameters")?;
                    parameters = Some(map.next_value::<Map<String, Value>>()?);
                }
                Key::Data => {
                    once(&data, "data")?;
                    let typed = datatype.as_deref().and_then(DataType::parse).zip(shape.as_deref());
                    data = Some(match typed {
                        Some((datatype, shape)) => {
                            let capacity = element_count(shape).unwrap_or(0).min(MAX_RESERVED);
                            Data::Typed(map.next_value_seed(TypedData { datatype, capacity })?)
                        }
                        None => Data::Raw(map.next_value::<&'de RawValue>()?),
                    });
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(InputJson {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.unwrap_or_default(),
            data,
        })
    }
}

/// Reads `data` as `datatype`.
struct TypedData {
    datatype: DataType,
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for TypedData {
    type Value = Result<TensorData, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        TensorData::read_json(self.datatype, deserializer, self.capacity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn input(json: &str) -> InputJson<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn data_after_shape_and_datatype_is_read_with_the_body() {
        let x = input(r#"{"name":"x","shape":[2],"datatype":"INT32","extra":{"a":[1]},"data":[3,-4]}"#);
        assert!(matches!(x.data, Some(Data::Typed(Ok(TensorData::Int32(ref v)))) if *v == vec![3, -4]));
        let bad = input(r#"{"name":"x","shape":[2],"datatype":"INT32","data":[3,"a"],"parameters":{"p":1}}"#);
        match bad.data {
            Some(Data::Typed(Err(e))) => assert_eq!(e, "element 1: \"a\" is not a valid INT32 value"),
            _ => panic!("the bad element is named"),
        }
        assert_eq!(bad.parameters.get("p"), Some(&Value::from(1)), "the rest of the object is read");
    }

    #[test]
    fn data_before_its_datatype_or_of_an_unknown_one_is_kept_raw() {
        let early = input(r#"{"data":[1,2],"name":"x","shape":[2],"datatype":"FP32"}"#);
        assert!(matches!(early.data, Some(Data::Raw(r)) if r.get() == "[1,2]"));
        let unknown = input(r#"{"name":"x","shape":[1],"datatype":"FP99","data":[1]}"#);
        assert!(matches!(unknown.data, Some(Data::Raw(_))));
        let fp16 = input(r#"{"name":"x","shape":[1],"datatype":"FP16","data":[1],"parameters":{}}"#);
        assert!(matches!(fp16.data, Some(Data::Typed(Err(ref e))) if e.contains("FP16")), "read past, refused");
    }

    #[test]
    fn missing_and_repeated_fields_are_malformed() {
        let missing = serde_json::from_str::<InputJson<'_>>(r#"{"name":"x","datatype":"FP32","data":[1]}"#);
        assert!(missing.err().unwrap().to_string().contains("missing field `shape`"));
        let twice = serde_json::from_str::<InputJson<'_>>(r#"{"name":"x","name":"y","shape":[1],"datatype":"FP32"}"#);
        assert!(twice.err().unwrap().to_string().contains("duplicate field `name`"));
    }
}
