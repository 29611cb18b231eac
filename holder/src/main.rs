fn main() {
    eprintln!("strata-holder: not built yet");
    std::process::exit(2);
}
