//! Models for tests, the demo and benchmarks, written by our own code (nothing fetched or
//! committed as a binary). [`write_demo_repository`] lays them out as a model repository.

use std::path::Path;

use crate::graph::{Dim, ElemType, GraphBuilder};
use crate::mlp::{BatchDim, Mlp};

/// Widths of the overhead-bound benchmark model: 16 features, one hidden layer of 32.
pub const TINY_WIDTHS: [usize; 3] = [16, 32, 1];
/// Widths of the compute-bound benchmark model: 256 features, two hidden layers of 1024.
pub const HEAVY_WIDTHS: [usize; 4] = [256, 1024, 1024, 1];

/// The tiny MLP with a dynamic batch dimension.
pub fn tiny(seed: u64) -> Mlp {
    Mlp::random(&TINY_WIDTHS, seed)
}

/// The heavy MLP with a dynamic batch dimension.
pub fn heavy(seed: u64) -> Mlp {
    Mlp::random(&HEAVY_WIDTHS, seed)
}

/// A model exercising every datatype the gateway maps: each output is a simple function of one
/// input (`*_twice` = x + x, `b_neg` = -b, `*_copy` = identity, `e_not` = !e).
///
/// | input | type   | shape      | output      |
/// |-------|--------|------------|-------------|
/// | a     | FP32   | [-1, 3]    | a_twice     |
/// | b     | FP64   | [-1, 2]    | b_neg       |
/// | c     | INT32  | [-1, 2]    | c_twice     |
/// | d     | INT64  | [-1, 1]    | d_copy      |
/// | e     | BOOL   | [-1, 2]    | e_not       |
/// | f     | UINT8  | [-1, 2]    | f_copy      |
/// | g     | INT8   | [-1, 2]    | g_copy      |
/// | s     | BYTES  | [-1, 1]    | s_copy      |
pub fn multi_io() -> Vec<u8> {
    let b = Dim::batch;
    let mut g = GraphBuilder::new("multi_io");
    let specs: [(&str, ElemType, i64, &str, &str, &str); 8] = [
        ("a", ElemType::Float, 3, "Add", "a_twice", "x2"),
        ("b", ElemType::Double, 2, "Neg", "b_neg", "neg"),
        ("c", ElemType::Int32, 2, "Add", "c_twice", "x2"),
        ("d", ElemType::Int64, 1, "Identity", "d_copy", "id"),
        ("e", ElemType::Bool, 2, "Not", "e_not", "not"),
        ("f", ElemType::Uint8, 2, "Identity", "f_copy", "id"),
        ("g", ElemType::Int8, 2, "Identity", "g_copy", "id"),
        ("s", ElemType::String, 1, "Identity", "s_copy", "id"),
    ];
    for (input, elem, width, op, output, kind) in specs {
        g.input(input, elem, &[b(), Dim::Fixed(width)]);
        g.output(output, elem, &[b(), Dim::Fixed(width)]);
        if kind == "x2" {
            g.node(op, &[input, input], &[output], &[]);
        } else {
            g.node(op, &[input], &[output], &[]);
        }
    }
    g.encode(1)
}

/// A lookup model whose answer depends on the input's *values* being valid: `index` (INT64,
/// `[-1, 1]`) picks from a table of ten values (`value` = 10 × index, FP32 `[-1, 1]`). An index
/// outside `-10..10` makes ONNX Runtime fail the run (Gather: "indices element out of data
/// bounds", an invalid-argument error): the poisoned row for failure-isolation tests.
pub fn lookup() -> Vec<u8> {
    let b = Dim::batch;
    let mut g = GraphBuilder::new("lookup");
    g.input("index", ElemType::Int64, &[b(), Dim::Fixed(1)]);
    g.output("value", ElemType::Float, &[b(), Dim::Fixed(1)]);
    let table: Vec<f32> = (0..10).map(|i| i as f32 * 10.0).collect();
    g.initializer_f32("table", &[10], &table);
    g.node("Gather", &["table", "index"], &["value"], &[("axis", crate::graph::Attr::Int(0))]);
    g.encode(1)
}

/// Writes the demo/test model repository under `root`:
/// `tiny/1`, `tiny/2` (another seed), `heavy/1`, `tiny_fixed/1` (batch fixed at 1), `multi_io/1`.
pub fn write_demo_repository(root: &Path, with_heavy: bool) -> std::io::Result<()> {
    let write = |model: &str, version: u32, bytes: Vec<u8>| -> std::io::Result<()> {
        let dir = root.join(model).join(version.to_string());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("model.onnx"), bytes)
    };
    write("tiny", 1, tiny(1).to_onnx(1))?;
    write("tiny", 2, tiny(2).to_onnx(2))?;
    let mut fixed = tiny(1);
    fixed.batch = BatchDim::Fixed(1);
    write("tiny_fixed", 1, fixed.to_onnx(1))?;
    write("multi_io", 1, multi_io())?;
    if with_heavy {
        write("heavy", 1, heavy(3).to_onnx(1))?;
    }
    Ok(())
}
