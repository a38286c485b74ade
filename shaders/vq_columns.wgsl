// GPTQ's column loop for grids that round GRID_STEP > 1 columns together
// (VQ codebooks), appended after shaders/gptq.wgsl (same Params and
// bindings) by the host. The grid's WGSL defines GRID_STEP and
// grid_round_vector(x, u, at, out): the code of the vector x (GRID_STEP
// values) under the parameters at gparams[at..], its values into *out,
// with u[a][c] = U[j + a, j + c] the block of H⁻¹'s upper factor at the
// vector's columns. CPU reference: quantize_row in src/backend/cpu/gptq.rs.
//
// - quantize_vectors: one invocation per row. Parameters are given (the
//   driver fits a codebook over many rows) and shared by p.rows_per_params
//   consecutive rows. Per vector: assign, then e · U_FF = x − x̂ (a
//   triangular solve; GPTQ's (x − x̂) / U_jj for one column), spread over
//   the rest of the block.
// - gather_columns: W[:, start..start + len] of this chunk into `err`
//   (what the driver fits the next codebooks to).

@compute @workgroup_size(64)
fn quantize_vectors(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = (wg.x + wg.y * nwg.x) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    let param_set = r / p.rows_per_params;
    for (var jj = p.first; jj < p.last; jj += GRID_STEP) {
        let j = p.start + jj;
        let at = (param_set * p.groups + j / p.group_len) * GRID_PARAMS;
        var u = mat4x4<f32>();
        var x = vec4<f32>(0.0);
        for (var a = 0u; a < GRID_STEP; a++) {
            x[a] = w[base + j + a];
            for (var c = 0u; c < GRID_STEP; c++) {
                u[a][c] = hinv[(jj + a) * p.len + jj + c];
            }
        }
        var x_hat = vec4<f32>(0.0);
        codes[base + j] = grid_round_vector(x, u, at, &x_hat);
        var e = vec4<f32>(0.0);
        for (var q = 0u; q < GRID_STEP; q++) {
            var res = x[q] - x_hat[q];
            for (var a = 0u; a < q; a++) {
                res -= e[a] * u[a][q];
            }
            e[q] = res / u[q][q];
            err[r * p.len + jj + q] = e[q];
        }
        for (var q = 0u; q < GRID_STEP; q++) {
            for (var kk = jj + GRID_STEP; kk < p.len; kk++) {
                w[base + p.start + kk] -= e[q] * hinv[(jj + q) * p.len + kk];
            }
        }
    }
}
