// Histogram of |x| over [0, bins / inv_width): counts[b] += #{i : bin(|x[i]|)
// = b}, bin(v) = min(u32(v * inv_width), bins - 1), the same f32 product
// and truncation as the CPU reference (src/backend/cpu/ops.rs
// `abs_histogram`), so both give identical counts. Each workgroup counts a
// contiguous slice into workgroup memory, then adds its nonzero bins to
// the global counts: u32 atomics are exact and order-free.

struct Params {
    n: u32,
    bins: u32,
    inv_width: f32,
    per_wg: u32,
}

const WG: u32 = 256u;
const MAX_BINS: u32 = 4096u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;

var<workgroup> local_counts: array<atomic<u32>, MAX_BINS>;

@compute @workgroup_size(256)
fn histogram(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    for (var b = lid; b < p.bins; b += WG) {
        atomicStore(&local_counts[b], 0u);
    }
    workgroupBarrier();
    let start = (wg.x + wg.y * nwg.x) * p.per_wg;
    let end = min(start + p.per_wg, p.n);
    for (var i = start + lid; i < end; i += WG) {
        let b = min(u32(abs(x[i]) * p.inv_width), p.bins - 1u);
        atomicAdd(&local_counts[b], 1u);
    }
    workgroupBarrier();
    for (var b = lid; b < p.bins; b += WG) {
        let c = atomicLoad(&local_counts[b]);
        if (c != 0u) {
            atomicAdd(&counts[b], c);
        }
    }
}
