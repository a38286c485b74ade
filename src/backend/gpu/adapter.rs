//! Which GPU to run on: the `--device` choice, what `llmq-gpu devices`
//! prints about each adapter, and which adapters `auto` may take.

use crate::error::{Error, Result};
use std::fmt;

/// Which device to run on, as the CLI's `--device` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A real GPU if there is one, otherwise the native CPU backend.
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
    /// The native CPU backend (rayon), no wgpu at all.
    Cpu,
}

impl DeviceChoice {
    pub const NAMES: &'static [&'static str] = &["auto", "vulkan", "metal", "dx12", "gl", "cpu"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => DeviceChoice::Auto,
            "vulkan" => DeviceChoice::Vulkan,
            "metal" => DeviceChoice::Metal,
            "dx12" => DeviceChoice::Dx12,
            "gl" | "gles" | "opengl" => DeviceChoice::Gl,
            "cpu" => DeviceChoice::Cpu,
            other => {
                return Err(Error::Config(format!(
                    "unknown device '{other}'; choose one of {}",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }

    /// The wgpu backends this choice may use (`None` for the CPU backend).
    pub fn wgpu_backends(self) -> Option<wgpu::Backends> {
        match self {
            DeviceChoice::Auto => Some(wgpu::Backends::all()),
            DeviceChoice::Vulkan => Some(wgpu::Backends::VULKAN),
            DeviceChoice::Metal => Some(wgpu::Backends::METAL),
            DeviceChoice::Dx12 => Some(wgpu::Backends::DX12),
            DeviceChoice::Gl => Some(wgpu::Backends::GL),
            DeviceChoice::Cpu => None,
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = *self as usize;
        f.write_str(Self::NAMES[i])
    }
}

/// What `llmq-gpu devices` prints about one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub shader_f16: bool,
    pub subgroups: bool,
}

impl AdapterSummary {
    pub(super) fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        Self {
            name: info.name,
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
        }
    }

    /// One line such as `llvmpipe (LLVM 15) [vulkan, Cpu]`.
    pub fn short(&self) -> String {
        format!("{} [{}, {}]", self.name, self.backend, self.device_type)
    }
}

pub(super) fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see, on every backend.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let inst = instance(wgpu::Backends::all());
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(AdapterSummary::of)
        .collect()
}

/// Whether `auto` should take this adapter: real GPUs only, not software
/// rasterizers such as lavapipe/llvmpipe, which are slower than our CPU path.
pub(super) fn is_real_gpu(adapter: &wgpu::Adapter) -> bool {
    matches!(
        adapter.get_info().device_type,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    )
}
