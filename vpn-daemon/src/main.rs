//! `vpnd`: the overlay daemon (being written).

fn main() {
    eprintln!("vpnd: not built yet");
    std::process::exit(1);
}
