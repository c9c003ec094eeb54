//! Image classifiers: one serializable config, one `Classifier` that is trainable (weights in a
//! `VarMap`) or frozen (weights loaded as plain tensors — no variable, no optimizer).

mod batch_norm;
mod conv_cpu;
mod frozen;
mod frozen_chain;
mod host_weights;
mod resnet;
mod small_cnn;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use stainedglass_core::io::{atomic_write, check_tensors, load_tensors, save_tensors};
use stainedglass_core::BaseModel;

pub use batch_norm::BatchNorm2d;
pub use frozen::{Conv, Dense};
use resnet::ResNet18;
use small_cnn::SmallCnn;

use crate::{Error, Result};

pub const MODEL_CONFIG_FILE: &str = "config.json";
pub const MODEL_WEIGHTS_FILE: &str = "model.safetensors";
const FORMAT_VERSION: u32 = 1;

/// Architecture and its size knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ClassifierArch {
    SmallCnn {
        channels: (usize, usize),
        hidden: usize,
    },
    ResNet18 {
        width: usize,
    },
}

/// What a classifier file says about the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    #[serde(default = "version")]
    pub format_version: u32,
    pub model: ClassifierArch,
    pub input_shape: [usize; 3],
    pub num_classes: usize,
}

fn version() -> u32 {
    FORMAT_VERSION
}

impl ClassifierConfig {
    pub fn small_cnn(input_shape: [usize; 3], num_classes: usize) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            model: ClassifierArch::SmallCnn {
                channels: (16, 32),
                hidden: 128,
            },
            input_shape,
            num_classes,
        }
    }

    pub fn resnet18(input_shape: [usize; 3], num_classes: usize, width: usize) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            model: ClassifierArch::ResNet18 { width },
            input_shape,
            num_classes,
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format version {} unsupported (expected {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.input_shape.contains(&0) || self.num_classes < 2 {
            return Err("input shape must be positive and num_classes ≥ 2".into());
        }
        match self.model {
            ClassifierArch::SmallCnn { channels, hidden }
                if channels.0 == 0 || channels.1 == 0 || hidden == 0 =>
            {
                Err("small_cnn sizes must be > 0".into())
            }
            ClassifierArch::ResNet18 { width: 0 } => Err("resnet18 width must be > 0".into()),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
enum Net {
    SmallCnn(SmallCnn),
    ResNet18(ResNet18),
}

/// An image classifier producing logits `[B, classes]` from images `[B, C, H, W]` in `[0, 1]`.
pub struct Classifier {
    config: ClassifierConfig,
    net: Net,
    varmap: Option<VarMap>,
}

impl Classifier {
    fn build(config: ClassifierConfig, vb: VarBuilder, varmap: Option<VarMap>) -> Result<Self> {
        config.validate().map_err(|r| Error::model("<config>", r))?;
        let net = match config.model {
            ClassifierArch::SmallCnn { channels, hidden } => Net::SmallCnn(SmallCnn::new(
                config.input_shape,
                channels,
                hidden,
                config.num_classes,
                vb,
            )?),
            ClassifierArch::ResNet18 { width } => Net::ResNet18(ResNet18::new(
                config.input_shape[0],
                width,
                config.num_classes,
                vb,
            )?),
        };
        Ok(Self {
            config,
            net,
            varmap,
        })
    }

    /// A freshly initialised, trainable classifier.
    pub fn new_trainable(config: ClassifierConfig, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        Self::build(config, vb, Some(varmap))
    }

    /// A trainable classifier initialised reproducibly from `seed` (candle's CPU `randn` cannot
    /// be seeded, so the same distributions are redrawn from ChaCha): conv/linear weights Kaiming
    /// normal (std √2/√fan_in), their biases U(±1/√fan_in), batch-norm scale 1 and shift 0.
    pub fn new_seeded(config: ClassifierConfig, device: &Device, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        use rand_distr::{Distribution, StandardNormal};
        let m = Self::new_trainable(config, device)?;
        let vars = m.named_vars()?;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let fan_in = |name: &str| -> Option<usize> {
            let stem = name
                .strip_suffix("bias")
                .or_else(|| name.strip_suffix("weight"))?;
            let w = vars.iter().find(|(n, _)| n == &format!("{stem}weight"))?;
            (w.1.rank() >= 2).then(|| w.1.dims()[1..].iter().product())
        };
        for (name, var) in &vars {
            let n = var.elem_count();
            let values: Option<Vec<f32>> = match (name.rsplit('.').next(), fan_in(name)) {
                (Some("weight"), Some(f)) => {
                    let std = (2.0 / f as f64).sqrt();
                    Some(
                        (0..n)
                            .map(|_| {
                                let z: f64 = StandardNormal.sample(&mut rng);
                                (std * z) as f32
                            })
                            .collect(),
                    )
                }
                (Some("bias"), Some(f)) => {
                    let b = 1.0 / (f as f64).sqrt();
                    Some((0..n).map(|_| rng.random_range(-b..b) as f32).collect())
                }
                _ => None, // batch-norm parameters and statistics keep their constant init
            };
            if let Some(v) = values {
                var.set(&Tensor::from_vec(v, var.shape(), device)?)?;
            }
        }
        Ok(m)
    }

    fn named_vars(&self) -> Result<Vec<(String, candle_core::Var)>> {
        let vm = self.varmap.as_ref().ok_or_else(|| {
            Error::model(
                "<memory>",
                "the classifier is frozen: it has no variables to save or update",
            )
        })?;
        let data = vm
            .data()
            .lock()
            .map_err(|_| Error::model("<memory>", "weight map lock poisoned"))?;
        let mut v: Vec<(String, candle_core::Var)> = data
            .iter()
            .map(|(k, var)| (k.clone(), var.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// Trainable variables sorted by name (a stable order, so optimizer state can be
    /// checkpointed by position); empty for a frozen model.
    pub fn trainable_vars(&self) -> Vec<candle_core::Var> {
        self.named_vars()
            .map(|v| v.into_iter().map(|(_, v)| v).collect())
            .unwrap_or_default()
    }

    /// Whether weights are plain tensors that no optimizer can update.
    pub fn is_frozen(&self) -> bool {
        self.varmap.is_none()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = x.dims();
        if d.len() != 4 || d[1..] != self.config.input_shape {
            return Err(Error::Shape {
                what: "classifier input".into(),
                expected: format!("[batch, {:?}]", self.config.input_shape),
                got: d.to_vec(),
            });
        }
        Ok(())
    }

    /// Logits; `train` selects batch statistics in batch-norm layers.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        Ok(match &self.net {
            Net::SmallCnn(m) => m.forward(x)?,
            Net::ResNet18(m) => m.forward_t(x, train)?,
        })
    }

    /// Named weights (for saving and checkpoints).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .named_vars()?
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect())
    }

    /// Overwrites weights of a trainable classifier (checkpoint resume).
    pub fn set_named_tensors(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        for (k, var) in self.named_vars()? {
            let t = tensors
                .get(&k)
                .ok_or_else(|| Error::model("<checkpoint>", format!("missing tensor `{k}`")))?;
            var.set(t)?;
        }
        Ok(())
    }

    /// Saves `config.json` and `model.safetensors` (atomic writes) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_tensors(&dir.join(MODEL_WEIGHTS_FILE), &self.named_tensors()?)?;
        let json = serde_json::to_vec_pretty(&self.config)
            .map_err(|e| Error::model(dir, e.to_string()))?;
        atomic_write(&dir.join(MODEL_CONFIG_FILE), &json)?;
        Ok(())
    }

    /// Reads only the config of a saved classifier.
    pub fn load_config(dir: &Path) -> Result<ClassifierConfig> {
        let cpath = dir.join(MODEL_CONFIG_FILE);
        let bytes = std::fs::read(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let config: ClassifierConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::model(&cpath, format!("malformed config: {e}")))?;
        config.validate().map_err(|r| Error::model(&cpath, r))?;
        Ok(config)
    }

    /// Loads a saved classifier as a **frozen** model (plain tensors), validating every weight.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = Self::load_config(dir)?;
        let wpath = dir.join(MODEL_WEIGHTS_FILE);
        let tensors = load_tensors(&wpath, device)?;
        // Expected names and shapes come from a throw-away trainable build of the same config.
        let probe = Self::new_trainable(config.clone(), &Device::Cpu)?;
        let expected: Vec<(String, Vec<usize>)> = probe
            .named_tensors()?
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
        check_tensors(&wpath, &tensors, &expected)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::build(config, vb, None)
    }
}

impl BaseModel for Classifier {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(x, false)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// Test helper: a `VarBuilder` over plain copies of a `VarMap`'s tensors, which builds the same
/// layers **frozen**.
#[cfg(test)]
pub(crate) fn frozen_builder(vm: &VarMap, dev: &Device) -> VarBuilder<'static> {
    let tensors: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().expect("copy")))
        .collect();
    VarBuilder::from_tensors(tensors, DType::F32, dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn save_load_round_trip_is_frozen_and_identical() {
        let dir = tempfile::tempdir().unwrap();
        for cfg in [
            ClassifierConfig::small_cnn([1, 8, 8], 10),
            ClassifierConfig::resnet18([1, 8, 8], 10, 4),
        ] {
            let m = Classifier::new_seeded(cfg.clone(), &Device::Cpu, 3).unwrap();
            let again = Classifier::new_seeded(cfg, &Device::Cpu, 3).unwrap();
            let (a, b) = (m.named_tensors().unwrap(), again.named_tensors().unwrap());
            for ((n, x), (_, y)) in a.iter().zip(&b) {
                let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(x, y, "{n} not reproducible");
            }
            let x = Tensor::rand(0f32, 1.0, (3, 1, 8, 8), &Device::Cpu).unwrap();
            // One training-mode pass moves the running statistics away from their init.
            m.forward_t(&x, true).unwrap();
            m.save(dir.path()).unwrap();
            let back = Classifier::load(dir.path(), &Device::Cpu).unwrap();
            assert!(back.is_frozen() && back.trainable_vars().is_empty());
            // The frozen model runs its own kernels (a different summation order than candle's
            // trainable ops), so the logits agree to float rounding, not bit for bit.
            let a = m.forward_t(&x, false).unwrap().flatten_all().unwrap();
            let b = back.forward_t(&x, false).unwrap().flatten_all().unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }

    #[test]
    fn gradient_reaches_the_input_through_every_layer() {
        for cfg in [
            ClassifierConfig::small_cnn([1, 8, 8], 10),
            ClassifierConfig::resnet18([1, 8, 8], 10, 4),
        ] {
            let m = Classifier::new_trainable(cfg, &Device::Cpu).unwrap();
            let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu).unwrap())
                .unwrap();
            let y = m.forward_t(x.as_tensor(), false).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let gx = g.get(x.as_tensor()).expect("gradient cut before the input");
            assert!(
                gx.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let m = Classifier::new_trainable(ClassifierConfig::small_cnn([1, 8, 8], 10), &Device::Cpu)
            .unwrap();
        let x = Tensor::zeros((2, 1, 9, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(m.forward_t(&x, false).is_err());
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        // A config for another architecture does not match the weights.
        let other = ClassifierConfig::resnet18([1, 8, 8], 10, 4);
        std::fs::write(
            dir.path().join(MODEL_CONFIG_FILE),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        let e = Classifier::load(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing tensor"), "{e}");
    }
}
