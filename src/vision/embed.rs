//! Embedding: the aligned face through the ONNX embedder named in the manifest, L2-normalised.

use opencv::core::{Mat, Scalar, Size, CV_32F};
use opencv::dnn;
use opencv::prelude::*;

use crate::models::{ChannelOrder, EmbedderContract, ResolvedModel};
use crate::vision::{grey_probe, load_error, load_onnx, VisionError};

/// A unit-length face vector; the dot product of two is their cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises `raw` to unit length; `None` for an all-zero or non-finite vector.
    pub fn from_raw(mut raw: Vec<f32>) -> Option<Embedding> {
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || norm < 1e-12 {
            return None;
        }
        raw.iter_mut().for_each(|v| *v /= norm);
        Some(Embedding(raw))
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn cosine(&self, other: &Embedding) -> f32 {
        dot(&self.0, &other.0)
    }
}

/// Dot product with eight independent sums, which lets the compiler vectorise it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

pub(crate) struct Embedder {
    net: dnn::Net,
    contract: EmbedderContract,
    model_name: String,
}

impl Embedder {
    pub fn load(model: &ResolvedModel<EmbedderContract>) -> Result<Embedder, VisionError> {
        let mut embedder = Embedder {
            net: load_onnx(model)?,
            contract: model.contract.clone(),
            model_name: model.name.clone(),
        };
        let probe = grey_probe(embedder.input_size())?;
        embedder
            .embed_raw(&probe)
            .map_err(|err| load_error(model, format!("a test inference failed: {err}")))?;
        Ok(embedder)
    }

    /// Side of the square crop this embedder expects.
    pub fn input_size(&self) -> i32 {
        self.contract.input_size
    }

    /// Embeds an aligned BGR crop of `input_size` pixels.
    pub fn embed(&mut self, aligned: &Mat) -> Result<Embedding, VisionError> {
        let raw = self.embed_raw(aligned)?;
        Embedding::from_raw(raw).ok_or(VisionError::DegenerateEmbedding)
    }

    fn embed_raw(&mut self, aligned: &Mat) -> Result<Vec<f32>, VisionError> {
        let c = &self.contract;
        let side = c.input_size;
        let mean = Scalar::new(
            f64::from(c.mean[0]),
            f64::from(c.mean[1]),
            f64::from(c.mean[2]),
            0.0,
        );
        let mut blob = dnn::blob_from_image(
            aligned,
            1.0,
            Size::new(side, side),
            mean,
            c.color == ChannelOrder::Rgb,
            false,
            CV_32F,
        )?;
        let plane = (side * side) as usize;
        let values = blob.data_typed_mut::<f32>()?;
        for (channel, std) in c.std.iter().enumerate() {
            values[channel * plane..(channel + 1) * plane]
                .iter_mut()
                .for_each(|v| *v /= std);
        }
        self.net.set_input(&blob, "", 1.0, Scalar::default())?;
        let output = self.net.forward_single("")?;
        let raw = output.data_typed::<f32>()?.to_vec();
        if raw.len() != c.output_dim {
            return Err(VisionError::OutputShape {
                model: self.model_name.clone(),
                expected: c.output_dim,
                actual: raw.len(),
            });
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_for_any_length() {
        for len in [0, 1, 7, 8, 9, 128, 131] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 1.0 / (i as f32 + 1.0)).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "length {len}");
        }
    }

    #[test]
    fn embeddings_are_unit_length_and_zero_is_refused() {
        let e = Embedding::from_raw(vec![3.0, 4.0]).unwrap();
        assert!((e.cosine(&e) - 1.0).abs() < 1e-6);
        assert_eq!(e.as_slice(), &[0.6, 0.8]);
        assert!(Embedding::from_raw(vec![0.0, 0.0]).is_none());
        assert!(Embedding::from_raw(vec![f32::NAN, 1.0]).is_none());
    }
}
