//! `.npy` input files (NumPy's `np.save`): C or Fortran order, any shape including 0-d, the
//! dtypes libtorch has. tch's own reader takes neither Fortran order nor a short file's word for
//! its length, hence this one.
use std::path::Path;

use tch::{Kind, Tensor};

/// Reads `path` as a tensor; every failure is one line naming the file.
pub fn read(path: &Path) -> Result<Tensor, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read input {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("cannot read input {shown}: it is a directory"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read input {shown}: {e}"))?;
    parse(&bytes).map_err(|why| format!("input {shown} is not a .npy file (np.save): {why}"))
}

/// The tensor in a `.npy` file's bytes.
fn parse(bytes: &[u8]) -> Result<Tensor, String> {
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err("no NumPy magic string".into());
    }
    let (header_len, start) = match bytes.get(6) {
        Some(1) if bytes.len() >= 10 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        Some(2 | 3) if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err("unsupported or truncated header".into()),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated header")?;
    let header = String::from_utf8_lossy(header);
    let header = Header::parse(&header)?;
    let data = &bytes[start + header_len..];
    let numel = header
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .ok_or("shape too large")?;
    let need = numel.saturating_mul(header.kind.elt_size_in_bytes());
    if data.len() < need {
        return Err(format!(
            "truncated data ({} bytes, the header announces {need})",
            data.len()
        ));
    }
    let shape = &header.shape;
    let tensor = if header.fortran_order && shape.len() > 1 {
        // Column-major: the same bytes are the row-major array of the reversed shape, transposed.
        let reversed: Vec<i64> = shape.iter().rev().copied().collect();
        let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
        Tensor::f_from_data_size(&data[..need], &reversed, header.kind)
            .and_then(|t| t.f_permute(dims.as_slice()))
            .and_then(|t| t.f_contiguous())
    } else {
        Tensor::f_from_data_size(&data[..need], shape, header.kind)
    };
    tensor.map_err(|e| e.to_string())
}

/// What a `.npy` header says.
struct Header {
    kind: Kind,
    fortran_order: bool,
    shape: Vec<i64>,
}

impl Header {
    /// `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`
    fn parse(header: &str) -> Result<Header, String> {
        let after = |key: &str| -> Result<&str, String> {
            header
                .split_once(key)
                .map(|(_, rest)| rest.trim_start_matches([':', ' ']))
                .ok_or_else(|| format!("no {key} in the header"))
        };
        let descr = after("'descr'")?
            .trim_start_matches('\'')
            .split('\'')
            .next()
            .unwrap_or("");
        let kind = match descr.strip_prefix(['<', '|', '=']).unwrap_or(descr) {
            "f2" | "e" => Kind::Half,
            "f4" | "f" => Kind::Float,
            "f8" | "d" => Kind::Double,
            "i1" | "b" => Kind::Int8,
            "u1" | "B" => Kind::Uint8,
            "i2" | "h" => Kind::Int16,
            "i4" | "i" => Kind::Int,
            "i8" | "q" => Kind::Int64,
            "b1" | "?" => Kind::Bool,
            "c8" | "F" => Kind::ComplexFloat,
            "c16" | "D" => Kind::ComplexDouble,
            other if other.starts_with('>') => {
                return Err(format!("big-endian data ({descr}) is not supported"))
            }
            _ => return Err(format!("unsupported dtype {descr:?}")),
        };
        let fortran_order = after("'fortran_order'")?.starts_with("True");
        let shape = after("'shape'")?
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .ok_or("no shape tuple in the header")?
            .0
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<i64>().map_err(|_| format!("bad dimension {d:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Header {
            kind,
            fortran_order,
            shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn f64s(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn fortran_order_is_transposed_back() {
        // np.asfortranarray([[1, 2, 3], [4, 5, 6]]) stores 1 4 2 5 3 6.
        let bytes = npy("<f8", true, "(2, 3)", &f64s(&[1., 4., 2., 5., 3., 6.]));
        let t = parse(&bytes).unwrap();
        assert_eq!(t.size(), [2, 3]);
        let v: Vec<f64> = Vec::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(v, [1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn zero_dimensional_and_errors() {
        let t = parse(&npy("<f8", false, "()", &f64s(&[2.5]))).unwrap();
        assert_eq!((t.dim(), t.double_value(&[])), (0, 2.5));
        let short = npy("<f8", false, "(4,)", &f64s(&[1.0]));
        assert!(parse(&short).unwrap_err().contains("truncated data"));
        assert!(parse(&npy(">f8", false, "(1,)", &f64s(&[1.0])))
            .unwrap_err()
            .contains("big-endian"));
        assert!(parse(b"not numpy").unwrap_err().contains("magic"));
    }
}
