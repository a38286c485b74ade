//! [`LlamaWeights`] rewritten linear by linear: the one traversal of the
//! block linears, and llama.cpp's activation rounding built on it.

use super::{LayerWeights, LinearSite, LlamaWeights, Names};
use crate::error::Result;
use crate::model::forward::Linear;
use crate::model::view::ModelView;

impl LlamaWeights {
    /// Replaces every block linear by `f(its tensor name, it)`, layer by
    /// layer in [`LinearSite::ALL`] order (the order is the same on every
    /// call, so callers may pair calls up).
    pub fn map_block_linears(
        &mut self,
        view: &ModelView,
        mut f: impl FnMut(&str, Linear) -> Result<Linear>,
    ) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for &kind in LinearSite::ALL.iter().flat_map(|s| s.kinds()) {
                let Some(l) = layer.linear_mut(kind) else {
                    continue;
                };
                let name = LayerWeights::tensor_name(view, i, kind).unwrap_or_default();
                let empty = Linear::Dense {
                    rows: 0,
                    cols: 0,
                    w: Vec::new(),
                };
                let taken = std::mem::replace(l, empty);
                *l = f(&name, taken)?;
            }
        }
        Ok(())
    }

    /// The weights with every linear's input rounded as llama.cpp's CPU
    /// backend rounds it for the tensor type `view` stores it as
    /// ([`crate::encoding::ggml::activation_rounding`]), the tied output
    /// head included (then held as its own dense copy); F32 tensors and
    /// non-GGUF sources are unchanged.
    pub fn with_llama_cpp_activations(mut self, view: &ModelView) -> Result<Self> {
        use crate::encoding::ggml::{activation_rounding, GgmlType};
        let rounding = |name: &str| -> Result<Option<_>> {
            let info = view.tensor(name)?;
            Ok(GgmlType::from_name(&info.dtype).and_then(activation_rounding))
        };
        let wrap = |l: Linear, r| match r {
            Some(r) => Linear::RoundedInput(r, Box::new(l)),
            None => l,
        };
        self.map_block_linears(view, |name, l| Ok(wrap(l, rounding(name)?)))?;
        let names = Names::of(view);
        let head = names.global("head");
        let head = match view.tensors().iter().any(|t| t.name == head) {
            true => head,
            false => names.global("embed"),
        };
        self.head = match self.head.take() {
            Some(h) => Some(wrap(h, rounding(&head)?)),
            None => match rounding(&names.global("embed"))? {
                Some(r) => Some(Linear::RoundedInput(
                    r,
                    Box::new(Linear::dense(
                        self.arch.vocab_size,
                        self.arch.hidden_size,
                        self.embed.clone(),
                    )?),
                )),
                None => None,
            },
        };
        Ok(self)
    }
}
