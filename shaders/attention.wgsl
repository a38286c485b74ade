// Causal grouped-query attention with softmax, for a batch of sequences or
// one sequence over its KV cache. Query row t of sequence b sits at position
// start + t and sees keys 0..=start+t of that sequence; query head h reads
// KV head h / (heads / kv_heads).
//
// One workgroup per (sequence, query row, head). Keys go by in tiles of WG:
// each invocation scores one key of the tile, then every invocation folds
// the whole tile into its running max/sum (online softmax) and into the
// output dims it owns (lid + j * WG, j < 4). No score buffer as long as the
// context: memory stays fixed whatever the cache length, and the only
// cross-invocation step is a WG-float tile in workgroup memory.
// CPU reference: src/backend/cpu/ops.rs (attention).

const WG: u32 = 64u;
const MAX_HD: u32 = 256u; // 4 output dims per invocation
const NEG_BIG: f32 = -3.0e38;

// Mirrors `Params` in src/backend/gpu/attention.rs.
struct Params {
    batch: u32,
    seq: u32,          // query rows per sequence
    start: u32,        // position of the first query row
    heads: u32,
    kv_heads: u32,
    hd: u32,
    kv_rows: u32,      // rows of k/v per sequence (start + seq, or the cache capacity)
    scale: f32,        // 1 / sqrt(hd)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, MAX_HD>;
var<workgroup> sc: array<f32, WG>;

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let flat = wg.x + wg.y * nwg.x;
    let head = flat % p.heads;
    let row = flat / p.heads; // b * seq + t
    if (row >= p.batch * p.seq) {
        return;
    }
    let b = row / p.seq;
    let t = row % p.seq;
    let kvh = head / (p.heads / p.kv_heads);
    let qw = p.heads * p.hd;
    let kvw = p.kv_heads * p.hd;
    let kv0 = b * p.kv_rows;
    let visible = p.start + t + 1u;
    for (var d = lid; d < p.hd; d += WG) {
        qs[d] = q[row * qw + head * p.hd + d];
    }
    workgroupBarrier();
    var m = NEG_BIG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s0 = 0u; s0 < visible; s0 += WG) {
        let s = s0 + lid;
        var score = NEG_BIG;
        if (s < visible) {
            let kb = (kv0 + s) * kvw + kvh * p.hd;
            var dot = 0.0;
            for (var d = 0u; d < p.hd; d++) {
                dot += qs[d] * k[kb + d];
            }
            score = dot * p.scale;
        }
        sc[lid] = score;
        workgroupBarrier();
        let n = min(WG, visible - s0);
        var mt = m;
        for (var i = 0u; i < n; i++) {
            mt = max(mt, sc[i]);
        }
        let corr = exp(m - mt);
        l *= corr;
        acc *= corr;
        for (var i = 0u; i < n; i++) {
            let e = exp(sc[i] - mt);
            l += e;
            let vb = (kv0 + s0 + i) * kvw + kvh * p.hd;
            for (var j = 0u; j < 4u; j++) {
                let d = lid + j * WG;
                if (d < p.hd) {
                    acc[j] += e * v[vb + d];
                }
            }
        }
        m = mt;
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let d = lid + j * WG;
        if (d < p.hd) {
            out[row * qw + head * p.hd + d] = acc[j] / l;
        }
    }
}
