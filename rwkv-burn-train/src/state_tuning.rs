//! State tuning: with the model frozen, train only the WKV memory every sequence starts from
//! (RWKV-PEFT's `--peft state`, RWKV-LM's `RWKV_TRAIN_TYPE=states`). The result is a few
//! hundred KB per model, loaded at inference like any saved state, and swapped per request.
//!
//! Only the WKV matrices are tuned, as RWKV-PEFT does: its state-tuned blocks shift in zeros,
//! so token shift (`att_x`, `ffn_x`) stays at a fresh sequence's zeros and the saved state is
//! exactly a fresh sequence's state with other memories. The frozen weights get no
//! gradients (the backward still runs through them to reach the state) and hold no
//! optimizer moments.

use crate::trainer::Tunable;
use burn::module::{Module, Param};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use rwkv_burn::state::{StateError, WkvState};
use rwkv_burn::weights::stable_id;
use rwkv_burn::{Rwkv, RwkvConfig, State};

/// The tuned initial WKV memory of every layer.
#[derive(Module, Debug)]
pub struct InitialState {
    /// Per layer, `[H, N, N]` in the version's official layout (see [`rwkv_burn::state`]).
    pub wkv: Vec<Param<Tensor<3>>>,
}

impl InitialState {
    /// Zero memories (a fresh sequence), the usual start of state tuning.
    ///
    /// # Errors
    /// [`StateError::NoMatrixState`] for RWKV-4, whose memory is not a matrix.
    pub fn zeros(config: &RwkvConfig, device: &Device) -> Result<Self, StateError> {
        Self::from_state(&State::zeros(config, 1, device), config)
    }

    /// The memories of sequence 0 of `state` (to continue tuning a saved state).
    ///
    /// # Errors
    /// [`StateError::NoMatrixState`] for RWKV-4.
    pub fn from_state(state: &State, config: &RwkvConfig) -> Result<Self, StateError> {
        if config.head_size.is_none() {
            return Err(StateError::NoMatrixState(config.version));
        }
        let wkv = state
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| match &layer.wkv {
                WkvState::Matrix(kv) => {
                    let [_, h, n, m] = kv.dims();
                    let first = kv
                        .clone()
                        .slice([0..1, 0..h, 0..n, 0..m])
                        .reshape([h, n, m]);
                    // A parameter of its own, not a view of the caller's state.
                    let data = first.to_data();
                    let mut param = Param::from_tensor(Tensor::from_data(data, &kv.device()));
                    // Named like the official state, so a resumed run's optimizer moments
                    // find their parameters again.
                    param.id = stable_id(&format!("state.{i}.att_kv"));
                    param
                }
                WkvState::V4(_) => unreachable!("matrix versions have matrix memories"),
            })
            .collect();
        Ok(Self { wkv })
    }

    /// The state `batch` sequences start from: every sequence these memories, token shift
    /// zero.
    pub fn expand(&self, config: &RwkvConfig, batch: usize) -> State {
        let device = self.wkv[0].val().device();
        let mut state = State::zeros(config, batch, &device);
        for (layer, wkv) in state.layers.iter_mut().zip(&self.wkv) {
            let [h, n, m] = wkv.dims();
            layer.wkv = WkvState::Matrix(wkv.val().unsqueeze::<4>().expand([batch, h, n, m]));
        }
        state
    }

    /// The tuned state of one sequence, as [`State::save`] and
    /// [`rwkv_burn::time_state::to_time_state`] write it.
    pub fn to_state(&self, config: &RwkvConfig) -> State {
        let mut state = self.valid().expand(config, 1);
        // Plain values, detached from any graph.
        for layer in &mut state.layers {
            if let WkvState::Matrix(kv) = &layer.wkv {
                let data: TensorData = kv.to_data();
                layer.wkv = WkvState::Matrix(Tensor::from_data(data, &kv.device()));
            }
        }
        state
    }
}

/// A frozen model and the initial state being tuned for it.
#[derive(Module, Debug)]
pub struct StateTuning {
    /// The model, frozen: no gradients, no optimizer moments, bit-identical after the run.
    pub model: Rwkv,
    /// What the run trains.
    pub state: InitialState,
}

impl StateTuning {
    /// Tuning `state` for `model` (which is frozen here).
    pub fn new(model: Rwkv, state: InitialState) -> Self {
        Self {
            model: model.freeze(),
            state,
        }
    }
}

impl Tunable for StateTuning {
    fn logits(&self, inputs: Tensor<2, Int>, compute_dtype: Option<FloatDType>) -> Tensor<3> {
        let [batch, _] = inputs.dims();
        let config = self.model.config();
        let mut state = self.state.expand(&config, batch);
        crate::trainer::forward_in(&self.model, inputs, &mut state, compute_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::cross_entropy;
    use burn::optim::GradientsParams;
    use rwkv_burn::{DeviceSpec, Version, presets::config_for};

    fn setup() -> (RwkvConfig, Rwkv, Device) {
        let device = DeviceSpec::available()[0].device().unwrap().autodiff();
        let mut config = config_for(Version::V7, 2, 64);
        config.vocab_size = 64;
        let (model, _) = rwkv_burn::init::training_model(&config, 3, &device).unwrap();
        (config, model, device)
    }

    fn tokens(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let ids: Vec<u32> = (0..17).map(|i| (i * 7 + 3) % 64).collect();
        let inputs = rwkv_burn::model::token_tensor(&ids[..16], 1, device);
        let targets = rwkv_burn::model::token_tensor(&ids[1..], 1, device);
        (inputs, targets)
    }

    /// The gradient reaches the initial state and nothing else, and equals a finite
    /// difference of the loss.
    #[test]
    fn gradient_reaches_the_state_only_and_matches_finite_differences() {
        let (config, model, device) = setup();
        let mut start = InitialState::zeros(&config, &device).unwrap();
        // A non-zero start, so the memory's own terms matter.
        let [h, n, _] = start.wkv[1].dims();
        let values: Vec<f32> = (0..h * n * n)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.05)
            .collect();
        start.wkv[1] = Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [h, n, n]),
            &device,
        ));
        let tuning = StateTuning::new(model, start);
        let (inputs, targets) = tokens(&device);
        let loss = cross_entropy(tuning.logits(inputs.clone(), None), targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &tuning);
        let mut count = 0;
        struct Count<'a>(&'a GradientsParams, &'a mut usize);
        impl burn::module::ModuleVisitor for Count<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if self.0.get::<D>(param.id).is_some() {
                    *self.1 += 1;
                }
            }
        }
        tuning.visit(&mut Count(&grads, &mut count));
        assert_eq!(
            count, 2,
            "one gradient per layer's memory, none for the weights"
        );

        let grad: Vec<f32> = grads
            .get::<3>(tuning.state.wkv[1].id)
            .unwrap()
            .to_data()
            .try_to_vec()
            .unwrap();
        let loss_at = |delta: f32, index: usize| -> f64 {
            let valid = tuning.valid();
            let mut values: Vec<f32> = valid.state.wkv[1].val().to_data().try_to_vec().unwrap();
            values[index] += delta;
            let mut moved = valid.clone();
            moved.state.wkv[1] = Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [h, n, n]),
                &device.clone().without_autodiff(),
            ));
            let inner = device.clone().without_autodiff();
            let (inputs, targets) = tokens(&inner);
            f64::from(cross_entropy(moved.logits(inputs, None), targets).into_scalar::<f32>())
        };
        // The largest gradients: their finite differences stand well above f32 noise.
        let mut order: Vec<usize> = (0..grad.len()).collect();
        order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
        for &index in &order[..4] {
            let eps = 1e-2;
            let numeric = (loss_at(eps, index) - loss_at(-eps, index)) / (2.0 * f64::from(eps));
            let analytic = f64::from(grad[index]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "[{index}]: finite difference {numeric}, gradient {analytic}"
            );
        }
    }

    #[test]
    fn rwkv_4_has_no_matrix_state() {
        let device = DeviceSpec::available()[0].device().unwrap();
        let config = config_for(Version::V4, 1, 64);
        assert!(matches!(
            InitialState::zeros(&config, &device),
            Err(StateError::NoMatrixState(Version::V4))
        ));
    }
}
