//! The Hessian of one linear layer's inputs (gptq.py `add_batch`):
//! [`Hessian`] on the host, [`HessianAccumulation`] kept on a backend
//! ([`crate::backend::ResidentHessian`]: host memory or GPU buffers)
//! between batches.

use crate::backend::{Backend, ResidentHessian};
use crate::error::{Error, Result};
use crate::quant::rtn::check_finite;

/// The Hessian of one linear layer's inputs, accumulated batch by batch.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub cols: usize,
    /// Calibration tokens seen so far.
    pub samples: usize,
    /// `[cols, cols]`, f32, `2/n · Σ x xᵀ`.
    pub h: Vec<f32>,
}

impl Hessian {
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            samples: 0,
            h: vec![0.0; cols * cols],
        }
    }

    /// Adds `x` `[tokens, cols]` (the inputs of the linear named `name`):
    /// `H *= n/(n+b); H += 2/(n+b) · XᵀX`. For many batches, a
    /// [`HessianAccumulation`] keeps H on the backend between them.
    pub fn add_batch(
        &mut self,
        backend: &dyn Backend,
        name: &str,
        x: &[f32],
        tokens: usize,
    ) -> Result<()> {
        let mut acc = HessianAccumulation::resume(backend, self.clone())?;
        acc.add_batch(name, x, tokens)?;
        *self = acc.finish()?;
        Ok(())
    }
}

/// A [`Hessian`] being accumulated on a backend, which keeps H (on the GPU:
/// resident buffers) between batches.
pub struct HessianAccumulation<'a> {
    cols: usize,
    samples: usize,
    acc: Box<dyn ResidentHessian + 'a>,
}

impl<'a> HessianAccumulation<'a> {
    pub fn new(backend: &'a dyn Backend, cols: usize) -> Result<Self> {
        Self::resume(backend, Hessian::new(cols))
    }

    /// Continues accumulating `h`.
    pub fn resume(backend: &'a dyn Backend, h: Hessian) -> Result<Self> {
        Ok(Self {
            cols: h.cols,
            samples: h.samples,
            acc: backend.resident_hessian(h.h, h.cols, h.samples)?,
        })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Adds `x` `[tokens, cols]`, the inputs of the linear(s) `name`;
    /// non-finite inputs are an error naming them.
    pub fn add_batch(&mut self, name: &str, x: &[f32], tokens: usize) -> Result<()> {
        // check_finite is the fast (vectorised) scan; the message is ours.
        let bad = check_finite(name, x)
            .err()
            .and_then(|_| x.iter().position(|v| !v.is_finite()));
        if let Some(i) = bad {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "calibration input value {} at token {}, feature {} is not finite; \
                     earlier layers overflow on this text (check the weights and the \
                     calibration file)",
                    x[i],
                    i / self.cols.max(1),
                    i % self.cols.max(1)
                ),
            });
        }
        self.acc.add(x, tokens)?;
        self.samples += tokens;
        Ok(())
    }

    /// Waits for the backend and returns the Hessian.
    pub fn finish(self) -> Result<Hessian> {
        Ok(Hessian {
            cols: self.cols,
            samples: self.samples,
            h: self.acc.finish()?,
        })
    }
}
