//! `vramd-llm-worker`: placeholder until its issue lands. It exits with a clear error so a
//! daemon that finds it reports "worker not implemented" instead of hanging on a handshake.

fn main() {
    eprintln!("vramd-llm-worker: not built yet in this version of vramd");
    std::process::exit(69); // EX_UNAVAILABLE
}
