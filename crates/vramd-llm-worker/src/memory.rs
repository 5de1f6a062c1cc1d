//! Byte accounting: what a loaded model holds, by part. Pure arithmetic and parsing.
//!
//! - weights: the model's tensor bytes, as llama.cpp reports them (`llama_model_size`);
//! - context: the KV cache, `2 · n_layer · n_ctx · n_embd_kv · bytes per element`
//!   (K and V, one row of `n_embd_kv = n_embd / n_head · n_head_kv` per layer and cell);
//! - compute: the scheduler's compute buffers, which llama.cpp only tells in its log
//!   (`llama_context:  CPU compute buffer size =  1.23 MiB`, one line per device), so
//!   [`parse_compute_buffer`] reads those lines.

/// Bytes per element of the default KV cache type (f16).
pub const KV_F16_BYTES: u64 = 2;

/// The shape of a model's attention, as llama.cpp exposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
}

impl KvGeometry {
    /// Width of one K (or V) row: `n_embd / n_head · n_head_kv`.
    pub fn n_embd_kv(&self) -> u64 {
        if self.n_head == 0 {
            return 0;
        }
        u64::from(self.n_embd / self.n_head) * u64::from(self.n_head_kv)
    }
}

/// Bytes of a KV cache of `n_ctx` cells.
pub fn kv_cache_bytes(g: KvGeometry, n_ctx: u32, bytes_per_element: u64) -> u64 {
    2 * u64::from(g.n_layer) * u64::from(n_ctx) * g.n_embd_kv() * bytes_per_element
}

/// Reads the size out of llama.cpp's `<device> compute buffer size = <x> MiB` log line.
/// Other lines (including the `compute buffer size is …` check at teardown) give `None`.
pub fn parse_compute_buffer(message: &str) -> Option<u64> {
    const KEY: &str = "compute buffer size =";
    let rest = &message[message.find(KEY)? + KEY.len()..];
    let mut words = rest.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    let scale = match words.next()? {
        "MiB" => 1024.0 * 1024.0,
        "KiB" => 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "B" => 1.0,
        _ => return None,
    };
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vramd_protocol::Bytes;

    #[test]
    fn kv_cache_of_a_grouped_query_model() {
        // Llama-3-8B: 32 layers, 4096 wide, 32 heads, 8 KV heads; 8192 cells of f16.
        let g = KvGeometry {
            n_layer: 32,
            n_embd: 4096,
            n_head: 32,
            n_head_kv: 8,
        };
        assert_eq!(g.n_embd_kv(), 1024);
        // The well-known 1 GiB for 8k context.
        assert_eq!(kv_cache_bytes(g, 8192, KV_F16_BYTES), 1 << 30);
    }

    #[test]
    fn kv_cache_of_the_tiny_test_model() {
        let g = KvGeometry {
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 4,
        };
        assert_eq!(kv_cache_bytes(g, 512, KV_F16_BYTES), 2 * 2 * 512 * 64 * 2);
        assert_eq!(kv_cache_bytes(KvGeometry { n_head: 0, ..g }, 512, 2), 0);
    }

    #[test]
    fn compute_buffer_lines_are_parsed() {
        // As llama-cpp-2 hands it to tracing (the `llama_context: ` prefix becomes a field).
        let line = "       CPU compute buffer size =     1.23 MiB";
        assert_eq!(parse_compute_buffer(line), Some(1_289_748));
        let line = "llama_context:      CUDA0 compute buffer size =   304.00 MiB";
        assert_eq!(parse_compute_buffer(line), Some(304 << 20));
        assert_eq!(
            parse_compute_buffer("CUDA_Host compute buffer size =     0.50 MiB"),
            Some(512 << 10)
        );
    }

    #[test]
    fn other_lines_are_not_compute_buffers() {
        for line in [
            "       CPU compute buffer size is   1.2300 MiB, matches expectation of   1.2300 MiB",
            "       CPU  output buffer size =     0.12 MiB",
            "compute buffer size = lots MiB",
            "compute buffer size = 1.0",
            "",
        ] {
            assert_eq!(parse_compute_buffer(line), None, "{line:?}");
        }
    }

    #[test]
    fn totals_add_up() {
        let b = Bytes::new(
            1000,
            kv_cache_bytes(
                KvGeometry {
                    n_layer: 1,
                    n_embd: 8,
                    n_head: 2,
                    n_head_kv: 1,
                },
                16,
                2,
            ),
            7,
        );
        assert_eq!(b.context, 2 * 16 * 4 * 2);
        assert_eq!(b.total, 1000 + 256 + 7);
    }
}
