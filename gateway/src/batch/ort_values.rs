//! Conversion between protocol tensors and ONNX Runtime values.

use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor as OrtTensor, TensorRef};

use crate::protocol::{DataType, Element, Tensor, TensorData};

/// Builds a runtime value from a tensor; BYTES must be UTF-8 (ONNX strings).
pub fn to_ort(tensor: Tensor) -> Result<DynValue, String> {
    let Tensor { name, shape, data } = tensor;
    let value = match data {
        TensorData::Bytes(items) => {
            let strings = items.into_iter().map(String::from_utf8).collect::<Result<Vec<_>, _>>().map_err(|e| {
                format!("input '{name}' BYTES element is not UTF-8, which ONNX string tensors need: {e}")
            })?;
            OrtTensor::from_string_array((shape, strings.as_slice())).map(|t| t.into_dyn())
        }
        TensorData::Bool(v) => primitive(shape, v),
        TensorData::Uint8(v) => primitive(shape, v),
        TensorData::Uint16(v) => primitive(shape, v),
        TensorData::Uint32(v) => primitive(shape, v),
        TensorData::Uint64(v) => primitive(shape, v),
        TensorData::Int8(v) => primitive(shape, v),
        TensorData::Int16(v) => primitive(shape, v),
        TensorData::Int32(v) => primitive(shape, v),
        TensorData::Int64(v) => primitive(shape, v),
        TensorData::Fp32(v) => primitive(shape, v),
        TensorData::Fp64(v) => primitive(shape, v),
    };
    value.map_err(|e| format!("input '{name}': {e}"))
}

/// A runtime view of `tensor`'s own buffer (no copy) for the run's inputs; BYTES are copied
/// into ONNX strings (they must be UTF-8).
pub fn to_ort_view(tensor: &Tensor) -> Result<SessionInputValue<'_>, String> {
    let shape = tensor.shape.as_slice();
    let value = match &tensor.data {
        TensorData::Bytes(items) => {
            let strings = items
                .iter()
                .map(|b| std::str::from_utf8(b).map(str::to_owned))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    format!("input '{}' BYTES element is not UTF-8, which ONNX string tensors need: {e}", tensor.name)
                })?;
            OrtTensor::from_string_array((shape.to_vec(), strings.as_slice())).map(|t| t.into_dyn().into())
        }
        TensorData::Bool(v) => view(shape, v),
        TensorData::Uint8(v) => view(shape, v),
        TensorData::Uint16(v) => view(shape, v),
        TensorData::Uint32(v) => view(shape, v),
        TensorData::Uint64(v) => view(shape, v),
        TensorData::Int8(v) => view(shape, v),
        TensorData::Int16(v) => view(shape, v),
        TensorData::Int32(v) => view(shape, v),
        TensorData::Int64(v) => view(shape, v),
        TensorData::Fp32(v) => view(shape, v),
        TensorData::Fp64(v) => view(shape, v),
    };
    value.map_err(|e| format!("input '{}': {e}", tensor.name))
}

fn view<'a, T>(shape: &'a [i64], values: &'a [T]) -> ort::Result<SessionInputValue<'a>>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    TensorRef::from_array_view((shape, values)).map(SessionInputValue::from)
}

fn primitive<T>(shape: Vec<i64>, values: Vec<T>) -> ort::Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    OrtTensor::from_array((shape, values)).map(|t| t.into_dyn())
}

/// Copies a runtime output of protocol type `datatype` into a protocol tensor.
pub fn from_ort(name: &str, value: &DynValue, datatype: DataType) -> Result<Tensor, String> {
    fn go<T>(name: &str, value: &DynValue) -> Result<Tensor, String>
    where
        T: Element + ort::value::PrimitiveTensorElementType,
    {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| format!("output '{name}': {e}"))?;
        Ok(Tensor { name: name.to_owned(), shape: shape.to_vec(), data: T::wrap(data.to_vec()) })
    }
    match datatype {
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(|e| format!("output '{name}': {e}"))?;
            let data = TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect());
            Ok(Tensor { name: name.to_owned(), shape: shape.to_vec(), data })
        }
        DataType::Bool => go::<bool>(name, value),
        DataType::Uint8 => go::<u8>(name, value),
        DataType::Uint16 => go::<u16>(name, value),
        DataType::Uint32 => go::<u32>(name, value),
        DataType::Uint64 => go::<u64>(name, value),
        DataType::Int8 => go::<i8>(name, value),
        DataType::Int16 => go::<i16>(name, value),
        DataType::Int32 => go::<i32>(name, value),
        DataType::Int64 => go::<i64>(name, value),
        DataType::Fp32 => go::<f32>(name, value),
        DataType::Fp64 => go::<f64>(name, value),
        DataType::Fp16 => Err(format!("output '{name}': FP16 is not served yet")),
    }
}
