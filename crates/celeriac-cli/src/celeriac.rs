//! The `celeriac` command: the CLI of [`celeriac::cli`], serving the
//! built-in tasks (`celeriac.add`, `celeriac.fib`, ...).

fn main() {
    celeriac::cli::main()
}
