//! Convolution and linear layers whose weights can be *frozen*: then the op is a `CustomOp1` on
//! the input alone, with the weights held inside the op, so backpropagation computes the input
//! gradient only. candle's built-in conv2d/matmul backward always computes the weight gradient
//! too, which is wasted work when an SGT trains through a frozen model. The trainable path uses
//! the built-in ops. Weight names and initialisation match candle-nn's `conv2d` / `linear`.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Storage, Tensor};
use candle_nn::{Init, VarBuilder};

/// Copies a contiguous CPU storage view into a fresh, untracked tensor.
fn tensor_from_cpu(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let v = s.as_slice::<f32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("frozen op needs a contiguous input".into()))?;
    Tensor::from_slice(&v[a..b], l.shape(), &candle_core::Device::Cpu)
}

/// The CPU storage of a contiguous result tensor.
fn cpu_storage_of(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => match layout.contiguous_offsets() {
            Some((0, n)) if n == c.as_slice::<f32>()?.len() => {
                Ok((c.clone(), layout.shape().clone()))
            }
            Some((a, b)) => Ok((
                CpuStorage::F32(c.as_slice::<f32>()?[a..b].to_vec()),
                layout.shape().clone(),
            )),
            None => Err(candle_core::Error::Msg("non-contiguous result".into())),
        },
        _ => Err(candle_core::Error::Msg(
            "frozen op: CPU storage expected".into(),
        )),
    }
}

/// 2-D convolution, trainable or frozen.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    frozen: bool,
}

impl Conv {
    /// Loads `weight` `(cout, cin, k, k)` and optionally `bias` under `vb`.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if bias {
            let b = 1.0 / ((cin * k * k) as f64).sqrt();
            Some(vb.get_with_hints(cout, "bias", Init::Uniform { lo: -b, up: b })?)
        } else {
            None
        };
        let frozen = !weight.is_variable();
        Ok(Self {
            weight,
            bias,
            padding,
            stride,
            frozen,
        })
    }

    fn plain(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
            None => Ok(y),
        }
    }
}

impl CustomOp1 for Conv {
    fn name(&self) -> &'static str {
        "frozen-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_storage_of(&self.plain(&tensor_from_cpu(s, l)?)?)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let k = self.weight.dim(2)?;
        let out_size = (grad.dim(2)? - 1) * self.stride + k - 2 * self.padding;
        let out_padding = arg.dim(2)? - out_size;
        Ok(Some(grad.conv_transpose2d(
            &self.weight,
            self.padding,
            out_padding,
            self.stride,
            1,
        )?))
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.frozen && x.device().is_cpu() {
            x.contiguous()?.apply_op1(self.clone())
        } else {
            self.plain(x)
        }
    }
}

/// Fully connected layer, trainable or frozen.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
    frozen: bool,
}

impl Dense {
    pub fn new(din: usize, dout: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(
            (dout, din),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let b = 1.0 / (din as f64).sqrt();
        let bias = vb.get_with_hints(dout, "bias", Init::Uniform { lo: -b, up: b })?;
        let frozen = !weight.is_variable();
        Ok(Self {
            weight,
            bias,
            frozen,
        })
    }

    fn plain(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

impl CustomOp1 for Dense {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_storage_of(&self.plain(&tensor_from_cpu(s, l)?)?)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.frozen && x.device().is_cpu() && x.rank() == 2 {
            x.contiguous()?.apply_op1(self.clone())
        } else {
            self.plain(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use std::collections::HashMap;

    /// Frozen and plain paths agree in value and in the input gradient.
    #[test]
    fn frozen_ops_match_reference_forward_and_input_gradient() {
        let dev = Device::Cpu;
        for (stride, padding) in [(1, 1), (2, 1), (2, 0)] {
            let vm = VarMap::new();
            let conv = Conv::new(
                3,
                5,
                3,
                stride,
                padding,
                true,
                VarBuilder::from_varmap(&vm, DType::F32, &dev),
            )
            .unwrap();
            let lin = Dense::new(
                5 * 4 * 4,
                7,
                VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("fc"),
            )
            .unwrap();
            let tensors: HashMap<String, Tensor> = vm
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
                .collect();
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let fconv = Conv::new(3, 5, 3, stride, padding, true, vb.clone()).unwrap();
            let flin = Dense::new(5 * 4 * 4, 7, vb.pp("fc")).unwrap();
            assert!(fconv.frozen && flin.frozen && !conv.frozen);
            // 9×9 input: outputs are 9×9, 5×5 and 4×4, each cropped to 4×4 for the linear layer.
            let x =
                Var::from_tensor(&Tensor::rand(-1f32, 1.0, (2, 3, 9, 9), &dev).unwrap()).unwrap();
            let run = |c: &Conv, l: &Dense| {
                let h = c.forward(x.as_tensor()).unwrap();
                let h = h
                    .narrow(2, 0, 4)
                    .unwrap()
                    .narrow(3, 0, 4)
                    .unwrap()
                    .flatten_from(1)
                    .unwrap();
                let y = l.forward(&h).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                (
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    g.get(x.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                )
            };
            let (y0, g0) = run(&conv, &lin);
            let (y1, g1) = run(&fconv, &flin);
            let max = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max)
            };
            assert!(max(&y0, &y1) < 1e-5, "forward max |Δ| = {}", max(&y0, &y1));
            assert!(
                max(&g0, &g1) < 1e-4,
                "input-gradient max |Δ| = {}",
                max(&g0, &g1)
            );
        }
    }
}
