//! `llmq-gpu devices`: every adapter wgpu sees, with the limits that matter.

use super::human_bytes;
use llmq_gpu::backend::gpu::list_adapters;
use llmq_gpu::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let adapters = list_adapters();
    if a.json {
        let json =
            serde_json::to_string_pretty(&adapters).map_err(|e| Error::Config(e.to_string()))?;
        println!("{json}");
        return Ok(());
    }
    if adapters.is_empty() {
        println!(
            "no GPU adapters found (for software Vulkan: apt-get install mesa-vulkan-drivers)"
        );
    }
    for (i, ad) in adapters.iter().enumerate() {
        println!("[{i}] {}", ad.name);
        println!("    backend            {}", ad.backend);
        println!("    type               {}", ad.device_type);
        println!("    driver             {} {}", ad.driver, ad.driver_info);
        println!(
            "    max storage binding {}",
            human_bytes(ad.max_storage_buffer_binding_size)
        );
        println!("    max buffer         {}", human_bytes(ad.max_buffer_size));
        println!(
            "    workgroup memory   {}",
            human_bytes(ad.max_compute_workgroup_storage_size as u64)
        );
        println!(
            "    invocations/group  {}",
            ad.max_compute_invocations_per_workgroup
        );
        println!(
            "    workgroups/dim     {}",
            ad.max_compute_workgroups_per_dimension
        );
        println!(
            "    features           f16={} subgroups={}",
            ad.shader_f16, ad.subgroups
        );
    }
    println!(
        "[cpu] native CPU backend: {} threads (--device cpu)",
        rayon::current_num_threads()
    );
    Ok(())
}
