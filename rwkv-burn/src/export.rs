//! Writing a model back in the official layout (key names and shapes of the official
//! checkpoints), so the official Python package and every other RWKV tool can load it.

use crate::load::{Layout, NamedParam, ParamNames};
use crate::model::Rwkv;
use crate::safetensors_io::{self, IoError, NamedTensor};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use std::collections::HashMap;
use std::path::Path;

/// Collects every float parameter's values by id.
struct Collect(HashMap<ParamId, TensorData>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.insert(param.id, param.val().into_data());
    }
}

/// Every parameter named by `names`, with its official key and stored shape.
///
/// # Panics
/// If `names` lists a parameter the model does not have (names from another model).
pub fn official_tensors(model: &Rwkv, names: &ParamNames) -> Vec<NamedTensor> {
    let mut collect = Collect(HashMap::new());
    model.visit(&mut collect);
    names
        .0
        .iter()
        .map(|param| {
            let data = collect
                .0
                .remove(&param.id)
                .unwrap_or_else(|| panic!("the model has no parameter {}", param.name));
            NamedTensor::new(param.name.clone(), to_official(data, param))
        })
        .collect()
}

/// Writes the model as an official-format safetensors file (atomically).
pub fn save_official(model: &Rwkv, names: &ParamNames, path: &Path) -> Result<(), IoError> {
    safetensors_io::write(path, &official_tensors(model, names))
}

/// A tensor in the model's layout -> the official layout of `param` (f32).
pub fn to_official(data: TensorData, param: &NamedParam) -> TensorData {
    let shape = data.shape().to_vec();
    let values = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values");
    let values = match param.layout {
        Layout::Same => values,
        Layout::Transposed => {
            let (rows, cols) = (shape[0], shape[1]); // Burn keeps [in, out]
            let mut out = vec![0f32; values.len()];
            for i in 0..rows {
                for o in 0..cols {
                    out[o * rows + i] = values[i * cols + o];
                }
            }
            out
        }
    };
    TensorData::new(values, param.stored_shape.clone())
}
