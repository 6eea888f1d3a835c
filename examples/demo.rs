fn main() {
    println!("hi {}", cfg!(feature = "sim"));
}
