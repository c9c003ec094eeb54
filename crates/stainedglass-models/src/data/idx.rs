//! IDX reader (the MNIST family's big-endian format): `u8` images (magic 0x0803) and labels
//! (0x0801); gzip is handled transparently. Truncated files are errors.

use std::path::Path;

use super::read_maybe_gz;
use crate::{Error, Result};

fn header(bytes: &[u8], path: &Path, magic: u32, ndim: usize) -> Result<Vec<usize>> {
    let need = 4 + 4 * ndim;
    if bytes.len() < need {
        return Err(Error::data(
            path,
            format!("file too short for an IDX header ({} bytes)", bytes.len()),
        ));
    }
    let m = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if m != magic {
        return Err(Error::data(
            path,
            format!("IDX magic {m:#010x}, expected {magic:#010x} (is this the right file?)"),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = need + dims.iter().product::<usize>();
    if bytes.len() != expected {
        return Err(Error::data(
            path,
            format!(
                "expected {expected} bytes for dims {dims:?}, found {} (truncated download?)",
                bytes.len()
            ),
        ));
    }
    Ok(dims)
}

/// Reads an IDX image file: `(pixels, n, height, width)`.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let bytes = read_maybe_gz(path)?;
    let d = header(&bytes, path, 0x0000_0803, 3)?;
    Ok((bytes[16..].to_vec(), d[0], d[1], d[2]))
}

/// Reads an IDX label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    header(&bytes, path, 0x0000_0801, 1)?;
    Ok(bytes[8..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.idx");
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1];
        b.extend([1, 2, 3, 4]);
        std::fs::write(&p, &b).unwrap();
        let (px, n, h, w) = read_idx_images(&p).unwrap();
        assert_eq!((px, n, h, w), (vec![1, 2, 3, 4], 2, 2, 1));
        std::fs::write(&p, &b[..18]).unwrap();
        assert!(read_idx_images(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(read_idx_labels(&p)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        std::fs::write(&p, [0x1f, 0x8b, 0, 1]).unwrap();
        assert!(read_idx_images(&p)
            .unwrap_err()
            .to_string()
            .contains("gzip"));
    }
}
