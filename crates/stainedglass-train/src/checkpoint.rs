//! Atomic checkpoints: each is a directory `step-NNNNNNNN` written under a temporary name and
//! renamed into place; then the `latest` pointer file is replaced atomically. A kill at any moment
//! leaves the previous checkpoint intact. The two newest checkpoints are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};
use stainedglass_core::io::{atomic_write, load_tensors, save_tensors};

use crate::{Error, Result};

const LATEST: &str = "latest";
const STATE: &str = "state.json";
const KEEP: usize = 2;

/// A checkpoint directory manager rooted at `root` (e.g. `run/checkpoints`).
pub struct Checkpoints {
    root: PathBuf,
}

/// What a checkpoint holds: groups of named tensors (one safetensors file each) and a JSON state.
pub struct Checkpoint<S> {
    pub dir: PathBuf,
    pub tensors: HashMap<String, HashMap<String, Tensor>>,
    pub state: S,
}

impl Checkpoints {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Writes a checkpoint for `step`.
    pub fn save<S: Serialize>(
        &self,
        step: u64,
        groups: &[(&str, Vec<(String, Tensor)>)],
        state: &S,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let name = format!("step-{step:08}");
        let tmp = self
            .root
            .join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (group, tensors) in groups {
            save_tensors(&tmp.join(format!("{group}.safetensors")), tensors)?;
        }
        let json =
            serde_json::to_vec_pretty(state).map_err(|e| Error::ckpt(&tmp, e.to_string()))?;
        atomic_write(&tmp.join(STATE), &json)?;
        let fin = self.root.join(&name);
        let _ = std::fs::remove_dir_all(&fin);
        std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
        // The rename is durable before the pointer names it.
        if let Ok(d) = std::fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        atomic_write(&self.root.join(LATEST), name.as_bytes())?;
        self.prune(&name);
        Ok(fin)
    }

    fn prune(&self, keep_latest: &str) {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut steps: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("step-"))
            .collect();
        steps.sort();
        let n = steps.len();
        for s in steps.into_iter().take(n.saturating_sub(KEEP)) {
            if s != keep_latest {
                let _ = std::fs::remove_dir_all(self.root.join(s));
            }
        }
    }

    /// Loads the newest complete checkpoint, if any.
    pub fn load_latest<S: DeserializeOwned>(
        &self,
        groups: &[&str],
        device: &Device,
    ) -> Result<Option<Checkpoint<S>>> {
        let ptr = self.root.join(LATEST);
        if !ptr.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&ptr).map_err(|e| Error::io(&ptr, e))?;
        let name = name.trim();
        if !is_step_name(name) {
            return Err(Error::ckpt(
                &ptr,
                "the pointer does not name a checkpoint (`step-` and 8 digits); delete it, or \
                 the checkpoint directory to start over",
            ));
        }
        let dir = self.root.join(name);
        let spath = dir.join(STATE);
        let bytes = std::fs::read(&spath).map_err(|e| Error::io(&spath, e))?;
        let state: S = serde_json::from_slice(&bytes).map_err(|e| {
            Error::ckpt(
                &spath,
                format!(
                    "malformed training state ({e}); delete the checkpoint directory to start over"
                ),
            )
        })?;
        let mut tensors = HashMap::new();
        for g in groups {
            tensors.insert(
                g.to_string(),
                load_tensors(&dir.join(format!("{g}.safetensors")), device)?,
            );
        }
        Ok(Some(Checkpoint {
            dir,
            tensors,
            state,
        }))
    }
}

/// Whether `name` is a checkpoint directory's name, `step-` and 8 digits: a pointer never leads
/// outside the checkpoint folder.
fn is_step_name(name: &str) -> bool {
    name.strip_prefix("step-")
        .is_some_and(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes a directory tree if it exists (for `--fresh` starts).
pub fn clear(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_outside_the_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        for bad in ["../../etc", "step-1", "/abs", "step-0000000a", ""] {
            std::fs::write(dir.path().join(LATEST), bad).unwrap();
            let e = match c.load_latest::<u64>(&["w"], &Device::Cpu) {
                Err(e) => e,
                Ok(_) => panic!("{bad}: accepted"),
            };
            assert!(
                e.to_string().contains("does not name a checkpoint"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn save_prune_and_load_latest() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        assert!(c
            .load_latest::<u64>(&["w"], &Device::Cpu)
            .unwrap()
            .is_none());
        for step in [1u64, 2, 3] {
            let t = Tensor::new(&[step as f32], &Device::Cpu).unwrap();
            c.save(step, &[("w", vec![("x".into(), t)])], &step)
                .unwrap();
        }
        let ck = c.load_latest::<u64>(&["w"], &Device::Cpu).unwrap().unwrap();
        assert_eq!(ck.state, 3);
        assert_eq!(ck.tensors["w"]["x"].to_vec1::<f32>().unwrap(), vec![3.0]);
        let n = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("step-")
            })
            .count();
        assert_eq!(n, 2);
    }
}
