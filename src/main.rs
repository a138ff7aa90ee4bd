fn main() {
    eprintln!("atrest: not implemented yet");
    std::process::exit(2);
}
