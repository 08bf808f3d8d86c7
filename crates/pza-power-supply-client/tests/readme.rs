//! The README's Rust example is `examples/readme.rs`, which cargo builds
//! with the tests: so the example in the README compiles.

const README: &str = include_str!("../../../README.md");
const EXAMPLE: &str = include_str!("../examples/readme.rs");

#[test]
fn the_readme_example_is_the_compiled_one() {
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with("Client library (Rust)"))
        .expect("the README has a Client library section");
    let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let end = start + section[start..].find("```\n").expect("the block ends");
    let block = &section[start..end];
    // The example file is its `//!` header, a blank line, then the block.
    let body = EXAMPLE
        .split_once("\n\n")
        .map(|(_, body)| body)
        .expect("a header, then the code");
    assert_eq!(body, block, "README and examples/readme.rs differ");
}
