//! A small builder over the ONNX protos: declare inputs, outputs, initializers and nodes, then
//! encode. Everything the project writes (exports, test fixtures) goes through here.

use prost::Message;

use crate::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, ValueInfoProto,
};

/// ONNX opset the writer targets; every operator used here exists unchanged since opset 13.
pub const OPSET: i64 = 13;
/// IR version 8 pairs with opset 13..=17 and every ONNX Runtime release the project supports.
pub const IR_VERSION: i64 = 8;

/// ONNX `TensorProto.DataType` codes for the element types the project writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ElemType {
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Double = 11,
}

/// One dimension of a declared tensor shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named dynamic dimension (ONNX Runtime reports it as `-1`).
    Dynamic(String),
}

impl Dim {
    /// The conventional dynamic batch dimension.
    pub fn batch() -> Self {
        Dim::Dynamic("batch".to_owned())
    }
}

/// An attribute value of a node.
#[derive(Clone, Copy, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
}

/// Accumulates a graph; [`GraphBuilder::encode`] turns it into `.onnx` bytes.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    /// A new, empty graph with the given name.
    pub fn new(name: &str) -> Self {
        Self { graph: GraphProto { name: name.to_owned(), ..Default::default() } }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> &mut Self {
        self.graph.input.push(value_info(name, elem, dims));
        self
    }

    /// Declares a graph output.
    pub fn output(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> &mut Self {
        self.graph.output.push(value_info(name, elem, dims));
        self
    }

    /// Adds an FP32 constant (weights, biases) stored as little-endian raw data.
    pub fn initializer_f32(&mut self, name: &str, dims: &[i64], values: &[f32]) -> &mut Self {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: ElemType::Float as i32,
            name: name.to_owned(),
            raw_data,
        });
        self
    }

    /// Adds an INT64 constant (shapes, indices).
    pub fn initializer_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> &mut Self {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: ElemType::Int64 as i32,
            name: name.to_owned(),
            raw_data,
        });
        self
    }

    /// Adds a node; `name` doubles as the node name.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) -> &mut Self {
        let attribute = attrs
            .iter()
            .map(|(name, value)| match *value {
                Attr::Int(i) => AttributeProto { name: (*name).to_owned(), i, r#type: 2, ..Default::default() },
                Attr::Float(f) => AttributeProto { name: (*name).to_owned(), f, r#type: 1, ..Default::default() },
            })
            .collect();
        let index = self.graph.node.len();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            name: format!("{op_type}_{index}"),
            op_type: op_type.to_owned(),
            attribute,
        });
        self
    }

    /// Encodes the graph as a complete model file.
    pub fn encode(&self, model_version: i64) -> Vec<u8> {
        let model = ModelProto {
            ir_version: IR_VERSION,
            producer_name: "flywheel".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            model_version,
            graph: Some(self.graph.clone()),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        };
        model.encode_to_vec()
    }
}

fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Dimension { dim_value: Some(*v), dim_param: None },
            Dim::Dynamic(p) => Dimension { dim_value: None, dim_param: Some(p.clone()) },
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: elem as i32, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}
