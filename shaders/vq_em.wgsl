// GPTVQ's weighted EM on many codebooks at once (CPU reference:
// `iterate` in src/encoding/vq/em.rs): `groups` codebooks of K centroids of
// D values, each fitted to its group's N points, each point with its own
// importance weights.
//
// - assign (E-step): one invocation per point, its group's codebook in
//   workgroup memory; the nearest centroid under Σ_p w_p (x_p − c_p)², first
//   on ties; counts the points whose assignment changed.
// - update (M-step): one workgroup per (centroid, group), no float atomics:
//   each invocation sums a stride of the group's points, then a tree
//   reduction; the centroid becomes the per-dimension weighted mean of its
//   points, or, with no points, the worst-served point among c, c + K, ...
//   Runs only when some assignment changed (as the CPU stops before it).

struct Params {
    groups: u32,
    n: u32,
    d: u32,
    k: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [groups, N, D]
@group(0) @binding(1) var<storage, read> points: array<f32>;
// [groups, N, D]
@group(0) @binding(2) var<storage, read> weights: array<f32>;
// [groups, K, D]
@group(0) @binding(3) var<storage, read_write> centroids: array<f32>;
// [groups, N]: assignment and weighted squared distance of each point.
@group(0) @binding(4) var<storage, read_write> assign: array<u32>;
@group(0) @binding(5) var<storage, read_write> dist: array<f32>;
// [1]: points whose assignment changed in the last E-step.
@group(0) @binding(6) var<storage, read_write> changed: array<atomic<u32>>;

const WG: u32 = 64u;
// K · D at most (256 centroids of 4 values).
const MAX_CODEBOOK: u32 = 1024u;

var<workgroup> cb: array<f32, MAX_CODEBOOK>;
var<workgroup> r_sum: array<vec4<f32>, WG>;
var<workgroup> r_wsum: array<vec4<f32>, WG>;
var<workgroup> r_count: array<u32, WG>;
var<workgroup> r_far: array<f32, WG>;
var<workgroup> r_far_at: array<u32, WG>;

fn point(g: u32, i: u32) -> vec4<f32> {
    var x = vec4<f32>(0.0);
    for (var q = 0u; q < p.d; q++) {
        x[q] = points[(g * p.n + i) * p.d + q];
    }
    return x;
}

fn weight(g: u32, i: u32) -> vec4<f32> {
    var w = vec4<f32>(0.0);
    for (var q = 0u; q < p.d; q++) {
        w[q] = weights[(g * p.n + i) * p.d + q];
    }
    return w;
}

// One workgroup per 64 points of group wg.y.
@compute @workgroup_size(64)
fn assign_points(@builtin(workgroup_id) wg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let g = wg.y;
    let len = p.k * p.d;
    for (var t = lid; t < len; t += WG) {
        cb[t] = centroids[g * len + t];
    }
    workgroupBarrier();
    let i = wg.x * WG + lid;
    if (i >= p.n) {
        return;
    }
    let x = point(g, i);
    let w = weight(g, i);
    var best = 0u;
    var best_d = 3.4e38;
    for (var c = 0u; c < p.k; c++) {
        var e = 0.0;
        for (var q = 0u; q < p.d; q++) {
            let r = x[q] - cb[c * p.d + q];
            e += w[q] * r * r;
        }
        if (e < best_d) {
            best = c;
            best_d = e;
        }
    }
    let at = g * p.n + i;
    if (assign[at] != best) {
        atomicAdd(&changed[0], 1u);
    }
    assign[at] = best;
    dist[at] = best_d;
}

// One workgroup per centroid wg.x of group wg.y.
@compute @workgroup_size(64)
fn update_centroids(@builtin(workgroup_id) wg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    if (atomicLoad(&changed[0]) == 0u) {
        return;
    }
    let c = wg.x;
    let g = wg.y;
    var s = vec4<f32>(0.0);
    var ws = vec4<f32>(0.0);
    var count = 0u;
    for (var i = lid; i < p.n; i += WG) {
        if (assign[g * p.n + i] == c) {
            let w = weight(g, i);
            s += w * point(g, i);
            ws += w;
            count += 1u;
        }
    }
    var far = -1.0;
    var far_at = 0xffffffffu;
    for (var i = c + lid * p.k; i < p.n; i += WG * p.k) {
        let e = dist[g * p.n + i];
        if (e > far) {
            far = e;
            far_at = i;
        }
    }
    r_sum[lid] = s;
    r_wsum[lid] = ws;
    r_count[lid] = count;
    r_far[lid] = far;
    r_far_at[lid] = far_at;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half >>= 1u) {
        if (lid < half) {
            r_sum[lid] += r_sum[lid + half];
            r_wsum[lid] += r_wsum[lid + half];
            r_count[lid] += r_count[lid + half];
            let other = r_far[lid + half];
            let oa = r_far_at[lid + half];
            if (other > r_far[lid] || (other == r_far[lid] && oa < r_far_at[lid])) {
                r_far[lid] = other;
                r_far_at[lid] = oa;
            }
        }
        workgroupBarrier();
    }
    if (lid != 0u) {
        return;
    }
    let at = (g * p.k + c) * p.d;
    if (r_count[0] > 0u) {
        for (var q = 0u; q < p.d; q++) {
            if (r_wsum[0][q] > 0.0) {
                centroids[at + q] = r_sum[0][q] / r_wsum[0][q];
            }
        }
    } else if (r_far_at[0] != 0xffffffffu) {
        let x = point(g, r_far_at[0]);
        for (var q = 0u; q < p.d; q++) {
            centroids[at + q] = x[q];
        }
    }
}
