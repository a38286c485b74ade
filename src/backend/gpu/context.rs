//! The GPU context: instance, adapter, device and queue, plus the few
//! helpers every kernel wrapper needs (buffers, cached pipelines, bounded
//! waits). Kernels receive a context; they never create one.

use super::adapter::{instance, is_real_gpu, list_adapters, AdapterSummary, DeviceChoice};
use super::buffer::{GpuBuffer, MemoryCounters};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Layout of one binding in a kernel's bind group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    Uniform,
    StorageRead,
    StorageReadWrite,
}

/// A compiled compute pipeline with its explicit bind-group layout.
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub name: String,
}

/// Default bound on every wait for the GPU. Generous: lavapipe is slow.
pub const DEFAULT_GPU_TIMEOUT: Duration = Duration::from_secs(600);

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    limits: wgpu::Limits,
    /// Largest storage binding kernels may use; the adapter's limit unless lowered.
    max_binding: AtomicU64,
    timeout: Duration,
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    lost: Arc<Mutex<Option<String>>>,
    has_subgroups: bool,
    has_f16: bool,
    /// Serialises submissions and waits so that a wait never races another
    /// thread's submission.
    submit_lock: Mutex<()>,
    poisoned: AtomicBool,
    /// Bytes of buffers created through this context and still alive, and their peak.
    memory: Arc<MemoryCounters>,
    /// Bytes copied host → GPU ([`GpuContext::upload`]) and GPU → host
    /// ([`GpuContext::read_bytes`]) since creation.
    uploaded: AtomicU64,
    downloaded: AtomicU64,
}

impl GpuContext {
    /// Opens the device `choice` asks for. `adapter_name` picks among several
    /// adapters by case-insensitive substring. `Cpu` is not a GPU: ask
    /// [`crate::backend::select_backend`] for that.
    pub fn new(choice: DeviceChoice, adapter_name: Option<&str>) -> Result<Self> {
        let backends = choice.wgpu_backends().ok_or_else(|| {
            Error::Gpu("the cpu device has no GPU context; use the CPU backend".into())
        })?;
        let inst = instance(backends);
        let adapters = pollster::block_on(inst.enumerate_adapters(backends));
        let available = || {
            let all = list_adapters();
            if all.is_empty() {
                "none (install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers)".to_string()
            } else {
                all.iter().map(|a| a.short()).collect::<Vec<_>>().join("; ")
            }
        };
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| match adapter_name {
                Some(n) => a.get_info().name.to_lowercase().contains(&n.to_lowercase()),
                None => true,
            })
            .collect();
        if choice == DeviceChoice::Auto {
            candidates.retain(is_real_gpu);
        }
        // Prefer discrete, then integrated, then anything.
        candidates.sort_by_key(|a| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            _ => 3,
        });
        let Some(adapter) = candidates.into_iter().next() else {
            let wanted = match adapter_name {
                Some(n) => format!("device '{choice}' with adapter name containing '{n}'"),
                None => format!("device '{choice}'"),
            };
            return Err(Error::Gpu(format!(
                "no adapter for {wanted}; adapters found: {}",
                available()
            )));
        };
        Self::from_adapter(adapter)
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let summary = AdapterSummary::of(&adapter);
        let mut features = wgpu::Features::empty();
        for f in [wgpu::Features::SHADER_F16, wgpu::Features::SUBGROUP] {
            if adapter.features().contains(f) {
                features |= f;
            }
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("llmq-gpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("device request on {} failed: {e}", summary.short())))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        log::info!("GPU: {}", summary.short());
        Ok(Self {
            device,
            queue,
            max_binding: AtomicU64::new(limits.max_storage_buffer_binding_size),
            has_subgroups: features.contains(wgpu::Features::SUBGROUP),
            has_f16: features.contains(wgpu::Features::SHADER_F16),
            adapter: summary,
            limits,
            timeout: DEFAULT_GPU_TIMEOUT,
            kernels: Mutex::new(HashMap::new()),
            lost,
            submit_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            memory: Arc::default(),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    pub fn has_subgroups(&self) -> bool {
        self.has_subgroups
    }
    pub fn has_f16(&self) -> bool {
        self.has_f16
    }

    /// Largest storage binding, in bytes, that kernels split their work to fit.
    pub fn max_binding(&self) -> u64 {
        self.max_binding.load(Ordering::Relaxed)
    }

    /// Lowers the binding limit kernels plan with (tests use this to exercise
    /// the split path on small shapes). Values above the adapter's limit are capped.
    pub fn set_max_binding(&self, bytes: u64) {
        let cap = self.limits.max_storage_buffer_binding_size;
        self.max_binding
            .store(bytes.clamp(256, cap), Ordering::Relaxed);
    }

    /// Bytes of GPU buffers created through this context that are alive now.
    pub fn gpu_bytes_live(&self) -> u64 {
        self.memory.live()
    }

    /// Most bytes of GPU buffers alive at once since creation or the last
    /// [`GpuContext::reset_gpu_peak`].
    pub fn gpu_bytes_peak(&self) -> u64 {
        self.memory.peak()
    }

    /// Bytes copied host → GPU and GPU → host through this context so far
    /// (uniform parameters aside): what a run costs in bus traffic.
    pub fn transfer_bytes(&self) -> (u64, u64) {
        (
            self.uploaded.load(Ordering::Relaxed),
            self.downloaded.load(Ordering::Relaxed),
        )
    }

    /// Restarts the peak from the bytes alive now.
    pub fn reset_gpu_peak(&self) {
        self.memory.reset_peak();
    }

    /// Creates a buffer counted in [`GpuContext::gpu_bytes_live`] and the peak.
    /// Every buffer should come from here.
    pub fn buffer(&self, desc: &wgpu::BufferDescriptor) -> GpuBuffer {
        GpuBuffer::new(self.device.create_buffer(desc), self.memory.clone())
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Workgroups per grid dimension.
    pub fn max_workgroups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    /// A 2-D grid covering `n` workgroups under the per-dimension limit.
    /// Shaders recover the flat index as `wg.x + wg.y * num_workgroups.x`.
    pub fn grid(&self, n: u32) -> [u32; 3] {
        let max = self.max_workgroups().max(1);
        if n <= max {
            [n.max(1), 1, 1]
        } else {
            [max, n.div_ceil(max), 1]
        }
    }

    fn check_alive(&self) -> Result<()> {
        if let Some(msg) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::Gpu(format!("device lost ({msg}); restart the run")));
        }
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(Error::Gpu(
                "an earlier GPU wait timed out; the device state is unknown, restart the run"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The kernel `entry` of `source`, compiled once per `key` and cached.
    pub fn kernel(
        &self,
        key: &str,
        source: &str,
        entry: &str,
        bindings: &[Binding],
    ) -> Result<Arc<Kernel>> {
        if let Some(k) = self.kernels.lock().map_err(|_| poisoned_lock())?.get(key) {
            return Ok(k.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::StorageRead => {
                            wgpu::BufferBindingType::Storage { read_only: true }
                        }
                        Binding::StorageReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(key),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(key),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "kernel '{key}' failed to compile: {err}"
            )));
        }
        let kernel = Arc::new(Kernel {
            pipeline,
            layout,
            name: key.to_string(),
        });
        self.kernels
            .lock()
            .map_err(|_| poisoned_lock())?
            .insert(key.to_string(), kernel.clone());
        Ok(kernel)
    }

    /// A storage buffer initialised with `data` (at least 4 bytes, so empty inputs still bind).
    pub fn upload(&self, label: &str, data: &[u8]) -> Result<GpuBuffer> {
        self.check_size(label, data.len() as u64)?;
        let size = (data.len() as u64).max(4).next_multiple_of(4);
        let buf = self.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if !data.is_empty() {
            self.uploaded
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            let padded = data.len().next_multiple_of(4);
            if padded == data.len() {
                self.queue.write_buffer(&buf, 0, data);
            } else {
                let mut v = data.to_vec();
                v.resize(padded, 0);
                self.queue.write_buffer(&buf, 0, &v);
            }
        }
        Ok(buf)
    }

    /// A zeroed read-write storage buffer of `bytes` bytes.
    pub fn storage(&self, label: &str, bytes: u64) -> Result<GpuBuffer> {
        self.check_size(label, bytes)?;
        Ok(self.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer holding a `#[repr(C)]` parameter struct.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> GpuBuffer {
        let bytes = bytemuck::bytes_of(value);
        let buf = self.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).next_multiple_of(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, bytes);
        buf
    }

    fn check_size(&self, label: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_binding() {
            return Err(Error::Gpu(format!(
                "buffer '{label}' of {bytes} bytes exceeds the storage binding limit of {} bytes \
                 of {}; the caller must split it",
                self.max_binding(),
                self.adapter.short()
            )));
        }
        Ok(())
    }

    /// Records one dispatch of `kernel` over `buffers` (bound in order) into `encoder`.
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &kernel.layout,
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&kernel.name),
            timestamp_writes: None,
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("llmq"),
            })
    }

    /// Submits `encoder` and waits for it, bounded by the context's timeout.
    pub fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let _guard = self.submit_lock.lock().map_err(|_| poisoned_lock())?;
        let index = self.submit_locked(encoder)?;
        self.wait(Some(index))
    }

    /// Submits `encoder` without waiting: work that stays on the GPU (a
    /// resident weight updated block after block) is queued back to back;
    /// [`GpuContext::wait_for`] or a later read waits for it.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        let _guard = self.submit_lock.lock().map_err(|_| poisoned_lock())?;
        self.submit_locked(encoder)
    }

    fn submit_locked(&self, encoder: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        self.check_alive()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let index = self.queue.submit([encoder.finish()]);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("GPU validation error: {err}")));
        }
        Ok(index)
    }

    /// Waits for an earlier [`GpuContext::submit`], bounded by the timeout.
    pub fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        let _guard = self.submit_lock.lock().map_err(|_| poisoned_lock())?;
        self.wait(Some(index))
    }

    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        match self.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(self.timeout),
        }) {
            Ok(_) => self.check_alive(),
            Err(wgpu::PollError::Timeout) => {
                self.poisoned.store(true, Ordering::Relaxed);
                Err(Error::Gpu(format!(
                    "GPU did not finish within {:?} on {}; the device may be hung or far too slow \
                     for this shape",
                    self.timeout,
                    self.adapter.short()
                )))
            }
            Err(e) => Err(Error::Gpu(format!("GPU wait failed: {e}"))),
        }
    }

    /// Runs one dispatch and waits for it.
    pub fn run(
        &self,
        kernel: &Kernel,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let mut enc = self.encoder();
        self.encode(&mut enc, kernel, buffers, workgroups);
        self.submit_and_wait(enc)
    }

    /// Copies `bytes` bytes of `buffer` back to the host.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder();
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.submit_and_wait(enc)?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(None)?;
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping a readback buffer failed: {e}"))),
            Err(_) => return Err(Error::Gpu("mapping a readback buffer timed out".into())),
        }
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer failed: {e}")))?
            .to_vec();
        staging.unmap();
        let mut data = data;
        data.truncate(bytes as usize);
        self.downloaded.fetch_add(bytes, Ordering::Relaxed);
        Ok(data)
    }

    /// Copies `n` values of type `T` back to the host.
    pub fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, n: usize) -> Result<Vec<T>> {
        let bytes = self.read_bytes(buffer, (n * std::mem::size_of::<T>()) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

fn poisoned_lock() -> Error {
    Error::Gpu("internal lock poisoned by an earlier failure".into())
}
