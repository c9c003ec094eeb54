//! Every environment variable the `sgt` binary reads, read once at start-up into
//! [`Environment`]; the libraries get typed options from it and read no environment themselves.
//! A value that does not parse is an error that names the variable.
//!
//! | variable | meaning |
//! |---|---|
//! | `SGT_ASSETS` | the assets folder (default `assets`); `--assets` overrides it |
//! | `SGT_BLAS` | `auto` (default), `mkl`, `openblas` or `off` |
//! | `SGT_BLAS_LIB` | a CBLAS library to try first |
//! | `SGT_PREPACK_MB` | MiB of frozen weights packed for oneMKL (default 1024; 0 = off) |
//! | `SGT_API_KEYS` | `sgt serve`: comma-separated keys, added to `--api-key` |
//! | `SGT_PROXY_API_KEYS` | `sgt proxy`: comma-separated caller keys, added to `--api-key` |
//! | `SGT_UPSTREAM_API_KEY` | `sgt proxy`: `--upstream-api-key` (read by clap, so a key stays out of `ps`) |
//! | `RUST_LOG` | log filter when `--log` is not given (default `warn`) |
//! | `MIMALLOC_PURGE_DELAY` | when set, mimalloc's own setting is left alone |
//! | `OPENBLAS_CORETYPE` | when unset, set for OpenBLAS from the CPU's features |

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use stainedglass_models::llm::{BlasChoice, BlasOptions};

/// The environment, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub assets: PathBuf,
    pub blas: BlasChoice,
    pub blas_lib: Option<PathBuf>,
    pub prepack_mb: usize,
    pub api_keys: Vec<String>,
    pub proxy_api_keys: Vec<String>,
    pub rust_log: Option<String>,
    pub mimalloc_purge_delay_set: bool,
    pub openblas_coretype_set: bool,
}

static ENV: OnceLock<Environment> = OnceLock::new();

/// The environment read at start-up (read now if `main` has not yet).
pub fn get() -> &'static Environment {
    ENV.get_or_init(|| Environment::read().unwrap_or_else(|_| Environment::default()))
}

/// Reads the process environment once; later calls of [`get`] return this.
pub fn init() -> Result<&'static Environment> {
    let env = Environment::read()?;
    Ok(ENV.get_or_init(|| env))
}

/// The assets folder (`SGT_ASSETS`, else `assets`).
pub fn assets() -> PathBuf {
    get().assets.clone()
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            assets: PathBuf::from("assets"),
            blas: BlasChoice::Auto,
            blas_lib: None,
            prepack_mb: 1024,
            api_keys: Vec::new(),
            proxy_api_keys: Vec::new(),
            rust_log: None,
            mimalloc_purge_delay_set: false,
            openblas_coretype_set: false,
        }
    }
}

impl Environment {
    pub fn read() -> Result<Self> {
        Self::from_lookup(|k| std::env::var_os(k))
    }

    /// Parses the variables `lookup` returns (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let text = |k: &str| -> Result<Option<String>> {
            lookup(k)
                .map(|v| {
                    v.into_string()
                        .map_err(|_| anyhow!("{k} is not valid UTF-8: set it to plain text"))
                })
                .transpose()
        };
        let d = Self::default();
        let blas = match text("SGT_BLAS")? {
            Some(v) => v.trim().parse().map_err(|e| anyhow!("SGT_BLAS: {e}"))?,
            None => d.blas,
        };
        let prepack_mb = match text("SGT_PREPACK_MB")? {
            Some(v) => v.trim().parse().map_err(|_| {
                anyhow!(
                    "SGT_PREPACK_MB={v:?} is not a number of MiB (e.g. 1024; 0 turns packing off)"
                )
            })?,
            None => d.prepack_mb,
        };
        let keys = |var: &str| -> Result<Vec<String>> {
            Ok(text(var)?
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default())
        };
        Ok(Self {
            assets: lookup("SGT_ASSETS").map_or(d.assets, PathBuf::from),
            blas,
            blas_lib: lookup("SGT_BLAS_LIB").map(PathBuf::from),
            prepack_mb,
            api_keys: keys("SGT_API_KEYS")?,
            proxy_api_keys: keys("SGT_PROXY_API_KEYS")?,
            rust_log: text("RUST_LOG")?.filter(|v| !v.trim().is_empty()),
            mimalloc_purge_delay_set: lookup("MIMALLOC_PURGE_DELAY").is_some(),
            openblas_coretype_set: lookup("OPENBLAS_CORETYPE").is_some(),
        })
    }

    /// The BLAS options the model library takes.
    pub fn blas_options(&self) -> BlasOptions {
        BlasOptions {
            choice: self.blas,
            library: self.blas_lib.clone(),
            assets: Some(self.assets.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Environment> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Environment::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_typed_values_and_defaults() {
        assert_eq!(env(&[]).expect("empty"), Environment::default());
        let e = env(&[
            ("SGT_BLAS", "openblas"),
            ("SGT_PREPACK_MB", " 0 "),
            ("SGT_API_KEYS", "a, b,,c"),
            ("SGT_ASSETS", "/x"),
            ("RUST_LOG", "info"),
        ])
        .expect("env");
        assert_eq!(e.blas, BlasChoice::OpenBlas);
        assert_eq!(e.prepack_mb, 0);
        assert_eq!(e.api_keys, ["a", "b", "c"]);
        assert_eq!(e.blas_options().assets, Some(PathBuf::from("/x")));
        assert_eq!(e.rust_log.as_deref(), Some("info"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [("SGT_BLAS", "fast"), ("SGT_PREPACK_MB", "lots")] {
            let e = env(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
