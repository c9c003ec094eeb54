//! Atomic file writes and save/load of vision noise layers (config JSON + safetensors),
//! validated on load: format version, config, tensor names, shapes, dtypes, finite values.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::noise_layer::{NoiseLayerConfig, VisionNoiseLayer};
use crate::{Error, Result};

/// Version of the noise-layer artefact format written by this crate.
pub const NOISE_LAYER_FORMAT_VERSION: u32 = 1;
/// File names inside a noise-layer artefact directory.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "noise_layer.safetensors";

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Serializes named tensors to safetensors bytes.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let dir = std::env::temp_dir();
    // candle serializes through a path; keep the public API byte-oriented.
    let tmp = dir.join(format!(
        "sgt-st-{}-{}.safetensors",
        std::process::id(),
        rand::random::<u64>()
    ));
    candle_core::safetensors::save(&map, &tmp)?;
    let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e));
    let _ = std::fs::remove_file(&tmp);
    bytes
}

/// Writes named tensors to `path` atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    atomic_write(path, &safetensors_bytes(tensors)?)
}

/// Reads a safetensors file, mapping corrupt or truncated files to a clear error.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::artefact(path, "file not found"));
    }
    candle_core::safetensors::load(path, device).map_err(|e| {
        Error::artefact(
            path,
            format!("not a readable safetensors file (corrupt or truncated?): {e}"),
        )
    })
}

/// Checks that `tensors` holds exactly `expected` (names and shapes), all f32 and finite.
pub fn check_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    for (name, shape) in expected {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::artefact(path, format!("missing tensor `{name}`")))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::artefact(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, the config expects {shape:?}",
                    t.dims()
                ),
            ));
        }
        if t.dtype() != DType::F32 {
            return Err(Error::artefact(
                path,
                format!("tensor `{name}` is {:?}, expected f32", t.dtype()),
            ));
        }
        crate::error::ensure_finite(t, &format!("tensor `{name}`"))
            .map_err(|e| Error::artefact(path, e.to_string()))?;
    }
    for name in tensors.keys() {
        if !expected.iter().any(|(n, _)| n == name) {
            return Err(Error::artefact(
                path,
                format!("unexpected tensor `{name}` (wrong artefact kind?)"),
            ));
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct NoiseLayerFile {
    format_version: u32,
    layer: NoiseLayerConfig,
}

/// Saves a vision noise layer into `dir` (`config.json` + `noise_layer.safetensors`).
/// Weights are written first, so a present config always points at complete weights.
pub fn save_noise_layer(layer: &VisionNoiseLayer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_tensors(&dir.join(WEIGHTS_FILE), &layer.named_tensors())?;
    let cfg = NoiseLayerFile {
        format_version: NOISE_LAYER_FORMAT_VERSION,
        layer: layer.config(),
    };
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::artefact(dir, e.to_string()))?;
    atomic_write(&dir.join(CONFIG_FILE), &json)
}

/// Reads and validates only the config of a noise-layer artefact.
pub fn load_noise_layer_config(dir: &Path) -> Result<NoiseLayerConfig> {
    let path: PathBuf = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let file: NoiseLayerFile = serde_json::from_slice(&bytes)
        .map_err(|e| Error::artefact(&path, format!("malformed noise-layer config: {e}")))?;
    if file.format_version != NOISE_LAYER_FORMAT_VERSION {
        return Err(Error::artefact(
            &path,
            format!(
                "format version {} is not supported (this build reads version {NOISE_LAYER_FORMAT_VERSION}); re-export the artefact",
                file.format_version
            ),
        ));
    }
    match &file.layer {
        NoiseLayerConfig::Cloak(c) => c.validate(),
        NoiseLayerConfig::PatchCloak(c) => c.validate(),
    }
    .map_err(|e| Error::artefact(&path, e.to_string()))?;
    Ok(file.layer)
}

/// Loads a vision noise layer saved by [`save_noise_layer`], validating everything.
pub fn load_noise_layer(dir: &Path, device: &Device) -> Result<VisionNoiseLayer> {
    let config = load_noise_layer_config(dir)?;
    let mut layer = VisionNoiseLayer::new(config, device)?;
    let wpath = dir.join(WEIGHTS_FILE);
    let tensors = load_tensors(&wpath, device)?;
    let mut expected = layer.expected_tensors();
    if let (Some(m), VisionNoiseLayer::Cloak(_)) = (tensors.get("frozen_mask"), &layer) {
        expected.push(("frozen_mask".into(), m.dims().to_vec()));
        let shape = layer.input_shape().to_vec();
        if m.dims() != shape.as_slice() {
            return Err(Error::artefact(
                &wpath,
                format!("frozen_mask has shape {:?}, expected {shape:?}", m.dims()),
            ));
        }
    }
    check_tensors(&wpath, &tensors, &expected)?;
    layer.set_named_tensors(&tensors)?;
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise_layer::{CloakConfig, NoiseLayer};
    use crate::NoiseRng;

    fn layer() -> VisionNoiseLayer {
        let mut c = CloakConfig::new(&[1, 3, 3]);
        c.percent_to_mask = Some(0.3);
        let l = VisionNoiseLayer::new(NoiseLayerConfig::Cloak(c), &Device::Cpu).unwrap();
        if let VisionNoiseLayer::Cloak(c) = &l {
            c.rhos()
                .set(
                    &Tensor::arange(0f32, 9.0, &Device::Cpu)
                        .unwrap()
                        .reshape((1, 3, 3))
                        .unwrap(),
                )
                .unwrap();
        }
        l
    }

    #[test]
    fn round_trip_gives_identical_seeded_output() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer();
        save_noise_layer(&l, dir.path()).unwrap();
        let back = load_noise_layer(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config(), l.config());
        let x = Tensor::ones((2, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let a = l
            .forward(&x, None, &mut NoiseRng::seeded(5))
            .unwrap()
            .transformed;
        let b = back
            .forward(&x, None, &mut NoiseRng::seeded(5))
            .unwrap()
            .transformed;
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn corrupt_truncated_and_mismatched_artefacts_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        save_noise_layer(&layer(), dir.path()).unwrap();
        let w = dir.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_noise_layer(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt or truncated"), "{e}");

        // Config says a different shape than the weights hold.
        save_noise_layer(&layer(), dir.path()).unwrap();
        let c = dir.path().join(CONFIG_FILE);
        let s = std::fs::read_to_string(&c).unwrap().replace(
            "\"shape\": [\n      1,\n      3,\n      3\n    ]",
            "\"shape\": [1, 4, 4]",
        );
        std::fs::write(&c, s).unwrap();
        let e = load_noise_layer(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape"), "{e}");

        std::fs::write(&c, "{not json").unwrap();
        let e = load_noise_layer(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed"), "{e}");

        save_noise_layer(&layer(), dir.path()).unwrap();
        let s = std::fs::read_to_string(&c)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 99");
        std::fs::write(&c, s).unwrap();
        let e = load_noise_layer(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 99"), "{e}");
    }

    #[test]
    fn non_finite_weights_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer();
        if let VisionNoiseLayer::Cloak(c) = &l {
            c.locs()
                .set(
                    &Tensor::new(&[[[f32::NAN, 0.0, 0.0], [0.0; 3], [0.0; 3]]], &Device::Cpu)
                        .unwrap(),
                )
                .unwrap();
        }
        save_noise_layer(&l, dir.path()).unwrap();
        let e = load_noise_layer(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite"), "{e}");
    }
}
