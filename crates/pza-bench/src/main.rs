//! `pza-bench`: the benchmark harness (being written).

fn main() {
    println!("pza-bench: no benchmark yet");
}
