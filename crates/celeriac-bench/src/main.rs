//! `celeriac-bench`: the Rust side of celeriac's benchmark suite (work in progress).

fn main() {
    celeriac::init();
}
