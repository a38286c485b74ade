// Reads back the current (error-corrected) weights of the columns
// p.start .. p.start + p.len of every row into `err` (as [rows, len]):
// what the host fits grids to that the kernel does not fit itself (VQ
// codebooks, ggml block types). Appended to gptq.wgsl, whose bindings it uses.

@compute @workgroup_size(64)
fn gather_columns(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= p.rows * p.len) {
        return;
    }
    err[i] = w[(i / p.len) * p.cols + p.start + i % p.len];
}
