//! Checkpoints of a sequential run (GPTQ, GPTVQ, calibrated RTN), so that a
//! run that was killed, crashed or cancelled goes on where it stopped
//! (`quantize --resume`) and writes the same bytes as a run that never
//! stopped.
//!
//! The folder `.NAME.llmq-partial` beside the output holds
//! - `state.json`: the run's fingerprint (settings, the source's and the
//!   calibration files' identity, the backend) and how far it got;
//! - `windows.u32`: the calibration tokens (model-sampled windows are not
//!   drawn again);
//! - `layer-NNNNN/`: each finished layer's quantized linears, an llmq
//!   folder whose report is the layer's report and its tensors' order;
//! - `hidden-NNNNN.f32`: every window's hidden state after layer NNNNN − 1,
//!   the only activation a sequential run carries across layers.
//!
//! Each piece is written under a temporary name and renamed, `state.json`
//! last, so a kill at any moment leaves the previous checkpoint whole. On
//! resume the finished layers are replayed into the output in the order
//! they were written, and the run goes on from the hidden state. The
//! folder is deleted once the output is in place, and when a run stops
//! before it has finished a layer (nothing worth keeping).

use super::calib::CalibWindows;
use super::gptq::{GptqEvent, GptqSettings, LayerReport};
use super::quantize::QuantizeConfig;
use crate::backend::Backend;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::formats::atomic;
use crate::formats::llmq::{LlmqModel, LlmqWriter};
use crate::model::ModelView;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "state.json";
const WINDOWS_FILE: &str = "windows.u32";
const LOCK_FILE: &str = "lock";
const FORMAT: &str = "llmq-partial";
const VERSION: u32 = 1;

/// What a run must share with the run that made a checkpoint to go on
/// from it. `fields` must be equal; another `backend` is allowed (a run
/// whose GPU failed can go on on the CPU) but breaks bit-identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub fields: BTreeMap<String, String>,
    pub backend: String,
}

impl Fingerprint {
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.fields.insert(key.to_string(), value.into());
    }

    /// Records a file's (or each file of a folder's) size and mtime.
    pub fn file(&mut self, key: &str, path: &Path) {
        self.set(key, file_identity(path));
    }
}

/// What a run of `config` on `backend` from `model` must share with the
/// run whose checkpoint it goes on from: everything that changes a bit of
/// the output, except the backend (warned of). The memory budget for the
/// MLP activations only chooses between keeping and recomputing them.
pub fn fingerprint(
    config: &QuantizeConfig,
    backend: &dyn Backend,
    model: &ModelView,
) -> Fingerprint {
    let mut f = Fingerprint {
        backend: backend.name(),
        ..Default::default()
    };
    f.set("llmq-gpu version", env!("CARGO_PKG_VERSION"));
    f.file("source", model.path());
    f.set("method", config.method.name());
    f.set("scheme", format!("{:?}", config.scheme));
    f.set("output head", config.quantize_output_head.to_string());
    f.set("clip", format!("{:?}", config.clip));
    f.set("activations", format!("{:?}", config.activations));
    if let Some(g) = &config.gptq {
        let settings = GptqSettings {
            activation_budget: 0,
            ..g.clone()
        };
        f.set("settings", format!("{settings:?}"));
        for (path, _) in g.calib.texts() {
            f.file(&format!("calibration {}", path.display()), path);
        }
    }
    f
}

/// Absolute path, then `name size mtime` of the file or of each entry of
/// the folder (sorted): a file replaced or edited since reads differently.
fn file_identity(path: &Path) -> String {
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let stamp = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} {mtime}", m.len())
        }
        Err(e) => format!("unreadable ({e})"),
    };
    let mut out = abs.display().to_string();
    if abs.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&abs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for p in names.iter().filter(|p| p.is_file()) {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            out += &format!("; {name} {}", stamp(p));
        }
    } else {
        out += &format!(" {}", stamp(&abs));
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct WindowsInfo {
    samples: usize,
    len: usize,
    text_tokens: usize,
    tokens: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    format: String,
    version: u32,
    fingerprint: Fingerprint,
    windows: Option<WindowsInfo>,
    layers_done: usize,
}

/// Where the checkpoint of output `out` lives by default.
pub fn default_dir(out: &Path) -> PathBuf {
    atomic::parent_of(out).join(format!(".{}.llmq-partial", atomic::file_name(out)))
}

/// How many layers the checkpoint at `dir` holds, if there is one.
pub fn layers_in(dir: &Path) -> Option<usize> {
    read_state(dir).ok().map(|s| s.layers_done)
}

/// Deletes the checkpoint at `dir` (an app's "discard" button); whether
/// there was one.
pub fn discard(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(true)
}

fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let s: State = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            &path,
            format!(
                "not a checkpoint state ({e}); delete {} to start over",
                dir.display()
            ),
        )
    })?;
    if s.format != FORMAT || s.version != VERSION {
        return Err(Error::unsupported(
            &path,
            format!(
                "checkpoint {} version {} (this build reads {FORMAT} version {VERSION}); \
                 delete {} to start over",
                s.format,
                s.version,
                dir.display()
            ),
        ));
    }
    Ok(s)
}

/// A run's checkpoint folder, held (locked) while the run lives.
pub struct Checkpoint {
    dir: PathBuf,
    state: State,
    /// The layer being written: its llmq folder and its tensors' order.
    layer: Option<(LlmqWriter, Vec<String>)>,
    finished: bool,
}

impl Checkpoint {
    /// Opens the checkpoint at `dir`. With `resume`, an existing one must
    /// match `fingerprint` and is continued (none: a fresh start); without
    /// it, an existing one is an error, so that hours of work are never
    /// thrown away by rerunning a command.
    pub fn open(dir: &Path, fingerprint: Fingerprint, resume: bool) -> Result<Self> {
        let exists = dir.join(STATE_FILE).is_file();
        if exists && !resume {
            let layers = layers_in(dir).map_or("an unreadable".into(), |n| n.to_string());
            return Err(Error::Config(format!(
                "{} holds a stopped run of this output ({layers} layers done): add --resume to \
                 go on from it, or delete the folder to start over",
                dir.display()
            )));
        }
        if !exists && resume {
            log::warn!(
                "--resume: no checkpoint at {}; starting from the first layer",
                dir.display()
            );
        }
        if !exists && dir.exists() {
            // Killed before its first state was written: nothing to keep
            // (unless another run has just made it).
            check_lock(dir)?;
            discard(dir)?;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        lock(dir)?;
        let fresh = State {
            format: FORMAT.into(),
            version: VERSION,
            fingerprint,
            windows: None,
            layers_done: 0,
        };
        let state = match exists {
            true => match read_state(dir).and_then(|old| matching(dir, old, &fresh.fingerprint)) {
                Ok(s) => s,
                Err(e) => {
                    unlock(dir);
                    return Err(e);
                }
            },
            false => fresh,
        };
        let c = Self {
            dir: dir.to_path_buf(),
            state,
            layer: None,
            finished: false,
        };
        c.tidy()?;
        if !exists {
            c.save_state()?;
        }
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decoder layers already quantized.
    pub fn layers_done(&self) -> usize {
        self.state.layers_done
    }

    /// The calibration windows of the run, if it got that far.
    pub fn windows(&self) -> Result<Option<CalibWindows>> {
        let Some(info) = self.state.windows else {
            return Ok(None);
        };
        let tokens: Vec<u32> = read_values(&self.dir.join(WINDOWS_FILE), info.tokens)?;
        Ok(Some(CalibWindows {
            tokens,
            samples: info.samples,
            len: info.len,
            text_tokens: info.text_tokens,
        }))
    }

    pub fn save_windows(&mut self, w: &CalibWindows) -> Result<()> {
        write_values(&self.dir.join(WINDOWS_FILE), &w.tokens)?;
        self.state.windows = Some(WindowsInfo {
            samples: w.samples,
            len: w.len,
            text_tokens: w.text_tokens,
            tokens: w.tokens.len(),
        });
        self.save_state()
    }

    /// The hidden state after the finished layers (`values` of them).
    pub fn hidden(&self, values: usize) -> Result<Vec<f32>> {
        read_values(&self.dir.join(hidden_file(self.layers_done())), values)
    }

    /// Hands layer `i`'s stored linears to `on_event` in the order the run
    /// wrote them (`w` = the source weight, as in the run) and returns the
    /// layer's report.
    pub fn replay_layer(
        &self,
        i: usize,
        view: &ModelView,
        on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
    ) -> Result<LayerReport> {
        let dir = self.dir.join(layer_folder(i));
        let stored = LlmqModel::open(&dir)?;
        let bad = |msg: String| Error::format(&dir, msg);
        let report = stored.report();
        let order: Vec<String> = serde_json::from_value(report["order"].clone())
            .map_err(|e| bad(format!("the checkpoint's tensor order: {e}")))?;
        let layer: LayerReport = serde_json::from_value(report["layer"].clone())
            .map_err(|e| bad(format!("the checkpoint's layer report: {e}")))?;
        for name in &order {
            let q = stored
                .load_encoded(name)?
                .ok_or_else(|| bad(format!("'{name}' is stored unquantized")))?;
            let w = view.load_f32(name)?;
            on_event(GptqEvent::Tensor {
                name,
                shape: [q.rows(), q.cols()],
                q: &q,
                w: &w,
            })?;
        }
        Ok(layer)
    }

    /// Starts storing layer `i` (the next one).
    pub fn begin_layer(&mut self, i: usize) -> Result<()> {
        let writer = LlmqWriter::create(&self.dir.join(layer_folder(i)), true)?;
        self.layer = Some((writer, Vec::new()));
        Ok(())
    }

    /// Stores one linear of the layer being written.
    pub fn add_tensor(&mut self, name: &str, shape: [usize; 2], q: &EncodedTensor) -> Result<()> {
        let Some((writer, order)) = self.layer.as_mut() else {
            return Err(Error::Config("internal: checkpoint layer not begun".into()));
        };
        writer.add_encoded(name, &shape, q, "checkpoint")?;
        order.push(name.to_string());
        Ok(())
    }

    /// Layer `report.layer` is done and `hidden` is its output: the layer's
    /// folder, then the hidden state, then the state that names them.
    pub fn end_layer(
        &mut self,
        view: &ModelView,
        report: &LayerReport,
        hidden: &[f32],
    ) -> Result<()> {
        let Some((writer, order)) = self.layer.take() else {
            return Err(Error::Config("internal: checkpoint layer not begun".into()));
        };
        let i = report.layer;
        let meta = json!({ "order": order, "layer": report });
        writer.finish(view.arch(), view.path(), Vec::new(), &[], meta)?;
        write_values(&self.dir.join(hidden_file(i + 1)), hidden)?;
        self.state.layers_done = i + 1;
        self.save_state()?;
        // The previous hidden state is no longer named by the state.
        let old = self.dir.join(hidden_file(i));
        if old.exists() {
            std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// The output is in place: the checkpoint goes.
    pub fn remove(mut self) -> Result<()> {
        self.finished = true;
        discard(&self.dir).map(|_| ())
    }

    fn save_state(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| Error::Config(format!("cannot serialize the checkpoint state: {e}")))?;
        atomic::write_file(&self.dir.join(STATE_FILE), true, |w, p| {
            w.write_all(&bytes).map_err(|e| Error::io(p, e))
        })
    }

    /// Removes what the state does not name: a layer begun but not
    /// finished, hidden states superseded, temporary files of a kill.
    fn tidy(&self) -> Result<()> {
        let done = self.state.layers_done;
        let mut keep: Vec<String> = (0..done).map(layer_folder).collect();
        keep.extend([STATE_FILE, LOCK_FILE, WINDOWS_FILE].map(String::from));
        if done > 0 {
            keep.push(hidden_file(done));
        }
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let p = e.path();
            let r = match p.is_dir() {
                true => std::fs::remove_dir_all(&p),
                false => std::fs::remove_file(&p),
            };
            r.map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        self.layer = None;
        if !self.finished && self.state.layers_done == 0 {
            let _ = discard(&self.dir);
        } else {
            unlock(&self.dir);
        }
    }
}

/// `old` continued under `now`: the same fields, another backend warned of.
fn matching(dir: &Path, old: State, now: &Fingerprint) -> Result<State> {
    let keys: std::collections::BTreeSet<&String> = old
        .fingerprint
        .fields
        .keys()
        .chain(now.fields.keys())
        .collect();
    let differ: Vec<&str> = keys
        .into_iter()
        .filter(|k| old.fingerprint.fields.get(*k) != now.fields.get(*k))
        .map(|k| k.as_str())
        .collect();
    if !differ.is_empty() {
        let first = differ[0];
        let show = |f: &Fingerprint| {
            let v = f.fields.get(first).map_or("(none)", |v| v.as_str());
            v.chars().take(300).collect::<String>()
        };
        return Err(Error::Config(format!(
            "{} was made by a different run: {} differ ({first} was '{}', is now '{}'); \
             rerun the original command with --resume, or delete the folder to start over",
            dir.display(),
            differ.join(", "),
            show(&old.fingerprint),
            show(now),
        )));
    }
    if old.fingerprint.backend != now.backend {
        log::warn!(
            "{}: the run was on {} and goes on on {}; the result is valid but not \
             bit-identical to a run on one device",
            dir.display(),
            old.fingerprint.backend,
            now.backend
        );
    }
    Ok(old)
}

fn layer_folder(i: usize) -> String {
    format!("layer-{i:05}")
}

fn hidden_file(layers_done: usize) -> String {
    format!("hidden-{layers_done:05}.f32")
}

/// Refuses a checkpoint another live process is writing; takes over one
/// whose process is gone.
fn lock(dir: &Path) -> Result<()> {
    check_lock(dir)?;
    let path = dir.join(LOCK_FILE);
    std::fs::write(&path, std::process::id().to_string()).map_err(|e| Error::io(&path, e))
}

fn check_lock(dir: &Path) -> Result<()> {
    let path = dir.join(LOCK_FILE);
    let me = std::process::id();
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != me && atomic::process_alive(pid) {
                return Err(Error::Config(format!(
                    "{} is in use by another run (process {pid}); wait for it or stop it",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

fn unlock(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(LOCK_FILE));
}

/// Plain little-endian values, written all-or-nothing.
fn write_values<T: bytemuck::Pod>(path: &Path, values: &[T]) -> Result<()> {
    atomic::write_file(path, true, |w, p| {
        w.write_all(bytemuck::cast_slice(values))
            .map_err(|e| Error::io(p, e))
    })
}

fn read_values<T: bytemuck::Pod + Default>(path: &Path, n: usize) -> Result<Vec<T>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let want = (n * std::mem::size_of::<T>()) as u64;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len != want {
        return Err(Error::format(
            path,
            format!("checkpoint file holds {len} bytes, the run needs {want}; delete the checkpoint folder to start over"),
        ));
    }
    let mut v = vec![T::default(); n];
    f.read_exact(bytemuck::cast_slice_mut(&mut v))
        .map_err(|e| Error::io(path, e))?;
    Ok(v)
}
