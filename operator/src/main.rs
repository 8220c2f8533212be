//! The `chorus-operator` binary.

fn main() -> std::process::ExitCode {
    eprintln!("chorus-operator: the controller is not implemented yet");
    std::process::ExitCode::FAILURE
}
