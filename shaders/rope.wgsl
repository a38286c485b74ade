// Rotary position embedding, in place on q or k `[rows, heads * hd]`. Row r
// is at position `start + r % seq` (a batch of sequences of `seq` rows each).
// The host uploads cos/sin per (position, pair) computed in f64 exactly as
// the CPU's RopeTable does, so both paths rotate by the same f32 angles.
// CPU reference: src/backend/cpu/ops.rs (RopeTable::apply).

const WG: u32 = 64u;

// Mirrors `Params` in src/backend/gpu/rope.rs.
struct Params {
    rows: u32,
    seq: u32,
    heads: u32,
    half: u32,      // hd / 2 rotation pairs per head
    adjacent: u32,  // 1: pairs (2i, 2i+1) (GGUF); 0: (i, i + hd/2) (Hugging Face)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// (cos, sin) of table row `pos - start`, pair i at [pos * half + i].
@group(0) @binding(1) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

// One invocation per (row, head, pair).
@compute @workgroup_size(WG)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * WG;
    let i = g % p.half;
    let hh = (g / p.half) % p.heads;
    let row = g / (p.half * p.heads);
    if (row >= p.rows) {
        return;
    }
    let c = cs[(row % p.seq) * p.half + i];
    let base = (row * p.heads + hh) * 2u * p.half;
    var ia = base + i;
    var ib = base + i + p.half;
    if (p.adjacent != 0u) {
        ia = base + 2u * i;
        ib = ia + 1u;
    }
    let x0 = x[ia];
    let x1 = x[ib];
    x[ia] = x0 * c.x - x1 * c.y;
    x[ib] = x0 * c.y + x1 * c.x;
}
