//! Convolution and linear layers whose weights can be *frozen*: then the layer runs as a
//! one-stage [`FrozenChain`] on its input alone, with host copies of the weights, so
//! backpropagation computes the input gradient only (candle's built-in conv2d/matmul backward
//! always computes the weight gradient too, wasted work when an SGT trains through a frozen
//! model), and can fuse the ReLU that follows. Trainable convolutions on the CPU run on the same
//! host kernels ([`super::conv_cpu`]) with weight gradients; other devices use candle's ops.
//! Weight names and initialisation match candle-nn's `conv2d` / `linear`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use stainedglass_core::host::{cpu_slice as slice_of, with_hosts};

use super::conv_cpu::{conv2d_forward, conv2d_input_grad, conv2d_weight_grad};
use super::frozen_chain::{FrozenChain, Stage};
use super::host_weights::{ConvShape, HostWeights};

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Host copy of a CPU f32 weight that is not a variable (frozen), else `None`.
fn host_copy(t: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
    if t.is_variable() || !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
}

/// 2-D convolution, trainable or frozen.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    /// Host weights of a frozen CPU layer (the fast path); `None` when trainable.
    host: Option<Arc<HostWeights>>,
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
        let host = match (host_copy(&weight)?, &bias) {
            (Some(w), Some(b)) => host_copy(b)?.map(|b| HostWeights {
                weight: w,
                bias: Some(b),
            }),
            (Some(w), None) => Some(HostWeights {
                weight: w,
                bias: None,
            }),
            (None, _) => None,
        };
        Ok(Self {
            weight,
            bias,
            padding,
            stride,
            host: host.map(Arc::new),
        })
    }

    /// Kernel size, channels, stride and padding.
    fn conv_shape(&self) -> Option<ConvShape> {
        let (cout, cin, k, _) = self.weight.dims4().ok()?;
        Some(ConvShape {
            cin,
            cout,
            k,
            stride: self.stride,
            padding: self.padding,
        })
    }

    fn plain(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let host = is_cpu_f32(x) && is_cpu_f32(&self.weight);
        let y = match self.conv_shape() {
            Some(shape) if host => x
                .contiguous()?
                .apply_op2(&self.weight.contiguous()?, TrainConvOp(shape))?,
            _ => x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
            None => Ok(y),
        }
    }

    /// This layer (then ReLU if `relu`) as a stage of a frozen chain; `None` if trainable.
    pub(super) fn stage(&self, relu: bool) -> Option<Stage> {
        Some(Stage::Conv {
            host: self.host.clone()?,
            shape: self.conv_shape()?,
            relu,
        })
    }

    /// The frozen CPU path: a one-stage chain.
    fn op(&self, x: &Tensor, relu: bool) -> Option<candle_core::Result<Tensor>> {
        let stage = self.stage(relu)?;
        is_cpu_f32(x).then(|| x.apply_op1(FrozenChain::new(vec![stage])))
    }

    /// `relu(conv(x))`, fused into one op on the frozen CPU path.
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.op(x, true) {
            Some(y) => y,
            None => self.plain(x)?.relu(),
        }
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.op(x, false) {
            Some(y) => y,
            None => self.plain(x),
        }
    }
}

/// The trainable convolution on host kernels: gradients for the input (when it tracks one)
/// and for the weight; the bias is added outside.
#[derive(Debug, Clone)]
struct TrainConvOp(ConvShape);

impl CustomOp2 for TrainConvOp {
    fn name(&self) -> &'static str {
        "host-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, g) = self.0.geometry(l1.dims())?;
        let y = conv2d_forward(&g, slice_of(s1, l1)?, b, slice_of(s2, l2)?, None, false);
        Ok((CpuStorage::F32(y), Shape::from((b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, g) = self.0.geometry(x.dims())?;
        let dx = if x.track_op() {
            let v = with_hosts([grad, w], |[dy, wv]| conv2d_input_grad(&g, dy, None, b, wv))?;
            Some(Tensor::from_vec(v, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = with_hosts([x, grad], |[xv, dy]| conv2d_weight_grad(&g, xv, dy, b))?;
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
    }
}

/// Fully connected layer, trainable or frozen.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
    host: Option<Arc<HostWeights>>,
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
        let host = match (host_copy(&weight)?, host_copy(&bias)?) {
            (Some(weight), Some(b)) => Some(Arc::new(HostWeights {
                weight,
                bias: Some(b),
            })),
            _ => None,
        };
        Ok(Self { weight, bias, host })
    }

    fn plain(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }

    /// This layer (then ReLU if `relu`) as a stage of a frozen chain; `None` if trainable.
    pub(super) fn stage(&self, relu: bool) -> Option<Stage> {
        Some(Stage::Dense {
            host: self.host.clone()?,
            relu,
        })
    }

    /// The frozen CPU path on `(batch, in)` inputs: a one-stage chain.
    fn op(&self, x: &Tensor, relu: bool) -> Option<candle_core::Result<Tensor>> {
        let stage = self.stage(relu)?;
        (is_cpu_f32(x) && x.rank() == 2).then(|| x.apply_op1(FrozenChain::new(vec![stage])))
    }

    /// `relu(linear(x))`, fused into one op on the frozen CPU path.
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.op(x, true) {
            Some(y) => y,
            None => self.plain(x)?.relu(),
        }
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.op(x, false) {
            Some(y) => y,
            None => self.plain(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// The trainable convolution on host kernels matches candle's own conv2d in value and
    /// weight gradient, and the frozen op in the input gradient (candle's conv2d backward gets
    /// the input gradient's shape wrong when a strided output does not map back to the input
    /// size, e.g. 8 columns at stride 2).
    #[test]
    fn trainable_conv_matches_candle() {
        let dev = Device::Cpu;
        for (stride, padding, k) in [(1, 1, 3), (2, 1, 3), (2, 2, 5), (1, 0, 1)] {
            let vm = VarMap::new();
            let conv = Conv::new(
                3,
                4,
                k,
                stride,
                padding,
                true,
                VarBuilder::from_varmap(&vm, DType::F32, &dev),
            )
            .unwrap();
            assert!(conv.host.is_none());
            let frozen = Conv::new(
                3,
                4,
                k,
                stride,
                padding,
                true,
                crate::vision::frozen_builder(&vm, &dev),
            )
            .unwrap();
            // 9×9: sizes whose strided output candle's backward maps back correctly.
            let x0 = Tensor::rand(-1f32, 1.0, (2, 3, 9, 9), &dev).unwrap();
            let x = Var::from_tensor(&x0).unwrap();
            let reference = x0
                .conv2d(&conv.weight, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&conv.bias.as_ref().unwrap().reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let loss = |y: &Tensor| y.sin().unwrap().sum_all().unwrap().backward().unwrap();
            let max = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max)
            };
            let ours = conv.forward(x.as_tensor()).unwrap();
            assert!(
                max(&flat(&reference), &flat(&ours)) < 1e-5,
                "forward, s {stride} k {k}"
            );
            let (g0, g1) = (loss(&reference), loss(&ours));
            let dw0 = flat(g0.get(&conv.weight).unwrap());
            let dw1 = flat(g1.get(&conv.weight).unwrap());
            assert!(max(&dw0, &dw1) < 1e-4, "weight gradient, s {stride} k {k}");
            let g2 = loss(&frozen.forward(x.as_tensor()).unwrap());
            let dx1 = flat(g1.get(x.as_tensor()).unwrap());
            let dx2 = flat(g2.get(x.as_tensor()).unwrap());
            assert!(max(&dx1, &dx2) < 1e-4, "input gradient, s {stride} k {k}");
        }
    }

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
            let vb = crate::vision::frozen_builder(&vm, &dev);
            let fconv = Conv::new(3, 5, 3, stride, padding, true, vb.clone()).unwrap();
            let flin = Dense::new(5 * 4 * 4, 7, vb.pp("fc")).unwrap();
            assert!(fconv.host.is_some() && flin.host.is_some() && conv.host.is_none());
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
