//! `vcluster`: the cluster layer (being written).

fn main() {
    eprintln!("vcluster: not built yet");
    std::process::exit(1);
}
